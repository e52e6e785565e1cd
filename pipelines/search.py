"""`nasplat search`: a Ray Tune experiment whose trials each run a Ray Train supernet search.

The driver resolves paths (absolute: Ray workers run in other directories), starts or joins Ray,
plans resources up front, opens a parent MLflow run, and lets Tune run the trials. Each trial
opens a child run and drives a ``TorchTrainer`` of ``config.workers`` DDP workers over gloo
(or NCCL with GPUs).
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import ray
from ray import tune
from mlflow.tracking import MlflowClient

import nasplat
from nasplat.searching.config import SearchConfig
from nasplat.spaces.registry import genotype_from_dict
from nasplat.runtime.resources import ResourcePlan, plan_resources
from nasplat.data.shards import verify_shards
from nasplat.runtime.ray_data import RESERVED_CPUS, search_datasets, uses_ray_data
from nasplat.searching.loop import early_stop_config
from nasplat.runtime.progress import TrialProgress
from nasplat.runtime.ray_session import start_ray
from nasplat.runtime.trial_trainer import fit_trial
from nasplat.runtime.search_worker import RUN_ID_KEY, TRACKING_KEY, search_worker
from nasplat.training.storage import resolve_storage, run_location, write_bytes
from nasplat.spaces.registry import get_space, import_space_source, resolve_space_spec
from nasplat.tracking.logger import RunLogger, find_run, open_parent_run, open_trial_run, resolve_tracking_uri, ui_command

PLAN_KEY = "_nasplat_plan"
PARENT_KEY = "_nasplat_parent_run"
WORKER_NODE_TAG = "nasplat.worker_node"
"""Child-run tag prefix: ``nasplat.worker_node.<rank>`` = the Ray node id that worker ran on."""


@dataclasses.dataclass
class SearchOutcome:
    genotype: nasplat.Genotype
    val_miou: float
    parent_run_id: str
    best_run_id: str
    tracking_uri: str
    run_dir: str


def _log(message: str) -> None:
    print(f"[nasplat] {message}", flush=True)


def resolve_paths(config: SearchConfig) -> SearchConfig:
    """Make storage (unless a URI), tracking URI and a user space file absolute, and give the run a name.

    Without ``tracking_uri`` the store is ``MLFLOW_TRACKING_URI`` (as set on cluster nodes), else the local default.
    """
    name, source = resolve_space_spec(config.space)
    space = f"{source}:{name}" if source else name
    dataset = config.dataset
    if dataset.startswith("parquet:"):
        dataset = "parquet:" + str(Path(dataset.split(":", 1)[1]).expanduser().resolve())
    return config.replace(
        dataset=dataset,
        data_root=str(Path(config.data_root).expanduser().resolve()) if config.data_root else None,
        storage=resolve_storage(config.storage),
        tracking_uri=resolve_tracking_uri(config.tracking_uri),
        name=config.name or f"search-{name}-{time.strftime('%Y%m%d-%H%M%S')}",
        space=space,
    )


def search_trial(trial_config: dict[str, Any]) -> None:
    """Tune trainable: one child MLflow run and one ``TorchTrainer`` fit."""
    trial_config = dict(trial_config)
    plan: dict = trial_config.pop(PLAN_KEY)
    parent_run_id: str = trial_config.pop(PARENT_KEY)
    config = SearchConfig.from_dict(trial_config)
    trial_id = tune.get_context().get_trial_id()
    run_id = open_trial_run(config.tracking_uri, parent_run_id, trial_id, f"{config.name}-{trial_id}", "search-trial",
                            config.to_dict())
    fit_trial(
        placed_search_worker, {**config.to_dict(), RUN_ID_KEY: run_id, TRACKING_KEY: config.tracking_uri},
        config, plan["per_worker"], trial_id, run_id,
        datasets=search_datasets(config) if uses_ray_data(config) else None,
    )


def placed_search_worker(loop_config: dict[str, Any]) -> None:
    """``search_worker``, after tagging the child run with the node this worker runs on.

    Each worker sets ``nasplat.worker_node.<world rank>`` to its Ray node id, so the run shows how
    the placement strategy spread the trial over the cluster.
    """
    from ray import train

    rank = train.get_context().get_world_rank()
    node_id = ray.get_runtime_context().get_node_id()
    RunLogger(loop_config[TRACKING_KEY], loop_config[RUN_ID_KEY]).set_tags({f"{WORKER_NODE_TAG}.{rank}": node_id})
    search_worker(loop_config)


class SearchInterrupted(RuntimeError):
    """The search stopped before its trials finished (Ctrl+C); re-running it resumes."""


class ProgressCallback(TrialProgress):
    """One line per epoch of a search trial, and a line when RobustDARTS stops it."""

    def epoch_line(self, result: dict[str, Any]) -> str:
        nan = float("nan")
        return (
            f"train_loss {result.get('train_loss', nan):.4f} | val_loss {result.get('val_loss', nan):.4f} | "
            f"val_mIoU {result.get('val_miou', nan):.4f} | arch_entropy {result.get('arch_entropy', nan):.4f} | "
            f"{result.get('epoch_time_s', nan):.1f}s | genotype {result.get('genotype_hash', '?')}"
            + (f" | hessian_eig {result['hessian_eigenvalue']:.4g}" if "hessian_eigenvalue" in result else "")
        )

    def extra_lines(self, trial_id: str, result: dict[str, Any]) -> list[str]:
        if "early_stop_chosen_epoch" not in result:
            return []
        return [f"trial {trial_id}: RobustDARTS triggered at epoch {int(result['early_stop_epoch'])}, architecture "
                f"of epoch {int(result['early_stop_chosen_epoch'])} chosen (reason in MLflow tag early_stop.reason)"]


def run_search(config: SearchConfig, argv: list[str] | None = None) -> SearchOutcome:
    """Run a complete search and return the best trial's genotype."""
    config = resolve_paths(config)
    name, source = resolve_space_spec(config.space)
    if source is not None:
        import_space_source(source)
    get_space(config.space)
    early_stop_config(config)  # fail before Ray starts if the rule's options are wrong
    if uses_ray_data(config):
        verify_shards(config.dataset.split(":", 1)[1])  # once, here; the readers trust the manifest
    run_dir = run_location(config.storage, config.name)
    _log(f"MLflow tracking store: {config.tracking_uri}")
    _log(f"run directory (checkpoints): {run_dir}")
    started_ray = start_ray(config.address, config.trials)
    try:
        plan = plan_resources(
            ray.cluster_resources(), config.workers, config.trials, config.cpus_per_worker, config.gpus_per_worker,
            reserve_cpus=RESERVED_CPUS if uses_ray_data(config) else 0.0,
        )
        _log(f"resources: {plan.describe()}")
        parent_run_id = open_parent_run(config.tracking_uri, config.experiment, config.name, "search", config.to_dict(),
                                        tags={"nasplat.space": config.space}, argv=argv)
        progress = ProgressCallback(config.epochs, config.name)
        results = _fit(config, plan, parent_run_id, progress)
    finally:
        if started_ray:
            ray.shutdown()
    if len(progress.ended()) < len(results):
        raise SearchInterrupted(
            f"the search stopped before all trials finished; its state is saved in {run_dir}. "
            f"Run the same command with --name {config.name} to resume it."
        )
    return _summarise(config, results, parent_run_id, run_dir)


def _fit(config: SearchConfig, plan: ResourcePlan, parent_run_id: str, progress: ProgressCallback) -> tune.ResultGrid:
    trial_space: dict[str, Any] = {
        **config.to_dict(),
        PLAN_KEY: {"per_worker": plan.per_worker},
        PARENT_KEY: parent_run_id,
    }
    if config.trials > 1:
        trial_space["seed"] = tune.grid_search([config.seed + i for i in range(config.trials)])
    scheduler = (
        tune.schedulers.ASHAScheduler(time_attr="training_iteration", max_t=config.epochs * (10 if config.early_stop_mode == "ada" else 1), grace_period=max(1, config.epochs // 4))
        if config.trials > 1 else None
    )
    run_path = run_location(config.storage, config.name)
    trainable = tune.with_resources(search_trial, plan.driver)
    if tune.Tuner.can_restore(run_path):
        _log(f"resuming the search stored in {run_path}")
        tuner = tune.Tuner.restore(run_path, trainable=trainable, resume_errored=True)
    else:
        tuner = tune.Tuner(
            trainable,
            param_space=trial_space,
            tune_config=tune.TuneConfig(
                metric="val_miou", mode="max", num_samples=1, scheduler=scheduler,
                max_concurrent_trials=plan.max_concurrent_trials,
            ),
            run_config=tune.RunConfig(
                name=config.name, storage_path=config.storage, verbose=0,
                callbacks=[progress],
            ),
        )
    return tuner.fit()


def _summarise(config: SearchConfig, results: tune.ResultGrid, parent_run_id: str, run_dir: str) -> SearchOutcome:
    errors = [r.error for r in results if r.error is not None]
    finished = [r for r in results if r.error is None and r.metrics and "genotype" in r.metrics]
    if not finished:
        raise RuntimeError(f"every trial failed; first error: {errors[0] if errors else 'no result reported'}")
    best = max(finished, key=lambda r: r.metrics["val_miou"])
    genotype = genotype_from_dict(json.loads(best.metrics["genotype"]))
    client = MlflowClient(tracking_uri=config.tracking_uri)
    experiment_id = client.get_run(parent_run_id).info.experiment_id
    best_run_id = find_run(client, experiment_id, {"nasplat.trial_id": best.metrics["trial_id"]}) or ""
    parent = RunLogger(config.tracking_uri, parent_run_id)
    parent.log_metrics({"best_val_miou": best.metrics["val_miou"]}, step=int(best.metrics["epoch"]))
    parent.log_json(genotype.to_dict(), "genotype.json")
    parent.set_tags({"nasplat.best_trial_run": best_run_id, "genotype_hash": genotype.short_hash()})
    parent.finish("FINISHED" if not errors else "FAILED")
    write_bytes(f"{run_dir}/genotype.json", (genotype.to_json() + "\n").encode())
    return SearchOutcome(genotype, float(best.metrics["val_miou"]), parent_run_id, best_run_id, config.tracking_uri, run_dir)


def format_genotype(genotype: nasplat.Genotype) -> str:
    """JSON with one line per field, so cells read as lists of (op, input) pairs."""
    lines = [f"  {json.dumps(key)}: {json.dumps(value)}" for key, value in genotype.to_dict().items()]
    return "{\n" + ",\n".join(lines) + "\n}"


def print_outcome(outcome: SearchOutcome) -> None:
    _log("search finished")
    print(format_genotype(outcome.genotype))
    _log(f"supernet val mIoU (best trial, last epoch): {outcome.val_miou:.4f}")
    _log(f"genotype written to {outcome.run_dir}/genotype.json")
    _log(f"MLflow parent run: {outcome.parent_run_id} (best trial run: {outcome.best_run_id})")
    _log(f"open the MLflow UI: {ui_command(outcome.tracking_uri)}")
