"""Writing to one MLflow run from any process (driver or Ray worker) without ever waiting on the store.

Every method queues a record and returns: a background sender (:mod:`nasplat.tracking.outbox`, one per process
and run) delivers the records in order, retrying while the store does not answer. ``flush`` waits a short,
bounded time for them (the end of an epoch); ``close`` and ``finish`` a longer one, then save what is left.
"""
from __future__ import annotations

import functools
import json
import math
import time
from pathlib import Path
from typing import Any, Callable, Mapping

from nasplat.tracking.outbox import CLOSE_TIMEOUT_S, FLUSH_TIMEOUT_S, close_all, close_run, outbox_for

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
        ]
        if items:
            self._put({"op": "metrics", "metrics": items})

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
