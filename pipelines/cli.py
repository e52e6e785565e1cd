"""The ``nasplat`` command line."""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

from nasplat.data.records import DataError
from nasplat.data.shard_format import ShardError
from nasplat.training.config import ConfigError, ExperimentConfig

COMMAND_MODULES: tuple[str, ...] = ("pipelines.search", "pipelines.sample", "pipelines.export", "pipelines.submit", "pipelines.jobs", "pipelines.retrain", "pipelines.evaluate", "pipelines.baselines")
"""Modules that add a subcommand: each has ``add_parser(subparsers)``, which sets ``handler`` (args -> exit status)
with ``set_defaults``. Keep their top-level imports light: every ``nasplat`` call imports them."""


def _add_data_parser(subparsers) -> None:
    data = subparsers.add_parser("data", help="prepare datasets (Parquet shards for distributed reading)")
    actions = data.add_subparsers(dest="data_command", required=True)
    prepare = actions.add_parser(
        "prepare", help="write a dataset in its official layout as verified Parquet shards",
        description="Read PASCAL VOC 2012 (VOCdevkit/VOC2012), Cityscapes (leftImg8bit + gtFine labelIds) or "
        "the built-in synthetic scenes, check every sample, and write Parquet shards with masks in train ids "
        "(255 = ignore) plus manifest.json. Bad samples stop it before anything is written, unless --skip-bad. "
        "An interrupted run leaves no manifest; running it again completes the work. It never deletes a file "
        "it did not write: an --out folder holding anything else, or another dataset, is refused.",
    )
    prepare.add_argument("source", choices=("voc", "cityscapes", "synthetic"))
    prepare.add_argument("--root", help="dataset root in the official layout (required for voc and cityscapes)")
    prepare.add_argument("--out", required=True, help="output folder for the shards: new, empty, or filled by an "
                         "earlier prepare of the same dataset (which it resumes)")
    prepare.add_argument("--splits", help="comma-separated splits (default: voc train_aug or train, and val; "
                         "cityscapes train,val)")
    prepare.add_argument("--skip-bad", action="store_true", help="skip unreadable or invalid samples and list "
                         "them in manifest.json instead of failing")
    prepare.add_argument("--max-shard-mb", type=float, default=256.0, help="shard size bound in MiB (default 256)")
    prepare.add_argument("--synthetic-samples", type=int, nargs=2, default=(384, 64), metavar=("TRAIN", "VAL"),
                         help="synthetic: number of train and val samples (default 384 64)")
    prepare.add_argument("--image-size", type=int, default=64, help="synthetic: image size (default 64)")
    prepare.add_argument("--seed", type=int, default=0, help="synthetic: seed (default 0)")


def _run_data(args: argparse.Namespace) -> None:
    from pathlib import Path

    from pipelines.data import describe, prepare

    out = Path(args.out).expanduser().resolve()
    manifest = prepare(
        args.source, out, root=args.root, splits=args.splits.split(",") if args.splits else None,
        skip_bad=args.skip_bad, max_shard_bytes=int(args.max_shard_mb * 2**20),
        synthetic_samples=tuple(args.synthetic_samples), image_size=args.image_size, seed=args.seed,
    )
    print(describe(manifest, out))


def _add_compare_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "compare", help="table of the searches and retrains recorded in an MLflow experiment",
        description="One row per search or retrain (MLflow parent run): name, id, status, kind, space or model, "
        "dataset, best mIoU, parameters and GFLOPs at the training crop (a search's supernet, a retrain's "
        "network), epochs, CPU- or GPU-hours (child runs' wall time x workers x CPUs or GPUs per worker), "
        "genotype hash, start time. Retrains are in the experiment nasplat-retrain.",
    )
    parser.add_argument("--experiment", default="nasplat-search", help="MLflow experiment name (default nasplat-search)")
    parser.add_argument("--tracking-uri", help=ExperimentConfig.help_texts()["tracking_uri"])
    parser.add_argument("--sort", default="best_miou", metavar="COLUMN", help="column to sort by: run_name, run_id, "
                        "status, kind, space, dataset, best_miou, params, gflops, epochs, hours, genotype, started "
                        "(default best_miou; descending unless --ascending; missing values last)")
    parser.add_argument("--ascending", action="store_true", help="sort ascending")
    parser.add_argument("--limit", type=int, metavar="N", help="show the first N rows only")
    parser.add_argument("--format", choices=("table", "csv", "json"), default="table", help="output format (default table)")


def _add_ui_parser(subparsers) -> None:
    parser = subparsers.add_parser("ui", help="start the MLflow UI on the project's tracking store",
                                   description="Run `mlflow ui` on the local store (SQLite artifacts beside it).")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite:///<cwd>/mlflow.db)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=5000, help="port (default 5000)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nasplat", description="Distributed NAS for semantic segmentation.")
    subparsers = parser.add_subparsers(dest="command", required=False)
    _add_data_parser(subparsers)
    _add_compare_parser(subparsers)
    _add_ui_parser(subparsers)
    for module in COMMAND_MODULES:
        importlib.import_module(module).add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        if args.command == "data":
            _run_data(args)
        elif args.command == "compare":
            from pipelines.compare import run_compare

            return run_compare(args)
        elif args.command == "ui":
            from pipelines.compare import run_ui

            return run_ui(args)
        else:
            return int(args.handler(args) or 0)
    except (ConfigError, FileNotFoundError, KeyError, DataError, ShardError) as err:
        print(f"nasplat: error: {err}", file=sys.stderr)
        return 2
    except Exception as err:  # the resource planner's and Ray's errors end up here
        from nasplat.runtime.resources import ResourceError

        from nasplat.runtime.driver import ExperimentInterrupted

        if isinstance(err, ResourceError):
            print(f"nasplat: error: {err}", file=sys.stderr)
            return 2
        if isinstance(err, ExperimentInterrupted):
            print(f"nasplat: {err}", file=sys.stderr)
            return 130
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
