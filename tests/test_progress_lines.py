"""The lines a user reads while a search or retrain runs: ETA, early stops, failures, progress within an epoch."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from nasplat.runtime import progress
from nasplat.runtime.progress import TrialProgress, error_summary
from nasplat.training.heartbeat import EpochHeartbeat, format_duration


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch):
    fake = Clock()
    monkeypatch.setattr(progress.time, "monotonic", fake)
    return fake


def _trial(trial_id="t1", last_result=None, error=None):
    return SimpleNamespace(trial_id=trial_id, last_result=last_result or {},
                           get_pickled_error=lambda: error, get_error=lambda: None)


class Lines(TrialProgress):
    columns = (("val_miou", "val_mIoU {:.2f}"),)


@pytest.mark.parametrize("seconds, text", [(0, "0s"), (42.4, "42s"), (187, "3m07s"), (7500, "2h05m")])
def test_durations_read_as_a_user_expects(seconds, text):
    assert format_duration(seconds) == text


def test_eta_counts_the_epochs_left_at_the_rate_seen_since_the_trial_started(clock, capsys):
    lines = Lines(epochs=5, name="eta-fresh")
    trial = _trial()
    lines.on_trial_start(0, [], trial)
    clock.now += 100  # the first epoch, start-up included
    lines.on_trial_result(0, [], trial, {"epoch": 1, "val_miou": 0.5})
    clock.now += 60
    lines.on_trial_result(0, [], trial, {"epoch": 2, "val_miou": 0.6})
    lines.on_trial_result(0, [], trial, {"epoch": 5, "val_miou": 0.7})
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "[nasplat] trial t1 epoch 1/5 | val_mIoU 0.50 | ETA 6m40s"  # 100 s x 4 epochs
    assert out[1].endswith("| ETA 4m00s")  # 160 s / 2 epochs x 3
    assert "ETA" not in out[2]  # the last epoch


def test_eta_of_a_resumed_trial_starts_from_the_epoch_it_resumed_at(clock, capsys):
    lines = Lines(epochs=10, name="eta-resumed")
    trial = _trial()
    lines.on_trial_start(0, [], trial)
    clock.now += 30
    lines.on_trial_result(0, [], trial, {"epoch": 7, "val_miou": 0.5})  # restored after epoch 6
    assert capsys.readouterr().out.strip().endswith("| ETA 1m30s")  # 30 s per epoch, 3 left


def test_a_trial_the_scheduler_stops_early_gets_a_line_and_a_finished_one_does_not(capsys):
    lines = Lines(epochs=4, name="asha-stop")
    lines.on_trial_complete(0, [], _trial("early", {"epoch": 1}))
    lines.on_trial_complete(0, [], _trial("done", {"epoch": 4}))
    out = capsys.readouterr().out
    assert "trial early stopped early by the scheduler after epoch 1/4" in out and "trial done" not in out
    assert lines.ended() == {"early", "done"}


def test_a_failed_trial_prints_the_last_line_of_its_error(capsys):
    error = RuntimeError("Training failed.\nTraceback ...\nTrainingDiverged: epoch 1: loss is nan; lower --w-lr")
    Lines(epochs=4, name="failed").on_trial_error(0, [], _trial("bad", error=error))
    out = capsys.readouterr().out
    assert "trial bad failed: TrainingDiverged: epoch 1: loss is nan; lower --w-lr" in out
    assert error_summary(None) == "no error recorded" and len(error_summary(RuntimeError("x" * 900))) == 300


def test_heartbeat_prints_every_interval_with_the_time_left_in_the_epoch(capsys):
    clock = Clock()
    beat = EpochHeartbeat("epoch 2/8", total_steps=400, interval_s=30, clock=clock)
    clock.now += 10
    assert beat.beat(40) is None  # under 30 s: quiet
    clock.now += 20
    assert beat.beat(120) == "[nasplat] epoch 2/8: step 120/400 after 30s, about 1m10s left in this epoch"
    clock.now += 29
    assert beat.beat(230) is None  # 29 s after the last line
    clock.now += 1
    assert beat.beat(240).endswith("step 240/400 after 1m00s, about 40s left in this epoch")
    assert capsys.readouterr().out.count("[nasplat]") == 2


def test_heartbeat_is_silent_on_other_ranks_and_counts_steps_of_a_stream():
    clock = Clock()
    assert EpochHeartbeat("epoch 1/2", 10, enabled=False, interval_s=0, clock=clock).beat(5) is None
    stream = EpochHeartbeat("epoch 1/2", None, clock=clock)  # a Ray Data stream: no step count known
    clock.now += 31
    assert stream.beat(17) == "[nasplat] epoch 1/2: step 17 after 31s"
