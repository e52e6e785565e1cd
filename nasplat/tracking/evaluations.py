"""The MLflow run of one ``nasplat evaluate``: what was evaluated, how, and the figures, as a run of kind
``evaluate`` beside the retrain it came from (chart view: mIoU against latency, GFLOPs, parameters)."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from nasplat.retraining.summary import latency_input, run_metrics
from nasplat.tracking import schema
from nasplat.tracking.datasets import log_datasets
from nasplat.tracking.images import log_images
from nasplat.tracking.logger import RunLogger
from nasplat.tracking.runs import client, ensure_experiment, provenance_tags

DEFAULT_EXPERIMENT = "nasplat-evaluate"


def log_evaluation(tracking_uri: str, report: Mapping[str, Any], experiment: str | None = None,
                   evaluated_run: str | None = None, pictures: Sequence[str | Path] = (),
                   argv: list[str] | None = None) -> str:
    """A finished ``evaluate`` run holding ``report`` (what ``evaluate_checkpoint`` returns): params (model,
    checkpoint, scales, flip, data), the metrics of :func:`run_metrics` at step = the model's epoch, the
    validation dataset as an input, ``pictures`` as images and the confusion matrix as JSON. It goes into
    ``experiment``, by default the evaluated run's (else ``nasplat-evaluate``); returns its id."""
    mlflow_client = client(tracking_uri)
    if experiment is None and evaluated_run is not None:
        experiment_id = mlflow_client.get_run(evaluated_run).info.experiment_id
    else:
        experiment_id = ensure_experiment(mlflow_client, experiment or DEFAULT_EXPERIMENT, tracking_uri)
    tags = {**provenance_tags(schema.EVALUATE, argv), schema.MODEL_TAG: report["model"],
            schema.LATENCY_INPUT_TAG: latency_input(report["input_size"])}
    if evaluated_run is not None:
        tags[schema.EVALUATED_RUN_TAG] = evaluated_run
    name = f"evaluate-{time.strftime('%Y%m%d-%H%M%S')}"
    run_id = mlflow_client.create_run(experiment_id, run_name=name, tags=tags).info.run_id
    logger = RunLogger(tracking_uri, run_id)
    step = int(report.get("epoch") or 0)
    logger.log_params({"checkpoint": report["checkpoint"], "eval_scales": report["scales"],
                       "eval_flip": report["flip"], "data": report["data"], "epoch": report.get("epoch"),
                       "latency_repeats": report.get("latency_repeats")})
    logger.log_metrics(run_metrics(report), step=step)
    if report.get("data_description"):
        log_datasets(logger, report["data_description"], splits=("val",))
    log_images(logger, pictures, step=step)
    logger.log_json(report["confusion_matrix"], schema.CONFUSION_ARTIFACT)
    logger.finish()
    return run_id
