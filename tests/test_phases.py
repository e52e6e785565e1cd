"""PhaseClock: wall seconds per named phase, inner phases not counted twice."""
from __future__ import annotations

import pytest

from nasplat.training.phases import PhaseClock


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_nested_phases_add_up_to_the_wall_time_and_metrics_start_afresh():
    fake = FakeClock()
    clock = PhaseClock(fake)
    with clock.phase("other"):
        fake.now += 1.0
        with clock.phase("train"):
            fake.now += 10.0
        with clock.phase("report"):
            fake.now += 2.0
            with clock.phase("checkpoint"):
                fake.now += 0.5
        with clock.phase("train"):  # a phase opened twice sums
            fake.now += 3.0
    metrics = clock.metrics()
    assert metrics == pytest.approx({"time_other_s": 1.0, "time_train_s": 13.0, "time_report_s": 2.0,
                                     "time_checkpoint_s": 0.5})
    assert sum(metrics.values()) == pytest.approx(fake.now)
    assert clock.metrics() == {}


def test_a_phase_that_raises_is_still_timed():
    fake = FakeClock()
    clock = PhaseClock(fake)
    with pytest.raises(RuntimeError), clock.phase("eval"):
        fake.now += 4.0
        raise RuntimeError("boom")
    with clock.phase("records"):
        fake.now += 1.0
    assert clock.metrics() == pytest.approx({"time_eval_s": 4.0, "time_records_s": 1.0})
