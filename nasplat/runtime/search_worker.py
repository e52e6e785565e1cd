"""The Ray Train worker loop of a search: every worker trains its shard; rank 0 records.

Each epoch: train (weights on A, architecture on B), evaluate, decode, then rank 0 writes a
checkpoint and logs metrics and the genotype to MLflow; every rank calls ``ray.train.report``.
"""
from __future__ import annotations

import logging
import tempfile
from typing import Any

import ray.train
import torch

from nasplat.config import SearchConfig
from nasplat.distributed import max_abs_difference
from nasplat.genotype import genotype_from_dict
from nasplat.robust import StopDecision
from nasplat.runtime.ray_data import uses_ray_data, worker_streams
from nasplat.search_loop import SupernetSearch
from nasplat.space import get_space, import_space_source, resolve_space_spec
from nasplat.tracking import RunLogger

RUN_ID_KEY = "mlflow_run_id"
TRACKING_KEY = "tracking_uri"


def _threads_for_worker(cpus: float | None) -> int:
    return max(1, int(cpus or 1))


def search_worker(loop_config: dict[str, Any]) -> None:
    """Entry point of each Ray Train worker (``TorchTrainer(train_loop_per_worker=...)``)."""
    logging.getLogger().setLevel(logging.WARNING)  # Ray Train logs every report at INFO
    loop_config = dict(loop_config)
    run_id = loop_config.pop(RUN_ID_KEY)
    tracking_uri = loop_config.pop(TRACKING_KEY)
    config = SearchConfig.from_dict(loop_config)
    torch.set_num_threads(_threads_for_worker(config.cpus_per_worker))
    _, source = resolve_space_spec(config.space)
    if source is not None:
        import_space_source(source)
    get_space(config.space)

    context = ray.train.get_context()
    is_rank0 = context.get_world_rank() == 0
    device = ray.train.torch.get_device() if config.gpus_per_worker > 0 else torch.device("cpu")
    streams = worker_streams(config.batch_size) if uses_ray_data(config) else None
    search = SupernetSearch(config, device=device, streams=streams)
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            search.restore(directory)
        if is_rank0:
            print(f"[nasplat] resumed from {checkpoint.path} at epoch {search.epoch}", flush=True)
    logger = RunLogger(tracking_uri, run_id) if is_rank0 else None
    if logger is not None:
        logger.log_params({
            "data": search.data.description, "data_reader": "ray_data" if search.streams else "torch_dataloader",
            "supernet_weight_params": sum(p.numel() for p in search.model.weight_parameters()),
        })

    previous = None
    while search.epoch < config.epochs:
        metrics: dict[str, Any] = search.train_epoch()
        evaluation = search.evaluate()
        epoch, step = search.epoch, search.epochs_trained
        genotype = search.genotype()
        arch_spread = max(max_abs_difference(p) for p in search.model.arch_parameters().values())
        smoothed = None
        eigenvalue, decision = search.check_early_stop()  # DARTS-ADA may roll the search back here
        if search.stopper is not None:
            smoothed = search.stopper.smoothed(epoch - 1)
        result = genotype
        if decision is not None and decision.ends_search:
            result = genotype_from_dict(decision.genotype)
        metrics.update({k: v for k, v in evaluation.items() if k != "val_iou"})
        metrics.update(
            epoch=epoch, arch_entropy=search.arch_entropy(), arch_max_worker_diff=arch_spread,
            genotype=result.to_json(indent=None), genotype_hash=genotype.short_hash(),
        )
        if eigenvalue is not None:
            metrics["hessian_eigenvalue"] = eigenvalue
        if smoothed is not None:
            metrics["hessian_eigenvalue_smoothed"] = smoothed
        if decision is not None:
            metrics.update(early_stop_epoch=decision.stop_epoch + 1, early_stop_chosen_epoch=decision.chosen_epoch + 1)
        with tempfile.TemporaryDirectory(prefix="nasplat-ckpt-") as checkpoint_dir:
            if logger is not None:
                search.save(checkpoint_dir)
                _record_epoch(logger, metrics, evaluation["val_iou"], genotype.to_dict(), step, previous)
                logger.log_json(result.to_dict(), "genotype.json")
                if decision is not None:
                    _record_decision(logger, decision, index=len(search.stopper.decisions) - 1)
            previous = metrics["genotype_hash"]
            # Ray copies the checkpoint to the run's storage before report returns
            ray.train.report(
                metrics, checkpoint=ray.train.Checkpoint.from_directory(checkpoint_dir) if is_rank0 else None
            )
        if decision is not None and decision.ends_search:
            break


def _record_epoch(logger: RunLogger, metrics: dict, per_class: dict, genotype: dict, step: int, previous: str | None) -> None:
    numeric = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
    numeric.update({f"val_iou.{name}": value for name, value in per_class.items()})
    logger.log_metrics(numeric, step=step)
    epoch = metrics["epoch"]
    logger.log_json(genotype, f"genotypes/epoch_{epoch:03d}.json")
    if previous is not None and previous != metrics["genotype_hash"]:
        logger.set_tags({f"genotype_changed.epoch_{epoch:03d}": metrics["genotype_hash"]})
    logger.set_tags({"genotype_hash": metrics["genotype_hash"], "last_epoch": epoch})


def _record_decision(logger: RunLogger, decision: StopDecision, index: int) -> None:
    """Tags and a JSON artifact saying what RobustDARTS decided, at which epochs, and why."""
    logger.log_json(decision.to_dict(), f"early_stop/decision_{index:02d}.json")
    logger.set_tags({
        "early_stop.mode": decision.mode,
        "early_stop.stop_epoch": decision.stop_epoch + 1,
        "early_stop.chosen_epoch": decision.chosen_epoch + 1,
        "early_stop.reason": decision.reason,
    })
    print(f"[nasplat] RobustDARTS: {decision.reason}", flush=True)
