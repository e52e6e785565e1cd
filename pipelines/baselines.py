"""`nasplat baselines`: retrain the hand-designed baselines and the best searched genotype on equal terms.

Every model goes through the same `nasplat retrain` code with the same data, epochs, schedule,
hyperparameters (or Optuna budget) and seed, one retrain (MLflow parent run) per model, all in one
experiment; then each best model file is evaluated with `nasplat evaluate`'s code and one table
compares mIoU, parameters, FLOPs and CPU latency.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from typing import Any

from nasplat.training.config import ConfigError
from nasplat.retraining.config import RetrainConfig
from nasplat.training.storage import run_location, write_bytes
from pipelines.retrain import RETRAIN_FLAGS

DEFAULT_EXPERIMENT = "nasplat-baselines"

MODELS: dict[str, dict[str, Any]] = {
    "duc_hdc": {"baseline": "duc_hdc", "model_options": {}},
    "deeplabv3plus_resnet101": {"baseline": "deeplabv3plus", "model_options": {"backbone": "resnet101"}},
    "deeplabv3plus_mobilenet_v2": {"baseline": "deeplabv3plus", "model_options": {"backbone": "mobilenet_v2"}},
    "icnet": {"baseline": "icnet", "model_options": {}},
    "searched": {},
}
"""Row name -> the retrain config fields that pick the model (``searched``: a search run's genotype)."""
PRETRAINABLE = ("duc_hdc", "deeplabv3plus_resnet101", "deeplabv3plus_mobilenet_v2")
"""The rows on a torchvision backbone, which ``--pretrained imagenet`` starts from ImageNet weights."""
OWN_FIELDS = ("genotype", "from_run", "rank", "baseline", "model_options", "name", "register_model", "model_alias")
"""RetrainConfig fields this command sets per model instead of taking them as flags."""
BASELINE_FLAGS = dataclasses.replace(RETRAIN_FLAGS, defaults={"experiment": DEFAULT_EXPERIMENT})
"""Retrain's flags, but the rows of one comparison go to their own experiment unless --experiment or --config says."""


def _models(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in MODELS]
    if unknown or not names:
        raise ConfigError(f"--models: unknown model {unknown[0] if unknown else text!r}; choose from {', '.join(MODELS)}")
    return names


def run_baselines(config: RetrainConfig, models: list[str], from_run: str | None, prefix: str,
                  latency_size: tuple[int, int] | None, pretrained: str = "none") -> list[dict[str, Any]]:
    """Retrain each model under ``config``'s budget (the torchvision backbones from ``pretrained`` weights) and
    evaluate its best model; one dict per model."""
    import ray

    import nasplat
    from nasplat.runtime.ray_session import start_ray
    from nasplat.runtime.retrain_driver import prepare_retrain, resolve_source
    from nasplat.tracking import schema
    from nasplat.tracking.queries import download_best_model
    from pipelines.evaluate import evaluate_checkpoint

    config = prepare_retrain(config.replace(name=prefix))
    if "searched" in models:  # find the genotype before any training starts
        source = resolve_source(config.replace(from_run=from_run))
        from_run = from_run or source.lineage[schema.SEARCH_RUN_TAG]
    rows = []
    started_ray = start_ray(config.address, config.trials)
    try:
        for model in models:
            fields = MODELS[model] or {"from_run": from_run}
            if model in PRETRAINABLE and pretrained != "none":
                fields = {**fields, "model_options": {**fields["model_options"], "pretrained": pretrained}}
            print(f"[nasplat] baselines: retraining {model} ({len(rows) + 1}/{len(models)})", flush=True)
            outcome = nasplat.retrain(config.replace(**fields, name=f"{prefix}-{model}"))
            with tempfile.TemporaryDirectory(prefix="nasplat-eval-") as tmp:
                # the model file from MLflow: the same bytes as outcome.checkpoint, which may be an s3:// URI
                local = download_best_model(config.tracking_uri, outcome.run_id, tmp)
                report = evaluate_checkpoint(local, latency_size=latency_size)
            _record_row(config.tracking_uri, outcome.run_id, report)
            rows.append({"model": model, "label": outcome.model_label, "val_miou": report["val_miou"],
                         "params": report["params"], "flops": report["flops"], "gflops": report["gflops"],
                         "latency_ms": report["latency_ms"], "input_size": report["input_size"],
                         "run_id": outcome.run_id, "checkpoint": str(outcome.checkpoint)})
    finally:
        if started_ray:
            ray.shutdown()
    summary = f"{run_location(config.storage, prefix)}/comparison.json"
    write_bytes(summary, (json.dumps(rows, indent=2) + "\n").encode())
    print(f"[nasplat] comparison written to {summary}", flush=True)
    return rows


def _record_row(tracking_uri: str, run_id: str, report: dict[str, Any]) -> None:
    """The row's figures as metrics of its retrain's parent run (at the best epoch, after the retrain's own, so
    MLflow's chart view shows what the table shows; latency at ``--latency-size`` when given)."""
    from nasplat.retraining.summary import latency_input, run_metrics
    from nasplat.tracking import schema
    from nasplat.tracking.logger import RunLogger

    logger = RunLogger(tracking_uri, run_id)
    logger.log_metrics(run_metrics(report), step=int(report.get("epoch") or 0))
    logger.set_tags({schema.LATENCY_INPUT_TAG: latency_input(report["input_size"])})
    logger.close()


def format_table(rows: list[dict[str, Any]]) -> str:
    """One line per model: mIoU, parameters (M), GFLOPs and median CPU latency at the same input size."""
    header = ("model", "mIoU", "params (M)", "GFLOPs", "latency (ms)", "run")
    cells = [(r["model"] if r["model"] != "searched" else f"searched {r['label']}", f"{r['val_miou']:.4f}",
              f"{r['params'] / 1e6:.3f}", f"{r['flops'] / 1e9:.4f}", f"{r['latency_ms']:.1f}", r["run_id"])
             for r in rows]
    widths = [max(len(str(c)) for c in column) for column in zip(header, *cells)]
    lines = ["  ".join(f"{c:<{w}}" for c, w in zip(row, widths)).rstrip() for row in (header, *cells)]
    if rows:
        size = "x".join(str(s) for s in rows[0]["input_size"])
        lines.append(f"(FLOPs: 2 per multiply-add; FLOPs and latency at 1x3x{size} on this CPU, batch 1)")
    return "\n".join(lines)


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "baselines", help="retrain DUC-HDC, DeepLabV3+ (ResNet-101, MobileNetV2), ICNet and the searched genotype "
        "under one budget and print a comparison table",
        description="Each model is retrained by the same code as `nasplat retrain` with the options below, one MLflow "
        "parent run per model (named PREFIX-MODEL, in experiment nasplat-baselines unless --experiment), then "
        "evaluated; the table compares mIoU, parameters, FLOPs and CPU latency.",
    )
    parser.add_argument("--models", default=",".join(MODELS), metavar="A,B,...",
                        help=f"the models to compare, comma-separated, from: {', '.join(MODELS)} (default: all)")
    parser.add_argument("--from-run", dest="search_run", metavar="RUN_ID", help="search run (parent or trial) whose "
                        "genotype is 'searched' (default: the latest finished search)")
    parser.add_argument("--name", dest="prefix", help="name prefix of the retrains (default: "
                        "baselines-<date>-<time>); the same prefix resumes them")
    parser.add_argument("--latency-size", type=int, nargs=2, metavar=("H", "W"),
                        help="input size for FLOPs and latency (default: the training crop)")
    parser.add_argument("--pretrained", choices=("none", "imagenet"), default="none",
                        help="starting weights of the ResNet-101 and MobileNetV2 backbones (DUC+HDC, DeepLabV3+): "
                        "torchvision's ImageNet weights (downloaded once into torch's hub cache) or none (random)")
    parser.add_argument("--format", choices=("table", "json"), default="table", help="output format")
    BASELINE_FLAGS.add_arguments(parser, skip=OWN_FIELDS)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    models = _models(args.models)
    config = BASELINE_FLAGS.config_from_args(args)
    # the model fields are set per row; a --config file's model choice does not apply here
    config = config.replace(genotype=None, from_run=None, rank=1, baseline=None, model_options={}, register_model=None)
    prefix = args.prefix or f"baselines-{time.strftime('%Y%m%d-%H%M%S')}"
    rows = run_baselines(config, models, args.search_run, prefix,
                         tuple(args.latency_size) if args.latency_size else None, args.pretrained)
    print(json.dumps(rows, indent=2) if args.format == "json" else format_table(rows), flush=True)
    return 0
