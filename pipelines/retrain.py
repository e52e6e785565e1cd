"""`nasplat retrain`: flags of a retrain, and what the terminal shows when it ends (the work is ``nasplat.retrain``).

The model comes from a genotype file, a search's MLflow run (``--from-run``), a baseline (``--baseline``) or, with
none given, the latest finished search; see :mod:`nasplat.runtime.retrain_driver`.
"""
from __future__ import annotations

import argparse

from nasplat.retraining.config import RetrainConfig
from pipelines.config_args import FlagSpec

RETRAIN_FLAGS = FlagSpec(
    RetrainConfig,
    mapping_flags={"model_options": "--model-option"},
    list_flags={"eval_scales": (float, "+"), "lr_range": (float, 2), "weight_decay_range": (float, 2),
                "batch_sizes": (int, "+")},
    metavars={"from_run": "RUN_ID", "rank": "N", "genotype": "FILE", "data_root": "DIR", "eval_scales": "SCALE", "lr_range": ("LOW", "HIGH"),
              "weight_decay_range": ("LOW", "HIGH"), "batch_sizes": "N"},
)


def add_parser(subparsers) -> None:
    RETRAIN_FLAGS.add_parser(
        subparsers, "retrain", run, help="retrain a searched genotype or a baseline (Ray Train + Tune/Optuna, tracked in MLflow)",
        description="Train a network from a genotype file, a search's MLflow run (--from-run), or a baseline "
        "(--baseline); with no source, the latest finished search. Trials run as a Ray Tune experiment; with "
        "--trials > 1 Optuna samples lr, weight decay and batch size and ASHA stops weak trials. Command-line flags "
        "win over --config.",
    )


def run(args: argparse.Namespace) -> int:
    import nasplat
    from nasplat.tracking.uri import ui_command
    from pipelines.search import exit_status

    result = nasplat.retrain(RETRAIN_FLAGS.config_from_args(args))
    print("[nasplat] retrain finished")
    print(f"[nasplat] model {result.model_label}: best val mIoU {result.metrics['best_val_miou']:.4f} "
          f"at epoch {result.metrics['best_epoch']}")
    print(f"[nasplat] best checkpoint: {result.checkpoint}  (nasplat evaluate --checkpoint {result.checkpoint})")
    print(f"[nasplat] MLflow parent run: {result.run_id} (best trial run, holding the logged model: "
          f"{result.best_run_id})")
    print(f"[nasplat] MLflow model: {result.model_uri}")
    if result.registered_version is not None:
        print(f"[nasplat] registered model version: {result.registered_version}")
    print(f"[nasplat] open the MLflow UI: {ui_command(result.tracking_uri)}", flush=True)
    return exit_status(result)
