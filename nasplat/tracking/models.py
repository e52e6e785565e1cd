"""Logging a retrained network as an MLflow model (and registering it)."""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import mlflow
import mlflow.pytorch
import torch
from mlflow.models import infer_signature

from nasplat.retraining.model_file import load_model_checkpoint
from nasplat.tracking import schema
from nasplat.tracking.logger import RunLogger


def log_best_model(tracking_uri: str, checkpoint: Path, run_id: str, image_size: int, genotype: dict | None = None,
                   register_as: str | None = None) -> tuple[str, str | None]:
    """``mlflow.pytorch.log_model`` of the checkpoint's network in ``run_id`` (input example and signature at
    the training crop, the genotype inside the model folder), registered as ``register_as`` when given;
    returns the model URI and the registered version (or None)."""
    model, _ = load_model_checkpoint(checkpoint)  # batch 2 below: keeps the exported batch dimension dynamic
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
                registered_model_name=register_as, extra_files=extra_files,
                pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
            )
    version = getattr(info, "registered_model_version", None)
    return info.model_uri, (str(version) if version is not None else None)
