"""Logging a retrained network as an MLflow model: its metrics linked to it, registered under an alias."""
from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Mapping, NamedTuple

import mlflow
import mlflow.pytorch
import torch
from mlflow.models import infer_signature

from nasplat.retraining.model_file import ModelSpec, load_model_checkpoint
from nasplat.tracking import schema
from nasplat.tracking.logger import RunLogger
from nasplat.tracking.runs import client


class LoggedModel(NamedTuple):
    """Where the model went: its ``models:/`` URI, MLflow's logged-model id, the registered version (or None)."""

    uri: str
    model_id: str
    version: str | None


def log_best_model(tracking_uri: str, checkpoint: Path, run_id: str, image_size: int, genotype: dict | None = None,
                   register_as: str | None = None, alias: str | None = None,
                   metrics: Mapping[str, float] | None = None, step: int = 0,
                   metrics_run_id: str | None = None) -> LoggedModel:
    """``mlflow.pytorch.log_model`` of the checkpoint's network in ``run_id`` (input example and signature at
    the training crop, the genotype inside the model folder, the model spec as the logged model's params),
    ``metrics`` logged at ``step`` to ``metrics_run_id`` (default ``run_id``) and linked to the logged model, and,
    with ``register_as``, the new version registered and given ``alias``."""
    model, payload = load_model_checkpoint(checkpoint)  # batch 2 below: keeps the exported batch dimension dynamic
    spec = ModelSpec.from_dict(payload["spec"])
    example = torch.randn(2, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        output = model(example)
    signature = infer_signature(example.numpy(), output.numpy())
    mlflow.set_tracking_uri(tracking_uri)
    with tempfile.TemporaryDirectory(prefix="nasplat-model-") as tmp:
        extra_files = None
        if genotype is not None:
            genotype_path = Path(tmp) / schema.GENOTYPE_ARTIFACT
            genotype_path.write_text(json.dumps(genotype, indent=2) + "\n")
            extra_files = [str(genotype_path)]
            RunLogger(tracking_uri, run_id).log_json(genotype, schema.GENOTYPE_ARTIFACT)
        with mlflow.start_run(run_id=run_id):
            info = mlflow.pytorch.log_model(
                model, name=schema.LOGGED_MODEL_NAME, input_example=example.numpy(), signature=signature,
                registered_model_name=register_as, extra_files=extra_files, step=step,
                params={"model": spec.label(), **{f"model_options.{k}": v for k, v in spec.options.items()}},
                pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
            )
            if metrics:
                mlflow.log_metrics(dict(metrics), step=step, run_id=metrics_run_id or run_id, model_id=info.model_id)
    version = getattr(info, "registered_model_version", None)
    if version is not None and alias:
        client(tracking_uri).set_registered_model_alias(register_as, alias, str(version))
    return LoggedModel(info.model_uri, info.model_id, str(version) if version is not None else None)
