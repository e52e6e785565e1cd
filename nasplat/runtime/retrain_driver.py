"""A retrain on the experiment skeleton: Tune trials of Ray Train trainings of one network.

Only what is the retrain's own lives here: resolving the model source (genotype file, a search's run,
a baseline, or the latest finished search) with its lineage, the Optuna space and ASHA when
``trials > 1``, and logging the best trial's model to MLflow.
"""
from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import Any

import optuna
from ray import tune
from ray.tune.search.optuna import OptunaSearch

from nasplat.models import available_models, model_factory
from nasplat.models.pretrained import PretrainedWeightsUnavailable, resolve_initial_weights
from nasplat.retraining.config import RetrainConfig
from nasplat.retraining.model_file import BEST_MODEL_FILE
from nasplat.retraining.summary import COST_KEYS, checkpoint_summary, latency_input
from nasplat.runtime import preflight
from nasplat.runtime.driver import Experiment, log, resolve_paths, run_experiment, start_trial
from nasplat.runtime.progress import TrialProgress
from nasplat.runtime.retrain_worker import SOURCE_KEY, retrain_worker
from nasplat.runtime.trial_trainer import fit_trial
from nasplat.spaces.registry import genotype_from_dict, registered_space
from nasplat.tracking import schema
from nasplat.tracking.logger import RunLogger
from nasplat.tracking.models import log_best_model
from nasplat.tracking.queries import download_best_model, genotype_file_dict, genotype_from_run, latest_search_run
from nasplat.training.config import ConfigError
from nasplat.training.result import ExperimentResult
from nasplat.training.storage import write_bytes


@dataclasses.dataclass(frozen=True)
class ModelSource:
    """What the workers build (``source``: {"genotype": dict} or {"baseline": name}, plus "options")
    and the lineage tags that link the retrain to the search that produced the genotype."""

    source: dict
    lineage: dict
    label: str


class RetrainProgress(TrialProgress):
    """One line per epoch of a retrain trial."""

    columns = (("train_loss", "train_loss {:.4f}"), ("val_loss", "val_loss {:.4f}"), ("val_miou", "val_mIoU {:.4f}"),
               ("best_val_miou", "best {:.4f}"), ("lr", "lr {:.3g}"), ("epoch_time_s", "{:.1f}s"),
               ("samples_per_s", "{:.1f} samples/s"))


def prepare_retrain(config: RetrainConfig) -> RetrainConfig:
    """Absolute paths (the genotype file too) and a run name; the data, the Ray and MLflow addresses and the local
    plan checked before Ray starts."""
    label = config.baseline or ("genotype" if config.genotype else "search")
    genotype = str(Path(config.genotype).expanduser().resolve()) if config.genotype else None
    config = resolve_paths(config, f"retrain-{label}", genotype=genotype)
    largest = max([config.batch_size, *config.batch_sizes]) if config.trials > 1 else config.batch_size
    preflight.check_dataset(config.replace(batch_size=largest), lambda data: len(data.train_a) + len(data.train_b))
    preflight.check_ray_address(config.address)
    preflight.check_tracking_uri(config.tracking_uri)
    preflight.local_plan(config)
    return config


def resolve_source(config: RetrainConfig) -> ModelSource:
    """Turn the config's model source into what workers build, with lineage tags."""
    options = dict(config.model_options)
    if config.baseline:
        if config.baseline not in available_models():
            raise ConfigError(f"config field 'baseline': unknown model {config.baseline!r}; "
                              f"registered models: {', '.join(available_models())}")
        preflight.check_options("model_options", model_factory(config.baseline), options, config.baseline)
        try:  # a missing weights file or an offline machine stops here, before Ray starts
            options = resolve_initial_weights(options)
        except (ValueError, PretrainedWeightsUnavailable) as err:
            raise ConfigError(f"config field 'model_options': {err}") from None
        return ModelSource({"baseline": config.baseline, "options": options}, {}, config.baseline)
    lineage: dict[str, str] = {}
    if config.genotype:
        genotype = genotype_file_dict(config.genotype)
        lineage[schema.GENOTYPE_FILE_TAG] = config.genotype
    else:
        run_id = config.from_run or latest_search_run(config.tracking_uri, config.search_experiment)
        if run_id is None:
            raise ConfigError(
                "no model source: give --genotype FILE, --from-run RUN_ID or --baseline NAME (no finished search "
                f"found in MLflow experiment {config.search_experiment!r} at {config.tracking_uri})"
            )
        if not config.from_run:
            log(f"no model source given: using the latest finished search, run {run_id}")
        genotype, lineage = genotype_from_run(config.tracking_uri, run_id, config.rank)
    parsed = genotype_from_dict(genotype)
    preflight.check_options("model_options", registered_space(parsed.space).build, options,
                            f"a {parsed.space} genotype's network")
    lineage[schema.GENOTYPE_HASH_TAG] = parsed.short_hash()
    return ModelSource({"genotype": genotype, "options": options}, lineage, f"{parsed.space}:{parsed.short_hash()}")


def retrain_trial(trial_config: dict[str, Any]) -> None:
    """Tune trainable: one child MLflow run and one ``TorchTrainer`` fit."""
    trial = start_trial(trial_config, RetrainConfig, extra_keys=(SOURCE_KEY,))
    fit_trial(retrain_worker, trial, **{SOURCE_KEY: trial.extras[SOURCE_KEY]})


def run_retrain(config: RetrainConfig, argv: list[str] | None = None) -> ExperimentResult:
    """Run a complete retrain (or resume one of the same name) and return the best model's figures and files."""
    config = prepare_retrain(config)
    source = resolve_source(config)
    log(f"model: {source.label}" + (f" (search run {source.lineage[schema.SEARCH_RUN_TAG]})"
                                    if schema.SEARCH_RUN_TAG in source.lineage else ""))
    param_space: dict[str, Any] = {SOURCE_KEY: source.source}
    search_alg = scheduler = None
    if config.trials > 1:
        param_space.update(lr=tune.loguniform(*config.lr_range),
                           weight_decay=tune.loguniform(*config.weight_decay_range),
                           batch_size=tune.choice(list(config.batch_sizes)))
        search_alg = OptunaSearch(sampler=optuna.samplers.TPESampler(seed=config.seed))
        scheduler = tune.schedulers.ASHAScheduler(time_attr="training_iteration", max_t=config.epochs,
                                                  grace_period=max(1, config.epochs // 4))

    def record_genotype(parent_run_id: str) -> None:
        if "genotype" in source.source:
            RunLogger(config.tracking_uri, parent_run_id).log_json(source.source["genotype"], schema.GENOTYPE_ARTIFACT)

    experiment = Experiment(
        config, schema.RETRAIN, retrain_trial, RetrainProgress(config.epochs, config.name),
        parent_tags={**source.lineage, schema.MODEL_TAG: source.label}, trial_tags=source.lineage,
        param_space=param_space, search_alg=search_alg, scheduler=scheduler, num_samples=config.trials, argv=argv,
    )
    run = run_experiment(experiment, on_parent_run=record_genotype)
    best = run.best_or_fail("best_val_miou")
    best_run_id = run.trial_run_id(best)
    checkpoint = f"{run.run_dir}/{BEST_MODEL_FILE}"
    best_epoch = int(best.metrics["best_epoch"])
    with tempfile.TemporaryDirectory(prefix="nasplat-best-") as tmp:
        downloaded = download_best_model(config.tracking_uri, best_run_id, tmp)
        write_bytes(checkpoint, downloaded.read_bytes())
        summary, size = checkpoint_summary(downloaded)  # quality at the best epoch, cost at the training crop
        model_uri, _, version = log_best_model(config.tracking_uri, downloaded, best_run_id, config.image_size,
                                               source.source.get("genotype"), config.register_model,
                                               config.model_alias, summary, best_epoch,
                                               metrics_run_id=run.parent_run_id)
    # the best trial's history holds its quality per epoch already: it gets the cost, the parent gets everything
    RunLogger(config.tracking_uri, best_run_id).log_metrics(
        {key: summary[key] for key in COST_KEYS if key in summary}, step=best_epoch)
    parent = RunLogger(config.tracking_uri, run.parent_run_id)
    parent.log_metrics({"best_val_miou": best.metrics["best_val_miou"]}, step=best_epoch)
    tags = {schema.MODEL_RUN_TAG: best_run_id, schema.BEST_TRIAL_RUN_TAG: best_run_id, schema.MODEL_URI_TAG: model_uri,
            schema.LATENCY_INPUT_TAG: latency_input(size)}
    if version is not None:
        tags[schema.REGISTERED_MODEL_TAG] = f"{config.register_model}/{version}"
    parent.set_tags(tags)
    parent.finish("FAILED" if run.errors() else "FINISHED")
    genotype = genotype_from_dict(source.source["genotype"]) if "genotype" in source.source else source.label
    metrics = {"best_val_miou": float(best.metrics["best_val_miou"]), "best_epoch": int(best.metrics["best_epoch"])}
    return ExperimentResult(genotype, run.parent_run_id, metrics, best_run_id, config.tracking_uri, run.run_dir,
                            checkpoint=checkpoint, model_uri=model_uri, registered_version=version,
                            model_label=source.label, failed_trials=len(run.errors()))
