"""A diverged search or retrain stops at once, is not retried, says why, writes no genotype, and exits non-zero."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--train-samples", "16", "--val-samples", "8", "--image-size", "16", "--batch-size", "2", "--workers", "2",
        "--max-failures", "2"]


def _nasplat(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "pipelines.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


def _trial_runs(tmp_path: Path, experiment: str) -> list:
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    found = client.get_experiment_by_name(experiment)
    return [r for r in client.search_runs([found.experiment_id]) if r.data.tags.get("mlflow.parentRunId")]


@pytest.mark.slow
def test_diverged_search_fails_at_once_with_its_reason(tmp_path):
    result = _nasplat(["search", *TINY, "--epochs", "3", "--w-lr", "1e30", "--name", "blowup"], tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output[-3000:]
    assert "training diverged in epoch 1" in output and "lower --w-lr" in output
    assert "every trial failed" in output
    assert not (tmp_path / "nasplat_runs" / "blowup" / "genotype.json").exists()
    assert output.count("resumed from") == 0  # Ray Train did not restart the workers
    [trial] = _trial_runs(tmp_path, "nasplat-search")
    assert trial.info.status == "FAILED"
    assert "training diverged in epoch 1" in trial.data.tags["nasplat.failure_reason"]
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert "genotype.json" not in {a.path for a in client.list_artifacts(trial.info.run_id)}


@pytest.mark.slow
def test_diverged_retrain_fails_with_its_reason(tmp_path):
    result = _nasplat(["retrain", *TINY, "--epochs", "2", "--baseline", "deeplabv3plus", "--lr", "1e30",
                       "--model-option", "backbone=mobilenet_v2"], tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output[-3000:]
    assert "training diverged in epoch 1" in output and "retrain finished" not in output
    [trial] = _trial_runs(tmp_path, "nasplat-retrain")
    assert trial.info.status == "FAILED" and "lower --lr" in trial.data.tags["nasplat.failure_reason"]
