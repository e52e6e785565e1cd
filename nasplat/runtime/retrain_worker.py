"""The Ray Train worker loop of a retrain: every worker trains its shard; rank 0 records.

Each epoch: train, evaluate, keep the best weights; rank 0 writes a checkpoint (training state and
the best model file), logs the epoch's metrics to the trial's MLflow run and, when the epoch is a
new best, the best model file as the artifact ``checkpoints/best_model.pt``; every rank calls
``ray.train.report``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from nasplat.training.model_stats import count_flops, count_parameters
from nasplat.retraining.config import RetrainConfig
from nasplat.retraining.loop import Retrainer
from nasplat.retraining.model_file import BEST_MODEL_FILE
from nasplat.runtime.worker import WorkerContext, report_epoch, run_loop, start_worker
from nasplat.tracking import schema

SOURCE_KEY = "_nasplat_model_source"


def retrain_worker(loop_config: dict[str, Any]) -> None:
    """Entry point of each Ray Train worker (``TorchTrainer(train_loop_per_worker=...)``)."""
    context = start_worker(loop_config, RetrainConfig, extra_keys=(SOURCE_KEY,))
    config: RetrainConfig = context.config
    trainer = Retrainer(config, context.extras[SOURCE_KEY], device=context.device)
    run_loop(context, trainer, _retrain_epochs)


def _retrain_epochs(context: WorkerContext, trainer: Retrainer) -> None:
    config: RetrainConfig = context.config
    logger = context.logger
    if logger is not None:
        crop = (1, 3, config.image_size, config.image_size)
        logger.log_params({"model": trainer.spec.label(), "model_options": trainer.spec.options,
                           "data": trainer.data_description})
        logger.log_metrics({"params": count_parameters(trainer.model),
                            "flops": count_flops(trainer.model, crop)}, step=0)
        logger.set_tags({schema.MODEL_TAG: trainer.spec.label()})

    while trainer.epoch < config.epochs:
        metrics: dict[str, Any] = trainer.train_epoch()
        evaluation = trainer.evaluate()
        improved = trainer.update_best(evaluation)
        metrics.update({k: v for k, v in evaluation.items() if k not in ("val_iou", "confusion_matrix")})
        metrics.update(epoch=trainer.epoch, best_val_miou=trainer.best["val_miou"], best_epoch=trainer.best["epoch"])

        def write(directory: Path) -> None:
            trainer.save(directory)
            per_class = {f"val_iou.{name}": value for name, value in evaluation["val_iou"].items()}
            logger.log_metrics({**metrics, **per_class}, step=trainer.epoch)
            if improved:
                logger.log_artifact(directory / BEST_MODEL_FILE, schema.BEST_MODEL_DIR)
                logger.log_json(evaluation["confusion_matrix"], schema.CONFUSION_ARTIFACT)
                logger.set_tags({schema.BEST_EPOCH_TAG: trainer.best["epoch"]})

        trainer.capture_rng()  # every rank: its generators go into rank 0's checkpoint
        report_epoch(context, metrics, write)
