"""A Tune callback that prints one line per reported epoch and records which trials ended."""
from __future__ import annotations

from typing import Any

from ray import tune

from nasplat.runtime.worker import FAILED_KEY, REASON_KEY
from nasplat.tracking.schema import FAILURE_REASON_TAG

_TRIALS_ENDED: dict[str, set[str]] = {}
"""Experiment name -> ids of trials that completed or failed (not interrupted), filled in the driver."""


Column = tuple[str, str]
"""(result key, template): ``("val_miou", "val_mIoU {:.4f}")`` prints ``val_mIoU 0.4321``."""


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

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self.ended().add(trial.trial_id)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self.ended().add(trial.trial_id)
        print(f"[nasplat] trial {trial.trial_id} failed (reason in its MLflow run, tag {FAILURE_REASON_TAG})",
              flush=True)

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        if result.get(FAILED_KEY):
            print(f"[nasplat] trial {trial.trial_id} stopped at epoch {int(result['epoch'])}: {result[REASON_KEY]}",
                  flush=True)
            return
        if "epoch" not in result:
            return
        head = f"[nasplat] trial {trial.trial_id} epoch {int(result['epoch'])}/{self.epochs} | "
        print(head + self.epoch_line(result), flush=True)
        for line in self.extra_lines(trial.trial_id, result):
            print(f"[nasplat] {line}", flush=True)

    def epoch_line(self, result: dict[str, Any]) -> str:
        """The columns present in ``result``, joined by `` | ``."""
        return " | ".join(template.format(result[key]) for key, template in self.columns if key in result)

    def extra_lines(self, trial_id: str, result: dict[str, Any]) -> list[str]:
        return []
