"""The Ray side of a retrain: the Ray Train worker loop and the driver's Tune progress callback.

Worker loop: every worker trains its shard; rank 0 records.

Each epoch: train, evaluate, keep the best weights; rank 0 writes a checkpoint (training state and
the best model file), logs the epoch's metrics to the trial's MLflow run and, when the epoch is a
new best, the best model file as the artifact ``checkpoints/best_model.pt``; every rank calls
``ray.train.report``.
"""
from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import ray.train
import torch

from nasplat.training.model_stats import count_flops, count_parameters
from nasplat.retraining.config import RetrainConfig
from nasplat.runtime.progress import TrialProgress
from nasplat.retraining.loop import BEST_MODEL_FILE, Retrainer
from nasplat.tracking.logger import RunLogger

RUN_ID_KEY = "mlflow_run_id"
TRACKING_KEY = "tracking_uri"
SOURCE_KEY = "model_source"
BEST_ARTIFACT_DIR = "checkpoints"
BEST_ARTIFACT = f"{BEST_ARTIFACT_DIR}/{BEST_MODEL_FILE}"


def retrain_worker(loop_config: dict[str, Any]) -> None:
    """Entry point of each Ray Train worker (``TorchTrainer(train_loop_per_worker=...)``)."""
    logging.getLogger().setLevel(logging.WARNING)
    loop_config = dict(loop_config)
    run_id = loop_config.pop(RUN_ID_KEY)
    tracking_uri = loop_config.pop(TRACKING_KEY)
    source = loop_config.pop(SOURCE_KEY)
    config = RetrainConfig.from_dict(loop_config)
    torch.set_num_threads(max(1, int(config.cpus_per_worker or 1)))

    is_rank0 = ray.train.get_context().get_world_rank() == 0
    device = ray.train.torch.get_device() if config.gpus_per_worker > 0 else torch.device("cpu")
    trainer = Retrainer(config, source, device=device)
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            trainer.restore(directory)
        if is_rank0:
            print(f"[nasplat] resumed from {checkpoint.path} at epoch {trainer.epoch}", flush=True)
    logger = RunLogger(tracking_uri, run_id) if is_rank0 else None
    if logger is not None:
        crop = (1, 3, config.image_size, config.image_size)
        logger.log_params({"model": trainer.spec.label(), "model_options": trainer.spec.options,
                           "data": trainer.data_description})
        logger.log_metrics({"params": count_parameters(trainer.model),
                            "flops": count_flops(trainer.model, crop)}, step=0)
        logger.set_tags({"nasplat.model": trainer.spec.label()})

    while trainer.epoch < config.epochs:
        metrics: dict[str, Any] = trainer.train_epoch()
        evaluation = trainer.evaluate()
        improved = trainer.update_best(evaluation)
        metrics.update({k: v for k, v in evaluation.items() if k not in ("val_iou", "confusion_matrix")})
        metrics.update(epoch=trainer.epoch, best_val_miou=trainer.best["val_miou"], best_epoch=trainer.best["epoch"])
        with tempfile.TemporaryDirectory(prefix="nasplat-retrain-") as checkpoint_dir:
            if logger is not None:
                trainer.save(checkpoint_dir)
                per_class = {f"val_iou.{name}": value for name, value in evaluation["val_iou"].items()}
                logger.log_metrics({**metrics, **per_class}, step=trainer.epoch)
                if improved:
                    logger.log_artifact(Path(checkpoint_dir) / BEST_MODEL_FILE, BEST_ARTIFACT_DIR)
                    logger.log_json(evaluation["confusion_matrix"], f"{BEST_ARTIFACT_DIR}/confusion_matrix.json")
                    logger.set_tags({"best_epoch": trainer.best["epoch"]})
            ray.train.report(
                metrics, checkpoint=ray.train.Checkpoint.from_directory(checkpoint_dir) if is_rank0 else None
            )


class RetrainProgress(TrialProgress):
    """One line per epoch of a retrain trial."""

    def epoch_line(self, result: dict[str, Any]) -> str:
        nan = float("nan")
        return (
            f"train_loss {result.get('train_loss', nan):.4f} | val_loss {result.get('val_loss', nan):.4f} | "
            f"val_mIoU {result.get('val_miou', nan):.4f} (best {result.get('best_val_miou', nan):.4f}) | "
            f"lr {result.get('lr', nan):.3g} | {result.get('epoch_time_s', nan):.1f}s | "
            f"{result.get('samples_per_s', nan):.1f} samples/s"
        )
