"""The ``nasplat`` command line.

Building the parser and ``--help`` import no PyTorch, Ray or MLflow: every command imports what it needs
inside its handler (tests/test_cli_startup.py checks it).
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Sequence

from nasplat.tracking.schema import QUIET_DOWNLOADS
from nasplat.training.config import ConfigError, ExperimentConfig
from pipelines.config_args import CommandParser, DeprecatedAlias

COMMAND_MODULES: tuple[str, ...] = ("pipelines.search", "pipelines.sample", "pipelines.export", "pipelines.submit",
                                    "pipelines.jobs", "pipelines.retrain", "pipelines.evaluate", "pipelines.baselines",
                                    "pipelines.profile_ops")
"""Modules that add a subcommand: each has ``add_parser(subparsers)``, which sets ``handler`` (args -> exit status)
with ``set_defaults``. Keep their top-level imports light: every ``nasplat`` call imports them."""

USER_ERRORS: tuple[tuple[str, str], ...] = (
    ("nasplat.data.records", "DataError"), ("nasplat.data.shard_format", "ShardError"),
    ("nasplat.runtime.resources", "ResourceError"),
)
"""(module, class) of the errors that mean bad input besides ConfigError, FileNotFoundError and KeyError: printed as
one line, exit status 2."""


def _loaded_class(module: str, name: str) -> type | None:
    """The class ``module.name`` if that module is imported already, else None (nothing it defines was raised)."""
    return getattr(sys.modules.get(module), name, None)


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
    helps = ExperimentConfig.help_texts()
    prepare.add_argument("source", choices=("voc", "cityscapes", "synthetic"))
    prepare.add_argument("--data-root", metavar="DIR", help=helps["data_root"] + " (required for voc and cityscapes)")
    prepare.add_argument("--root", dest="data_root", action=DeprecatedAlias, replacement="--data-root")
    prepare.add_argument("--out", required=True, help="output folder for the shards: new, empty, or filled by an "
                         "earlier prepare of the same dataset (which it resumes)")
    prepare.add_argument("--splits", help="comma-separated splits (default: voc train_aug or train, and val; "
                         "cityscapes train,val)")
    prepare.add_argument("--skip-bad", action="store_true", help="skip unreadable or invalid samples and list "
                         "them in manifest.json instead of failing")
    prepare.add_argument("--max-shard-mb", type=float, default=256.0, help="shard size bound in MiB")
    prepare.add_argument("--train-samples", type=int, default=ExperimentConfig.train_samples,
                         help=helps["train_samples"])
    prepare.add_argument("--val-samples", type=int, default=ExperimentConfig.val_samples, help=helps["val_samples"])
    prepare.add_argument("--synthetic-samples", type=int, nargs=2, dest="train_samples", action=DeprecatedAlias,
                         replacement="--train-samples N --val-samples N", targets=("train_samples", "val_samples"))
    prepare.add_argument("--image-size", type=int, default=64, help="synthetic data: image size in pixels")
    prepare.add_argument("--seed", type=int, default=0, help="synthetic data: seed")
    prepare.set_defaults(handler=_run_data)


def _run_data(args: argparse.Namespace) -> int:
    from pathlib import Path

    from pipelines.data import describe, prepare

    out = Path(args.out).expanduser().resolve()
    manifest = prepare(
        args.source, out, root=args.data_root, splits=args.splits.split(",") if args.splits else None,
        skip_bad=args.skip_bad, max_shard_bytes=int(args.max_shard_mb * 2**20),
        synthetic_samples=(args.train_samples, args.val_samples), image_size=args.image_size, seed=args.seed,
    )
    print(describe(manifest, out))
    return 0


def _sort_column(text: str) -> str:
    """``--sort``'s value as a column key (headings and aliases accepted), or argparse's usage error."""
    from pipelines.compare import CompareError, sort_key_name

    try:
        return sort_key_name(text)
    except CompareError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _add_compare_parser(subparsers) -> None:
    from pipelines.compare import COLUMNS, DEFAULT_EXPERIMENTS, FORMATS, run_compare
    from pipelines.pareto import COSTS, run_plot
    from pipelines.pareto import DEFAULT_EXPERIMENTS as PLOTTED

    parser = subparsers.add_parser(
        "compare", help="table of the searches, retrains and baselines recorded in MLflow",
        description="One row per search or retrain (MLflow parent run): name, id, status, kind, space or model, "
        "dataset, best mIoU, parameters and GFLOPs at the training crop (a search's supernet, a retrain's "
        "network), epochs, CPU- or GPU-hours (child runs' wall time x workers x CPUs or GPUs per worker), "
        "genotype hash, where a retrain's network came from (search run, top-k rank, genotype file), start time.",
    )
    parser.add_argument("--experiment", action="append", metavar="NAME", help="MLflow experiment name, repeatable "
                        f"(default: those of {', '.join(DEFAULT_EXPERIMENTS)} that exist; with --plot: {', '.join(PLOTTED)})")
    parser.add_argument("--tracking-uri", help=ExperimentConfig.help_texts()["tracking_uri"])
    columns = [key for key, _ in COLUMNS]
    parser.add_argument("--sort", default="best_miou", type=_sort_column, choices=columns, metavar="COLUMN",
                        help=f"column to sort by: {', '.join(columns)}; descending unless --ascending, missing values "
                        "last")
    parser.add_argument("--ascending", action="store_true", help="sort ascending")
    parser.add_argument("--limit", type=int, metavar="N", help="show the first N rows only")
    parser.add_argument("--format", choices=FORMATS, default="table", help="output format")
    parser.add_argument("--plot", metavar="FILE", help="instead of the table, draw validation mIoU against --cost for "
                        "every retrained model, baseline and evaluation in the experiments, with the Pareto front, "
                        "into FILE (PNG) and log it to MLflow (docs/cost_aware_search.md)")
    parser.add_argument("--cost", choices=tuple(COSTS), default="latency", help="the cost axis of --plot: latency_ms, "
                        "gflops or params of each run")
    parser.add_argument("--no-log-plot", dest="log_plot", action="store_false", help="with --plot: write FILE only, "
                        "log nothing to MLflow")
    parser.set_defaults(handler=lambda args: (run_plot if args.plot else run_compare)(args))


def _add_ui_parser(subparsers) -> None:
    from pipelines.compare import run_ui

    parser = subparsers.add_parser("ui", help="start the MLflow UI on the project's tracking store",
                                   description="Run `mlflow ui` on the local store (SQLite artifacts beside it).")
    parser.add_argument("--tracking-uri", help="the local MLflow store to serve (default: MLFLOW_TRACKING_URI, else "
                        "sqlite:///<cwd>/mlflow.db)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=5000, help="port")
    parser.set_defaults(handler=run_ui)


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(prog="nasplat", description="Distributed NAS for semantic segmentation.")
    subparsers = parser.add_subparsers(dest="command", required=False)
    _add_data_parser(subparsers)
    _add_compare_parser(subparsers)
    _add_ui_parser(subparsers)
    for module in COMMAND_MODULES:
        importlib.import_module(module).add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``nasplat ARGV``; returns the exit status (argparse's too: 0 after --help, 2 for a usage error)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as stop:  # argparse has printed the help or the usage error
        return stop.code if isinstance(stop.code, int) else 2
    if args.command is None:
        parser.print_help()
        return 0
    os.environ.setdefault(QUIET_DOWNLOADS[0], QUIET_DOWNLOADS[1])  # no tqdm bars between nasplat's own lines
    try:
        return int(args.handler(args) or 0)
    except (ConfigError, FileNotFoundError, KeyError) as err:
        print(f"nasplat: error: {err}", file=sys.stderr)
        return 2
    except Exception as err:  # the data readers', the resource planner's and Ray's errors end up here
        if isinstance(err, tuple(cls for cls in (_loaded_class(*spec) for spec in USER_ERRORS) if cls)):
            print(f"nasplat: error: {err}", file=sys.stderr)
            return 2
        failed = _loaded_class("nasplat.runtime.driver", "AllTrialsFailed")
        if failed is not None and isinstance(err, failed):
            print(f"nasplat: error: {err}", file=sys.stderr)
            return 1
        interrupted = _loaded_class("nasplat.runtime.driver", "ExperimentInterrupted")
        if interrupted is not None and isinstance(err, interrupted):
            print(f"nasplat: {err}", file=sys.stderr)
            return 130
        raise


if __name__ == "__main__":
    sys.exit(main())
