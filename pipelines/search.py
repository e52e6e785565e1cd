"""`nasplat search`: flags of a search, and what the terminal shows when it ends (the work is ``nasplat.search``)."""
from __future__ import annotations

import argparse
import json
from typing import Any

from nasplat.searching.config import SearchConfig
from pipelines.config_args import FlagSpec

SEARCH_FLAGS = FlagSpec(
    SearchConfig,
    mapping_flags={"space_options": "--space-option", "early_stop_options": "--early-stop-option",
                   "remedy_options": "--remedy-option"},
    list_flags={"remedy": (str, "+")},
    metavars={"data_root": "DIR", "remedy": "NAME", "cost_table": "FILE", "cost_weight": "W", "cost_target": "T",
              "top_k": "K"},
)


def add_parser(subparsers) -> None:
    SEARCH_FLAGS.add_parser(
        subparsers, "search", run, help="run an architecture search (defaults: DARTS on synthetic data, local Ray, local MLflow)",
        description="Run a supernet search as a Ray Tune experiment of Ray Train trials, tracked in MLflow. "
        "Every option can also be set in a YAML file passed with --config (keys = option names with "
        "underscores); command-line flags win over the file.",
    )


def format_genotype(genotype: Any) -> str:
    """JSON with one line per field, so cells read as lists of (op, input) pairs."""
    lines = [f"  {json.dumps(key)}: {json.dumps(value)}" for key, value in genotype.to_dict().items()]
    return "{\n" + ",\n".join(lines) + "\n}"


def run(args: argparse.Namespace) -> int:
    import nasplat
    from nasplat.tracking.uri import ui_command

    result = nasplat.search(SEARCH_FLAGS.config_from_args(args))
    print("[nasplat] search finished", flush=True)
    print(format_genotype(result.genotype))
    print(f"[nasplat] supernet val mIoU (best trial, last epoch): {result.metrics['best_val_miou']:.4f}")
    print(f"[nasplat] genotype written to {result.run_dir}/genotype.json")
    print(f"[nasplat] MLflow parent run: {result.run_id} (best trial run: {result.best_run_id})")
    print(f"[nasplat] open the MLflow UI: {ui_command(result.tracking_uri)}", flush=True)
    return exit_status(result)


def exit_status(result: Any) -> int:
    """0 when every trial succeeded, 3 when some failed (the result printed is the best of the others)."""
    if not result.failed_trials:
        return 0
    print(f"[nasplat] warning: {result.failed_trials} trial(s) failed (tag nasplat.failure_reason of their MLflow runs "
          "says why); the result above is the best of the others", flush=True)
    return 3
