"""What nasplat writes into MLflow beyond metrics and params, on a local SQLite store (no Ray, seconds): the
experiment kind tag, images stepped by epoch, dataset inputs, system metrics, and the figures' names."""
from __future__ import annotations

import hashlib
import json
import math
import time

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from nasplat.data.sources import search_data
from nasplat.retraining.config import RetrainConfig
from nasplat.retraining.summary import latency_input, run_metrics
from nasplat.tracking import schema
from nasplat.tracking.datasets import dataset_records, log_datasets
from nasplat.tracking.images import image_key, log_images
from nasplat.tracking.logger import RunLogger
from nasplat.tracking.runs import ensure_experiment
from nasplat.tracking.system_metrics import SystemMetrics, system_metrics
from nasplat.training.config import ConfigError
from nasplat.viz import render_confusion_matrix, row_normalised


@pytest.fixture
def store(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment = ensure_experiment(client, "records", uri)
    return uri, client, client.create_run(experiment).info.run_id


def test_experiments_open_in_the_model_training_view(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    made = ensure_experiment(client, "new", uri)
    assert client.get_experiment(made).tags["mlflow.experimentKind"] == "custom_model_development"
    old = client.create_experiment("old")  # made before nasplat tagged experiments
    genai = client.create_experiment("genai", tags={"mlflow.experimentKind": "genai_development"})
    assert ensure_experiment(client, "old", uri) == old and ensure_experiment(client, "genai", uri) == genai
    assert client.get_experiment(old).tags["mlflow.experimentKind"] == "custom_model_development"
    assert client.get_experiment(genai).tags["mlflow.experimentKind"] == "genai_development"  # a user's choice stays


def test_pictures_become_images_stepped_by_epoch(store, tmp_path):
    uri, client, run_id = store
    logger = RunLogger(uri, run_id)
    for epoch, colour in ((1, (255, 0, 0)), (2, (0, 0, 255))):
        folder = tmp_path / f"e{epoch}"
        folder.mkdir()
        Image.new("RGB", (8, 6), colour).save(folder / "predictions.png")
        (folder / "predictions.svg").write_text("<svg/>")  # not an image MLflow steps through
        assert log_images(logger, sorted(folder.iterdir()), step=epoch) == ["predictions"]
    assert logger.close(timeout=60) == 0
    files = [a.path for a in client.list_artifacts(run_id, "images")]
    pngs = sorted(f for f in files if f.endswith(".png") and "compressed" not in f)
    assert [p.split("+step+")[1].split("+")[0] for p in pngs] == ["1", "2"]  # MLflow's key+step file names
    assert all(p.startswith("images/predictions+step+") for p in pngs)
    assert len([f for f in files if f.endswith("+compressed.webp")]) == 2  # the UI's previews
    local = client.download_artifacts(run_id, pngs[1], str(tmp_path / "dl"))
    assert Image.open(local).getpixel((0, 0)) == (0, 0, 255)
    assert client.get_run(run_id).data.tags["mlflow.loggedImages"] == "True"
    assert image_key("val_iou: a/b") == "val_iou_ a/b"


def test_datasets_are_logged_as_inputs_with_their_digests(store, tmp_path):
    uri, client, run_id = store
    data = search_data("synthetic", 16, train_samples=10, val_samples=4, seed=3)
    logger = RunLogger(uri, run_id)
    log_datasets(logger, data.description)
    assert logger.close(timeout=60) == 0
    inputs = {i.dataset.name: i for i in client.get_run(run_id).inputs.dataset_inputs}
    assert set(inputs) == {"synthetic/train", "synthetic/val"}
    train = inputs["synthetic/train"]
    assert {t.key: t.value for t in train.tags}["mlflow.data.context"] == "training"
    assert json.loads(train.dataset.source)["tags"]["index_range"] == "[0, 10]"  # train_a + train_b scenes
    assert json.loads(inputs["synthetic/val"].dataset.profile) == {"samples": 4}
    other_seed = dataset_records(search_data("synthetic", 16, 10, 4, seed=4).description)
    assert other_seed[0]["dataset"]["digest"] != train.dataset.digest  # another seed is other data


def test_parquet_digest_is_the_manifest_checksum_and_voc_names_root_and_split(tmp_path):
    from nasplat.data.fixtures import make_voc_fixture
    from pipelines.data import prepare

    shards = tmp_path / "shards"
    prepare("synthetic", shards, synthetic_samples=(4, 2), image_size=16, progress=None)
    description = search_data(f"parquet:{shards}", 16, 0, 0, 0).description
    train, val = dataset_records(description)
    expected = hashlib.sha256((shards / "manifest.json").read_bytes()).hexdigest()[:16]
    assert train["dataset"]["digest"] == val["dataset"]["digest"] == expected
    assert train["dataset"]["source_type"] == "local" and json.loads(train["dataset"]["source"])["uri"] == str(shards)
    assert (train["dataset"]["name"], val["dataset"]["name"]) == ("parquet/train", "parquet/val")

    root = make_voc_fixture(tmp_path / "voc")
    voc = dataset_records(search_data("voc", 16, 0, 0, 0, data_root=str(root)).description)
    assert [r["dataset"]["name"] for r in voc] == ["voc/train_aug", "voc/val"]
    assert voc[0]["dataset"]["digest"] != voc[1]["dataset"]["digest"]
    assert json.loads(voc[0]["dataset"]["profile"]) == {"samples": 5}  # 3 train + 2 SBD-only ids


def test_system_metrics_reach_the_run_every_interval_and_at_the_end(store):
    uri, client, run_id = store
    logger = RunLogger(uri, run_id)
    with system_metrics(logger, interval=0.3) as monitor:
        assert isinstance(monitor, SystemMetrics) and monitor.interval == 0.3
        time.sleep(1.0)
    assert logger.close(timeout=60) == 0
    history = client.get_metric_history(run_id, "system/cpu_utilization_percentage")
    assert len(history) >= 3 and [m.step for m in history] == list(range(len(history)))
    assert all(0.0 <= m.value <= 100.0 for m in history)
    assert "system/system_memory_usage_megabytes" in client.get_run(run_id).data.metrics
    with system_metrics(None) as nothing:  # not rank 0: no monitor
        assert nothing is None


def test_confusion_picture_normalises_each_ground_truth_row(tmp_path):
    shares = row_normalised([[6, 2, 0], [1, 3, 0], [0, 0, 0]])
    np.testing.assert_allclose(shares[:2], [[0.75, 0.25, 0.0], [0.25, 0.75, 0.0]])
    assert np.isnan(shares[2]).all()  # a class absent from the labels has no shares
    (path,) = render_confusion_matrix([[6, 2, 0], [1, 3, 0], [0, 0, 0]], ["bg", "a", "b"], tmp_path)
    assert path.name == "confusion_matrix.png" and Image.open(path).size[0] > 100
    with pytest.raises(ValueError, match="2 class names for a 3-class"):
        render_confusion_matrix(np.eye(3), ["bg", "a"], tmp_path)


def test_run_metrics_names_quality_and_cost_as_the_chart_view_reads_them():
    report = {"val_miou": 0.5, "val_pixel_acc": 0.8, "val_iou": {"bg": 0.7, "cat": math.nan},
              "params": 1000, "flops": 2e9, "gflops": 2.0, "latency_ms": 3.5, "val_loss": 1.2}
    assert run_metrics(report) == {"val_miou": 0.5, "val_pixel_acc": 0.8, "val_iou.bg": 0.7, "params": 1000.0,
                                   "flops": 2e9, "gflops": 2.0, "latency_ms": 3.5}
    assert (schema.MIOU_METRIC, schema.LATENCY_METRIC, schema.GFLOPS_METRIC) == ("val_miou", "latency_ms", "gflops")
    assert latency_input([48, 64]) == "cpu 1x3x48x64"


@pytest.mark.parametrize("alias", ["latest", "v3", "a b", "x" * 256])
def test_model_alias_refuses_what_mlflow_refuses(alias):
    with pytest.raises(ConfigError, match="model_alias"):
        RetrainConfig(model_alias=alias).validate()
    RetrainConfig(model_alias="champion_2").validate()
    RetrainConfig(model_alias="").validate()
