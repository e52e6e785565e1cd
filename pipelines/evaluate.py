"""`nasplat evaluate`: mIoU, per-class IoU, confusion matrix, parameters, FLOPs and latency of a model file.

The model file (``best_model.pt`` of a retrain) describes itself: the network is rebuilt from its
spec, and the validation split from the data settings it records, so the mIoU matches the one the
retrain logged unless scales, flip or data are overridden.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nasplat.retraining.config import RetrainConfig
from nasplat.training.config import ConfigError, ExperimentConfig
from pipelines.config_args import DeprecatedAlias


def evaluate_checkpoint(
    path: str | Path, scales: Sequence[float] | None = None, flip: bool | None = None,
    data_overrides: dict[str, Any] | None = None, latency_size: Sequence[int] | None = None,
    latency_repeats: int = 10, batch_size: int = 8, device: str = "cpu",
) -> dict[str, Any]:
    """Everything ``nasplat evaluate`` prints, as a dict. Scales, flip and data default to the file's own."""
    from torch.utils.data import DataLoader

    from nasplat.retraining.model_file import ModelSpec, load_model_checkpoint, recorded_data
    from nasplat.retraining.summary import model_costs
    from nasplat.training.evaluation import evaluate_model

    model, payload = load_model_checkpoint(path, device=device)
    spec = ModelSpec.from_dict(payload["spec"])
    data = {**payload["data"], **(data_overrides or {})}
    scales = list(payload["eval"]["scales"] if scales is None else scales)
    flip = bool(payload["eval"]["flip"] if flip is None else flip)
    splits = recorded_data(data)
    if splits.num_classes != spec.num_classes:
        raise ConfigError(f"{path}: the model predicts {spec.num_classes} classes but dataset "
                          f"{data['dataset']!r} has {splits.num_classes}")
    result = evaluate_model(model, DataLoader(splits.val, batch_size=batch_size), splits.class_names, scales, flip,
                            device)
    size = tuple(latency_size or (int(data["image_size"]), int(data["image_size"])))
    costs = model_costs(model, size, latency_repeats)
    recorded = payload.get("metrics", {}).get("val_miou")
    return {
        "checkpoint": str(path), "model": spec.label(), "epoch": payload.get("epoch"), "data": data,
        "data_description": splits.description, "scales": scales, "flip": flip,
        "class_names": list(splits.class_names),
        "val_miou": result["val_miou"], "val_pixel_acc": result["val_pixel_acc"], "val_loss": result["val_loss"],
        "val_iou": result["val_iou"], "confusion_matrix": result["confusion_matrix"],
        "recorded_val_miou": recorded, "input_size": list(size), **costs, "latency_repeats": latency_repeats,
    }


def format_table(report: dict[str, Any]) -> str:
    """A human-readable report: summary lines, per-class IoU, then the confusion matrix."""
    size = "x".join(str(s) for s in report["input_size"])
    lines = [
        f"model       {report['model']}  (epoch {report['epoch']}, {report['checkpoint']})",
        (f"data        {report['data']['dataset']} val, crop {report['data']['image_size']}, "
         f"scales {report['scales']}, flip {'on' if report['flip'] else 'off'}"),
        f"mIoU        {report['val_miou']:.4f}" + (
            f"  (recorded at training: {report['recorded_val_miou']:.4f})" if report["recorded_val_miou"] is not None else ""),
        f"pixel acc   {report['val_pixel_acc']:.4f}",
        f"params      {report['params']:,}",
        f"FLOPs       {report['flops'] / 1e9:.4f} G at 1x3x{size} (2 per multiply-add)",
        (f"latency     {report['latency_ms']:.2f} ms median (IQR {report['latency_iqr_ms']:.2f}) on CPU at 1x3x{size}, "
         f"{report['latency_repeats']} runs"),
        "",
        "per-class IoU",
    ]
    width = max(len(n) for n in report["class_names"])
    for name in report["class_names"]:
        value = report["val_iou"][name]
        lines.append(f"  {name:<{width}}  {'n/a' if math.isnan(value) else f'{value:.4f}'}")
    lines += ["", "confusion matrix (rows: ground truth, columns: prediction; pixels)"]
    cells = [[str(v) for v in row] for row in report["confusion_matrix"]]
    cell = max(max(len(c) for row in cells for c in row), 4)
    lines.append(" " * (width + 2) + "".join(f" {name[:cell]:>{cell}}" for name in report["class_names"]))
    for name, row in zip(report["class_names"], cells):
        lines.append(f"  {name:<{width}}" + "".join(f" {c:>{cell}}" for c in row))
    return "\n".join(lines)


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "evaluate", help="evaluate a retrained model file: mIoU, per-class IoU, confusion matrix, params, FLOPs, latency",
        description="Rebuild the network of a retrain's best_model.pt (or of an MLflow retrain run's best checkpoint) "
        "and evaluate it on the validation split it was trained against; report parameters, FLOPs and CPU latency.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="model file written by `nasplat retrain` (best_model.pt)")
    source.add_argument("--run", metavar="RUN_ID",
                        help="MLflow run id of a retrain (parent or trial run): evaluate its best checkpoint")
    parser.add_argument("--tracking-uri", help=ExperimentConfig.help_texts()["tracking_uri"])
    helps = RetrainConfig.help_texts()
    parser.add_argument("--eval-scales", type=float, nargs="+", metavar="SCALE",
                        help=helps["eval_scales"] + " (default: the retrain's)")
    parser.add_argument("--eval-flip", action=argparse.BooleanOptionalAction, default=None,
                        help=helps["eval_flip"] + " (default: as the retrain)")
    parser.add_argument("--scales", type=float, nargs="+", dest="eval_scales", action=DeprecatedAlias,
                        replacement="--eval-scales")
    for old, new, value in (("--flip", "--eval-flip", True), ("--no-flip", "--no-eval-flip", False)):
        parser.add_argument(old, dest="eval_flip", nargs=0, const=value, action=DeprecatedAlias, replacement=new)
    parser.add_argument("--dataset", help="evaluate on another dataset spec than the recorded one (same classes)")
    parser.add_argument("--data-root", metavar="DIR", help="where the dataset's official layout lives now")
    parser.add_argument("--image-size", type=int, help="validation crop size (default: the training crop)")
    parser.add_argument("--batch-size", type=int, default=8, help="evaluation batch size")
    parser.add_argument("--latency-size", type=int, nargs=2, metavar=("H", "W"),
                        help="input size for FLOPs and latency (default: the training crop)")
    parser.add_argument("--latency-repeats", type=int, default=10, help="timed forward passes")
    parser.add_argument("--format", choices=("table", "json"), default="table", help="output format")
    parser.add_argument("--experiment", help="MLflow experiment of the evaluation run (default: the evaluated "
                        "run's with --run; with --checkpoint the evaluation is recorded only when this is given)")
    parser.add_argument("--record", action=argparse.BooleanOptionalAction, default=None,
                        help="record the evaluation as an MLflow run of kind 'evaluate' with its metrics and "
                        "confusion matrix (default: with --run or --experiment)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from nasplat.tracking.queries import download_best_model
    from nasplat.tracking.uri import existing_store_uri

    if args.eval_scales is not None and not all(s > 0 for s in args.eval_scales):
        raise ConfigError(f"--eval-scales must be > 0, got {args.eval_scales}")
    overrides = {key: getattr(args, key) for key in ("dataset", "data_root", "image_size") if getattr(args, key) is not None}
    with tempfile.TemporaryDirectory(prefix="nasplat-eval-") as tmp:
        path = Path(args.checkpoint) if args.checkpoint else download_best_model(
            existing_store_uri(args.tracking_uri), args.run, tmp)
        report = evaluate_checkpoint(path, args.eval_scales, args.eval_flip, overrides, args.latency_size,
                                     args.latency_repeats, args.batch_size)
    if args.run:
        report["checkpoint"] = f"MLflow run {args.run}"
    recorded_as = None
    if args.record if args.record is not None else bool(args.run or args.experiment):
        recorded_as = _record(report, args)
    if args.format == "json":
        print(json.dumps(report, indent=2))
    else:
        print(format_table(report))
        if recorded_as:
            print(f"\nrecorded in MLflow: run {recorded_as}")
    sys.stdout.flush()
    return 0


def _record(report: dict[str, Any], args: argparse.Namespace) -> str:
    """The evaluation as an MLflow run (:func:`nasplat.tracking.evaluations.log_evaluation`), with the confusion
    matrix drawn; its id is also put in ``report["mlflow_run_id"]``."""
    from nasplat.tracking.evaluations import log_evaluation
    from nasplat.tracking.uri import existing_store_uri, resolve_tracking_uri
    from nasplat.viz import render_confusion_matrix

    uri = existing_store_uri(args.tracking_uri) if args.run else resolve_tracking_uri(args.tracking_uri)
    with tempfile.TemporaryDirectory(prefix="nasplat-eval-pictures-") as tmp:
        pictures = render_confusion_matrix(report["confusion_matrix"], report["class_names"], tmp,
                                           title=f"{report['model']}, epoch {report['epoch']}")
        report["mlflow_run_id"] = log_evaluation(uri, report, args.experiment, args.run, pictures)
    return report["mlflow_run_id"]
