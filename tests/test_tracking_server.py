"""Against a real `mlflow server`: a tiny search and its retrain log to the server, the model is registered,
the lineage tag links them, the export matches PyTorch, and the MLflow UI lists the genotype in a browser.

The server runs on 127.0.0.1 with a SQLite backend and an artifacts destination in a temp dir, so artifacts
reach it over HTTP (``mlflow-artifacts:``), as they do from Ray workers on other nodes.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

ROOT = Path(__file__).resolve().parents[1]
TINY_SEARCH = [
    "--epochs", "2", "--train-samples", "16", "--val-samples", "8", "--image-size", "16", "--batch-size", "2",
    "--workers", "2", "--space-option", "C=4", "--space-option", "layers=3", "--picture-interval", "1",
]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for(url: str, proc: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(1)
    raise AssertionError(f"{url} did not answer 200 within {timeout:.0f} s (exit {proc.poll()}):\n{log.read_text()[-3000:]}")


def start_mlflow_server(root: Path, port: int) -> subprocess.Popen:
    """`mlflow server` on 127.0.0.1:``port`` with its store in ``root`` (log appended to root/server.log), once
    it answers; in a session of its own, so that :func:`stop_mlflow_server` ends its workers too."""
    log = root / "server.log"
    with log.open("a") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{root / 'server.db'}",
             "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
             "--workers", "1"],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        _wait_for(f"http://127.0.0.1:{port}/health", proc, log, timeout=180)
    except AssertionError:
        stop_mlflow_server(proc)
        raise
    return proc


def stop_mlflow_server(proc: subprocess.Popen) -> None:
    """SIGTERM to the server's process group (its pid), SIGKILL after 30 s."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:  # the group is already gone
        proc.wait()


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """`mlflow server` on a free 127.0.0.1 port; stopped by its process group, whatever the test did."""
    root = tmp_path_factory.mktemp("mlflow-server")
    port = _free_port()
    proc = start_mlflow_server(root, port)
    try:
        yield f"http://127.0.0.1:{port}", root
    finally:
        stop_mlflow_server(proc)


def _nasplat(args: list[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    result = subprocess.run([sys.executable, "-m", "pipelines.cli", *args], cwd=cwd, env=env,
                            capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"nasplat {' '.join(args)}\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return result


def _runs_of_kind(client: MlflowClient, experiment: str, kind: str):
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"experiment {experiment!r} is not on the server"
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("nasplat.kind") == kind]
    return exp, parents, [r for r in runs if r.data.tags.get("mlflow.parentRunId") in {p.info.run_id for p in parents}]


@pytest.mark.slow
def test_search_logs_to_a_tracking_server(mlflow_server, tmp_path):
    uri, server_root = mlflow_server
    _nasplat(["search", *TINY_SEARCH, "--name", "remote", "--tracking-uri", uri], tmp_path)
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "mlartifacts").exists()  # nothing local

    client = MlflowClient(tracking_uri=uri)
    exp, parents, children = _runs_of_kind(client, "nasplat-search", "search")
    assert len(parents) == 1 and len(children) == 1
    parent, child = parents[0], children[0]
    assert parent.info.status == "FINISHED" and parent.data.tags.get("nasplat.git_commit")
    assert [m.step for m in client.get_metric_history(child.info.run_id, "val_miou")] == [1, 2]
    assert child.info.artifact_uri.startswith("mlflow-artifacts:")  # uploaded through the server
    listed = {a.path for a in client.list_artifacts(child.info.run_id)}
    assert {"genotype.json", "genotypes", "pictures"} <= listed
    stored = list((server_root / "artifacts").rglob("*.png"))
    assert stored, "no PNG reached the server's artifact store"

    _retrain_from_the_search(uri, parent.info.run_id, child.info.run_id, tmp_path)
    _browser_lists_genotype(uri, exp.experiment_id, child.info.run_id, tmp_path)  # last: it may skip


def _retrain_from_the_search(uri: str, search_run: str, trial_run: str, tmp_path: Path) -> None:
    """The retrain of that search's genotype logs to the server, registers its model and exports to ONNX."""
    _nasplat(["retrain", "--from-run", search_run, "--image-size", "32", "--train-samples", "16", "--val-samples", "8",
              "--batch-size", "4", "--epochs", "1", "--workers", "2", "--model-option", "C=4", "--model-option",
              "layers=3", "--register-model", "remote-darts", "--name", "remote-rt", "--tracking-uri", uri], tmp_path)
    client = MlflowClient(tracking_uri=uri)
    _, parents, children = _runs_of_kind(client, "nasplat-retrain", "retrain")
    assert len(parents) == 1 and len(children) == 1
    parent = parents[0]
    assert parent.data.tags["nasplat.source_search_run"] == search_run  # lineage, one click away in the UI
    assert parent.data.tags["nasplat.source_trial_run"] == trial_run
    model_run = parent.data.tags["nasplat.model_run"]
    versions = client.search_model_versions("name = 'remote-darts'")
    assert [v.run_id for v in versions] == [model_run]

    onnx_file = tmp_path / "model.onnx"
    result = _nasplat(["export", "--run", parent.info.run_id, "--format", "onnx", "--out", str(onnx_file),
                       "--tracking-uri", uri, "--size", "32", "32"], tmp_path)
    assert onnx_file.is_file() and onnx_file.stat().st_size > 0
    assert "max |onnx - pytorch| =" in result.stdout.lower() and "<= tolerance" in result.stdout  # checked, within it


def _browser_lists_genotype(uri: str, experiment_id: str, run_id: str, tmp_path: Path) -> None:
    """Headless Chromium renders the run's artifact page; the genotype file must be listed."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if chromium is None:
        pytest.skip("Chromium is not installed (.ci/run installs Debian's chromium when it runs as root)")
    url = f"{uri}/#/experiments/{experiment_id}/runs/{run_id}/artifacts"
    result = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         f"--user-data-dir={tmp_path / 'chromium'}", "--virtual-time-budget=30000", "--dump-dom", url],
        capture_output=True, text=True, timeout=180,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    # the artifact tree is drawn by the page's JavaScript from the server's artifact API, not in the HTML served
    assert 'artifact-name="genotype.json"' in result.stdout, f"the run page lists no genotype.json:\n{result.stdout[-3000:]}"
