"""`nasplat retrain`: train a searched genotype or a baseline as a Ray Tune experiment of Ray Train trials.

The driver resolves the model source (a genotype file, a search's MLflow run, a baseline, or by
default the latest finished search), plans resources up front, opens a parent MLflow run with the
lineage tags, and lets Tune run the trials: one trial with the configured hyperparameters, or with
``trials > 1`` Optuna (TPE) sampling learning rate, weight decay and batch size while ASHA stops weak
trials. At the end the best trial's best model is logged with ``mlflow.pytorch`` (and registered
when asked) and copied next to the run's checkpoints.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from nasplat.training.config import ConfigError
from nasplat.retraining.config import RetrainConfig
from nasplat.retraining.loop import BEST_MODEL_FILE
from nasplat.training.storage import resolve_storage, run_location, write_bytes
from pipelines.config_args import FlagSpec

PLAN_KEY = "_nasplat_plan"
PARENT_KEY = "_nasplat_parent_run"
LINEAGE_KEY = "_nasplat_lineage"
SEARCH_RUN_TAG = "nasplat.source_search_run"
TRIAL_RUN_TAG = "nasplat.source_trial_run"
MODEL_RUN_TAG = "nasplat.model_run"
MODEL_URI_TAG = "nasplat.model_uri"


def _log(message: str) -> None:
    print(f"[nasplat] {message}", flush=True)


@dataclasses.dataclass(frozen=True)
class ModelSource:
    """What the workers build (``source``: {"genotype": dict} or {"baseline": name}, plus "options")
    and the lineage tags that link the retrain to the search that produced the genotype."""

    source: dict
    lineage: dict
    label: str


@dataclasses.dataclass
class RetrainOutcome:
    val_miou: float
    best_epoch: int
    checkpoint: str
    """Local path or storage URI of ``best_model.pt``."""
    model_label: str
    parent_run_id: str
    best_run_id: str
    tracking_uri: str
    model_uri: str
    registered_version: str | None = None


class RetrainInterrupted(RuntimeError):
    """The retrain stopped before its trials finished (Ctrl+C); re-running it resumes."""


def resolve_paths(config: RetrainConfig) -> RetrainConfig:
    """Absolute storage, tracking URI, genotype file and data paths (Ray workers run elsewhere); a run name."""
    from nasplat.tracking.logger import resolve_tracking_uri

    dataset = config.dataset
    if dataset.startswith("parquet:"):
        dataset = "parquet:" + str(Path(dataset.split(":", 1)[1]).expanduser().resolve())
    label = config.baseline or ("genotype" if config.genotype else "search")
    return config.replace(
        dataset=dataset,
        genotype=str(Path(config.genotype).expanduser().resolve()) if config.genotype else None,
        data_root=str(Path(config.data_root).expanduser().resolve()) if config.data_root else None,
        storage=resolve_storage(config.storage),
        tracking_uri=resolve_tracking_uri(config.tracking_uri),
        name=config.name or f"retrain-{label}-{time.strftime('%Y%m%d-%H%M%S')}",
    )


def _genotype_dict_from_file(path: str | Path) -> dict:
    from nasplat.spaces.genotype import GenotypeError
    from nasplat.spaces.registry import load_genotype

    try:
        return load_genotype(path).to_dict()
    except GenotypeError as err:
        if err.field == "<file>" and err.problem == "no such file":
            raise FileNotFoundError(f"genotype file not found: {path}") from None
        raise ConfigError(str(err)) from None


def latest_search_run(tracking_uri: str, experiment: str) -> str | None:
    """The id of the most recently started finished search (parent run) in ``experiment``."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return None
    runs = client.search_runs(
        [found.experiment_id], filter_string="tags.`nasplat.kind` = 'search' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"], max_results=1,
    )
    return runs[0].info.run_id if runs else None


def genotype_from_run(tracking_uri: str, run_id: str) -> tuple[dict, dict[str, str]]:
    """The genotype a search run holds, and lineage tags: a search parent run or one of its trial runs."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from nasplat.tracking.logger import PARENT_TAG

    client = MlflowClient(tracking_uri=tracking_uri)
    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise ConfigError(f"config field 'from_run': no MLflow run {run_id!r} in {tracking_uri}") from None
    tags = run.data.tags
    kind = tags.get("nasplat.kind")
    if kind == "search":
        lineage = {SEARCH_RUN_TAG: run_id, TRIAL_RUN_TAG: tags.get("nasplat.best_trial_run", "")}
    elif kind == "search-trial":
        lineage = {SEARCH_RUN_TAG: tags.get(PARENT_TAG, ""), TRIAL_RUN_TAG: run_id}
    else:
        raise ConfigError(f"config field 'from_run': run {run_id} is a {kind or 'non-nasplat'} run, "
                          "not a search (parent) run or a search trial run")
    with tempfile.TemporaryDirectory(prefix="nasplat-genotype-") as tmp:
        try:
            path = client.download_artifacts(run_id, "genotype.json", tmp)
        except (MlflowException, OSError):
            raise ConfigError(f"config field 'from_run': run {run_id} has no genotype.json artifact "
                              "(an unfinished search?)") from None
        genotype = _genotype_dict_from_file(path)
    return genotype, {k: v for k, v in lineage.items() if v}


def resolve_source(config: RetrainConfig) -> ModelSource:
    """Turn the config's model source into what workers build, with lineage tags."""
    from nasplat.spaces.registry import genotype_from_dict
    from nasplat.models import available_models

    options = dict(config.model_options)
    if config.baseline:
        if config.baseline not in available_models():
            raise ConfigError(f"config field 'baseline': unknown model {config.baseline!r}; "
                              f"registered models: {', '.join(available_models())}")
        return ModelSource({"baseline": config.baseline, "options": options}, {}, config.baseline)
    lineage: dict[str, str] = {}
    if config.genotype:
        genotype = _genotype_dict_from_file(config.genotype)
        lineage["nasplat.source_genotype_file"] = config.genotype
    else:
        run_id = config.from_run or latest_search_run(config.tracking_uri, config.search_experiment)
        if run_id is None:
            raise ConfigError(
                "no model source: give --genotype FILE, --from-run RUN_ID or --baseline NAME (no finished search "
                f"found in MLflow experiment {config.search_experiment!r} at {config.tracking_uri})"
            )
        if not config.from_run:
            _log(f"no model source given: using the latest finished search, run {run_id}")
        genotype, lineage = genotype_from_run(config.tracking_uri, run_id)
    parsed = genotype_from_dict(genotype)
    lineage["genotype_hash"] = parsed.short_hash()
    return ModelSource({"genotype": genotype, "options": options}, lineage, f"{parsed.space}:{parsed.short_hash()}")


def retrain_trial(trial_config: dict[str, Any]) -> None:
    """Tune trainable: one child MLflow run and one ``TorchTrainer`` fit."""
    from ray import tune

    from nasplat.runtime.retrain_worker import RUN_ID_KEY, SOURCE_KEY, TRACKING_KEY, retrain_worker
    from nasplat.runtime.trial_trainer import fit_trial
    from nasplat.tracking.logger import open_trial_run

    trial_config = dict(trial_config)
    plan: dict = trial_config.pop(PLAN_KEY)
    parent_run_id: str = trial_config.pop(PARENT_KEY)
    lineage: dict = trial_config.pop(LINEAGE_KEY)
    source: dict = trial_config.pop(SOURCE_KEY)
    config = RetrainConfig.from_dict(trial_config)
    trial_id = tune.get_context().get_trial_id()
    run_id = open_trial_run(config.tracking_uri, parent_run_id, trial_id, f"{config.name}-{trial_id}", "retrain-trial",
                            config.to_dict(), tags=lineage)
    fit_trial(retrain_worker, {**config.to_dict(), RUN_ID_KEY: run_id, TRACKING_KEY: config.tracking_uri,
                                SOURCE_KEY: source}, config, plan["per_worker"], trial_id, run_id)


def _open_parent_run(config: RetrainConfig, argv: list[str] | None, source: ModelSource) -> str:
    from nasplat.tracking.logger import RunLogger, open_parent_run

    run_id = open_parent_run(config.tracking_uri, config.experiment, config.name, "retrain", config.to_dict(),
                             tags={**source.lineage, "nasplat.model": source.label}, argv=argv)
    if "genotype" in source.source:
        RunLogger(config.tracking_uri, run_id).log_json(source.source["genotype"], "genotype.json")
    return run_id


def run_retrain(config: RetrainConfig, argv: list[str] | None = None) -> RetrainOutcome:
    """Run a complete retrain and return the best model's figures, file and runs."""
    import ray

    from nasplat.runtime.resources import plan_resources
    from nasplat.runtime.retrain_worker import RetrainProgress
    from nasplat.runtime.ray_session import start_ray

    config = resolve_paths(config)
    source = resolve_source(config)
    run_dir = run_location(config.storage, config.name)
    _log(f"MLflow tracking store: {config.tracking_uri}")
    _log(f"run directory (checkpoints): {run_dir}")
    _log(f"model: {source.label}" + (f" (search run {source.lineage[SEARCH_RUN_TAG]})" if SEARCH_RUN_TAG in source.lineage else ""))
    started_ray = start_ray(config.address, config.trials)
    try:
        plan = plan_resources(ray.cluster_resources(), config.workers, config.trials, config.cpus_per_worker,
                              config.gpus_per_worker)
        _log(f"resources: {plan.describe()}")
        parent_run_id = _open_parent_run(config, argv, source)
        progress = RetrainProgress(config.epochs, config.name)
        results = _fit(config, plan, parent_run_id, source, progress)
    finally:
        if started_ray:
            ray.shutdown()
    if len(progress.ended()) < len(results):
        raise RetrainInterrupted(
            f"the retrain stopped before all trials finished; its state is saved in {run_dir}. "
            f"Run the same command with --name {config.name} to resume it."
        )
    return _finish(config, results, parent_run_id, source, run_dir)


def _fit(config: RetrainConfig, plan, parent_run_id: str, source: ModelSource, progress):
    from ray import tune

    from nasplat.runtime.retrain_worker import SOURCE_KEY

    trial_space: dict[str, Any] = {
        **config.to_dict(), PLAN_KEY: {"per_worker": plan.per_worker}, PARENT_KEY: parent_run_id,
        LINEAGE_KEY: source.lineage, SOURCE_KEY: source.source,
    }
    search_alg = scheduler = None
    if config.trials > 1:
        import optuna
        from ray.tune.search.optuna import OptunaSearch

        trial_space.update(lr=tune.loguniform(*config.lr_range),
                           weight_decay=tune.loguniform(*config.weight_decay_range),
                           batch_size=tune.choice(list(config.batch_sizes)))
        search_alg = OptunaSearch(sampler=optuna.samplers.TPESampler(seed=config.seed))
        scheduler = tune.schedulers.ASHAScheduler(time_attr="training_iteration", max_t=config.epochs,
                                                  grace_period=max(1, config.epochs // 4))
    run_path = run_location(config.storage, config.name)
    trainable = tune.with_resources(retrain_trial, plan.driver)
    if tune.Tuner.can_restore(run_path):
        _log(f"resuming the retrain stored in {run_path}")
        tuner = tune.Tuner.restore(run_path, trainable=trainable, resume_errored=True)
    else:
        tuner = tune.Tuner(
            trainable, param_space=trial_space,
            tune_config=tune.TuneConfig(metric="val_miou", mode="max", num_samples=config.trials,
                                        search_alg=search_alg, scheduler=scheduler,
                                        max_concurrent_trials=plan.max_concurrent_trials),
            run_config=tune.RunConfig(name=config.name, storage_path=config.storage, verbose=0, callbacks=[progress]),
        )
    return tuner.fit()


def _finish(config: RetrainConfig, results, parent_run_id: str, source: ModelSource, run_dir: str) -> RetrainOutcome:
    """Pick the best trial, fetch its best model file, log it as an MLflow model, tag the parent."""
    from mlflow.tracking import MlflowClient

    from nasplat.runtime.retrain_worker import BEST_ARTIFACT
    from nasplat.tracking.logger import PARENT_TAG, RunLogger, find_run

    errors = [r.error for r in results if r.error is not None]
    finished = [r for r in results if r.metrics and "best_val_miou" in r.metrics]
    if not finished:
        raise RuntimeError(f"every trial failed; first error: {errors[0] if errors else 'no result reported'}")
    best = max(finished, key=lambda r: r.metrics["best_val_miou"])
    client = MlflowClient(tracking_uri=config.tracking_uri)
    experiment_id = client.get_run(parent_run_id).info.experiment_id
    best_run_id = find_run(client, experiment_id, {PARENT_TAG: parent_run_id, "nasplat.trial_id": best.metrics["trial_id"]})
    if best_run_id is None:
        raise RuntimeError(f"no MLflow run found for the best trial {best.metrics['trial_id']}")
    checkpoint = f"{run_dir}/{BEST_MODEL_FILE}"
    with tempfile.TemporaryDirectory(prefix="nasplat-best-") as tmp:
        downloaded = Path(client.download_artifacts(best_run_id, BEST_ARTIFACT, tmp))
        write_bytes(checkpoint, downloaded.read_bytes())
        model_uri, version = log_best_model(config, downloaded, best_run_id, source)
    parent = RunLogger(config.tracking_uri, parent_run_id)
    parent.log_metrics({"best_val_miou": best.metrics["best_val_miou"]}, step=int(best.metrics["best_epoch"]))
    tags = {MODEL_RUN_TAG: best_run_id, "nasplat.best_trial_run": best_run_id, MODEL_URI_TAG: model_uri}
    if version is not None:
        tags["nasplat.registered_model"] = f"{config.register_model}/{version}"
    parent.set_tags(tags)
    parent.finish("FINISHED" if not errors else "FAILED")
    return RetrainOutcome(float(best.metrics["best_val_miou"]), int(best.metrics["best_epoch"]), checkpoint,
                          source.label, parent_run_id, best_run_id, config.tracking_uri, model_uri, version)


def log_best_model(config: RetrainConfig, checkpoint: Path, run_id: str, source: ModelSource) -> tuple[str, str | None]:
    """``mlflow.pytorch.log_model`` of the checkpoint's network in ``run_id`` (name "model", input
    example and signature at the training crop, genotype.json inside the model folder), registered
    under ``config.register_model`` when set; returns the model URI and the registered version (or None)."""
    import mlflow
    import mlflow.pytorch
    import torch
    from mlflow.models import infer_signature

    from nasplat.retraining.loop import load_model_checkpoint
    from nasplat.tracking.logger import RunLogger

    model, _ = load_model_checkpoint(checkpoint)  # batch 2 below: keeps the exported batch dimension dynamic
    example = torch.randn(2, 3, config.image_size, config.image_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        output = model(example)
    signature = infer_signature(example.numpy(), output.numpy())
    mlflow.set_tracking_uri(config.tracking_uri)
    with tempfile.TemporaryDirectory(prefix="nasplat-model-") as tmp:
        extra_files = None
        if "genotype" in source.source:
            genotype_path = Path(tmp) / "genotype.json"
            genotype_path.write_text(json.dumps(source.source["genotype"], indent=2) + "\n")
            extra_files = [str(genotype_path)]
            RunLogger(config.tracking_uri, run_id).log_json(source.source["genotype"], "genotype.json")
        with mlflow.start_run(run_id=run_id):
            info = mlflow.pytorch.log_model(
                model, name="model", input_example=example.numpy(), signature=signature,
                registered_model_name=config.register_model, extra_files=extra_files,
                pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
            )
    version = getattr(info, "registered_model_version", None)
    return info.model_uri, (str(version) if version is not None else None)


def print_outcome(outcome: RetrainOutcome) -> None:
    from nasplat.tracking.logger import ui_command

    _log("retrain finished")
    _log(f"model {outcome.model_label}: best val mIoU {outcome.val_miou:.4f} at epoch {outcome.best_epoch}")
    _log(f"best checkpoint: {outcome.checkpoint}  (nasplat evaluate --checkpoint {outcome.checkpoint})")
    _log(f"MLflow parent run: {outcome.parent_run_id} (best trial run, holding the logged model: {outcome.best_run_id})")
    _log(f"MLflow model: {outcome.model_uri}")
    if outcome.registered_version is not None:
        _log(f"registered model version: {outcome.registered_version}")
    _log(f"open the MLflow UI: {ui_command(outcome.tracking_uri)}")


RETRAIN_FLAGS = FlagSpec(
    RetrainConfig,
    mapping_flags={"model_options": "--model-option"},
    list_flags={"eval_scales": (float, "+"), "lr_range": (float, 2), "weight_decay_range": (float, 2),
                "batch_sizes": (int, "+")},
    nullable_types={"cpus_per_worker": float},
)


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "retrain", help="retrain a searched genotype or a baseline (Ray Train + Tune/Optuna, tracked in MLflow)",
        description="Train a network from a genotype file, a search's MLflow run (--from-run), or a baseline "
        "(--baseline); with no source, the latest finished search. Trials run as a Ray Tune experiment; with "
        "--trials > 1 Optuna samples lr, weight decay and batch size and ASHA stops weak trials. Command-line flags "
        "win over --config.",
    )
    RETRAIN_FLAGS.add_arguments(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    config = RETRAIN_FLAGS.config_from_args(args)
    try:
        print_outcome(run_retrain(config, argv=["nasplat", *sys.argv[1:]]))
    except RetrainInterrupted as err:
        print(f"nasplat: {err}", file=sys.stderr, flush=True)
        return 130
    return 0
