"""End to end on a real two-node Ray cluster on 127.0.0.1, with token authentication on.

``cluster/local.sh up`` starts a head node (1 CPU, custom resources node_a and nasplat_driver) and
a worker node (1 CPU, node_b), each in its own process group; ``down`` in the teardown stops those
groups only (never ``ray stop``, which would end every helper's Ray on the machine). A tiny search
is submitted with ``nasplat submit --follow`` with 2 workers of 0.5 CPU and placement SPREAD: both
workers would fit on one node, so landing on both nodes shows the strategy reached Ray.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TINY_SEARCH = [
    "search", "--epochs", "1", "--workers", "2", "--cpus-per-worker", "0.5", "--placement-strategy", "SPREAD",
    "--train-samples", "16", "--val-samples", "8", "--image-size", "32", "--batch-size", "4",
    "--space-option", "C=4", "--space-option", "layers=2", "--space-option", "reductions=1",
    "--name", "cluster-e2e",
]

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _group_members(pgids: list[int]) -> list[str]:
    """Live (non-zombie) processes in the given process groups."""
    out = subprocess.run(["ps", "-eo", "pgid=,stat=,args="], capture_output=True, text=True).stdout
    return [line for line in out.splitlines()
            if line.split()[0].isdigit() and int(line.split()[0]) in pgids and not line.split()[1].startswith("Z")]


@pytest.fixture
def cluster():
    """A started local cluster: dict with the dashboard URL, the environment with the token, the state dir."""
    state = Path(tempfile.mkdtemp(prefix="npc", dir="/tmp"))  # short: Ray's socket paths must stay < 108 chars
    dashboard = _free_port()
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHON": sys.executable,
        "NASPLAT_LOCAL_DIR": str(state),
        "NASPLAT_RAY_TMP": str(state / "r"),
        "NASPLAT_GCS_PORT": str(_free_port()),
        "NASPLAT_DASHBOARD_PORT": str(dashboard),
        "NASPLAT_MLFLOW": "0",
        "RAY_AUTH_TOKEN": secrets.token_hex(32),
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("RAY_ADDRESS", None)
    pgids: list[int] = []
    try:
        up = subprocess.run(["bash", str(ROOT / "cluster" / "local.sh"), "up"], env=env, capture_output=True,
                            text=True, timeout=420)
        pids_file = state / "pids"
        if pids_file.exists():
            pgids = [int(line.split()[1]) for line in pids_file.read_text().splitlines()]
        assert up.returncode == 0, up.stdout + up.stderr + _logs(state)
        assert [line.split()[0] for line in pids_file.read_text().splitlines()] == ["head", "worker"]
        yield {"url": f"http://127.0.0.1:{dashboard}", "env": env, "state": state}
    finally:
        down = subprocess.run(["bash", str(ROOT / "cluster" / "local.sh"), "down"], env=env, capture_output=True,
                              text=True, timeout=120)
        left = _group_members(pgids)
        shutil.rmtree(state, ignore_errors=True)  # holds the worker node's temp dir (r_b) too
        assert down.returncode == 0, down.stdout + down.stderr
        assert not left, f"processes left after local.sh down: {left}"


def _logs(state: Path) -> str:
    return "".join(f"\n--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(state.glob("*.log")))


def _nodes(cluster: dict) -> dict[str, dict]:
    """node id -> total resources, from Ray's state API (in a subprocess that has token auth on)."""
    code = (
        "import json, sys; from ray.util.state import list_nodes; "
        "print(json.dumps({n.node_id: n.resources_total for n in list_nodes(address=sys.argv[1]) "
        "if n.state == 'ALIVE'}))"
    )
    env = {**cluster["env"], "RAY_AUTH_MODE": "token"}
    out = subprocess.run([sys.executable, "-c", code, cluster["url"]], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_submitted_search_spreads_over_two_nodes_and_is_tracked(cluster, tmp_path):
    env, url = cluster["env"], cluster["url"]
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    nasplat = [str(BIN / "nasplat")]

    # token authentication is on: without a token the dashboard refuses (HOME without ~/.ray/auth_token)
    no_token = {k: v for k, v in env.items() if k not in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")}
    refused = subprocess.run([*nasplat, "jobs", "list", "--address", url], env={**no_token, "HOME": str(tmp_path)},
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "refused" in refused.stderr and "token" in refused.stderr

    submitted = subprocess.run(
        [*nasplat, "submit", "--address", url, "--working-dir", str(ROOT), "--tracking-uri", tracking, "--follow",
         "--", *TINY_SEARCH, "--storage", str(tmp_path / "runs")],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )
    assert submitted.returncode == 0, submitted.stdout[-6000:] + submitted.stderr[-3000:] + _logs(cluster["state"])
    job_id = submitted.stdout.splitlines()[0].strip()
    assert job_id.startswith("raysubmit_")
    assert "[nasplat] search finished" in submitted.stdout  # the job's own output was streamed
    assert f"job {job_id} SUCCEEDED" in submitted.stderr

    status = subprocess.run([*nasplat, "jobs", "status", job_id, "--address", url], env=env, capture_output=True,
                            text=True, timeout=120)
    assert status.returncode == 0 and status.stdout.startswith(f"{job_id}: SUCCEEDED"), status.stdout + status.stderr

    client = MlflowClient(tracking_uri=tracking)
    experiment = client.get_experiment_by_name("nasplat-search")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get("nasplat.kind") == "search"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId")]
    assert len(parents) == 1 and len(children) == 1
    assert parents[0].info.status == "FINISHED"
    assert parents[0].data.tags["nasplat.ray_job_id"] == job_id
    assert parents[0].data.params["placement_strategy"] == "SPREAD"

    worker_nodes = {children[0].data.tags.get(f"nasplat.worker_node.{rank}") for rank in (0, 1)}
    nodes = _nodes(cluster)
    by_resource = {name: [nid for nid, res in nodes.items() if res.get(name)] for name in ("node_a", "node_b")}
    assert len(by_resource["node_a"]) == 1 and len(by_resource["node_b"]) == 1, nodes
    assert worker_nodes == {by_resource["node_a"][0], by_resource["node_b"][0]}
