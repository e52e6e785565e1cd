"""A Tune callback that prints one line per reported epoch (with an ETA), a line when a trial is stopped early by
the scheduler or fails (with the reason), and records which trials ended."""
from __future__ import annotations

import time
from typing import Any

from ray import tune

from nasplat.runtime.worker import FAILED_KEY, REASON_KEY
from nasplat.training.heartbeat import format_duration
from nasplat.tracking.schema import FAILURE_REASON_TAG

_TRIALS_ENDED: dict[str, set[str]] = {}
"""Experiment name -> ids of trials that completed or failed (not interrupted), filled in the driver."""

_TRIAL_CLOCKS: dict[tuple[str, str], tuple[float, int]] = {}
"""(experiment, trial id) -> (wall time the trial (re)started in this driver, the epoch it started from; -1 until
its first report says), for the ETA."""

Column = tuple[str, str]
"""(result key, template): ``("val_miou", "val_mIoU {:.4f}")`` prints ``val_mIoU 0.4321``."""


def error_summary(error: BaseException | None, limit: int = 300) -> str:
    """The last non-empty line of ``error`` (Ray wraps a worker's exception in several layers), cut to ``limit``."""
    if error is None:
        return "no error recorded"
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = lines[-1] if lines else type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


class TrialProgress(tune.Callback):
    """Subclasses list an epoch line's ``columns`` and may add lines (``extra_lines``).

    Tune pickles callbacks into its experiment state and unpickles them on restore, so the record of
    ended trials lives in a module-level dict keyed by the experiment name rather than on the instance.
    """

    columns: tuple[Column, ...] = ()

    def __init__(self, epochs: int, name: str) -> None:
        self.epochs = epochs
        self.name = name

    def ended(self) -> set[str]:
        return _TRIALS_ENDED.setdefault(self.name, set())

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        _TRIAL_CLOCKS[(self.name, trial.trial_id)] = (time.monotonic(), -1)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self.ended().add(trial.trial_id)
        epoch = int(trial.last_result.get("epoch", 0) or 0)
        if 0 < epoch < self.epochs and not trial.last_result.get(FAILED_KEY):
            print(f"[nasplat] trial {trial.trial_id} stopped early by the scheduler after epoch {epoch}/{self.epochs} "
                  f"(its val mIoU was below the cut of that rung)", flush=True)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self.ended().add(trial.trial_id)
        try:
            error = trial.get_pickled_error() or trial.get_error()
        except Exception:  # a missing or unreadable error file must not stop the experiment
            error = None
        print(f"[nasplat] trial {trial.trial_id} failed: {error_summary(error)} "
              f"(full reason in its MLflow run, tag {FAILURE_REASON_TAG})", flush=True)

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        if result.get(FAILED_KEY):
            print(f"[nasplat] trial {trial.trial_id} stopped at epoch {int(result['epoch'])}: {result[REASON_KEY]}",
                  flush=True)
            return
        if "epoch" not in result:
            return
        epoch = int(result["epoch"])
        head = f"[nasplat] trial {trial.trial_id} epoch {epoch}/{self.epochs} | "
        print(head + self.epoch_line(result) + self._eta(trial.trial_id, epoch), flush=True)
        for line in self.extra_lines(trial.trial_id, result):
            print(f"[nasplat] {line}", flush=True)

    def _eta(self, trial_id: str, epoch: int) -> str:
        """`` | ETA 3m07s``: the epochs left at the mean wall time per epoch since the trial (re)started here; a
        (re)started trial's first report is the epoch after the one it started from, so start-up time counts."""
        now = time.monotonic()
        key = (self.name, trial_id)
        if key not in _TRIAL_CLOCKS:  # no start seen by this driver: measure from now on
            _TRIAL_CLOCKS[key] = (now, epoch)
            return ""
        started, from_epoch = _TRIAL_CLOCKS[key]
        if from_epoch < 0:
            from_epoch = epoch - 1
            _TRIAL_CLOCKS[key] = (started, from_epoch)
        if epoch >= self.epochs or epoch <= from_epoch:
            return ""
        return f" | ETA {format_duration((now - started) / (epoch - from_epoch) * (self.epochs - epoch))}"

    def epoch_line(self, result: dict[str, Any]) -> str:
        """The columns present in ``result``, joined by `` | ``."""
        return " | ".join(template.format(result[key]) for key, template in self.columns if key in result)

    def extra_lines(self, trial_id: str, result: dict[str, Any]) -> list[str]:
        return []
