"""What every Ray Train worker of a trial does around its loop: start-up, restore, and the per-epoch report.

The loop (search or retrain) is plain PyTorch; this module gives it its config, device and threads, the
MLflow logger on rank 0, the checkpoint to resume from, and writes each epoch's checkpoint before
``ray.train.report`` (rank 0 only writes files and records; every rank reports).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import tempfile
import uuid
from pathlib import Path
from typing import Any, Callable, Protocol

import ray
import ray.train
import torch

from nasplat.tracking.logger import RunLogger
from nasplat.tracking.schema import FAILURE_REASON_TAG, RESTARTS_TAG, RESUMES_TAG, WORKER_NODE_TAG, WORKER_PID_TAG
from nasplat.training.config import ExperimentConfig
from nasplat.training.divergence import TrainingDiverged
from nasplat.training.storage import read_bytes, run_location, write_bytes

RUN_ID_KEY = "_nasplat_run_id"
TRACKING_KEY = "_nasplat_tracking_uri"
FIT_KEY = "_nasplat_fit"
"""A new id for each ``TorchTrainer`` a trial builds: starts under one id beyond the first are worker-group restarts;
each further id is a resumed driver."""
STARTS_FOLDER = "nasplat_starts"
"""In the run folder: ``<trial run id>.json`` counts the worker-group starts of each fit of that trial."""
FAILED_KEY = "trial_failed"
REASON_KEY = "failure_reason"
FAILURE_FILE = "failure.json"
"""Written in place of a state file when a trial failed for good: a resumed trial reports the same failure."""


class Restorable(Protocol):
    epoch: int

    def restore(self, directory: str | Path) -> None: ...


@dataclasses.dataclass
class WorkerContext:
    """One worker's view of its trial."""

    config: Any
    extras: dict[str, Any]
    rank: int
    device: torch.device
    logger: RunLogger | None
    """The trial's MLflow run, on rank 0 only."""

    @property
    def is_rank0(self) -> bool:
        return self.rank == 0


def worker_loop_config(config: ExperimentConfig, run_id: str, **extras: Any) -> dict[str, Any]:
    """The ``train_loop_config`` a trial hands its workers: the config, the trial's run and ``extras``."""
    return {**config.to_dict(), RUN_ID_KEY: run_id, TRACKING_KEY: config.tracking_uri, FIT_KEY: uuid.uuid4().hex,
            **extras}


def start_worker(loop_config: dict[str, Any], config_type: type[ExperimentConfig],
                 extra_keys: tuple[str, ...] = ()) -> WorkerContext:
    """Parse the loop config, set threads and device, tag the run with this worker's node and process (and on rank 0
    the restart counts), open the logger."""
    logging.getLogger().setLevel(logging.WARNING)  # Ray Train logs every report at INFO
    loop_config = dict(loop_config)
    run_id = loop_config.pop(RUN_ID_KEY)
    tracking_uri = loop_config.pop(TRACKING_KEY)
    fit_id = loop_config.pop(FIT_KEY)
    extras = {key: loop_config.pop(key) for key in extra_keys}
    config = config_type.from_dict(loop_config)
    torch.set_num_threads(max(1, int(config.cpus_per_worker or 1)))
    rank = ray.train.get_context().get_world_rank()
    device = ray.train.torch.get_device() if config.gpus_per_worker > 0 else torch.device("cpu")
    node = ray.get_runtime_context().get_node_id()
    tags = {f"{WORKER_NODE_TAG}.{rank}": node, f"{WORKER_PID_TAG}.{rank}": os.getpid()}
    if rank == 0:
        restarts, resumes = count_start(f"{run_location(config.storage, config.name)}/{STARTS_FOLDER}/{run_id}.json",
                                        fit_id)
        tags.update({RESTARTS_TAG: restarts, RESUMES_TAG: resumes})
    RunLogger(tracking_uri, run_id).set_tags(tags)
    logger = RunLogger(tracking_uri, run_id) if rank == 0 else None
    return WorkerContext(config, extras, rank, device, logger)


def count_start(location: str, fit_id: str) -> tuple[int, int]:
    """Count one start of a trial's workers under ``fit_id`` in the file at ``location``; returns ``(worker-group
    restarts, resumed drivers)`` of the trial so far."""
    stored = read_bytes(location)
    starts: dict[str, int] = json.loads(stored) if stored is not None else {}
    starts[fit_id] = starts.get(fit_id, 0) + 1
    write_bytes(location, (json.dumps(starts) + "\n").encode())
    return sum(starts.values()) - len(starts), len(starts) - 1


def restore_latest(context: WorkerContext, loop: Restorable) -> None:
    """Load the trial's latest checkpoint into ``loop`` when Ray Train hands one over (resume or restart).

    A trial that failed for good (divergence) stays failed: its failure is raised again, not retrained. After a
    restart, rank 0 leaves out the metrics the run holds already (an epoch logged, then lost before its checkpoint,
    is computed again but recorded once)."""
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return
    with checkpoint.as_directory() as directory:
        failure = Path(directory) / FAILURE_FILE
        if failure.is_file():
            raise TrainingDiverged(json.loads(failure.read_text())[REASON_KEY])
        loop.restore(directory)
    if context.logger is not None:
        print(f"[nasplat] resumed from {checkpoint.path} at epoch {loop.epoch}", flush=True)
        context.logger.skip_recorded_metrics()


def report_epoch(context: WorkerContext, metrics: dict[str, Any], write: Callable[[Path], None]) -> None:
    """Rank 0 runs ``write(directory)`` (checkpoint files and records), then every rank reports ``metrics``
    with rank 0's directory as the checkpoint; Ray copies it to the run's storage before ``report`` returns."""
    with tempfile.TemporaryDirectory(prefix="nasplat-epoch-") as directory:
        if context.is_rank0:
            write(Path(directory))
        checkpoint = ray.train.Checkpoint.from_directory(directory) if context.is_rank0 else None
        ray.train.report(metrics, checkpoint=checkpoint)
    if context.logger is not None:
        context.logger.flush()  # after the checkpoint is stored; bounded, and no wait while MLflow is down


def report_failure(context: WorkerContext, epoch: int, error: TrainingDiverged) -> None:
    """End the trial on a deterministic failure in ``epoch`` (1-based) without an exception, so Ray Train does not
    restart the workers: rank 0 tags the trial's run with the reason; every rank reports a result flagged failed."""
    metrics = {"epoch": epoch, FAILED_KEY: 1.0, REASON_KEY: str(error), "val_miou": float("nan")}  # Tune's metric

    def write(directory: Path) -> None:
        (directory / FAILURE_FILE).write_text(json.dumps(metrics))
        context.logger.set_tags({FAILURE_REASON_TAG: str(error)})

    if context.is_rank0:
        print(f"[nasplat] {error}", flush=True)
    report_epoch(context, metrics, write)


def run_loop(context: WorkerContext, loop: Restorable, epochs: Callable[[WorkerContext, Any], None]) -> None:
    """Restore ``loop`` from the trial's latest checkpoint, then run ``epochs(context, loop)``; a deterministic
    failure (divergence) ends the trial without an exception, so Ray Train does not retry it."""
    try:
        restore_latest(context, loop)
        epochs(context, loop)
    except TrainingDiverged as err:
        report_failure(context, loop.epoch + 1, err)
