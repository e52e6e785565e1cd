"""The experiment skeleton both search and retrain run on: one Ray Tune experiment of Ray Train trials.

The driver resolves paths (absolute: Ray workers run in other directories), starts or joins Ray,
plans resources up front, opens the parent MLflow run, creates or restores the ``Tuner``, runs it with
a progress callback, and says whether it was interrupted. Each trial (:func:`start_trial`) opens its
child run and drives a ``TorchTrainer``. Search and retrain supply only what is theirs: the worker
loop, the Tune search algorithm or scheduler, and what to do with the best trial.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from typing import Any, Callable, Mapping

import ray
from ray import tune

from nasplat.runtime.preflight import check_worker_share
from nasplat.runtime.progress import TrialProgress
from nasplat.runtime.ray_session import start_ray
from nasplat.runtime.resources import plan_resources
from nasplat.runtime.run_folder import absolute_locations, keep_settings
from nasplat.tracking import schema
from nasplat.tracking.logger import RunLogger
from nasplat.tracking.runs import find_trial_run, open_parent_run, open_store_early, open_trial_run
from nasplat.tracking.uri import mask_credentials
from nasplat.training.config import ExperimentConfig
from nasplat.training.storage import run_location

QUIET_TUNE = {"RAY_AIR_NEW_OUTPUT": "0"}
"""Tune's classic output, silent at ``verbose=0`` (the new one prints a configuration box and a TensorBoard hint at
any verbosity): the terminal shows nasplat's own lines (:mod:`nasplat.runtime.progress`) and MLflow holds the rest."""

PLAN_KEY = "_nasplat_plan"
PARENT_KEY = "_nasplat_parent_run"
KIND_KEY = "_nasplat_kind"
TRIAL_TAGS_KEY = "_nasplat_trial_tags"
OVERRIDES_KEY = "_nasplat_resume_overrides"


class ExperimentInterrupted(RuntimeError):
    """The experiment stopped before its trials finished (Ctrl+C); ``--resume NAME`` continues it."""


class AllTrialsFailed(RuntimeError):
    """No trial of the experiment finished."""


def log(message: str) -> None:
    print(f"[nasplat] {message}", flush=True)


def resolve_paths(config: ExperimentConfig, default_name: str, **changes: Any) -> Any:
    """Absolute data, storage and tracking locations, a run name (``<default_name>-<time>``), and ``changes``."""
    values = config.to_dict()
    locations = absolute_locations({key: values[key] for key in ("dataset", "data_root", "storage", "tracking_uri")})
    return config.replace(**locations, name=config.name or f"{default_name}-{time.strftime('%Y%m%d-%H%M%S')}",
                          **changes)


@dataclasses.dataclass
class Experiment:
    """What one search or retrain asks of the skeleton."""

    config: ExperimentConfig
    kind: str
    """schema.SEARCH or schema.RETRAIN"""
    trainable: Callable[[dict[str, Any]], None]
    progress: TrialProgress
    parent_tags: Mapping[str, str] = dataclasses.field(default_factory=dict)
    trial_tags: Mapping[str, str] = dataclasses.field(default_factory=dict)
    param_space: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    """Entries added to (or replacing) the config's in Tune's param space: sampled values, worker extras."""
    search_alg: Any = None
    scheduler: Any = None
    num_samples: int = 1
    reserve_cpus: float = 0.0
    argv: list[str] | None = None


@dataclasses.dataclass
class ExperimentRun:
    """A finished Tune experiment: its results, parent run and run folder."""

    config: Any
    results: tune.ResultGrid
    parent_run_id: str
    run_dir: str

    def errors(self) -> list[BaseException]:
        return [r.error for r in self.results if r.error is not None]

    def best_or_fail(self, key: str) -> tune.Result:
        """The finished trial with the highest reported ``key``. When no trial finished, the experiment has failed:
        the parent run is marked FAILED with the reason, and AllTrialsFailed is raised."""
        finished = [r for r in self.results if r.error is None and r.metrics and key in r.metrics]
        if not finished:
            errors = self.errors()
            reason = f"every trial failed; first error: {errors[0] if errors else 'no result reported'}"
            parent = RunLogger(self.config.tracking_uri, self.parent_run_id)
            parent.set_tags({schema.FAILURE_REASON_TAG: reason[:5000]})
            parent.finish("FAILED")
            raise AllTrialsFailed(reason)
        return max(finished, key=lambda r: r.metrics[key])

    def trial_run_id(self, result: tune.Result) -> str:
        """The MLflow run of the trial behind ``result``."""
        run_id = find_trial_run(self.config.tracking_uri, self.parent_run_id, result.metrics["trial_id"])
        if run_id is None:
            raise RuntimeError(f"no MLflow run found for trial {result.metrics['trial_id']}")
        return run_id


def run_experiment(experiment: Experiment, on_parent_run: Callable[[str], None] | None = None) -> ExperimentRun:
    """Run ``experiment`` to its end (or resume it); raises ExperimentInterrupted when it stopped early."""
    config = experiment.config
    run_dir = run_location(config.storage, config.name)
    overrides = keep_settings(config, run_dir)
    log(f"MLflow tracking store: {mask_credentials(config.tracking_uri)}")
    log(f"run directory (checkpoints): {run_dir}")
    os.environ.update(QUIET_TUNE)
    store = open_store_early(config.tracking_uri)  # a new store's tables are made while Ray starts
    started_ray = start_ray(config.address, config.trials)
    try:
        plan = plan_resources(ray.cluster_resources(), config.workers, config.trials, config.cpus_per_worker,
                              config.gpus_per_worker, reserve_cpus=experiment.reserve_cpus)
        check_worker_share(plan)
        log(f"resources: {plan.describe()}")
        if store is not None:
            store.join()
        parent_run_id = open_parent_run(config.tracking_uri, config.experiment, config.name, experiment.kind,
                                        first_values(config, overrides), tags=experiment.parent_tags,
                                        argv=experiment.argv)
        if overrides:
            RunLogger(config.tracking_uri, parent_run_id).set_tags(overrides_tag(overrides))
        if on_parent_run is not None:
            on_parent_run(parent_run_id)
        param_space = {**config.to_dict(), **experiment.param_space, PLAN_KEY: {"per_worker": plan.per_worker},
                       PARENT_KEY: parent_run_id, KIND_KEY: experiment.kind,
                       TRIAL_TAGS_KEY: dict(experiment.trial_tags)}
        results = _tuner(experiment, param_space, plan.driver, plan.max_concurrent_trials, run_dir, overrides).fit()
    finally:
        if started_ray:
            ray.shutdown()
    if len(experiment.progress.ended()) < len(results):
        raise ExperimentInterrupted(
            f"the {experiment.kind} stopped before all trials finished; its state is saved in {run_dir}. "
            f"Continue it with: nasplat {experiment.kind} --resume {config.name}"
        )
    return ExperimentRun(config, results, parent_run_id, run_dir)


def _tuner(experiment: Experiment, param_space: dict[str, Any], driver: dict[str, float], concurrent: int,
           run_dir: str, overrides: dict[str, Any]) -> tune.Tuner:
    """A new Tuner, or the stored one of the same run name (resume), whose trials get ``overrides`` on top of the
    configs Tune stored for them."""
    config = experiment.config
    trainable = tune.with_resources(_with_overrides(experiment.trainable, overrides), driver)
    if tune.Tuner.can_restore(run_dir):
        log(f"resuming the {experiment.kind} stored in {run_dir}")
        return tune.Tuner.restore(run_dir, trainable=trainable, resume_errored=True)
    if config.resume:
        log(f"nothing of run {config.name} was stored by Tune yet: it starts from the beginning")
    return tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(
            metric="val_miou", mode="max", num_samples=experiment.num_samples, search_alg=experiment.search_alg,
            scheduler=experiment.scheduler, max_concurrent_trials=concurrent,
        ),
        run_config=tune.RunConfig(name=config.name, storage_path=config.storage, verbose=0,
                                  callbacks=[experiment.progress]),
    )


def first_values(config: ExperimentConfig, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """The params of a run: its settings but those changed on resume, whose first values the run holds already
    (MLflow refuses a param's new value); :func:`overrides_tag` records the changes."""
    return {key: value for key, value in config.settings().items() if key not in overrides}


def overrides_tag(overrides: Mapping[str, Any]) -> dict[str, str]:
    """The tag that says which settings a resume changed, and to what (credentials masked)."""
    return {schema.RESUME_OVERRIDES_TAG: mask_credentials(json.dumps(dict(overrides), sort_keys=True))}


def _with_overrides(trainable: Callable[[dict[str, Any]], None],
                    overrides: dict[str, Any]) -> Callable[[dict[str, Any]], None]:
    """``trainable`` with ``overrides`` (settings changed on resume) laid over each trial's stored config; the
    trial finds them under ``OVERRIDES_KEY`` too, for its run's params and tags."""
    if not overrides:
        return trainable

    @functools.wraps(trainable)
    def run(trial_config: dict[str, Any]) -> None:
        trainable({**trial_config, **overrides, OVERRIDES_KEY: overrides})

    return run


@dataclasses.dataclass
class TrialStart:
    """One trial's config, MLflow run, per-worker resources and the extra entries of its param space."""

    config: Any
    run_id: str
    trial_id: str
    per_worker: dict[str, float]
    extras: dict[str, Any]


def start_trial(trial_config: Mapping[str, Any], config_type: type[ExperimentConfig],
                extra_keys: tuple[str, ...] = ()) -> TrialStart:
    """Inside a Tune trial: split the param space into config and extras, and open (or find) the trial's run."""
    trial_config = dict(trial_config)
    plan: dict = trial_config.pop(PLAN_KEY)
    parent_run_id: str = trial_config.pop(PARENT_KEY)
    kind: str = trial_config.pop(KIND_KEY)
    tags: dict = trial_config.pop(TRIAL_TAGS_KEY)
    overrides: dict = trial_config.pop(OVERRIDES_KEY, {})
    extras = {key: trial_config.pop(key) for key in extra_keys}
    config = config_type.from_dict(trial_config)
    trial_id = tune.get_context().get_trial_id()
    run_id = open_trial_run(config.tracking_uri, parent_run_id, trial_id, f"{config.name}-{trial_id}",
                            schema.TRIAL_KIND[kind], first_values(config, overrides), tags=tags)
    if overrides:
        RunLogger(config.tracking_uri, run_id).set_tags(overrides_tag(overrides))
    return TrialStart(config, run_id, trial_id, plan["per_worker"], extras)
