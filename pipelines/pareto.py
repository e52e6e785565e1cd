"""`nasplat compare --plot FILE`: validation mIoU against a cost for every trained model, with the Pareto front.

Points are the retrain parent runs (``nasplat retrain`` and ``nasplat baselines``; each carries ``val_miou`` and its
network's ``latency_ms``, ``gflops`` and ``params``, see :mod:`nasplat.retraining.summary`) and the ``evaluate`` runs
of the experiments. The picture is written to FILE and, unless ``--no-log-plot``, logged with the points as JSON to
one ``compare`` run per set of experiments (in the first one; reused and overwritten on the next plot of the same
set, so the experiment holds one current picture per cost: ``pareto_<cost>.png``).
"""
from __future__ import annotations

import dataclasses
import json
import tempfile
from collections.abc import Sequence
from pathlib import Path

from nasplat.tracking import schema

COSTS = {"latency": (schema.LATENCY_METRIC, "latency at batch 1 (ms)"),
         "gflops": (schema.GFLOPS_METRIC, "GFLOPs at the training crop"),
         "params": (schema.PARAMS_METRIC, "parameters")}
"""``--cost`` -> (the run metric, the axis label)."""
DEFAULT_EXPERIMENTS = ("nasplat-retrain", "nasplat-baselines")
"""Where retrains and baselines go by default; the plot reads those that exist unless --experiment is given."""
EXPERIMENTS_TAG = "nasplat.compare_experiments"
"""On a ``compare`` run: the experiments it plots, comma-separated."""


@dataclasses.dataclass(frozen=True)
class Point:
    """One trained model: its label (``nasplat.model`` tag, else the run name), run, kind, mIoU and cost."""

    label: str
    run_id: str
    kind: str
    miou: float
    cost: float


def pareto_front(points: Sequence[Point]) -> list[Point]:
    """The points no other point dominates (cost no higher and mIoU no lower, one of them strictly), by cost."""
    front = [p for p in points
             if not any(q.cost <= p.cost and q.miou >= p.miou and (q.cost < p.cost or q.miou > p.miou) for q in points)]
    return sorted(front, key=lambda p: (p.cost, -p.miou))


def model_points(client, experiment_ids: Sequence[str], cost: str) -> list[Point]:
    """Every retrain parent run and evaluate run of the experiments that has ``val_miou`` and the cost metric."""
    from pipelines.compare import _all_runs

    metric = COSTS[cost][0]
    points = []
    for kind in (schema.RETRAIN, schema.EVALUATE):
        runs = [run for experiment_id in experiment_ids
                for run in _all_runs(client, experiment_id, f"tags.`{schema.KIND_TAG}` = '{kind}'")]
        for run in runs:
            metrics, tags = run.data.metrics, run.data.tags
            if schema.MIOU_METRIC in metrics and metric in metrics:
                label = tags.get(schema.MODEL_TAG) or run.info.run_name or run.info.run_id[:8]
                points.append(Point(label, run.info.run_id, kind, float(metrics[schema.MIOU_METRIC]),
                                    float(metrics[metric])))
    return points


def draw(points: Sequence[Point], cost: str, path: str | Path, title: str) -> Path:
    """Scatter mIoU against the cost (log axis when it spans more than 20x), the front as a staircase, labels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    front = pareto_front(points)
    figure, axes = plt.subplots(figsize=(8, 5.5), dpi=120)
    styles = {schema.RETRAIN: ("o", "retrained model"), schema.EVALUATE: ("s", "evaluation")}
    for kind, (marker, name) in styles.items():
        chosen = [p for p in points if p.kind == kind]
        if chosen:
            axes.scatter([p.cost for p in chosen], [p.miou for p in chosen], marker=marker, s=36,
                         facecolors="none" if kind == schema.EVALUATE else "tab:blue", edgecolors="tab:blue",
                         label=name, zorder=3)
    axes.step([p.cost for p in front], [p.miou for p in front], where="post", color="tab:red", linewidth=1.5,
              label="Pareto front", zorder=2)
    axes.scatter([p.cost for p in front], [p.miou for p in front], s=90, facecolors="none", edgecolors="tab:red",
                 zorder=4)
    for p in points:
        axes.annotate(p.label, (p.cost, p.miou), textcoords="offset points", xytext=(4, 4), fontsize=7)
    costs = [p.cost for p in points if p.cost > 0]
    if costs and max(costs) > 20 * min(costs):
        axes.set_xscale("log")  # ticks at 1, 2 and 5 per decade, plain numbers; minor ticks unlabelled (they crowd)
        axes.xaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
        axes.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda value, _: f"{value:g}"))
        axes.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    axes.margins(x=0.12, y=0.08)  # room for the labels of the outermost points
    axes.set_xlabel(COSTS[cost][1])
    axes.set_ylabel("validation mIoU")
    axes.set_title(title, fontsize=10)
    axes.grid(True, alpha=0.3)
    axes.legend(loc="best", fontsize=8)  # where it hides the fewest points
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
    return path


def points_record(points: Sequence[Point], cost: str, experiments: Sequence[str]) -> dict:
    """The plotted points as JSON, each with ``on_front``."""
    front = {p.run_id for p in pareto_front(points)}
    return {"cost": cost, "metric": COSTS[cost][0], "experiments": list(experiments),
            "points": [{**dataclasses.asdict(p), "on_front": p.run_id in front} for p in points]}


def log_plot(client, experiment_id: str, experiments: Sequence[str], picture: Path, record: dict) -> str:
    """Log the picture and its points to the ``compare`` run of these experiments (made on first use); its id."""
    from nasplat.tracking.runs import find_run

    names = ",".join(experiments)
    run_id = find_run(client, experiment_id, {schema.KIND_TAG: schema.COMPARE, EXPERIMENTS_TAG: names})
    if run_id is None:
        run_id = client.create_run(experiment_id, run_name="compare-pareto", tags={
            schema.KIND_TAG: schema.COMPARE, EXPERIMENTS_TAG: names}).info.run_id
        client.set_terminated(run_id)
    cost = record["cost"]
    with tempfile.TemporaryDirectory(prefix="nasplat-pareto-") as directory:
        copy = Path(directory) / schema.PARETO_ARTIFACT.format(cost=cost)
        copy.write_bytes(picture.read_bytes())
        client.log_artifact(run_id, str(copy))
        points = Path(directory) / f"pareto_{cost}.json"
        points.write_text(json.dumps(record, indent=1) + "\n")
        client.log_artifact(run_id, str(points))
    return run_id


def experiment_ids(client, uri: str, names: Sequence[str] | None) -> list[tuple[str, str]]:
    """``(name, id)`` of the named experiments (each must exist), or of the default ones that exist."""
    from pipelines.compare import CompareError

    wanted = list(names or DEFAULT_EXPERIMENTS)
    found = [(name, client.get_experiment_by_name(name)) for name in wanted]
    missing = [name for name, experiment in found if experiment is None]
    if (names and missing) or len(missing) == len(wanted):
        existing = sorted(e.name for e in client.search_experiments())
        raise CompareError(f"no experiment {', '.join(repr(m) for m in missing)} in {uri}; existing experiments: "
                           + (", ".join(repr(n) for n in existing) if existing else "none"))
    return [(name, experiment.experiment_id) for name, experiment in found if experiment is not None]


def run_plot(args) -> int:
    """``nasplat compare --plot FILE [--cost C] [--experiment NAME ...] [--no-log-plot]``; the exit status."""
    import sys

    from mlflow.exceptions import MlflowException

    from pipelines.compare import CompareError, open_store

    try:
        client, uri = open_store(args.tracking_uri)
        experiments = experiment_ids(client, uri, args.experiment)
        names = [name for name, _ in experiments]
        points = model_points(client, [i for _, i in experiments], args.cost)
        if not points:
            raise CompareError(f"no retrain or evaluate run with {schema.MIOU_METRIC} and {COSTS[args.cost][0]} in "
                               f"experiment(s) {', '.join(names)} of {uri}")
        path = draw(points, args.cost, Path(args.plot).expanduser().resolve(),
                    f"validation mIoU vs {args.cost}: {', '.join(names)} ({len(points)} models)")
        record = points_record(points, args.cost, names)
        run_id = log_plot(client, experiments[0][1], names, path, record) if args.log_plot else None
    except CompareError as err:
        print(f"nasplat: error: {err}", file=sys.stderr)
        return 2
    except MlflowException as err:
        print(f"nasplat: error: cannot read or write the MLflow store {uri}: {err.message}", file=sys.stderr)
        return 2
    front = pareto_front(points)
    print(f"[nasplat] {len(points)} models, {len(front)} on the Pareto front (best mIoU for their {args.cost}): "
          + ", ".join(f"{p.label} ({p.miou:.4f} at {p.cost:.4g})" for p in front))
    print(f"[nasplat] picture written to {path}")
    if run_id is not None:
        print(f"[nasplat] logged to MLflow run {run_id} (experiment {names[0]}) as "
              f"{schema.PARETO_ARTIFACT.format(cost=args.cost)}")
    return 0
