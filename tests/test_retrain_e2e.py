"""End to end: `nasplat retrain` on local Ray + Tune/Optuna, recorded in MLflow, re-checked by `nasplat evaluate`."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from nasplat.tracking.runs import ensure_experiment
from nasplat.tracking.schema import PARENT_TAG
from search_spaces.darts import DARTS_V2

TINY = ["--image-size", "32", "--train-samples", "16", "--val-samples", "8", "--batch-size", "4"]


def _nasplat(args: list[str], cwd: Path, timeout: float = 500) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "pipelines.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)


def _fake_search(client: MlflowClient, uri: str, genotype: dict) -> tuple[str, str]:
    """A search parent run and its trial run, shaped as `nasplat search` leaves them."""
    experiment = ensure_experiment(client, "nasplat-search", uri)
    parent = client.create_run(experiment, tags={"nasplat.kind": "search"}).info.run_id
    trial = client.create_run(experiment, tags={"nasplat.kind": "search-trial", PARENT_TAG: parent}).info.run_id
    for run_id in (parent, trial):
        client.log_text(run_id, json.dumps(genotype), "genotype.json")
    client.set_tag(parent, "nasplat.best_trial_run", trial)
    for run_id in (trial, parent):
        client.set_terminated(run_id)
    return parent, trial


def _retrain_runs(client: MlflowClient):
    experiment = client.get_experiment_by_name("nasplat-retrain")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get("nasplat.kind") == "retrain"]
    children = [r for r in runs if r.data.tags.get(PARENT_TAG)]
    assert len(parents) == 1, [r.data.tags for r in runs]
    return parents[0], children


def _evaluate(args: list[str], cwd: Path) -> dict:
    result = _nasplat(["evaluate", *args, "--format", "json", "--latency-repeats", "2"], cwd, timeout=200)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return json.loads(result.stdout[result.stdout.index("{"):])


@pytest.mark.slow
def test_retrain_searched_genotype_with_optuna_trials(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    search_run, trial_run = _fake_search(client, uri, DARTS_V2.to_dict())
    result = _nasplat(["retrain", "--from-run", search_run, *TINY, "--epochs", "2", "--workers", "1", "--trials", "2",
                       "--batch-sizes", "2", "4", "--model-option", "C=4", "--model-option", "layers=3",
                       "--register-model", "tiny-darts", "--name", "rt"], tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "epoch 1/2" in result.stdout and "best val mIoU" in result.stdout

    parent, children = _retrain_runs(client)
    assert parent.info.status == "FINISHED" and len(children) == 2
    assert parent.data.tags["nasplat.source_search_run"] == search_run
    assert parent.data.tags["nasplat.source_trial_run"] == trial_run
    assert parent.data.tags["genotype_hash"] == DARTS_V2.short_hash()
    assert parent.data.tags["nasplat.command"].startswith("nasplat retrain --from-run")
    sampled = {(c.data.params["lr"], c.data.params["batch_size"]) for c in children}
    assert len(sampled) == 2  # Optuna gave each trial its own hyperparameters
    for child in children:
        lr = float(child.data.params["lr"])
        assert 0.01 <= lr <= 0.1 and child.data.params["batch_size"] in ("2", "4")
        assert 1e-5 <= float(child.data.params["weight_decay"]) <= 1e-3
        assert child.data.tags["nasplat.source_search_run"] == search_run
        steps = sorted(m.step for m in client.get_metric_history(child.info.run_id, "val_miou"))
        assert steps in ([1], [1, 2])  # ASHA may stop the weaker trial after its first epoch
        assert {"train_loss", "val_loss", "lr", "epoch_time_s", "samples_per_s", "val_iou.background",
                "params", "flops"} <= set(child.data.metrics)
        assert child.data.params["model_options.C"] == "4"

    best_run_id = parent.data.tags["nasplat.model_run"]
    best = client.get_run(best_run_id)
    assert best.data.tags[PARENT_TAG] == parent.info.run_id
    version = client.get_model_version("tiny-darts", "1")
    assert version.run_id == best_run_id and parent.data.tags["nasplat.registered_model"] == "tiny-darts/1"
    assert str(client.get_model_version_by_alias("tiny-darts", "candidate").version) == "1"
    model_id = parent.data.tags["nasplat.model_uri"].removeprefix("models:/")
    linked = {m.key: m for m in client.get_logged_model(model_id).metrics}
    assert {"val_miou", "latency_ms", "gflops", "params"} <= set(linked)
    assert linked["val_miou"].value == pytest.approx(parent.data.metrics["val_miou"])
    assert parent.data.metrics["val_miou"] in {m.value for m in client.get_metric_history(best_run_id, "val_miou")}
    model_dir = Path(client.download_artifacts(best_run_id, "genotype.json", str(tmp_path / "dl")))
    assert json.loads(model_dir.read_text()) == DARTS_V2.to_dict()
    import mlflow.pytorch
    import torch

    mlflow.set_tracking_uri(uri)
    served = mlflow.pytorch.load_model(parent.data.tags["nasplat.model_uri"])
    assert tuple(served(torch.zeros(3, 3, 32, 32)).shape) == (3, 6, 32, 32)

    recorded = max(m.value for m in client.get_metric_history(best_run_id, "val_miou"))
    report = _evaluate(["--run", parent.info.run_id], tmp_path)
    assert report["val_miou"] == pytest.approx(recorded, abs=1e-6)
    assert report["params"] == best.data.metrics["params"] and report["flops"] == best.data.metrics["flops"]
    assert report["model"] == f"darts:{DARTS_V2.short_hash()}"


@pytest.mark.slow
def test_retrain_baseline_on_two_workers_then_evaluate(tmp_path):
    result = _nasplat(["retrain", "--baseline", "deeplabv3plus", "--model-option", "backbone=mobilenet_v2", *TINY,
                       "--epochs", "1", "--workers", "2", "--lr", "0.01", "--eval-scales", "0.75", "1",
                       "--eval-flip", "--name", "dl"], tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    checkpoint = tmp_path / "nasplat_runs" / "dl" / "best_model.pt"
    assert f"best checkpoint: {checkpoint}" in result.stdout
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    parent, children = _retrain_runs(client)
    (child,) = children
    assert "nasplat.source_search_run" not in parent.data.tags and parent.data.tags["nasplat.model"] == "deeplabv3plus"
    assert child.data.params["eval_flip"] == "True" and child.data.params["model_options.backbone"] == "mobilenet_v2"

    report = _evaluate(["--checkpoint", str(checkpoint)], tmp_path)
    assert report["scales"] == [0.75, 1.0] and report["flip"] is True  # the retrain's own evaluation settings
    assert report["val_miou"] == pytest.approx(child.data.metrics["val_miou"], abs=1e-6)
    assert report["params"] == child.data.metrics["params"]
    assert sum(map(sum, report["confusion_matrix"])) == 8 * 32 * 32  # every validation pixel once


@pytest.mark.slow
def test_baselines_compares_a_baseline_and_the_searched_genotype(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    search_run, _ = _fake_search(client, uri, DARTS_V2.to_dict())
    result = _nasplat(["baselines", "--models", "deeplabv3plus_mobilenet_v2,searched", "--from-run", search_run,
                       *TINY, "--epochs", "1", "--workers", "1", "--lr", "0.01", "--name", "bl",
                       "--format", "json"], tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = json.loads(result.stdout[result.stdout.index("\n[\n") + 1:])  # the table comes after the progress lines
    assert [r["model"] for r in rows] == ["deeplabv3plus_mobilenet_v2", "searched"]
    assert rows[1]["label"] == f"darts:{DARTS_V2.short_hash()}"
    assert all(0.0 <= r["val_miou"] <= 1.0 and r["params"] > 0 and r["flops"] > 0 for r in rows)
    assert rows[0]["params"] > 10 * rows[1]["params"]  # MobileNetV2 DeepLab (~5.8M) vs tiny DARTS cells
    written = json.loads((tmp_path / "nasplat_runs" / "bl" / "comparison.json").read_text())
    assert [r["run_id"] for r in written] == [r["run_id"] for r in rows]
    experiment = client.get_experiment_by_name("nasplat-baselines")
    parents = client.search_runs([experiment.experiment_id], "tags.`nasplat.kind` = 'retrain'")
    assert sorted(p.info.run_id for p in parents) == sorted(r["run_id"] for r in rows)
    searched = next(p for p in parents if p.info.run_id == rows[1]["run_id"])
    assert searched.data.tags["nasplat.source_search_run"] == search_run
