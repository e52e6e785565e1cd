"""`nasplat compare --plot`: the Pareto front of hand-placed runs in a sqlite store, the PNG, and its MLflow record."""
from __future__ import annotations

import json

import pytest
from mlflow.tracking import MlflowClient

from nasplat.tracking.uri import local_artifact_root
from pipelines.cli import main
from pipelines.pareto import Point, pareto_front

# label, kind, experiment, val_miou, latency_ms, params
RUNS = [
    ("darts:a", "retrain", "nasplat-retrain", 0.55, 2.0, 9e4),
    ("darts:b", "retrain", "nasplat-retrain", 0.50, 3.0, 8e4),    # darts:a is faster and better
    ("icnet", "retrain", "nasplat-baselines", 0.60, 5.0, 7e6),
    ("darts:tie", "retrain", "nasplat-retrain", 0.60, 5.0, 1e5),  # equal to icnet: neither dominates the other
    ("deeplabv3plus", "retrain", "nasplat-baselines", 0.70, 40.0, 4e7),
    ("duc_hdc", "retrain", "nasplat-baselines", 0.65, 50.0, 6e7),  # deeplabv3plus dominates it
    ("deeplabv3plus", "evaluate", "nasplat-baselines", 0.72, 45.0, 4e7),  # multi-scale: better and slower
]
LATENCY_FRONT = ["darts:a", "darts:tie", "icnet", "deeplabv3plus", "deeplabv3plus (evaluate)"]
PARAMS_FRONT = ["darts:b", "darts:a", "darts:tie", "deeplabv3plus (evaluate)"]  # icnet: darts:tie is as good


def _name(label: str, kind: str) -> str:
    return f"{label} (evaluate)" if kind == "evaluate" else label


def test_pareto_front_keeps_exactly_the_undominated_points():
    points = [Point(_name(label, kind), _name(label, kind), kind, miou, latency)
              for label, kind, _, miou, latency, _ in RUNS]
    front = pareto_front(points)
    assert sorted(p.label for p in front) == sorted(LATENCY_FRONT)
    assert [p.cost for p in front] == sorted(p.cost for p in front)
    assert pareto_front([]) == [] and pareto_front(points[:1]) == points[:1]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    uri = f"sqlite:///{tmp_path_factory.mktemp('store') / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    ids = {name: client.create_experiment(name, artifact_location=local_artifact_root(uri))
           for name in ("nasplat-retrain", "nasplat-baselines")}
    runs = {}
    for label, kind, experiment, miou, latency, params in RUNS:
        run_id = client.create_run(ids[experiment], tags={"nasplat.kind": kind, "nasplat.model": label}).info.run_id
        for key, value in {"val_miou": miou, "latency_ms": latency, "params": params, "gflops": 1.0}.items():
            client.log_metric(run_id, key, value)
        runs[run_id] = _name(label, kind)
    # not plotted: a retrain trial (its parent is the point), a retrain without a latency, a search
    trial = client.create_run(ids["nasplat-retrain"], tags={"nasplat.kind": "retrain-trial", "nasplat.model": "x"})
    client.log_metric(trial.info.run_id, "val_miou", 0.99)
    client.log_metric(trial.info.run_id, "latency_ms", 0.1)
    unmeasured = client.create_run(ids["nasplat-retrain"], tags={"nasplat.kind": "retrain", "nasplat.model": "y"})
    client.log_metric(unmeasured.info.run_id, "val_miou", 0.99)
    client.create_run(ids["nasplat-retrain"], tags={"nasplat.kind": "search"})
    return uri, client, ids, runs


def _compare_runs(client, experiment_id):
    return client.search_runs([experiment_id], filter_string="tags.`nasplat.kind` = 'compare'")


def test_compare_plot_writes_the_png_and_logs_it_with_the_front(store, tmp_path, capsys):
    uri, client, ids, runs = store
    picture = tmp_path / "out" / "pareto.png"
    assert main(["compare", "--tracking-uri", uri, "--plot", str(picture)]) == 0  # the default experiments
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and picture.stat().st_size > 10_000
    out = capsys.readouterr().out
    assert "7 models, 5 on the Pareto front" in out and str(picture) in out
    (compare,) = _compare_runs(client, ids["nasplat-retrain"])
    folder = tmp_path / "artifacts"
    record = json.loads(open(client.download_artifacts(compare.info.run_id, "pareto_latency.json", str(folder))).read())
    assert sorted(runs[p["run_id"]] for p in record["points"] if p["on_front"]) == sorted(LATENCY_FRONT)
    assert len(record["points"]) == len(RUNS)
    logged = client.download_artifacts(compare.info.run_id, "pareto_latency.png", str(folder))
    assert open(logged, "rb").read() == picture.read_bytes()

    # another cost, the same experiments named explicitly: the same compare run gets a second picture
    assert main(["compare", "--tracking-uri", uri, "--plot", str(picture), "--cost", "params",
                 "--experiment", "nasplat-retrain", "--experiment", "nasplat-baselines"]) == 0
    (again,) = _compare_runs(client, ids["nasplat-retrain"])
    assert again.info.run_id == compare.info.run_id
    record = json.loads(open(client.download_artifacts(again.info.run_id, "pareto_params.json", str(folder))).read())
    assert sorted(runs[p["run_id"]] for p in record["points"] if p["on_front"]) == sorted(PARAMS_FRONT)


def test_compare_plot_without_logging_and_its_errors(store, tmp_path, capsys):
    uri, client, ids, _ = store
    picture = tmp_path / "only.png"
    assert main(["compare", "--tracking-uri", uri, "--plot", str(picture), "--experiment", "nasplat-baselines",
                 "--no-log-plot"]) == 0
    assert picture.exists() and "4 models, 3 on the Pareto front" in capsys.readouterr().out
    assert not _compare_runs(client, ids["nasplat-baselines"])
    assert main(["compare", "--tracking-uri", uri, "--plot", str(picture), "--experiment", "missing"]) == 2
    assert "no experiment 'missing'" in capsys.readouterr().err
    client.create_experiment("empty", artifact_location=local_artifact_root(uri))
    assert main(["compare", "--tracking-uri", uri, "--plot", str(picture), "--experiment", "empty"]) == 2
    assert "no retrain or evaluate run with val_miou and latency_ms in experiment(s) empty" in capsys.readouterr().err
