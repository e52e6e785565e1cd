"""Writing to one MLflow run from any process (driver or Ray worker) without ever waiting on the store.

Every method queues a record and returns: a background sender (:mod:`nasplat.tracking.outbox`, one per process
and run) delivers the records in order, retrying while the store does not answer. ``flush`` waits a short,
bounded time for them (the end of an epoch); ``close`` and ``finish`` a longer one, then save what is left.
"""
from __future__ import annotations

import functools
import json
import math
import threading
import time
from pathlib import Path
from typing import Any, Callable, Mapping

from nasplat.tracking.outbox import (
    CLOSE_TIMEOUT_S,
    FLUSH_TIMEOUT_S,
    HEALTH,
    THREAD_PREFIX,
    close_all,
    close_run,
    outbox_for,
)
from nasplat.tracking.reachability import brief_error, shown_uri

MAX_PARAM_LENGTH = 6000


def flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings become dotted keys (``space_options.C``)."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, prefix=f"{name}."))
        else:
            flat[name] = value
    return flat


class RunLogger:
    """Writes to one existing MLflow run; safe to construct in any process. Nothing here raises for the store."""

    def __init__(self, tracking_uri: str, run_id: str) -> None:
        self.tracking_uri = tracking_uri
        self.run_id = run_id
        self._recorded: set[tuple[str, int]] = set()
        """(metric, step) pairs the run held when :meth:`skip_recorded_metrics` asked; not logged again"""

    def _put(self, record: dict) -> None:
        outbox_for(self.tracking_uri, self.run_id).put(record)

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Params the run does not hold yet (a resumed run keeps its first values)."""
        self._put({"op": "params",
                   "params": {key: str(value)[:MAX_PARAM_LENGTH] for key, value in flatten(params).items()}})

    def log_metrics(self, metrics: Mapping[str, Any], step: int) -> None:
        """The numbers among ``metrics`` (nested keys dotted) at ``step``; NaN, bools and text are left out."""
        now = int(time.time() * 1000)
        items = [
            [key, float(value), now, step]
            for key, value in flatten(metrics).items()
            if isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(float(value))
            and (key, step) not in self._recorded
        ]
        if items:
            self._put({"op": "metrics", "metrics": items})

    def skip_recorded_metrics(self, timeout: float = FLUSH_TIMEOUT_S) -> int:
        """Leave out of later :meth:`log_metrics` calls every (metric, step) the run holds already, so an epoch
        computed again after a restart is recorded once. Asks the store once, waiting up to ``timeout`` s (not at
        all while it is known not to answer: then nothing is left out); returns the number of pairs found."""
        if HEALTH.is_down(self.tracking_uri):
            return 0
        found: dict[str, Any] = {}

        def ask() -> None:
            from mlflow.tracking import MlflowClient

            try:
                client = MlflowClient(tracking_uri=self.tracking_uri)
                found["pairs"] = {(m.key, m.step) for key in client.get_run(self.run_id).data.metrics
                                  for m in client.get_metric_history(self.run_id, key)}
            except Exception as err:  # the store's answer decides nothing here: log everything
                found["error"] = err

        asking = threading.Thread(target=ask, name=f"{THREAD_PREFIX}recorded", daemon=True)
        asking.start()
        asking.join(timeout)
        if "pairs" not in found:
            reason = brief_error(found["error"]) if "error" in found else f"no answer in {timeout:.0f} s"
            print(f"[nasplat] warning: could not read the metrics MLflow at {shown_uri(self.tracking_uri)} holds for "
                  f"run {self.run_id} ({reason}); an epoch computed again may be recorded twice", flush=True)
            return 0
        self._recorded |= found["pairs"]
        return len(found["pairs"])

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        self._put({"op": "tags", "tags": {key: str(value) for key, value in tags.items()}})

    def log_json(self, data: Any, artifact_file: str) -> None:
        self._put({"op": "text", "text": json.dumps(data, indent=2) + "\n", "artifact_file": artifact_file})

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """The file as it is now (a copy is queued: the original may go away at once)."""
        copy = outbox_for(self.tracking_uri, self.run_id).spool_copy(path)
        self._put({"op": "artifact", "path": copy, "artifact_path": artifact_path})

    def log_artifacts(self, directory: str | Path, artifact_path: str | None = None) -> None:
        """Every file under ``directory``, sub-folders kept, in one record (of a copy, as for ``log_artifact``)."""
        copy = outbox_for(self.tracking_uri, self.run_id).spool_copy(directory)
        self._put({"op": "artifacts", "path": copy, "artifact_path": artifact_path})

    def flush(self, timeout: float = FLUSH_TIMEOUT_S) -> bool:
        """Wait up to ``timeout`` s for the queued records to be delivered (not at all while the store is known
        not to answer); True when none is left."""
        return outbox_for(self.tracking_uri, self.run_id).flush(timeout)

    def close(self, timeout: float = CLOSE_TIMEOUT_S) -> int:
        """Deliver what is queued (waiting up to ``timeout`` s), then save and name what could not be; returns
        the number of records not delivered. The logger can still be used: a new queue starts."""
        return close_run(self.tracking_uri, self.run_id, timeout)

    def finish(self, status: str = "FINISHED", timeout: float = CLOSE_TIMEOUT_S) -> int:
        """End the run with ``status`` (its end time is now, whenever it is delivered), then :meth:`close`."""
        self._put({"op": "terminated", "status": status, "end_time": int(time.time() * 1000)})
        return self.close(timeout)


def closing_loggers(function: Callable[[Any], None]) -> Callable[[Any], None]:
    """``function``, then every logger queue of the process delivered or saved (:func:`outbox.close_all`).

    For Ray Train loops: Ray kills a worker's process once its loop returns, before any exit handler runs.
    """

    @functools.wraps(function)
    def run(config: Any) -> None:
        try:
            function(config)
        finally:
            close_all()

    return run
