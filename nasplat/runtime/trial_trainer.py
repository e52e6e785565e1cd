"""One Tune trial's ``TorchTrainer``: the same scaling, storage, reporting and failure settings for
search and retrain trials, and the trial's MLflow run closed with the outcome."""
from __future__ import annotations

from typing import Any, Callable

from nasplat.runtime.driver import TrialStart
from nasplat.runtime.ray_session import HEALTH_CHECK_ENV
from nasplat.runtime.worker import FAILED_KEY, REASON_KEY, worker_loop_config
from nasplat.tracking.schema import FAILURE_REASON_TAG
from nasplat.training.storage import run_location
from nasplat.tracking.logger import RunLogger, closing_loggers


def fit_trial(
    worker: Callable[[dict[str, Any]], None],
    trial: TrialStart,
    datasets: dict[str, Any] | None = None,
    **extras: Any,
) -> None:
    """Run ``worker`` on ``config.workers`` Ray Train workers (gloo on CPU, NCCL with GPUs).

    The workers get the trial's config, its MLflow run and ``extras`` (see :func:`worker_loop_config`). The
    trial's run ends FINISHED or FAILED with the fit.
    """
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    config, trial_id, run_id = trial.config, trial.trial_id, trial.run_id
    trainer = TorchTrainer(
        closing_loggers(worker),  # the worker's MLflow queue is delivered (or saved) before Ray ends it
        datasets=datasets,
        train_loop_config=worker_loop_config(config, run_id, **extras),
        torch_config=TorchConfig(backend="nccl" if config.gpus_per_worker > 0 else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=config.workers,
            use_gpu=config.gpus_per_worker > 0,
            resources_per_worker=trial.per_worker,
            placement_strategy=config.placement_strategy,
        ),
        run_config=RunConfig(
            name=f"train-{trial_id}",  # the same name on resume, so Ray Train reattaches to its checkpoints
            storage_path=run_location(config.storage, config.name),
            callbacks=[TuneReportCallback()],
            logging_config=LoggingConfig(log_level="WARNING"),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            failure_config=FailureConfig(max_failures=config.max_failures, controller_failure_limit=config.max_failures),
            worker_runtime_env={"env_vars": dict(HEALTH_CHECK_ENV)},
        ),
    )
    logger = RunLogger(config.tracking_uri, run_id)
    try:
        result = trainer.fit()
    except Exception as err:
        logger.set_tags({FAILURE_REASON_TAG: f"{type(err).__name__}: {err}"[:5000]})
        logger.finish("FAILED")
        raise
    if result.metrics and result.metrics.get(FAILED_KEY):
        logger.finish("FAILED")
        raise TrialFailed(str(result.metrics[REASON_KEY]))
    logger.finish("FINISHED")


class TrialFailed(RuntimeError):
    """The trial ended for a reason that retrying cannot change (divergence); Tune marks it ERROR."""
