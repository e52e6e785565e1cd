"""Bad input stops before Ray starts, with one line naming the option (exit status 2)."""
from __future__ import annotations

import time

import pytest

import nasplat.runtime.driver as driver
from pipelines import cli

TINY = ["--train-samples", "16", "--val-samples", "4", "--image-size", "16", "--batch-size", "2", "--workers", "1",
        "--epochs", "2"]

CASES = {
    # name: (argv, words the error line must hold)
    "unknown dataset": (["search", *TINY, "--dataset", "imagenet"], "'dataset'"),
    "voc without data root": (["search", *TINY, "--dataset", "voc"], "'data_root'"),
    "missing voc folder": (["search", *TINY, "--dataset", "voc", "--data-root", "{tmp}/nowhere"], "nowhere"),
    "parquet folder without manifest": (["search", *TINY, "--dataset", "parquet:{tmp}"], "manifest"),
    "unknown space": (["search", *TINY, "--space", "nope"], "unknown search space 'nope'"),
    "missing space file": (["search", *TINY, "--space", "{tmp}/nope.py:mine"], "nope.py"),
    "unknown space option": (["search", *TINY, "--space-option", "depth=3"], "no option 'depth'"),
    "more reduction cells than layers": (["search", *TINY, "--space-option", "layers=2"], "reductions=2"),
    "unknown early-stop option": (["search", *TINY, "--early-stop", "paper", "--early-stop-option", "foo=1"],
                                  "early_stop_options"),
    "warm-up as long as the search": (["search", *TINY, "--warmup-epochs", "2"], "'warmup_epochs'"),
    "crop under the total stride": (["search", *TINY, "--image-size", "2"], "total stride"),
    "negative max failures": (["search", *TINY, "--max-failures", "-1"], "'max_failures'"),
    "batch above a worker's share": (["search", *TINY, "--batch-size", "9"], "'batch_size'"),
    "too many workers for the CPUs": (["search", "--workers", "64", "--train-samples", "256", "--image-size", "16",
                                       "--batch-size", "1"], "workers would get"),
    "unreachable tracking server": (["search", *TINY, "--tracking-uri", "http://127.0.0.1:9"], "127.0.0.1:9"),
    "unreachable ray address": (["search", *TINY, "--address", "127.0.0.1:9"], "'address'"),
    "malformed ray address": (["search", *TINY, "--address", "nohost"], "'address'"),
    "zero epochs": (["search", *TINY, "--epochs", "0"], "'epochs'"),
    "second order three": (["search", *TINY, "--order", "3"], "invalid choice"),
    "placement strategy in lower case": (["search", *TINY, "--placement-strategy", "spread"], "invalid choice"),
    "negative weight learning rate": (["search", *TINY, "--w-lr", "-0.1"], "'w_lr'"),
    "non-positive CPUs per worker": (["search", *TINY, "--cpus-per-worker", "0"], "'cpus_per_worker'"),
    "negative picture interval": (["search", *TINY, "--picture-interval", "-1"], "'picture_interval'"),
    "missing config file": (["search", "--config", "{tmp}/none.yaml"], "none.yaml"),
    "unknown config field": (["search", "--config", "{tmp}/bad.yaml"], "unknown field 'epoch'"),
    "retrain: missing genotype file": (["retrain", *TINY, "--genotype", "{tmp}/g.json"], "g.json"),
    "retrain: unknown baseline": (["retrain", *TINY, "--baseline", "unet"], "'baseline'"),
    "retrain: unknown model option": (["retrain", *TINY, "--baseline", "icnet", "--model-option", "depth=3"],
                                      "no option 'depth'"),
    "retrain: two model sources": (["retrain", *TINY, "--baseline", "icnet", "--genotype", "g.json"],
                                   "exactly one model source"),
    "retrain: non-positive learning rate": (["retrain", *TINY, "--baseline", "icnet", "--lr", "0"], "'lr'"),
    "retrain: batch above a worker's share": (["retrain", *TINY, "--baseline", "icnet", "--batch-size", "17"],
                                              "'batch_size'"),
    "retrain: unreachable tracking server": (["retrain", *TINY, "--baseline", "icnet", "--tracking-uri",
                                              "http://127.0.0.1:9"], "127.0.0.1:9"),
}


@pytest.fixture
def no_ray(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("Ray was started for bad input")

    monkeypatch.setattr(driver, "start_ray", refuse)


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_stops_before_ray_with_one_clear_line(name, tmp_path, monkeypatch, capsys, no_ray):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.yaml").write_text("epoch: 3\n")
    argv, expected = CASES[name]
    argv = [arg.replace("{tmp}", str(tmp_path)) for arg in argv]
    started = time.perf_counter()
    try:
        status = cli.main(argv)
    except SystemExit as exit_:  # argparse refuses a choice itself
        status = exit_.code
    elapsed = time.perf_counter() - started
    error = capsys.readouterr().err.strip()
    assert status == 2, error
    assert expected in error, error
    assert "Traceback" not in error
    assert elapsed < 60  # a hang (e.g. waiting for an address) would be far longer; docs give measured times


def test_the_table_covers_at_least_25_cases():
    assert len(CASES) >= 25
