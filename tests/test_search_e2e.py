"""End to end: `nasplat search` runs on local Ray and records its runs in a local MLflow store."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

import nasplat
from nasplat.data.fixtures import make_cityscapes_fixture

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "--epochs", "2", "--train-samples", "16", "--val-samples", "8", "--image-size", "16",
    "--batch-size", "2", "--workers", "2",
]


def _nasplat(args: list[str], cwd: Path, timeout: float = 400) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "-m", "pipelines.cli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def _runs(tracking_uri: str, experiment: str):
    client = MlflowClient(tracking_uri=tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"experiment {experiment!r} missing from {tracking_uri}"
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("nasplat.kind") == "search"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId")]
    return client, parents, children


@pytest.mark.slow
def test_darts_search_end_to_end(tmp_path):
    result = _nasplat(["search", *TINY, "--space-option", "C=4", "--space-option", "layers=3", "--name", "e2e",
                       "--picture-interval", "1"], tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    db = tmp_path / "mlflow.db"
    assert f"MLflow tracking store: sqlite:///{db}" in out  # absolute path printed at start
    assert "epoch 1/2" in out and "epoch 2/2" in out  # progress per epoch
    assert "mlflow ui --backend-store-uri" in out and "supernet val mIoU" in out

    genotype = nasplat.load_genotype(tmp_path / "nasplat_runs" / "e2e" / "genotype.json")
    assert genotype.space == "darts" and len(genotype.normal) == 8

    client, parents, children = _runs(f"sqlite:///{db}", "nasplat-search")
    assert len(parents) == 1 and len(children) == 1
    parent, child = parents[0], children[0]
    assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert parent.info.status == "FINISHED" and child.info.status == "FINISHED"
    assert parent.data.params["space"] == "darts" and parent.data.params["epochs"] == "2"
    history = client.get_metric_history(child.info.run_id, "val_miou")
    assert sorted(m.step for m in history) == [1, 2]
    assert all(0.0 <= m.value <= 1.0 for m in history)
    spread = client.get_metric_history(child.info.run_id, "arch_max_worker_diff")
    assert [m.value for m in spread] == [0.0, 0.0]  # both DDP workers hold identical alpha
    artifacts = {a.path for a in client.list_artifacts(child.info.run_id)}
    assert {"genotype.json", "genotypes"} <= artifacts
    logged = json.loads(Path(client.download_artifacts(child.info.run_id, "genotype.json", str(tmp_path))).read_text())
    assert nasplat.genotype_from_dict(logged) == genotype
    per_epoch = {a.path for a in client.list_artifacts(child.info.run_id, "genotypes")}
    assert per_epoch == {"genotypes/epoch_001.json", "genotypes/epoch_002.json"}
    # the default's sgas decides every edge after epoch 1 of 2; epoch 2 trains that network and keeps it
    first, last = (json.loads(Path(client.download_artifacts(child.info.run_id, f"genotypes/epoch_00{k}.json",
                                                             str(tmp_path / f"epoch{k}"))).read_text()) for k in (1, 2))
    assert first == last == genotype.to_dict()
    assert [m.value for m in client.get_metric_history(child.info.run_id, "remedy_sgas_decided")] == [1.0, 1.0]
    # cosine to 0 over the 2 epochs: 3e-2, then 3e-2 * (1 + cos(pi / 2)) / 2
    assert [m.value for m in client.get_metric_history(child.info.run_id, "arch_lr")] == pytest.approx([3e-2, 1.5e-2])
    # the default remedies (docs/collapse.md): the entropy penalty's weight, 0 at the first epoch, 2 at the last;
    # P-DARTS's skip dropout, 0.7 at the first and 0 at the last; the DARTS space's skip cap under the user's options
    assert [m.value for m in client.get_metric_history(child.info.run_id, "remedy_entropy_weight")] == [0.0, 2.0]
    assert [m.value for m in client.get_metric_history(child.info.run_id, "remedy_skip_dropout")] == [0.7, 0.0]
    assert parent.data.params["remedy"] == "['skip_dropout', 'entropy', 'sgas']", parent.data.params.get("remedy")
    assert parent.data.params["space_options.max_skip_normal"] == "2"
    assert parent.data.params["space_options.C"] == "4"
    assert sum(op == "skip_connect" for op, _ in genotype.normal) <= 2
    arch = json.loads(Path(client.download_artifacts(child.info.run_id, "arch/epoch_002.json", str(tmp_path))).read_text())
    assert arch["epoch"] == 2 and len(arch["distributions"]["normal"]) == 14 and arch["ops"][0] == "none"
    folders = {a.path for a in client.list_artifacts(child.info.run_id, "pictures")}
    assert folders == {"pictures/epoch_001", "pictures/epoch_002", "pictures/final"}, result.stdout[-3000:]
    final = {a.path.rsplit("/", 1)[1]: a.file_size for a in client.list_artifacts(child.info.run_id, "pictures/final")}
    expected = {"cell_normal.png", "cell_normal.svg", "cell_reduce.png", "arch_heatmap.png",
                "evolution_normal.png", "evolution_reduce.png", "predictions.png"}
    assert expected <= set(final) and all(final[name] > 1000 for name in expected), final
    assert "evolution_normal.png" not in {a.path.rsplit("/", 1)[1] for a in
                                          client.list_artifacts(child.info.run_id, "pictures/epoch_001")}
    assert child.data.tags["pictures.cell_renderer"] in ("graphviz", "matplotlib")
    assert "[nasplat] warning" not in result.stdout
    # where each epoch's wall time went (bench/overhead.py reads these): every phase at both epochs, setup once
    phases = {key: client.get_metric_history(child.info.run_id, f"time_{key}_s")
              for key in ("setup", "train", "eval", "checkpoint", "records", "pictures", "report", "other")}
    assert [m.step for m in phases.pop("setup")] == [1]
    assert all(sorted(m.step for m in history) == [1, 2] and all(m.value >= 0 for m in history)
               for history in phases.values()), phases
    train_pass = {m.step: m.value for m in client.get_metric_history(child.info.run_id, "epoch_time_s")}
    assert all(m.value >= train_pass[m.step] for m in phases["train"])  # the pass, and the loader around it


@pytest.mark.slow
def test_custom_space_from_examples_searches(tmp_path):
    space = f"{ROOT / 'examples' / 'custom_space.py'}:chain"
    result = _nasplat(["search", *TINY, "--space", space, "--space-option", "depth=2", "--name", "chain"], tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    data = json.loads((tmp_path / "nasplat_runs" / "chain" / "genotype.json").read_text())
    assert data["space"] == "chain" and len(data["ops"]) == 2


@pytest.mark.slow
def test_search_that_cannot_fit_fails_at_once(tmp_path):
    started = time.monotonic()
    result = _nasplat(["search", *TINY, "--workers", "4", "--cpus-per-worker", "1"], tmp_path, timeout=180)
    assert result.returncode == 2
    assert "one trial needs 4 CPUs" in result.stderr and "Lower --workers" in result.stderr
    assert time.monotonic() - started < 120


@pytest.mark.slow
def test_interrupted_search_resumes_where_it_stopped(tmp_path):
    args = ["search", "--epochs", "3", "--train-samples", "96", "--val-samples", "8", "--image-size", "32",
            "--batch-size", "2", "--space-option", "C=4", "--space-option", "layers=3", "--name", "resumable"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    first = subprocess.Popen([sys.executable, "-m", "pipelines.cli", *args], cwd=tmp_path, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = []
    try:
        for line in first.stdout:
            seen.append(line)
            if "epoch 1/3" in line:
                first.send_signal(signal.SIGINT)  # Ctrl+C after the first epoch
                break
        rest, _ = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
    assert any("epoch 1/3" in line for line in seen), "".join(seen)[-3000:]
    assert first.returncode == 130, "".join(seen)[-2000:] + rest[-2000:]
    assert "nasplat search --resume resumable" in rest  # how to continue it

    second = _nasplat(args, tmp_path)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    combined = second.stdout + second.stderr
    assert "resuming the search" in combined and "resumed from" in combined
    assert "epoch 1/3" not in second.stdout  # epoch 1 is not trained again

    client, parents, children = _runs(f"sqlite:///{tmp_path / 'mlflow.db'}", "nasplat-search")
    assert len(parents) == 1 and len(children) == 1  # the same runs are continued, not duplicated
    steps = sorted(m.step for m in client.get_metric_history(children[0].info.run_id, "val_miou"))
    assert steps == [1, 2, 3]


@pytest.mark.slow
def test_autodeeplab_search_with_robustdarts_stop(tmp_path):
    # A rule that fires on the first positive smoothed eigenvalue after one look-back step, so the
    # stop, its reason and the chosen architecture go through Ray and MLflow for real.
    args = ["search", "--space", "autodeeplab", *TINY, "--image-size", "32", "--epochs", "3", "--warmup-epochs", "1",
            "--space-option", "F=2", "--space-option", "L=3", "--name", "adl",
            "--early-stop", "reference", "--hessian-batches", "1", "--hessian-iterations", "5",
            "--early-stop-option", "eval_interval=1", "--early-stop-option", "window=1",
            "--early-stop-option", "lookback=1", "--early-stop-option", "min_chosen_epoch=0",
            "--early-stop-option", "threshold=1e9"]
    result = _nasplat(args, tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "RobustDARTS triggered at epoch 2, architecture of epoch 1 chosen" in result.stdout
    assert "epoch 3/3" not in result.stdout  # the search stopped

    run_dir = tmp_path / "nasplat_runs" / "adl"
    genotype = nasplat.load_genotype(run_dir / "genotype.json")
    assert genotype.space == "autodeeplab" and len(genotype.path) == 3 and genotype.path[0] in (4, 8)

    client, _, children = _runs(f"sqlite:///{tmp_path / 'mlflow.db'}", "nasplat-search")
    child = children[0]
    assert child.data.tags["early_stop.stop_epoch"] == "2" and child.data.tags["early_stop.chosen_epoch"] == "1"
    assert "ratio" in child.data.tags["early_stop.reason"]
    eigenvalues = client.get_metric_history(child.info.run_id, "hessian_eigenvalue")
    assert sorted(m.step for m in eigenvalues) == [1, 2]
    chosen = json.loads(Path(client.download_artifacts(child.info.run_id, "genotypes/epoch_001.json", str(tmp_path))).read_text())
    assert nasplat.genotype_from_dict(chosen) == genotype  # the architecture of the chosen epoch is the result
    final = {a.path.rsplit("/", 1)[1] for a in client.list_artifacts(child.info.run_id, "pictures/final")}
    assert {"network_path.png", "network_path.svg", "cell.png", "arch_heatmap.png", "evolution_beta.png"} <= final


@pytest.mark.slow
def test_search_on_prepared_parquet_shards(tmp_path):
    root = make_cityscapes_fixture(tmp_path / "cityscapes", per_city=2)
    prepared = _nasplat(["data", "prepare", "cityscapes", "--data-root", str(root), "--out", "shards"], tmp_path)
    assert prepared.returncode == 0, prepared.stderr[-2000:]
    result = _nasplat(["search", "--dataset", "parquet:shards", "--epochs", "1", "--image-size", "16",
                       "--batch-size", "1", "--space-option", "C=4", "--space-option", "layers=3", "--name", "pq"], tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "2 workers x (0.5 CPU)" in result.stdout and "1 CPU left for Ray Data" in result.stdout
    _, _, children = _runs(f"sqlite:///{tmp_path / 'mlflow.db'}", "nasplat-search")
    params = children[0].data.params
    assert params["data_reader"] == "ray_data"  # workers read their shards through Ray Data
    assert params["dataset"] == f"parquet:{tmp_path / 'shards'}"  # made absolute for the workers
    assert "alternate ids go to train_a" in params["data.split_rule"]
    assert "val_iou.road" in children[0].data.metrics  # Cityscapes class names from the manifest
