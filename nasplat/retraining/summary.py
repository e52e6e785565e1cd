"""A trained network's quality and cost as the flat metrics its MLflow runs carry.

``val_miou``, ``val_pixel_acc``, ``val_iou.<class>`` (from an evaluation), ``params``, ``flops``, ``gflops`` and
``latency_ms`` (median CPU forward time at batch 1): the names MLflow's chart view plots against each other and
``nasplat compare`` reads. Retrain, evaluate and baselines all report through here.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from nasplat.retraining.model_file import load_model_checkpoint
from nasplat.tracking import schema  # names only: the schema imports nothing
from nasplat.training.model_stats import count_flops, count_parameters, measure_latency

QUALITY_KEYS = (schema.MIOU_METRIC, "val_pixel_acc")
COST_KEYS = (schema.PARAMS_METRIC, schema.FLOPS_METRIC, schema.GFLOPS_METRIC, schema.LATENCY_METRIC)


def model_costs(model: nn.Module, size: Sequence[int], latency_repeats: int = 10) -> dict[str, Any]:
    """``params``, ``flops`` (2 per multiply-add), ``gflops`` and the CPU latency of ``model`` at ``1x3xHxW``."""
    height, width = (int(s) for s in size)
    shape = (1, 3, height, width)
    model = model.cpu()
    flops = count_flops(model, shape)
    latency = measure_latency(model, shape, warmup=1, repeats=latency_repeats)
    return {schema.PARAMS_METRIC: count_parameters(model), schema.FLOPS_METRIC: flops,
            schema.GFLOPS_METRIC: flops / 1e9, schema.LATENCY_METRIC: latency["median_ms"],
            "latency_iqr_ms": latency["iqr_ms"]}


def run_metrics(report: Mapping[str, Any]) -> dict[str, float]:
    """The MLflow metrics of ``report`` (an evaluation and/or :func:`model_costs`): quality, per-class IoU
    (``val_iou.<class>``; a class absent from the labels, NaN, is left out) and cost."""
    metrics: dict[str, float] = {}
    for key in (*QUALITY_KEYS, *COST_KEYS):
        if report.get(key) is not None:
            metrics[key] = float(report[key])
    for name, value in (report.get(schema.IOU_METRIC_PREFIX) or {}).items():
        metrics[f"{schema.IOU_METRIC_PREFIX}.{name}"] = float(value)
    return {key: value for key, value in metrics.items() if not math.isnan(value)}


def latency_input(size: Sequence[int]) -> str:
    """Where latency was measured, as the runs record it: ``cpu 1x3xHxW``."""
    return "cpu 1x3x" + "x".join(str(int(s)) for s in size)


def checkpoint_summary(path: str | Path, latency_repeats: int = 10) -> tuple[dict[str, float], tuple[int, int]]:
    """The :func:`run_metrics` of a model file: the quality it recorded at its best epoch and its cost at the
    training crop; also that crop (H, W)."""
    model, payload = load_model_checkpoint(path)
    size = (int(payload["data"]["image_size"]),) * 2
    return run_metrics({**payload.get("metrics", {}), **model_costs(model, size, latency_repeats)}), size
