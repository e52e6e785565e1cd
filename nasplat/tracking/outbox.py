"""The queue between a :class:`~nasplat.tracking.logger.RunLogger` and MLflow: one background sender per process
and run, so a tracking server that stops answering never stops training.

Records are plain JSON-able dicts, sent in the order they were queued. A record the store cannot take now
(connection refused, timeout, 5xx, 429) stays at the head of the queue and is retried with back-off; one the
store refuses (another 4xx) is set aside. The first failure towards a URI prints one line, the first success
after it another. ``close`` waits a bounded time, then writes what is left to ``undelivered.jsonl`` in a temp
folder and says where; ``python -m nasplat.tracking.outbox FILE --tracking-uri URI`` sends it later.
"""
from __future__ import annotations

import argparse
import atexit
import collections
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from nasplat.tracking.reachability import brief_error, shown_uri

FLUSH_TIMEOUT_S = 10.0
"""The most an end-of-epoch ``flush`` waits (and it does not wait at all while the store is known down)."""
CLOSE_TIMEOUT_S = 120.0
"""The most ``close`` (the end of a run or of a worker's loop) waits for the store before saving what is left."""
EXIT_TIMEOUT_S = 15.0
"""The most the interpreter's exit waits for queues nobody closed."""
RETRY_START_S, RETRY_MAX_S = 1.0, 15.0
SHORT_HTTP_RETRIES = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",  # MLflow's default (7, factor 2) retries for minutes
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",  # seconds per connect or read (default 120)
}
"""Set (unless the user set them) in processes that send records over HTTP: the outbox does the long retrying."""
SAVED_FILE = "undelivered.jsonl"
THREAD_PREFIX = "nasplat-mlflow-"


class _QuietRetries(logging.Filter):
    """urllib3 logs each of MLflow's HTTP retries as a warning; from a sender thread, the one outage line says
    it instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not threading.current_thread().name.startswith(THREAD_PREFIX)


logging.getLogger("urllib3.connectionpool").addFilter(_QuietRetries())


def _say(message: str) -> None:
    print(f"[nasplat] {message}", flush=True)


def _refused(error: BaseException) -> bool:
    """The store answered and said no (bad value, no such run): retrying the same record cannot help."""
    if not isinstance(error, MlflowException):
        return False
    status = error.get_http_status_code()
    return 400 <= status < 500 and status != 429


class _Health:
    """Whether each tracking URI is known not to answer in this process: one warning per outage, not per run."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._down_since: dict[str, float] = {}

    def is_down(self, uri: str) -> bool:
        return uri in self._down_since

    def failed(self, uri: str, error: BaseException) -> None:
        with self._lock:
            if uri in self._down_since:
                return
            self._down_since[uri] = time.monotonic()
        _say(f"MLflow at {shown_uri(uri)} does not answer ({brief_error(error)}); its records are queued and sent "
             "once it is back (training goes on)")

    def answered(self, uri: str, queued: int) -> None:
        with self._lock:
            since = self._down_since.pop(uri, None)
        if since is not None:
            _say(f"MLflow at {shown_uri(uri)} answers again after {time.monotonic() - since:.0f} s; "
                 f"sending the {queued} queued record(s)")


HEALTH = _Health()


def _log_params(client: MlflowClient, run_id: str, record: dict) -> None:
    existing = client.get_run(run_id).data.params  # a resumed run keeps its first values (MLflow refuses changes)
    items = [Param(key, value) for key, value in record["params"].items() if key not in existing]
    for start in range(0, len(items), 100):
        client.log_batch(run_id, params=items[start : start + 100])


def _log_image(client: MlflowClient, run_id: str, record: dict) -> None:
    """``log_image(key=..., step=...)``: the file under ``images/`` the UI steps through, and its preview."""
    from PIL import Image

    with Image.open(record["path"]) as image:
        image.load()
        client.log_image(run_id, image, key=record["key"], step=record["step"], timestamp=record["timestamp"],
                         synchronous=True)


def _log_inputs(client: MlflowClient, run_id: str, record: dict) -> None:
    """``log_inputs``: datasets as ``{"dataset": Dataset fields, "tags": {...}}``."""
    client.log_inputs(run_id, [DatasetInput(Dataset(**item["dataset"]), [InputTag(k, v) for k, v in item["tags"].items()])
                               for item in record["datasets"]])


SENDERS: dict[str, Callable[[MlflowClient, str, dict], Any]] = {
    "params": _log_params,
    "metrics": lambda c, run, r: c.log_batch(run, metrics=[Metric(*m) for m in r["metrics"]]),
    "tags": lambda c, run, r: c.log_batch(run, tags=[RunTag(k, v) for k, v in r["tags"].items()]),
    "text": lambda c, run, r: c.log_text(run, r["text"], r["artifact_file"]),
    "artifact": lambda c, run, r: c.log_artifact(run, r["path"], r["artifact_path"]),
    "artifacts": lambda c, run, r: c.log_artifacts(run, r["path"], r["artifact_path"]),
    "terminated": lambda c, run, r: c.set_terminated(run, r["status"], r["end_time"]),
    "image": _log_image,
    "inputs": _log_inputs,
}
"""How each kind of record (``record["op"]``) is sent to the run."""
COPIED_OPS = ("artifact", "artifacts", "image")
"""Records whose ``path`` is a private copy (:meth:`Outbox.spool_copy`), removed once delivered."""


def send(client: MlflowClient, run_id: str, record: dict) -> None:
    SENDERS[record["op"]](client, run_id, record)


class Outbox:
    """The records of one run in this process, sent in order by one daemon thread."""

    def __init__(self, tracking_uri: str, run_id: str, client_factory: Callable[[], Any] | None = None,
                 retry_start: float = RETRY_START_S, retry_max: float = RETRY_MAX_S) -> None:
        self.tracking_uri, self.run_id = tracking_uri, run_id
        if tracking_uri.startswith(("http://", "https://")):
            for name, value in SHORT_HTTP_RETRIES.items():
                os.environ.setdefault(name, value)
        self._factory = client_factory or (lambda: MlflowClient(tracking_uri=tracking_uri))
        self._retry_start, self._retry_max = retry_start, retry_max
        self._queue: collections.deque[dict] = collections.deque()
        self._refused: list[dict] = []
        self._stopped = False
        self._spool: Path | None = None
        self._copies = 0
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._run, name=f"{THREAD_PREFIX}{run_id[:8]}", daemon=True)
        self._thread.start()

    def put(self, record: dict) -> None:
        with self._changed:
            if self._stopped:
                raise RuntimeError(f"the MLflow queue of run {self.run_id} is closed")
            self._queue.append(record)
            self._changed.notify_all()

    def spool_copy(self, path: str | Path) -> str:
        """A private copy of a file or folder, sent in its place: the caller may delete or rewrite the original
        (a checkpoint's temp folder) before the record leaves."""
        source = Path(path)
        with self._changed:
            self._copies += 1
            target = self._spool_dir() / f"{self._copies:06d}" / source.name
            target.parent.mkdir()
        if source.is_dir():
            shutil.copytree(source, target)
        else:
            shutil.copy2(source, target)
        return str(target)

    def pending(self) -> int:
        with self._changed:
            return len(self._queue)

    def flush(self, timeout: float = FLUSH_TIMEOUT_S) -> bool:
        """Wait up to ``timeout`` s for the queue to empty; at once False while the store is known down."""
        with self._changed:
            self._changed.wait_for(lambda: not self._queue or HEALTH.is_down(self.tracking_uri), timeout=timeout)
            return not self._queue

    def close(self, timeout: float = CLOSE_TIMEOUT_S) -> int:
        """Wait up to ``timeout`` s for the queue to empty, stop the sender and save what is left; returns the
        number of records not delivered (0: all sent, temp copies removed)."""
        with self._changed:
            self._changed.wait_for(lambda: not self._queue, timeout=timeout)
            self._stopped = True
            left = [*self._refused, *self._queue]
            self._changed.notify_all()
        if not left:
            if self._spool is not None:
                shutil.rmtree(self._spool, ignore_errors=True)
            return 0
        saved, shown = self._save(left), shown_uri(self.tracking_uri)
        _say(f"{len(left)} MLflow record(s) of run {self.run_id} could not be delivered to {shown}; saved in "
             f"{saved} (send them later with: python -m nasplat.tracking.outbox {saved} --tracking-uri "
             f"{shown if shown == self.tracking_uri else 'URI'})")
        return len(left)

    def _spool_dir(self) -> Path:
        """This queue's temp folder (artifact copies, the saved records), made on first use."""
        if self._spool is None:
            self._spool = Path(tempfile.mkdtemp(prefix=f"{THREAD_PREFIX}{self.run_id[:8]}-"))
        return self._spool

    def _save(self, records: list[dict]) -> Path:
        path = self._spool_dir() / SAVED_FILE
        header = {"run_id": self.run_id, "tracking_uri": shown_uri(self.tracking_uri)}
        path.write_text("".join(json.dumps(line) + "\n" for line in [header, *records]))
        return path

    def _run(self) -> None:
        client, delay = None, self._retry_start
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self._queue or self._stopped)
                if self._stopped:
                    return
                record = self._queue[0]
            try:
                client = client or self._factory()
                send(client, self.run_id, record)
            except Exception as err:  # noqa: BLE001 - any failure is the store's to report, never the caller's
                if not _refused(err):
                    HEALTH.failed(self.tracking_uri, err)
                    with self._changed:
                        self._changed.notify_all()  # a waiting flush gives up now
                        self._changed.wait_for(lambda: self._stopped, timeout=delay)
                    delay = min(2 * delay, self._retry_max)
                    continue
                _say(f"MLflow refused a {record['op']} record of run {self.run_id}: {brief_error(err)}")
                record = {**record, "error": str(err)}
                self._refused.append(record)
            else:
                HEALTH.answered(self.tracking_uri, self.pending() - 1)
                delay = self._retry_start
            self._done(record)

    def _done(self, record: dict) -> None:
        """Take the head record off the queue; a delivered artifact's copy (and an emptied temp folder) goes first,
        so that an empty queue means a clean one."""
        with self._changed:
            if self._stopped:  # close() has saved it already
                return
            if record["op"] in COPIED_OPS and "error" not in record:
                shutil.rmtree(Path(record["path"]).parent, ignore_errors=True)
                if self._spool is not None and not any(self._spool.iterdir()):
                    self._spool.rmdir()  # a worker killed later leaves no empty folder behind
                    self._spool = None
            self._queue.popleft()
            self._changed.notify_all()


_OUTBOXES: dict[tuple[str, str], Outbox] = {}
_OUTBOXES_LOCK = threading.Lock()


def outbox_for(tracking_uri: str, run_id: str) -> Outbox:
    """This process's open queue for the run, started on first use."""
    with _OUTBOXES_LOCK:
        key = (tracking_uri, run_id)
        if key not in _OUTBOXES:
            _OUTBOXES[key] = Outbox(tracking_uri, run_id)
        return _OUTBOXES[key]


def close_run(tracking_uri: str, run_id: str, timeout: float = CLOSE_TIMEOUT_S) -> int:
    """Close the run's queue in this process, if open; returns the number of records not delivered."""
    with _OUTBOXES_LOCK:
        outbox = _OUTBOXES.pop((tracking_uri, run_id), None)
    return outbox.close(timeout) if outbox is not None else 0


def close_all(timeout: float = CLOSE_TIMEOUT_S) -> int:
    """Close every open queue of this process (each waits up to ``timeout`` s); returns the records not delivered."""
    with _OUTBOXES_LOCK:
        outboxes = list(_OUTBOXES.values())
        _OUTBOXES.clear()
    return sum(outbox.close(timeout) for outbox in outboxes)


atexit.register(close_all, EXIT_TIMEOUT_S)
os.register_at_fork(after_in_child=_OUTBOXES.clear)  # a forked child has the queues but not their threads


def deliver_saved(path: str | Path, client: Any) -> int:
    """Send the records of a saved ``undelivered.jsonl`` in order; returns how many were sent. On a failure the
    file keeps the records not yet sent and the error is raised."""
    path = Path(path)
    header, *records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    for index, record in enumerate(records):
        try:
            send(client, header["run_id"], record)
        except Exception:
            path.write_text("".join(json.dumps(line) + "\n" for line in [header, *records[index:]]))
            raise
    return len(records)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nasplat.tracking.outbox",
                                     description="Send MLflow records a run could not deliver (undelivered.jsonl).")
    parser.add_argument("file", type=Path)
    parser.add_argument("--tracking-uri", required=True, help="the store the run lives in")
    args = parser.parse_args(argv)
    sent = deliver_saved(args.file, MlflowClient(tracking_uri=args.tracking_uri))
    print(f"sent {sent} record(s) from {args.file}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
