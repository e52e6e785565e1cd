"""The Ray Train worker loop of a search: every worker trains its shard; rank 0 records.

Each epoch: train (weights on A, architecture on B), evaluate, decode, then rank 0 writes a
checkpoint and logs metrics, the genotype and the arch distributions to MLflow, and every
``picture_interval`` epochs and at the end the pictures of :mod:`nasplat.viz`; every rank calls
``ray.train.report``. Rank 0 then records where the epoch's wall time went (``time_<phase>_s``, see
:data:`PHASES`).
"""
from __future__ import annotations

import functools
import tempfile
from pathlib import Path
from typing import Any

from nasplat.searching.config import SearchConfig
from nasplat.searching.cost_search import network_costs
from nasplat.searching.topk import top_k_record
from nasplat.training.collectives import max_abs_difference
from nasplat.spaces.genotype import Genotype
from nasplat.spaces.registry import genotype_from_dict
from nasplat.training.model_stats import count_flops
from nasplat.training.phases import PhaseClock
from nasplat.searching.early_stop import StopDecision
from nasplat.runtime.ray_data import uses_ray_data, worker_streams
from nasplat.searching.loop import SupernetSearch
from nasplat.spaces.registry import import_space_source, resolve_space_spec
from nasplat.runtime.worker import WorkerContext, report_epoch, run_loop, start_worker
from nasplat.tracking import schema
from nasplat.tracking.logger import RunLogger

PREDICTION_SAMPLES = 4
"""Validation samples 0..3 get their predictions drawn in every picture set."""
PHASES = {
    "setup": "config, data, supernet and its first records (logged with epoch 1)",
    "train": "training pass (epoch_time_s, with the loaders' start and end)",
    "eval": "validation pass",
    "checkpoint": "writing search_state.pt",
    "records": "queueing the epoch's MLflow metrics, tags and JSON",
    "pictures": "drawing and queueing the pictures",
    "report": "ray.train.report (the checkpoint copied to storage) and the bounded MLflow flush",
    "other": "decoding, arch records and their collectives",
}
"""The phases of ``time_<phase>_s``: they add up to the epoch's wall time on rank 0."""


def search_worker(loop_config: dict[str, Any]) -> None:
    """Entry point of each Ray Train worker (``TorchTrainer(train_loop_per_worker=...)``)."""
    clock = PhaseClock()
    with clock.phase("setup"):
        context = start_worker(loop_config, SearchConfig)
        config: SearchConfig = context.config
        _, source = resolve_space_spec(config.space)
        if source is not None:
            import_space_source(source)
        streams = worker_streams(config) if uses_ray_data(config) else None
        search = SupernetSearch(config, device=context.device, streams=streams)
    run_loop(context, search, functools.partial(_search_epochs, clock=clock))


def _search_epochs(context: WorkerContext, search: SupernetSearch, clock: PhaseClock) -> None:
    config: SearchConfig = context.config
    logger = context.logger
    if logger is not None:
        with clock.phase("setup"):
            logger.log_params({
                "data": search.data.description, "data_reader": "ray_data" if search.streams else "torch_dataloader",
                "supernet_weight_params": sum(p.numel() for p in search.model.weight_parameters()),
                "supernet_flops": count_flops(search.model, (1, 3, config.image_size, config.image_size)),
            })

    previous = None
    while search.epoch < config.epochs:
        with clock.phase("other"):
            previous, ends_search = _search_epoch(context, search, clock, previous)
        if logger is not None:
            logger.log_metrics(clock.metrics(), step=search.epochs_trained)  # sent with the next epoch's records
        if ends_search:
            break


def _search_epoch(context: WorkerContext, search: SupernetSearch, clock: PhaseClock,
                  previous: str | None) -> tuple[str, bool]:
    """Train, evaluate, decode and report one epoch, timing its phases on ``clock``; returns the epoch's genotype
    hash and whether RobustDARTS ended the search."""
    config: SearchConfig = context.config
    logger = context.logger
    with clock.phase("train"):
        metrics: dict[str, Any] = search.train_epoch()
    with clock.phase("eval"):
        evaluation = search.evaluate()
    epoch, step = search.epoch, search.epochs_trained
    genotype = search.genotype()
    arch_record = search.record_arch()  # before check_early_stop: DARTS-ADA may roll the arch back
    arch_spread = max(max_abs_difference(p) for p in search.model.arch_parameters().values())
    eigenvalue, decision = search.check_early_stop()  # DARTS-ADA may roll the search back here
    smoothed = search.stopper.smoothed(epoch - 1) if search.stopper is not None else None
    result = genotype
    if decision is not None and decision.ends_search:
        result = genotype_from_dict(decision.genotype)
    metrics.update({k: v for k, v in evaluation.items() if k not in ("val_iou", "confusion_matrix")})
    metrics.update(
        epoch=epoch, arch_entropy=search.arch_entropy(), arch_max_worker_diff=arch_spread,
        genotype=result.to_json(indent=None), genotype_hash=genotype.short_hash(),
    )
    metrics.update(search.cost_metrics(genotype))
    if eigenvalue is not None:
        metrics["hessian_eigenvalue"] = eigenvalue
    if smoothed is not None:
        metrics["hessian_eigenvalue_smoothed"] = smoothed
    if decision is not None:
        metrics.update(early_stop_epoch=decision.stop_epoch + 1, early_stop_chosen_epoch=decision.chosen_epoch + 1)
    final = (decision is not None and decision.ends_search) or search.epoch >= config.epochs

    def write(directory: Path) -> None:
        with clock.phase("checkpoint"):
            search.save(directory)
        with clock.phase("records"):
            _record_epoch(logger, metrics, evaluation["val_iou"], genotype.to_dict(), step, previous)
            logger.log_json(result.to_dict(), schema.GENOTYPE_ARTIFACT)
            logger.log_json(_arch_json(arch_record, search), schema.ARCH_ARTIFACT.format(epoch=epoch))
            if decision is not None:
                _record_decision(logger, decision, index=len(search.stopper.decisions) - 1)
        folders = picture_folders(epoch, config.picture_interval, final)
        if folders:
            with clock.phase("pictures"):
                _log_pictures(logger, search, result, folders, epoch, step, final)
        with clock.phase("records"):
            _record_candidates(logger, search, result, step, measure=final)

    search.capture_rng()  # every rank: its generators go into rank 0's checkpoint
    with clock.phase("report"):
        report_epoch(context, metrics, write)
    return metrics["genotype_hash"], decision is not None and decision.ends_search


def _record_epoch(logger: RunLogger, metrics: dict, per_class: dict, genotype: dict, step: int, previous: str | None) -> None:
    logger.log_metrics({**metrics, "val_iou": per_class}, step=step)  # drops the non-numbers (genotype JSON)
    epoch = metrics["epoch"]
    logger.log_json(genotype, schema.EPOCH_GENOTYPE_ARTIFACT.format(epoch=epoch))
    if previous is not None and previous != metrics["genotype_hash"]:
        logger.set_tags({f"{schema.GENOTYPE_CHANGED_TAG}.epoch_{epoch:03d}": metrics["genotype_hash"]})
    logger.set_tags({schema.GENOTYPE_HASH_TAG: metrics["genotype_hash"], schema.LAST_EPOCH_TAG: epoch})


def _record_candidates(logger: RunLogger, search: SupernetSearch, genotype: Genotype, step: int,
                       measure: bool) -> None:
    """The trial's ``top_k`` strongest distinct genotypes (rank 1 = ``genotype``, the epoch's genotype.json; written
    every epoch, as that file, so a trial ASHA stops has them too) and, with ``measure`` and ``--cost``, the built
    network of ``genotype`` measured on this worker's device (``genotype_latency_ms``, ``genotype_gflops``,
    ``genotype_params``)."""
    cost = search.cost
    record = top_k_record(search.space, search.model.arch_parameters(), search.model.decode_options(),
                          search.config.top_k, genotype, cost.genotype_cost if cost is not None else None)
    logger.log_json(record, schema.TOP_K_ARTIFACT)
    if measure and cost is not None:
        logger.log_metrics(network_costs(search.space, genotype, cost.model, search.data.num_classes,
                                         search.config.image_size, search.device), step=step)


def picture_folders(epoch: int, interval: int, final: bool) -> list[str]:
    """Artifact folders the pictures of ``epoch`` go to: every ``interval`` epochs (0: never) and at the end."""
    folders = [f"pictures/epoch_{epoch:03d}"] if interval > 0 and epoch % interval == 0 else []
    return folders + ["pictures/final"] if final else folders


def picture_history(history: list[tuple[int, Any]], final: bool) -> list[tuple[int, Any]]:
    """The ``(step, distributions)`` history a picture set draws: all of it at the end, for the evolution plots;
    only the latest entry (no evolution plots) in the sets between, whose evolution would be a prefix of the final
    one and cost most of their drawing time (``bench/overhead.py``; ``arch/epoch_NNN.json`` redraws any)."""
    return list(history) if final else list(history[-1:])


def _arch_json(record: dict[str, Any], search: SupernetSearch) -> dict[str, Any]:
    """An epoch's arch distributions and raw parameters as JSON (redraw with ``nasplat.viz.render_arch_heatmaps``)."""
    return {
        "epoch": record["epoch"], "step": record["step"], "ops": list(getattr(search.space, "ops", ())),
        "distributions": {name: value.tolist() for name, value in record["distributions"].items()},
        "parameters": {name: value.tolist() for name, value in record["parameters"].items()},
    }


def _log_pictures(logger: RunLogger, search: SupernetSearch, genotype: Genotype, folders: list[str], epoch: int,
                  step: int, final: bool) -> None:
    """Draw and log this epoch's pictures (the evolution plots only when ``final``); any failure is printed as a
    warning and the search goes on."""
    try:
        import nasplat.viz as viz  # matplotlib is imported on rank 0 only, when the first pictures are due

        predictions = None
        try:
            indices = range(min(PREDICTION_SAMPLES, len(search.data.val)))
            images, masks, predicted = viz.predict_samples(search.model, search.data.val, indices, search.device)
            palette = viz.dataset_palette(search.data.val, search.data.class_names)
            predictions = viz.Predictions(images, masks, predicted, palette, search.data.class_names)
        except Exception as err:  # a picture must never end a search
            print(f"[nasplat] warning: epoch {epoch}: no prediction overlays ({type(err).__name__}: {err})", flush=True)
        history = picture_history([(entry["step"], entry["distributions"]) for entry in search.arch_history], final)
        with tempfile.TemporaryDirectory(prefix="nasplat-pictures-") as directory:
            pictures = viz.render_pictures(directory, search.space, genotype, history[-1][1] if history else None,
                                           history, predictions, f"epoch {epoch}")
            for folder in folders:
                viz.log_figures(logger, directory, folder)
        for warning in pictures.warnings:
            print(f"[nasplat] warning: epoch {epoch}: picture not drawn: {warning}", flush=True)
        if pictures.cell_renderer:
            logger.set_tags({"pictures.cell_renderer": pictures.cell_renderer})
        logger.log_metrics({"picture_time_s": pictures.seconds}, step=step)
    except Exception as err:  # idem, for the drawing and the logging
        print(f"[nasplat] warning: epoch {epoch}: pictures not logged ({type(err).__name__}: {err})", flush=True)


def _record_decision(logger: RunLogger, decision: StopDecision, index: int) -> None:
    """Tags and a JSON artifact saying what RobustDARTS decided, at which epochs, and why."""
    logger.log_json(decision.to_dict(), schema.EARLY_STOP_ARTIFACT.format(index=index))
    logger.set_tags({
        "early_stop.mode": decision.mode,
        "early_stop.stop_epoch": decision.stop_epoch + 1,
        "early_stop.chosen_epoch": decision.chosen_epoch + 1,
        "early_stop.reason": decision.reason,
    })
    print(f"[nasplat] RobustDARTS: {decision.reason}", flush=True)
