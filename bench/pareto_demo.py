"""The Pareto picture from a real experiment: cost-aware searches, their retrains, random genotypes, baselines.

In one folder (``--workdir``) with its own MLflow store (``sqlite:///<workdir>/mlflow.db``, an absolute path) and
run storage (``<workdir>/nasplat_runs``), through the ``nasplat`` CLI only:

1. ``nasplat search --cost flops --cost-weight W`` for each ``--weights`` value (same seed, small budget);
2. ``nasplat retrain --from-run`` of each search (and ``--rank 2`` of the last one), ``nasplat retrain --genotype``
   of ``--random`` genotypes from ``nasplat sample-genotype --space darts`` (seeds 1, 2, ...), and
   ``nasplat baselines --models icnet,deeplabv3plus_mobilenet_v2``, all with the same budget and seed;
3. ``nasplat compare --plot <plot-dir>/pareto_<cost>.png --cost C`` for gflops and latency, ``nasplat compare``
   (the runs' table), and a markdown table of the plotted points (stdout; progress goes to stderr).

Every step is recorded in ``<workdir>/steps.json`` when it ends; running again with the same ``--workdir`` skips the
steps that finished and redoes the rest, so a failure late in the run costs only the failed step. The commands'
output is also appended to ``<workdir>/commands.log``.

    nice -n 10 python bench/pareto_demo.py --workdir /tmp/pareto [--plot-dir docs/img] [--weights 0 1 3]
        [--search-epochs 6] [--retrain-epochs 8] [--image-size 32] [--train-samples 192] [--val-samples 32]

The defaults took 29 minutes on 2 CPU cores shared with other jobs (docs/benchmarks.md has the run). At this budget the
networks are far from converged: read the mIoU differences as mostly noise, the costs as exact.
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

PARENT_RUN = re.compile(r"MLflow parent run: ([0-9a-f]{32})")
BASELINES = ("icnet", "deeplabv3plus_mobilenet_v2")
"""The hand-designed networks retrained beside the searched and random genotypes (``nasplat baselines --models``)."""


def _log(message: str) -> None:
    print(f"[pareto-demo] {message}", file=sys.stderr, flush=True)


class Steps:
    """The finished steps of a workdir (``steps.json``: step name -> what it produced), so a rerun skips them."""

    def __init__(self, workdir: Path) -> None:
        self.path = workdir / "steps.json"
        self.done: dict[str, dict] = json.loads(self.path.read_text()) if self.path.exists() else {}

    def record(self, name: str, result: dict) -> dict:
        self.done[name] = result
        self.path.write_text(json.dumps(self.done, indent=1) + "\n")
        return result


def nasplat(args: list[str], workdir: Path) -> str:
    """Run ``nasplat ARGS`` from the repository (output echoed to stderr and ``commands.log``); its stdout."""
    command = [sys.executable, "-m", "pipelines.cli", *args]
    _log("$ nasplat " + " ".join(args))
    started = time.perf_counter()
    with (workdir / "commands.log").open("a") as log:
        log.write("$ nasplat " + " ".join(args) + "\n")
        process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        lines = []
        for line in process.stdout:
            lines.append(line)
            log.write(line)
            sys.stderr.write(line)
        code = process.wait()
    if code != 0:
        raise SystemExit(f"[pareto-demo] `nasplat {' '.join(args)}` failed with exit status {code} "
                         f"(output in {workdir / 'commands.log'})")
    _log(f"done in {time.perf_counter() - started:.0f} s")
    return "".join(lines)


def parent_run(output: str, what: str) -> str:
    """The MLflow parent run id a search or retrain printed."""
    found = PARENT_RUN.findall(output)
    if not found:
        raise SystemExit(f"[pareto-demo] {what} printed no 'MLflow parent run: <id>' line")
    return found[-1]


def run_step(steps: Steps, name: str, label: str, args: list[str], workdir: Path) -> dict:
    """One search or retrain, unless ``steps.json`` has it: its parent run id, label and wall time."""
    if name in steps.done:
        _log(f"{name}: done before (run {steps.done[name]['run_id']}), skipped")
        return steps.done[name]
    started = time.perf_counter()
    run_id = parent_run(nasplat(args, workdir), name)
    return steps.record(name, {"run_id": run_id, "label": label, "seconds": round(time.perf_counter() - started)})


def budget(args: argparse.Namespace, epochs: int) -> list[str]:
    """The flags every search and retrain shares: data, crop, epochs, seed, store and storage."""
    return ["--image-size", str(args.image_size), "--train-samples", str(args.train_samples),
            "--val-samples", str(args.val_samples), "--epochs", str(epochs), "--seed", str(args.seed),
            "--tracking-uri", args.tracking_uri, "--storage", str(args.workdir / "nasplat_runs")]


def searches(args: argparse.Namespace, steps: Steps) -> list[dict]:
    """``nasplat search --cost flops --cost-weight W`` for each weight."""
    return [run_step(steps, f"search-w{weight:g}", f"search W={weight:g}",
                     ["search", "--cost", "flops", "--cost-weight", f"{weight:g}", "--name", f"search-w{weight:g}",
                      *budget(args, args.search_epochs)], args.workdir)
            for weight in args.weights]


def retrains(args: argparse.Namespace, steps: Steps, searched: list[dict]) -> list[dict]:
    """Each search's genotype (the last search's second-ranked one too), random genotypes, the baselines."""
    common = budget(args, args.retrain_epochs)
    done = []
    for search in searched:
        name = f"retrain-{search['label'].split()[-1].lower().replace('=', '')}"
        done.append(run_step(steps, name, search["label"],
                             ["retrain", "--from-run", search["run_id"], "--name", name, *common], args.workdir))
    last = searched[-1]
    name = f"retrain-{last['label'].split()[-1].lower().replace('=', '')}-rank2"
    done.append(run_step(steps, name, f"{last['label']}, rank 2",
                         ["retrain", "--from-run", last["run_id"], "--rank", "2", "--name", name, *common],
                         args.workdir))
    for seed in range(1, args.random + 1):
        genotype = args.workdir / f"random_{seed}.json"
        if not genotype.exists():
            nasplat(["sample-genotype", "--space", "darts", "--seed", str(seed), "--out", str(genotype)], args.workdir)
        done.append(run_step(steps, f"retrain-random{seed}", f"random (sample seed {seed})",
                             ["retrain", "--genotype", str(genotype), "--name", f"retrain-random{seed}", *common],
                             args.workdir))
    if "baselines" not in steps.done:
        started = time.perf_counter()
        nasplat(["baselines", "--models", ",".join(BASELINES), "--name", "baselines", *common], args.workdir)
        steps.record("baselines", {"seconds": round(time.perf_counter() - started)})
    return done


def plots(args: argparse.Namespace) -> None:
    """``nasplat compare --plot`` for each cost, then the table of runs."""
    for cost in args.costs:
        nasplat(["compare", "--tracking-uri", args.tracking_uri, "--plot", str(args.plot_dir / f"pareto_{cost}.png"),
                 "--cost", cost], args.workdir)
    table = nasplat(["compare", "--tracking-uri", args.tracking_uri, "--experiment", "nasplat-retrain",
                     "--experiment", "nasplat-baselines"], args.workdir)
    print(table)


def points_table(args: argparse.Namespace, labels: dict[str, str]) -> str:
    """Every plotted model with its source (``labels`` by run id, else the model tag), mIoU, GFLOPs, latency and parameters, and whether it is on each front."""
    from pipelines.compare import open_store
    from pipelines.pareto import experiment_ids, model_points, pareto_front

    client, uri = open_store(args.tracking_uri)
    ids = [i for _, i in experiment_ids(client, uri, None)]
    by_cost = {cost: {p.run_id: p for p in model_points(client, ids, cost)}
               for cost in ("gflops", "latency", "params")}
    fronts = {cost: {p.run_id for p in pareto_front(list(points.values()))} for cost, points in by_cost.items()}
    lines = ["| source | model | val mIoU | GFLOPs | latency (ms) | params | on front (GFLOPs / latency) |",
             "|---|---|---:|---:|---:|---:|---|"]
    for point in sorted(by_cost["gflops"].values(), key=lambda p: (p.cost, -p.miou)):
        latency, params = by_cost["latency"].get(point.run_id), by_cost["params"].get(point.run_id)
        front = " / ".join("yes" if point.run_id in fronts[c] else "no" for c in ("gflops", "latency"))
        lines.append(f"| {labels.get(point.run_id, point.label)} | `{point.label}` | {point.miou:.3f} | "
                     f"{point.cost:.4f} | {latency.cost if latency else float('nan'):.1f} | "
                     f"{int(params.cost) if params else 0:,} | {front} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, required=True,
                        help="folder of the MLflow store, the runs and steps.json (made if absent; reused to resume)")
    parser.add_argument("--plot-dir", type=Path, help="where pareto_<cost>.png go (default: the workdir)")
    parser.add_argument("--weights", type=float, nargs="+", default=[0.0, 1.0, 3.0],
                        help="--cost-weight of each search (--cost flops) (default: 0 1 3)")
    parser.add_argument("--random", type=int, default=2, help="random genotypes retrained (default: 2)")
    parser.add_argument("--search-epochs", type=int, default=6, help="epochs of each search (default: 6)")
    parser.add_argument("--retrain-epochs", type=int, default=8, help="epochs of each retrain (default: 8)")
    parser.add_argument("--image-size", type=int, default=32, help="crop, searches and retrains (default: 32)")
    parser.add_argument("--train-samples", type=int, default=192, help="synthetic training samples (default: 192)")
    parser.add_argument("--val-samples", type=int, default=32, help="synthetic validation samples (default: 32)")
    parser.add_argument("--seed", type=int, default=0, help="seed of every search and retrain (default: 0)")
    parser.add_argument("--costs", nargs="+", default=["gflops", "latency"], choices=("gflops", "latency", "params"),
                        help="the cost axes plotted (default: gflops latency)")
    args = parser.parse_args(argv)
    if not args.weights or args.random < 0:
        parser.error("--weights needs at least one value and --random must be >= 0")
    args.workdir = args.workdir.expanduser().resolve()
    args.workdir.mkdir(parents=True, exist_ok=True)
    args.plot_dir = (args.plot_dir or args.workdir).expanduser().resolve()
    args.tracking_uri = f"sqlite:///{args.workdir / 'mlflow.db'}"

    started = time.perf_counter()
    steps = Steps(args.workdir)
    searched = searches(args, steps)
    retrained = retrains(args, steps, searched)
    plots(args)
    print(points_table(args, {r["run_id"]: r["label"] for r in retrained}))  # baselines: their model tag
    timings = {name: step.get("seconds") for name, step in steps.done.items() if "seconds" in step}
    _log(f"step wall times (s): {json.dumps(timings)}")
    _log(f"finished in {time.perf_counter() - started:.0f} s (this invocation); store {args.tracking_uri}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
