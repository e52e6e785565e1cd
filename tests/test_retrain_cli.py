"""`nasplat retrain` / `evaluate` / `baselines` without Ray: flags, model sources, reports."""
from __future__ import annotations

import json

import pytest
from mlflow.tracking import MlflowClient

from nasplat.training.config import ConfigError
from nasplat.retraining.config import RetrainConfig
from nasplat.retraining.loop import Retrainer
from nasplat.tracking.runs import ensure_experiment
from pipelines import baselines, evaluate
from pipelines.cli import build_parser, main
from nasplat.runtime.retrain_driver import prepare_retrain as resolve_paths, resolve_source
from pipelines.retrain import RETRAIN_FLAGS
from search_spaces.darts import DARTS_V2


def test_flags_override_the_config_file_and_parse_options(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("epochs: 3\nlr: 0.02\nmodel_options:\n  C: 6\n  layers: 4\n")
    args = build_parser().parse_args(["retrain", "--config", str(path), "--lr", "0.03", "--model-option", "C=10",
                                      "--eval-scales", "0.5", "1", "--eval-flip", "--lr-range", "0.001", "0.01"])
    config = RETRAIN_FLAGS.config_from_args(args)
    assert (config.epochs, config.lr, config.model_options) == (3, 0.03, {"C": 10, "layers": 4})
    assert config.eval_scales == [0.5, 1.0] and config.eval_flip is True and config.lr_range == [0.001, 0.01]


def test_bad_flag_values_exit_2_naming_the_field(capsys):
    assert main(["retrain", "--baseline", "icnet", "--genotype", "g.json"]) == 2
    assert "give exactly one model source" in capsys.readouterr().err
    assert main(["baselines", "--models", "icnet,unet"]) == 2
    assert "--models: unknown model 'unet'" in capsys.readouterr().err


def _store(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    return uri, MlflowClient(tracking_uri=uri)


def test_model_sources_and_their_lineage(tmp_path):
    uri, client = _store(tmp_path)
    base = RetrainConfig(tracking_uri=uri, storage=str(tmp_path / "runs"))
    with pytest.raises(ConfigError, match="no finished search found in MLflow experiment 'nasplat-search'"):
        resolve_source(resolve_paths(base))
    with pytest.raises(ConfigError, match="unknown model 'unet'"):
        resolve_source(resolve_paths(base.replace(baseline="unet")))
    with pytest.raises(FileNotFoundError, match="missing.json"):
        resolve_source(resolve_paths(base.replace(genotype=str(tmp_path / "missing.json"))))

    experiment = ensure_experiment(client, "nasplat-search", uri)
    search = client.create_run(experiment, tags={"nasplat.kind": "search"}).info.run_id
    trial = client.create_run(experiment, tags={"nasplat.kind": "search-trial", "mlflow.parentRunId": search}).info.run_id
    other = client.create_run(experiment, tags={"nasplat.kind": "retrain"}).info.run_id
    client.log_text(trial, json.dumps(DARTS_V2.to_dict()), "genotype.json")
    source = resolve_source(resolve_paths(base.replace(from_run=trial)))
    assert source.source["genotype"] == DARTS_V2.to_dict()
    assert source.lineage == {"nasplat.source_search_run": search, "nasplat.source_trial_run": trial,
                              "genotype_hash": DARTS_V2.short_hash()}
    with pytest.raises(ConfigError, match="has no genotype.json artifact"):
        resolve_source(resolve_paths(base.replace(from_run=search)))
    with pytest.raises(ConfigError, match="is a retrain run, not a search"):
        resolve_source(resolve_paths(base.replace(from_run=other)))
    client.log_text(search, json.dumps(DARTS_V2.to_dict()), "genotype.json")
    client.set_tag(search, "nasplat.best_trial_run", trial)
    client.set_terminated(search)
    latest = resolve_source(resolve_paths(base))  # no source given: the latest finished search
    assert latest.lineage["nasplat.source_search_run"] == search and latest.lineage["nasplat.source_trial_run"] == trial


def test_evaluate_command_on_a_model_file(tmp_path, capsys):
    config = RetrainConfig(image_size=16, train_samples=8, val_samples=4, batch_size=4, workers=1, epochs=1,
                           eval_scales=[1.0])
    trainer = Retrainer(config, {"genotype": DARTS_V2.to_dict(), "options": {"C": 4, "layers": 3}})
    trainer.train_epoch()
    trainer.update_best(trainer.evaluate())
    path = trainer.save_best(tmp_path / "best.pt")
    assert main(["evaluate", "--checkpoint", str(path), "--format", "json", "--latency-repeats", "1",
                 "--latency-size", "16", "24"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["val_miou"] == pytest.approx(trainer.best["val_miou"])
    assert report["recorded_val_miou"] == pytest.approx(trainer.best["val_miou"])
    assert report["input_size"] == [16, 24] and report["latency_ms"] > 0
    assert sum(map(sum, report["confusion_matrix"])) == 4 * 16 * 16
    table = evaluate.format_table(report)
    assert "per-class IoU" in table and "confusion matrix" in table and f"{report['params']:,}" in table
    assert main(["evaluate", "--checkpoint", str(tmp_path / "nope.pt")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err


def test_comparison_table_has_one_row_per_model():
    rows = [{"model": "icnet", "label": "icnet", "val_miou": 0.5, "params": 6_700_000, "flops": 2e9,
             "latency_ms": 12.0, "input_size": [48, 48], "run_id": "r1"},
            {"model": "searched", "label": "darts:abc", "val_miou": 0.25, "params": 50_000, "flops": 1e8,
             "latency_ms": 3.0, "input_size": [48, 48], "run_id": "r2"}]
    lines = baselines.format_table(rows).splitlines()
    assert lines[0].split()[:2] == ["model", "mIoU"]
    assert lines[1].split()[:5] == ["icnet", "0.5000", "6.700", "2.0000", "12.0"]
    assert lines[2].split()[:3] == ["searched", "darts:abc", "0.2500"] and "1x3x48x48" in lines[3]
