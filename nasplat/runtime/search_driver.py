"""A search on the experiment skeleton: Tune trials (one per seed) of Ray Train supernet searches.

Only what is the search's own lives here: checking the space and early-stop rule before Ray starts, the
trial's Ray Data inputs, ASHA over seeds, the progress line, and recording the best trial's genotype.
"""
from __future__ import annotations

import json
from typing import Any

from ray import tune

from nasplat.data.shard_reader import verify_shards
from nasplat.runtime import preflight
from nasplat.runtime.driver import Experiment, log, resolve_paths, run_experiment, start_trial
from nasplat.runtime.progress import TrialProgress
from nasplat.runtime.ray_data import RESERVED_CPUS, search_datasets, uses_ray_data
from nasplat.runtime.search_worker import search_worker
from nasplat.runtime.trial_trainer import fit_trial
from nasplat.searching.config import SearchConfig
from nasplat.searching.cost_search import check_cost
from nasplat.searching.loop import early_stop_config, early_stop_conflicts
from nasplat.spaces.registry import genotype_from_dict, get_space, resolve_space_spec
from nasplat.tracking import schema
from nasplat.tracking.logger import RunLogger
from nasplat.training.config import ConfigError
from nasplat.training.result import ExperimentResult
from nasplat.training.storage import write_bytes


def search_trial(trial_config: dict[str, Any]) -> None:
    """Tune trainable: one child MLflow run and one ``TorchTrainer`` fit."""
    trial = start_trial(trial_config, SearchConfig)
    fit_trial(search_worker, trial, datasets=search_datasets(trial.config) if uses_ray_data(trial.config) else None)


class SearchProgress(TrialProgress):
    """One line per epoch of a search trial, and a line when RobustDARTS stops it."""

    columns = (("train_loss", "train_loss {:.4f}"), ("val_loss", "val_loss {:.4f}"), ("val_miou", "val_mIoU {:.4f}"),
               ("arch_entropy", "arch_entropy {:.4f}"), ("epoch_time_s", "{:.1f}s"), ("genotype_hash", "genotype {}"),
               ("hessian_eigenvalue", "hessian_eig {:.4g}"), ("expected_cost", "E[cost] {:.4g}"))

    def extra_lines(self, trial_id: str, result: dict[str, Any]) -> list[str]:
        if "early_stop_chosen_epoch" not in result:
            return []
        return [f"trial {trial_id}: RobustDARTS triggered at epoch {int(result['early_stop_epoch'])}, architecture "
                f"of epoch {int(result['early_stop_chosen_epoch'])} chosen (reason in MLflow tag early_stop.reason)"]


def prepare_search(config: SearchConfig) -> SearchConfig:
    """Resolve paths and check, before Ray starts, everything that can be: the space and its options, the crop,
    the early-stop rule, the data against batch and workers, the Ray and MLflow addresses, the local plan."""
    name, source = resolve_space_spec(config.space)
    config = resolve_paths(config, f"search-{name}", space=f"{source}:{name}" if source else name)
    space = get_space(config.space)
    if not config.resume:  # a resumed run keeps the options it was started with (and its checkpoints hold)
        config = config.with_space_defaults(space.search_defaults).with_resolved_remedies()
    preflight.check_options("space_options", space.supernet, config.space_options, f"search space {name!r}")
    try:
        minimum = space.min_image_size(**config.space_options)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"config field 'space_options': {err}") from None
    preflight.check_crop(config.image_size, minimum, f"search space {name!r} with these options")
    config = check_cost(config, space)
    early_stop_config(config)
    for line in early_stop_conflicts(config):
        print(f"[nasplat] warning: {line}", flush=True)
    preflight.check_dataset(config, lambda data: len(data.train_a))
    if uses_ray_data(config):
        verify_shards(config.dataset.split(":", 1)[1])
    preflight.check_ray_address(config.address)
    preflight.check_tracking_uri(config.tracking_uri)
    preflight.local_plan(config, RESERVED_CPUS if uses_ray_data(config) else 0.0)
    return config


def run_search(config: SearchConfig, argv: list[str] | None = None) -> ExperimentResult:
    """Run a complete search (or resume one of the same name) and return the best trial's genotype."""
    config = prepare_search(config)
    param_space: dict[str, Any] = {}
    scheduler = None
    if config.trials > 1:
        param_space["seed"] = tune.grid_search([config.seed + i for i in range(config.trials)])
        max_t = config.epochs * (10 if config.early_stop_mode == "ada" else 1)
        scheduler = tune.schedulers.ASHAScheduler(time_attr="training_iteration", max_t=max_t,
                                                  grace_period=max(1, config.epochs // 4))
    experiment = Experiment(
        config, schema.SEARCH, search_trial, SearchProgress(config.epochs, config.name),
        parent_tags={schema.SPACE_TAG: config.space}, param_space=param_space, scheduler=scheduler,
        reserve_cpus=RESERVED_CPUS if uses_ray_data(config) else 0.0, argv=argv,
    )
    run = run_experiment(experiment)
    best = run.best_or_fail("genotype")
    genotype = genotype_from_dict(json.loads(best.metrics["genotype"]))
    best_run_id = run.trial_run_id(best)
    parent = RunLogger(config.tracking_uri, run.parent_run_id)
    parent.log_metrics({"best_val_miou": best.metrics["val_miou"]}, step=int(best.metrics["epoch"]))
    parent.log_json(genotype.to_dict(), schema.GENOTYPE_ARTIFACT)
    parent.set_tags({schema.BEST_TRIAL_RUN_TAG: best_run_id, schema.GENOTYPE_HASH_TAG: genotype.short_hash()})
    parent.finish("FAILED" if run.errors() else "FINISHED")
    write_bytes(f"{run.run_dir}/{schema.GENOTYPE_ARTIFACT}", (genotype.to_json() + "\n").encode())
    metrics = {"best_val_miou": float(best.metrics["val_miou"]), "arch_entropy": best.metrics.get("arch_entropy"),
               "epoch": int(best.metrics["epoch"])}
    return ExperimentResult(genotype, run.parent_run_id, metrics, best_run_id, config.tracking_uri, run.run_dir,
                            failed_trials=len(run.errors()))
