"""Where the wall time of the default `nasplat search` goes: training and validation against everything else.

    python bench/overhead.py [--epochs N] [--workdir DIR] [any other `nasplat search` option]

Runs `nasplat search` with the defaults (``configs/quick.yaml``: local Ray, 2 workers) in a fresh folder with its
own MLflow store, then splits the run's wall time with three clocks that need no guessing:

- the time each line of the search's output arrived (the start-up, Ray's start);
- the MLflow store: the trial run's start time, and the ``time_<phase>_s`` metrics rank 0 records after each
  epoch (``nasplat/training/phases.py``; the phases of an epoch add up to its wall time), whose timestamps say
  when each epoch ended;
- this process's clock around the command (the end: Tune, Ray's shutdown, the parent run).

Prints a table of the parts, the share outside training and validation steps (target: below 15 % of the whole
run), and each epoch's own overhead (target: below 5 % of the epoch). With ``--epochs`` below the default it also
projects the whole-run share to the default number of epochs from the measured fixed and per-epoch costs.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mlflow.tracking import MlflowClient

from nasplat.runtime.search_worker import PHASES
from nasplat.searching.config import SearchConfig

WORK = ("train", "eval")
"""The phases that are the search's training and validation steps; every other part is overhead."""
RUN_TARGET, EPOCH_TARGET = 0.15, 0.05
MARKERS = {"store": "[nasplat] MLflow tracking store:", "ray": "[nasplat] resources:"}
"""Lines the driver prints: before Ray starts, and once it runs and the plan is made."""


def run_search(workdir: Path, options: list[str]) -> tuple[float, float, dict[str, float], list[str]]:
    """Run the search in ``workdir``; returns (start, end, first time each marker line arrived, output lines)."""
    command = [sys.executable, "-m", "pipelines.cli", "search", "--tracking-uri", str(workdir / "store"),
               "--storage", str(workdir / "nasplat_runs"), "--name", "overhead", *options]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    print(f"$ {' '.join(command)}", file=sys.stderr, flush=True)
    seen: dict[str, float] = {}
    lines: list[str] = []
    start = time.time()
    with subprocess.Popen(command, cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True) as process:
        for line in process.stdout:
            now = time.time()
            lines.append(line.rstrip("\n"))
            for key, marker in MARKERS.items():
                if marker in line and key not in seen:
                    seen[key] = now
            if "[nasplat] trial" in line or "[nasplat] resources" in line:
                print(f"{now - start:7.1f}s {line.rstrip()}", file=sys.stderr, flush=True)
    end = time.time()
    if process.returncode != 0:
        raise SystemExit("the search failed:\n" + "\n".join(lines[-40:]))
    missing = set(MARKERS) - set(seen)
    if missing:
        raise SystemExit(f"the search printed no {sorted(missing)} line; output:\n" + "\n".join(lines[-40:]))
    return start, end, seen, lines


def trial_record(store: Path) -> tuple[float, dict[int, dict[str, float]], dict[int, float]]:
    """The trial run's start (s), each epoch's phase seconds and the time its phases were recorded (s)."""
    client = MlflowClient(tracking_uri=f"sqlite:///{store / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(SearchConfig.experiment)
    runs = client.search_runs([experiment.experiment_id])
    trials = [r for r in runs if r.data.tags.get("mlflow.parentRunId")]
    if len(trials) != 1:
        raise SystemExit(f"expected one trial run in {store}, found {len(trials)}")
    run = trials[0]
    epochs: dict[int, dict[str, float]] = {}
    recorded: dict[int, float] = {}
    for phase in PHASES:
        for metric in client.get_metric_history(run.info.run_id, f"time_{phase}_s"):
            epochs.setdefault(metric.step, {})[phase] = metric.value
            recorded[metric.step] = metric.timestamp / 1000
    if not epochs:
        raise SystemExit("the trial run holds no time_<phase>_s metrics: is this nasplat older than the bench?")
    return run.info.start_time / 1000, dict(sorted(epochs.items())), recorded


def breakdown(start: float, end: float, seen: dict[str, float], trial_start: float,
              epochs: dict[int, dict[str, float]], recorded: dict[int, float]) -> list[tuple[str, float, bool]]:
    """(part, seconds, is work) rows that add up to ``end - start``."""
    first, last = min(epochs), max(epochs)
    worker_entry = recorded[first] - sum(epochs[first].values())  # the phases of epoch 1 include the setup
    totals = {phase: sum(e.get(phase, 0.0) for e in epochs.values()) for phase in PHASES}
    timed = sum(totals.values())
    rows = [
        ("start-up: imports, config and data checks", seen["store"] - start, False),
        ("Ray start and resource plan", seen["ray"] - seen["store"], False),
        ("parent MLflow run, Tune, trial start", trial_start - seen["ray"], False),
        ("Ray Train worker group start", worker_entry - trial_start, False),
        *((f"worker {phase}: {PHASES[phase]}", totals[phase], phase in WORK) for phase in PHASES),
        ("between epochs, not timed by a phase", recorded[last] - worker_entry - timed, False),
        ("end: trial run closed, Tune, Ray shutdown, parent run", end - recorded[last], False),
    ]
    return rows


def print_report(rows: list[tuple[str, float, bool]], epochs: dict[int, dict[str, float]], total: float,
                 epochs_run: int, default_epochs: int) -> None:
    print("| part | seconds | share of the run |")
    print("|---|---:|---:|")
    for name, seconds, work in rows:
        label = f"**{name}** (work)" if work else name
        print(f"| {label} | {seconds:.1f} | {seconds / total:.1%} |")
    overhead = sum(seconds for _, seconds, work in rows if not work)
    print(f"| **whole run** | {total:.1f} | 100% |")
    print()
    verdict = "meets" if overhead / total < RUN_TARGET else "misses"
    print(f"Outside training and validation: {overhead:.1f} s of {total:.1f} s = {overhead / total:.1%} of the run "
          f"({verdict} the {RUN_TARGET:.0%} target).")
    print()
    print("| epoch | wall (s) | train (s) | eval (s) | checkpoint | records | pictures | report | other | overhead |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    shares = []
    for step, phases in epochs.items():
        wall = sum(v for k, v in phases.items() if k != "setup")
        extra = wall - sum(phases.get(k, 0.0) for k in WORK)
        shares.append(extra / wall)
        columns = ("checkpoint", "records", "pictures", "report", "other")
        cells = " | ".join(f"{phases.get(k, 0.0):.2f}" for k in columns)
        print(f"| {step} | {wall:.1f} | {phases['train']:.1f} | {phases['eval']:.1f} | {cells} | {extra / wall:.1%} |")
    verdict = "meets" if max(shares) < EPOCH_TARGET else "misses"
    print()
    print(f"Per-epoch overhead: median {statistics.median(shares):.1%}, worst {max(shares):.1%} ({verdict} the "
          f"{EPOCH_TARGET:.0%} target).")
    if epochs_run < default_epochs:
        fixed = overhead - sum(sum(v for k, v in p.items() if k not in WORK and k != "setup") for p in epochs.values())
        per_epoch = (total - fixed) / epochs_run
        per_epoch_overhead = (overhead - fixed) / epochs_run
        projected = (fixed + default_epochs * per_epoch_overhead) / (fixed + default_epochs * per_epoch)
        print(f"Projected to the default {default_epochs} epochs (fixed {fixed:.1f} s, {per_epoch:.1f} s and "
              f"{per_epoch_overhead:.1f} s of overhead per epoch): {projected:.1%} of the run.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=None, help="epochs of the search (default: the config's)")
    parser.add_argument("--workdir", type=Path, default=None, help="folder for the run (default: a new temp folder)")
    args, options = parser.parse_known_args()
    workdir = (args.workdir or Path(tempfile.mkdtemp(prefix="nasplat-overhead-"))).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    if args.epochs is not None:
        options = ["--epochs", str(args.epochs), *options]
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    start, end, seen, _ = run_search(workdir, options)
    trial_start, epochs, recorded = trial_record(workdir / "store")
    default_epochs = SearchConfig().epochs
    print(f"`nasplat search {' '.join(options)}` in {workdir}: {os.cpu_count()} CPUs, load average {load} at the "
          f"start, {' '.join(f'{x:.1f}' for x in os.getloadavg())} at the end.")
    print()
    print_report(breakdown(start, end, seen, trial_start, epochs, recorded), epochs, end - start,
                 len(epochs), default_epochs)


if __name__ == "__main__":
    main()
