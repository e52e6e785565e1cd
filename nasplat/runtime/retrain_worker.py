"""The Ray Train worker loop of a retrain: every worker trains its shard; rank 0 records.

Each epoch: train, evaluate, keep the best weights; rank 0 writes a checkpoint (training state and
the best model file), logs the epoch's metrics and pictures (prediction overlays of the first validation
samples and the confusion matrix, as MLflow images stepped by epoch) to the trial's MLflow run and, when the
epoch is a new best, the best model file as the artifact ``checkpoints/best_model.pt``; every rank calls
``ray.train.report``. Rank 0 also logs the datasets (``log_inputs``) and system metrics of the trial.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from nasplat.retraining.config import RetrainConfig
from nasplat.retraining.loop import Retrainer
from nasplat.retraining.model_file import BEST_MODEL_FILE
from nasplat.runtime.worker import WorkerContext, report_epoch, run_loop, start_worker
from nasplat.tracking import schema
from nasplat.tracking.datasets import log_datasets
from nasplat.tracking.images import log_images
from nasplat.tracking.logger import RunLogger
from nasplat.tracking.system_metrics import system_metrics
from nasplat.training.model_stats import count_flops, count_parameters

SOURCE_KEY = "_nasplat_model_source"
OVERLAY_SAMPLES = 4
"""Validation samples 0..3 get their predictions drawn every epoch."""


def retrain_worker(loop_config: dict[str, Any]) -> None:
    """Entry point of each Ray Train worker (``TorchTrainer(train_loop_per_worker=...)``)."""
    context = start_worker(loop_config, RetrainConfig, extra_keys=(SOURCE_KEY,))
    config: RetrainConfig = context.config
    trainer = Retrainer(config, context.extras[SOURCE_KEY], device=context.device)
    with system_metrics(context.logger):
        run_loop(context, trainer, _retrain_epochs)


def _retrain_epochs(context: WorkerContext, trainer: Retrainer) -> None:
    config: RetrainConfig = context.config
    logger = context.logger
    if logger is not None:
        flops = count_flops(trainer.model, (1, 3, config.image_size, config.image_size))
        logger.log_params({"model": trainer.spec.label(), "model_options": trainer.spec.options,
                           "data": trainer.data_description})
        logger.log_metrics({schema.PARAMS_METRIC: count_parameters(trainer.model), schema.FLOPS_METRIC: flops,
                            schema.GFLOPS_METRIC: flops / 1e9}, step=0)
        logger.set_tags({schema.MODEL_TAG: trainer.spec.label()})
        log_datasets(logger, trainer.data_description)

    while trainer.epoch < config.epochs:
        metrics: dict[str, Any] = trainer.train_epoch()
        evaluation = trainer.evaluate()
        improved = trainer.update_best(evaluation)
        metrics.update({k: v for k, v in evaluation.items() if k not in ("val_iou", "confusion_matrix")})
        metrics.update(epoch=trainer.epoch, best_val_miou=trainer.best["val_miou"], best_epoch=trainer.best["epoch"])

        def write(directory: Path) -> None:
            trainer.save(directory)
            per_class = {f"{schema.IOU_METRIC_PREFIX}.{name}": value for name, value in evaluation["val_iou"].items()}
            logger.log_metrics({**metrics, **per_class}, step=trainer.epoch)
            _log_pictures(logger, trainer, evaluation["confusion_matrix"])
            if improved:
                logger.log_artifact(directory / BEST_MODEL_FILE, schema.BEST_MODEL_DIR)
                logger.log_json(evaluation["confusion_matrix"], schema.CONFUSION_ARTIFACT)
                logger.set_tags({schema.BEST_EPOCH_TAG: trainer.best["epoch"]})

        trainer.capture_rng()  # every rank: its generators go into rank 0's checkpoint
        report_epoch(context, metrics, write)


def _log_pictures(logger: RunLogger, trainer: Retrainer, confusion: list[list[int]]) -> None:
    """The epoch's prediction overlays and confusion matrix as MLflow images (step = epoch); a picture that
    fails prints a warning and the retrain goes on."""
    epoch, names = trainer.epoch, trainer.spec.class_names
    started = time.perf_counter()
    try:
        import nasplat.viz as viz  # matplotlib is imported on rank 0 only

        shown = range(min(OVERLAY_SAMPLES, len(trainer.val_data)))
        images, masks, predicted = viz.predict_samples(trainer.model, trainer.val_data, shown, trainer.device)
        palette = viz.dataset_palette(trainer.val_data, names)
        with tempfile.TemporaryDirectory(prefix="nasplat-pictures-") as directory:
            paths = viz.render_overlays(images, masks, predicted, palette, directory, names,
                                        name=schema.PREDICTIONS_IMAGE)
            paths += viz.render_confusion_matrix(confusion, names, directory, title=f"epoch {epoch}",
                                                 name=schema.CONFUSION_IMAGE)
            log_images(logger, paths, step=epoch)
    except Exception as err:  # a picture must never end a retrain
        print(f"[nasplat] warning: epoch {epoch}: retrain pictures not logged ({type(err).__name__}: {err})", flush=True)
        return
    logger.log_metrics({"picture_time_s": time.perf_counter() - started}, step=epoch)
