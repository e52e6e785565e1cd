"""`nasplat compare` over a fake store shaped like pipelines/search.py's, and `nasplat ui`."""
from __future__ import annotations

import csv
import datetime as dt
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from nasplat.tracking.schema import PARENT_TAG
from nasplat.tracking.uri import local_artifact_root
from pipelines.cli import main
from pipelines.compare import CompareError, _lineage, format_rows, search_rows, ui_argv

T0 = 1_780_000_000_000  # ms
HOUR = 3_600_000


def _config(**overrides) -> dict[str, str]:
    params = {"dataset": "synthetic", "space": "darts", "epochs": "5", "workers": "2",
              "cpus_per_worker": "None", "gpus_per_worker": "0.0", "seed": "0"}
    params.update({k: str(v) for k, v in overrides.items()})
    return params


def _search(client, experiment_id, name, *, params, trials, best=None, start=T0, finished=True,
            space="darts", genotype="abc123def456"):
    """A parent run and its trial runs as pipelines/search.py writes them.

    ``trials``: (start_ms, end_ms or None, val_miou per epoch, supernet params) per trial.
    ``best``: index of the best trial (tagged and its val_miou logged as best_val_miou on the parent).
    """
    parent = client.create_run(experiment_id, run_name=name, start_time=start, tags={
        "nasplat.kind": "search", "nasplat.run_name": name, "nasplat.space": space})
    parent_id = parent.info.run_id
    for key, value in params.items():
        client.log_param(parent_id, key, value)
    children = []
    for index, (t_start, t_end, mious, weights) in enumerate(trials):
        trial_id = f"{name[-4:]}_{index:05d}"
        child = client.create_run(experiment_id, run_name=f"{name}-{trial_id}", start_time=t_start, tags={
            PARENT_TAG: parent_id, "nasplat.trial_id": trial_id, "nasplat.kind": "search-trial"})
        child_id = child.info.run_id
        for key, value in {**params, "seed": str(index), "supernet_weight_params": str(weights),
                           "supernet_flops": str(weights * 1000)}.items():
            client.log_param(child_id, key, value)
        for epoch, miou in enumerate(mious, start=1):
            client.log_metric(child_id, "val_miou", miou, timestamp=t_start + epoch, step=epoch)
            client.log_metric(child_id, "epoch", epoch, timestamp=t_start + epoch, step=epoch)
            client.log_metric(child_id, "epoch_time_s", 60.0, timestamp=t_start + epoch, step=epoch)
        if t_end is not None:
            client.set_terminated(child_id, "FINISHED", end_time=t_end)
        children.append(child_id)
    if best is not None:
        client.log_metric(parent_id, "best_val_miou", trials[best][2][-1], step=len(trials[best][2]))
        client.set_tag(parent_id, "nasplat.best_trial_run", children[best])
        client.set_tag(parent_id, "genotype_hash", genotype)
    if finished:
        client.set_terminated(parent_id, "FINISHED", end_time=max((t[1] or start) for t in trials) if trials else start + 1)
    return parent_id, children


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment_id = client.create_experiment("nasplat-search", artifact_location=local_artifact_root(uri))
    client.create_experiment("other")
    ids = {}
    # CPU search: 2 trials of 0.5 h and 0.25 h, 2 workers x 1 CPU (cpus_per_worker None) -> 1.5 CPU-h
    ids["cpu"] = _search(client, experiment_id, "search-cpu-aaaa", params=_config(), best=0, start=T0,
                         trials=[(T0, T0 + HOUR // 2, [0.2, 0.3, 0.41], 401630),
                                 (T0 + 10, T0 + 10 + HOUR // 4, [0.1, 0.2], 401630)])
    # GPU search: 1 trial of 1 h, 4 workers x 0.5 GPU -> 2 GPU-h (cpus_per_worker ignored)
    ids["gpu"] = _search(client, experiment_id, "search-gpu-bbbb", space="my_space.py:Wide",
                         params=_config(workers=4, gpus_per_worker=0.5, cpus_per_worker=4, dataset="parquet:/data/voc",
                                        epochs=8),
                         best=0, start=T0 + HOUR, genotype="fedcba987654",
                         trials=[(T0 + HOUR, T0 + 2 * HOUR, [0.3, 0.55, 0.5, 0.52], 1_234_567)])
    # a search with no trial run yet: nothing but its params
    ids["empty"] = _search(client, experiment_id, "search-new-cccc", params=_config(epochs=7, cpus_per_worker=2.0),
                           trials=[], start=T0 + 2 * HOUR, finished=False)
    # a running search: one trial without end time -> its epochs' epoch_time_s (3 x 60 s) x 2 workers x 2 CPUs
    ids["running"] = _search(client, experiment_id, "search-run-dddd", params=_config(cpus_per_worker=2.0, epochs=10),
                             trials=[(T0 + 3 * HOUR, None, [0.1, 0.15, 0.12], 99)], start=T0 + 3 * HOUR, finished=False)
    client.create_run(experiment_id, run_name="not-a-search")  # no nasplat.kind: ignored
    # a retrain in its own experiment: the network's params and FLOPs are metrics of its trial runs
    retrain_experiment = client.create_experiment("nasplat-retrain", artifact_location=local_artifact_root(uri))
    parent = client.create_run(retrain_experiment, run_name="retrain-icnet", start_time=T0, tags={
        "nasplat.kind": "retrain", "nasplat.run_name": "retrain-icnet", "nasplat.model": "icnet"})
    for key, value in _config(epochs=2).items():
        client.log_param(parent.info.run_id, key, value)
    trial = client.create_run(retrain_experiment, start_time=T0, tags={
        PARENT_TAG: parent.info.run_id, "nasplat.kind": "retrain-trial", "nasplat.trial_id": "t_00000"})
    client.log_batch(trial.info.run_id, metrics=[Metric("params", 6_707_321, T0, 0), Metric("flops", 2.5e9, T0, 0),
                                                 Metric("val_miou", 0.6, T0, 1), Metric("epoch", 1, T0, 1),
                                                 Metric("val_miou", 0.7, T0, 2), Metric("epoch", 2, T0, 2)])
    client.set_terminated(trial.info.run_id, "FINISHED", end_time=T0 + HOUR)
    client.log_metric(parent.info.run_id, "best_val_miou", 0.7, step=2)
    client.set_tag(parent.info.run_id, "nasplat.best_trial_run", trial.info.run_id)
    client.set_terminated(parent.info.run_id, "FINISHED", end_time=T0 + HOUR)
    return uri, ids


def _by_name(rows):
    return {r["run_name"]: r for r in rows}


def test_rows_values(store):
    uri, ids = store
    rows = _by_name(search_rows(uri))
    assert set(rows) == {"search-cpu-aaaa", "search-gpu-bbbb", "search-new-cccc", "search-run-dddd"}

    cpu = rows["search-cpu-aaaa"]
    assert cpu["run_id"] == ids["cpu"][0]
    assert cpu["status"] == "FINISHED"
    assert cpu["space"] == "darts"
    assert cpu["dataset"] == "synthetic"
    assert cpu["best_miou"] == pytest.approx(0.41)
    assert cpu["params"] == 401630 and cpu["gflops"] == pytest.approx(401630 * 1000 / 1e9)
    assert cpu["kind"] == "search"
    assert cpu["epochs"] == 3  # max epoch of the best trial, not the 5 of the config
    assert cpu["device_hours"] == pytest.approx((0.5 + 0.25) * 2 * 1)
    assert cpu["device_unit"] == "CPU-h"
    assert cpu["genotype_hash"] == "abc123def456"
    assert cpu["trials"] == 2
    assert dt.datetime.fromisoformat(cpu["started_at"]).timestamp() == T0 // 1000

    gpu = rows["search-gpu-bbbb"]
    assert gpu["space"] == "my_space.py:Wide"
    assert gpu["dataset"] == "parquet:/data/voc"
    assert gpu["best_miou"] == pytest.approx(0.52)
    assert gpu["params"] == 1_234_567
    assert gpu["epochs"] == 4
    assert gpu["device_hours"] == pytest.approx(1.0 * 4 * 0.5)
    assert gpu["device_unit"] == "GPU-h"

    empty = rows["search-new-cccc"]
    assert empty["status"] == "RUNNING"
    assert empty["best_miou"] is None and empty["params"] is None and empty["device_hours"] is None
    assert empty["genotype_hash"] is None
    assert empty["epochs"] == 7  # the epochs param when no trial has reported

    running = rows["search-run-dddd"]
    assert running["best_miou"] is None
    assert running["epochs"] == 3 and running["params"] == 99
    assert running["device_hours"] == pytest.approx(3 * 60 / 3600 * 2 * 2.0)


def test_retrain_rows_show_the_network_not_a_supernet(store):
    uri, _ = store
    (row,) = search_rows(uri, experiment="nasplat-retrain")
    assert row["kind"] == "retrain" and row["space"] == "icnet" and row["best_miou"] == pytest.approx(0.7)
    assert row["params"] == 6_707_321 and row["gflops"] == pytest.approx(2.5)
    assert row["epochs"] == 2 and row["device_hours"] == pytest.approx(1.0 * 2 * 1)


def test_sorting_and_limit(store):
    uri, _ = store
    names = lambda rows: [r["run_name"] for r in rows]
    # best mIoU descending; searches without one last, in the store's order (newest first)
    assert names(search_rows(uri)) == ["search-gpu-bbbb", "search-cpu-aaaa", "search-run-dddd", "search-new-cccc"]
    assert names(search_rows(uri, ascending=True))[:2] == ["search-cpu-aaaa", "search-gpu-bbbb"]
    assert names(search_rows(uri, sort="run_name", ascending=True)) == sorted(names(search_rows(uri)))
    assert names(search_rows(uri, sort="CPU-h")) == ["search-gpu-bbbb", "search-cpu-aaaa", "search-run-dddd",
                                                     "search-new-cccc"]  # missing value last
    assert names(search_rows(uri, sort="hours", ascending=True)) == ["search-run-dddd", "search-cpu-aaaa",
                                                                    "search-gpu-bbbb", "search-new-cccc"]
    assert names(search_rows(uri, sort="started")) == ["search-run-dddd", "search-new-cccc", "search-gpu-bbbb",
                                                       "search-cpu-aaaa"]
    assert names(search_rows(uri, sort="supernet params", limit=2)) == ["search-gpu-bbbb", "search-cpu-aaaa"]
    with pytest.raises(CompareError, match="cannot sort by 'bogus'"):
        search_rows(uri, sort="bogus")


def test_table_format(store):
    uri, ids = store
    table = format_rows(search_rows(uri), "table")
    lines = table.splitlines()
    assert lines[0].split()[:2] == ["run", "name"]
    assert "device-h" in lines[0]  # CPU and GPU searches together
    gpu_line = next(line for line in lines if line.startswith("search-gpu-bbbb"))
    assert ids["gpu"][0][:8] in gpu_line and ids["gpu"][0] not in gpu_line
    assert "0.5200" in gpu_line and "1,234,567" in gpu_line and "2.00 GPU-h" in gpu_line
    empty_line = next(line for line in lines if line.startswith("search-new-cccc"))
    assert empty_line.split().count("-") >= 4
    only_cpu = format_rows([r for r in search_rows(uri) if r["device_unit"] == "CPU-h"], "table")
    assert " CPU-h " in only_cpu.splitlines()[0] and "GPU" not in only_cpu


def test_csv_and_json_formats(store):
    uri, _ = store
    rows = search_rows(uri)
    parsed = list(csv.DictReader(io.StringIO(format_rows(rows, "csv"))))
    assert list(parsed[0]) == ["run_name", "run_id", "status", "kind", "space", "dataset", "best_miou", "params",
                               "gflops", "epochs", "device_hours", "genotype_hash", "source", "started_at", "device_unit",
                               "trials"]
    assert [p["run_name"] for p in parsed] == [r["run_name"] for r in rows]
    cpu = next(p for p in parsed if p["run_name"] == "search-cpu-aaaa")
    assert float(cpu["device_hours"]) == pytest.approx(1.5) and cpu["params"] == "401630"
    assert next(p for p in parsed if p["run_name"] == "search-new-cccc")["best_miou"] == ""

    data = json.loads(format_rows(rows, "json"))
    assert [d["run_name"] for d in data] == [r["run_name"] for r in rows]
    gpu = next(d for d in data if d["run_name"] == "search-gpu-bbbb")
    assert gpu["device_hours"] == pytest.approx(2.0) and gpu["device_unit"] == "GPU-h" and gpu["epochs"] == 4
    assert next(d for d in data if d["run_name"] == "search-new-cccc")["best_miou"] is None


def test_cli_compare(store, capsys):
    uri, _ = store
    assert main(["compare", "--tracking-uri", uri, "--format", "json", "--limit", "1"]) == 0
    assert [d["run_name"] for d in json.loads(capsys.readouterr().out)] == ["retrain-icnet"]  # searches and retrains
    assert main(["compare", "--tracking-uri", uri, "--experiment", "nasplat-search", "--format", "json",
                 "--limit", "1"]) == 0
    assert [d["run_name"] for d in json.loads(capsys.readouterr().out)] == ["search-gpu-bbbb"]
    assert main(["compare", "--tracking-uri", uri, "--sort", "run_name", "--ascending"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert " from " in out[0]
    assert [line.split()[0] for line in out[2:]] == ["retrain-icnet", "search-cpu-aaaa", "search-gpu-bbbb",
                                                     "search-new-cccc", "search-run-dddd"]
    assert main(["compare", "--tracking-uri", uri, "--sort", "nope"]) == 2
    assert "cannot sort by 'nope'" in capsys.readouterr().err


def test_cli_missing_experiment_and_store(store, tmp_path, capsys, monkeypatch):
    uri, _ = store
    assert main(["compare", "--tracking-uri", uri, "--experiment", "missing"]) == 2
    err = capsys.readouterr().err
    assert "no experiment 'missing'" in err and uri in err
    assert "'Default'" in err and "'nasplat-search'" in err and "'other'" in err

    monkeypatch.chdir(tmp_path)
    assert main(["compare"]) == 2
    err = capsys.readouterr().err
    assert f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}" in err and "no MLflow store" in err
    assert not (tmp_path / "mlflow.db").exists()  # looking does not create a store
    assert main(["compare", "--tracking-uri", str(tmp_path / "nowhere")]) == 2
    assert not (tmp_path / "nowhere").exists()


def test_cli_empty_experiment(store, capsys):
    uri, _ = store
    assert main(["compare", "--tracking-uri", uri, "--experiment", "other"]) == 0
    assert capsys.readouterr().out.strip() == "no search or retrain runs in experiment 'other'"
    assert main(["compare", "--tracking-uri", uri, "--experiment", "other", "--format", "json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out) == [] and "no search or retrain runs" in captured.err


def test_default_table_needs_one_of_the_default_experiments(tmp_path, capsys):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    MlflowClient(tracking_uri=uri).create_experiment("elsewhere")
    assert main(["compare", "--tracking-uri", uri]) == 2
    err = capsys.readouterr().err
    assert "none of the experiments 'nasplat-search', 'nasplat-retrain', 'nasplat-baselines'" in err
    assert "'elsewhere'" in err


@pytest.mark.parametrize("tags, shown", [
    ({"nasplat.source_search_run": "0123456789abcdef"}, "search 01234567"),
    ({"nasplat.source_search_run": "0123456789abcdef", "nasplat.source_rank": "3"}, "search 01234567 #3"),
    ({"nasplat.source_search_run": "0123456789abcdef", "nasplat.source_rank": "1"}, "search 01234567"),
    ({"nasplat.source_genotype_file": "/data/runs/best/genotype.json"}, "genotype.json"),
    ({}, None),
])
def test_lineage_says_where_a_retrained_network_came_from(tags, shown):
    assert _lineage(tags) == shown


def test_ui_argv(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert ui_argv(uri, "127.0.0.1", 5123) == [
        sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri,
        "--default-artifact-root", (tmp_path / "mlartifacts").resolve().as_uri(),
        "--host", "127.0.0.1", "--port", "5123",
    ]
    assert ui_argv("postgresql://u@db/mlflow", "::1", 80) == [
        sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", "postgresql://u@db/mlflow",
        "--host", "::1", "--port", "80",
    ]
    with pytest.raises(CompareError, match="open https://mlflow.example.org"):
        ui_argv("https://mlflow.example.org", "127.0.0.1", 5000)


def test_cli_ui_refusals(tmp_path, capsys, monkeypatch):
    assert main(["ui", "--tracking-uri", "http://mlflow.example.org:5000"]) == 2
    assert "open http://mlflow.example.org:5000 in a browser" in capsys.readouterr().err
    monkeypatch.chdir(tmp_path)
    assert main(["ui"]) == 2  # no store here: nothing is created or started
    assert "no MLflow store" in capsys.readouterr().err and not (tmp_path / "mlflow.db").exists()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_ui_serves_health(store, tmp_path):
    uri, _ = store
    port = _free_port()
    log = tmp_path / "ui.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pipelines.cli", "ui", "--tracking-uri", uri, "--port", str(port)],
            stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path, start_new_session=True,
        )
    ok = False
    try:
        deadline = time.monotonic() + 180  # the UI starts slowly on a loaded 2-core machine
        status = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
                    status = response.status
                if status == 200:
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.5)
        assert status == 200, f"no /health 200 within 180 s (exit {proc.poll()}):\n{log.read_text()[-3000:]}"
        assert log.read_text().splitlines()[0].startswith(f"MLflow UI: http://127.0.0.1:{port}")
        proc.terminate()
        proc.wait(timeout=120)  # uvicorn and its job consumers stop slowly on a loaded machine too
        ok = True
    finally:
        # the session this test started: the server, its uvicorn workers and job consumers
        if not ok and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        deadline = time.monotonic() + 20
        while _group_alive(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.5)  # helpers shut down on their own after the server
        if _group_alive(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True
