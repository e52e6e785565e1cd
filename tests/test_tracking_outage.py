"""Tracking outages: the MLflow queue keeps order, warns once, loses nothing and never holds training for long;
reading commands fail in seconds, naming the server; a real search survives a stopped and restarted server."""
from __future__ import annotations

import http.server
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pytest
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.tracking import MlflowClient

from nasplat.tracking.logger import RunLogger, closing_loggers
from nasplat.tracking.outbox import HEALTH, SHORT_HTTP_RETRIES, Outbox, deliver_saved
from nasplat.tracking.queries import get_run, logged_model
from nasplat.tracking.reachability import check_answers
from nasplat.tracking.runs import ensure_experiment
from nasplat.training.config import ConfigError
from test_tracking_server import TINY_SEARCH, _free_port, start_mlflow_server, stop_mlflow_server

ROOT = Path(__file__).resolve().parents[1]
DEAD = "http://127.0.0.1:9"  # the discard port: nothing listens, connections are refused at once
REFUSED = "API request to http://127.0.0.1:9/api/2.0/mlflow/runs/log-batch failed with exception (Caused by " \
          "NewConnectionError(\"Failed to establish a new connection: [Errno 111] Connection refused\"))"


@pytest.fixture(autouse=True)
def _temp_folders_in_tmp_path(tmp_path, monkeypatch):
    """Queues copy artifacts and save what they could not send to temp folders: here, under the test's own."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))


class FakeClient:
    """Stands in for MlflowClient: the first ``failures`` calls fail as a refused connection does; records what
    it was sent, in order. One instance may serve several queues (one store)."""

    def __init__(self, failures: int = 0, refuse: str | None = None, block: threading.Event | None = None):
        self.failures, self.refuse, self.block = failures, refuse, block
        self.calls = 0
        self.received: list[tuple] = []
        self._lock = threading.Lock()

    def _call(self, *entry) -> None:
        with self._lock:
            self.calls += 1
            calls = self.calls
        if self.block is not None:
            self.block.wait(10)
        if calls <= self.failures:
            raise MlflowException(REFUSED)
        if self.refuse is not None and self.refuse in repr(entry):
            raise MlflowException(f"bad value {self.refuse}", error_code=INVALID_PARAMETER_VALUE)
        self.received.append(entry)

    def log_batch(self, run_id, metrics=(), params=(), tags=()):
        self._call("batch", [(m.key, m.value, m.step) for m in metrics], [(t.key, t.value) for t in tags])

    def log_text(self, run_id, text, artifact_file):
        self._call("text", artifact_file, text)

    def log_artifact(self, run_id, path, artifact_path=None):
        self._call("artifact", artifact_path, Path(path).name, Path(path).read_text())

    def set_terminated(self, run_id, status=None, end_time=None):
        self._call("terminated", status)


@pytest.fixture(scope="module")
def local_store(tmp_path_factory) -> tuple[str, MlflowClient, str]:
    """One SQLite store for the tests that need a real one (making its tables takes seconds): URI, client and
    experiment id."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('store') / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    return uri, client, ensure_experiment(client, "outage", uri)


def _metric(step: int) -> dict:
    return {"op": "metrics", "metrics": [["loss", float(step), 1000 + step, step]]}


def _store_uri() -> str:
    """A made-up URI per test: the outage state is kept per URI and process."""
    return f"fake://store-{uuid.uuid4().hex[:8]}"


def _lines(text: str, words: str) -> list[str]:
    return [line for line in text.splitlines() if words in line]


def test_failures_then_success_keep_order_warn_once_and_lose_nothing(capsys):
    fake, uri = FakeClient(failures=4), _store_uri()
    box = Outbox(uri, "run-1", client_factory=lambda: fake, retry_start=0.01, retry_max=0.05)
    for step in range(20):
        box.put(_metric(step))
    assert box.close(timeout=10) == 0
    assert fake.calls == 24  # 4 failed tries of the first record, then each record once
    assert [entry[1][0][2] for entry in fake.received] == list(range(20))
    out = capsys.readouterr().out
    down, back = _lines(out, "does not answer"), _lines(out, "answers again")
    assert len(down) == 1 and uri in down[0] and "Connection refused" in down[0]
    assert len(back) == 1 and uri in back[0]
    assert not HEALTH.is_down(uri)


def test_each_outage_is_announced_once_for_all_runs_of_a_store(capsys):
    uri, store = _store_uri(), FakeClient(failures=6)
    boxes = [Outbox(uri, f"run-{i}", client_factory=lambda: store, retry_start=0.01, retry_max=0.05) for i in range(2)]
    for box in boxes:
        box.put(_metric(1))
    assert [box.close(timeout=10) for box in boxes] == [0, 0]
    assert len(store.received) == 2
    out = capsys.readouterr().out  # both runs' failures fall in the same outage
    assert len(_lines(out, "does not answer")) == 1 and len(_lines(out, "answers again")) == 1


def test_flush_is_bounded_and_does_not_wait_while_the_store_is_down():
    gate = threading.Event()  # a store that takes a call and does not answer
    slow = Outbox(_store_uri(), "run-slow", client_factory=lambda: FakeClient(block=gate))
    slow.put(_metric(1))
    started = time.monotonic()
    assert slow.flush(timeout=0.5) is False
    assert time.monotonic() - started < 2.0
    gate.set()
    assert slow.flush(timeout=10) is True

    uri = _store_uri()
    down = Outbox(uri, "run-down", client_factory=lambda: FakeClient(failures=10**6), retry_start=0.05)
    down.put(_metric(1))
    deadline = time.monotonic() + 10
    while not HEALTH.is_down(uri) and time.monotonic() < deadline:
        time.sleep(0.01)
    started = time.monotonic()
    assert down.flush(timeout=30) is False and time.monotonic() - started < 1.0
    assert down.close(timeout=0) == 1 and slow.close() == 0


def test_close_saves_what_is_left_and_it_can_be_sent_later(tmp_path, capsys):
    box = Outbox(_store_uri(), "run-saved", client_factory=lambda: FakeClient(failures=10**6), retry_start=0.05)
    source = tmp_path / "best_model.txt"
    source.write_text("weights")
    copy = box.spool_copy(source)
    source.unlink()  # a checkpoint's temp folder goes away before the record leaves
    records = [_metric(1), {"op": "artifact", "path": copy, "artifact_path": "checkpoints"},
               {"op": "text", "text": "{}\n", "artifact_file": "genotype.json"}, _metric(2),
               {"op": "terminated", "status": "FINISHED", "end_time": 5}]
    for record in records:
        box.put(record)
    started = time.monotonic()
    assert box.close(timeout=0.5) == 5
    assert time.monotonic() - started < 5.0
    said = _lines(capsys.readouterr().out, "could not be delivered")
    assert len(said) == 1 and "5 MLflow record(s) of run run-saved" in said[0]
    saved = Path(said[0].split("saved in ")[1].split(" ")[0])
    header, *lines = [json.loads(line) for line in saved.read_text().splitlines()]
    assert header["run_id"] == "run-saved" and lines == records

    later = FakeClient()
    assert deliver_saved(saved, later) == 5
    assert later.received == [("batch", [("loss", 1.0, 1)], []), ("artifact", "checkpoints", "best_model.txt", "weights"),
                              ("text", "genotype.json", "{}\n"), ("batch", [("loss", 2.0, 2)], []),
                              ("terminated", "FINISHED")]


def test_a_refused_record_is_set_aside_and_the_rest_go_on(capsys):
    fake = FakeClient(refuse="bad-tag")
    box = Outbox(_store_uri(), "run-refused", client_factory=lambda: fake)
    box.put(_metric(1))
    box.put({"op": "tags", "tags": {"bad-tag": "x"}})
    box.put(_metric(2))
    assert box.close(timeout=10) == 1  # the refused one, saved
    assert [entry[1] for entry in fake.received] == [[("loss", 1.0, 1)], [("loss", 2.0, 2)]]
    out = capsys.readouterr().out
    assert len(_lines(out, "MLflow refused a tags record")) == 1 and len(_lines(out, "could not be delivered")) == 1


def test_run_logger_records_mean_what_they_did(local_store, tmp_path):
    """Against a real local store: params kept on resume, NaN and text metrics left out, tags, JSON, an artifact
    whose file is gone before delivery, and the end status."""
    uri, client, experiment_id = local_store
    run_id = client.create_run(experiment_id).info.run_id
    logger = RunLogger(uri, run_id)
    logger.log_params({"epochs": 3, "space_options": {"C": 4}})
    logger.log_params({"epochs": 9})  # a resumed run keeps its first value
    for step in (1, 2):
        logger.log_metrics({"val_miou": 0.1 * step, "nan": float("nan"), "genotype": "{...}", "ok": True}, step=step)
    logger.set_tags({"nasplat.last_epoch": 2})
    logger.log_json({"normal": []}, "genotype.json")
    picture = tmp_path / "pics" / "cell.png"
    picture.parent.mkdir()
    picture.write_bytes(b"png")
    logger.log_artifact(picture, "pictures")
    picture.unlink()
    assert logger.flush() is True
    assert not list(tmp_path.glob("nasplat-mlflow-*"))  # the delivered copy went, and its emptied temp folder
    assert logger.finish("FINISHED") == 0

    run = client.get_run(run_id)
    assert run.data.params == {"epochs": "3", "space_options.C": "4"}
    assert set(run.data.metrics) == {"val_miou"}
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "val_miou")] == [(1, 0.1), (2, 0.2)]
    assert run.data.tags["nasplat.last_epoch"] == "2" and run.info.status == "FINISHED"
    assert {a.path for a in client.list_artifacts(run_id)} == {"genotype.json", "pictures"}
    assert json.loads(Path(client.download_artifacts(run_id, "genotype.json", str(tmp_path))).read_text()) == {"normal": []}


def test_finish_on_a_dead_server_never_hides_the_original_error(monkeypatch, capsys):
    for name in SHORT_HTTP_RETRIES:
        monkeypatch.delenv(name, raising=False)  # restored after the test: the outbox sets them process-wide
    started = time.monotonic()
    with pytest.raises(ValueError, match="the original error"):
        try:
            raise ValueError("the original error")
        except ValueError:
            assert RunLogger(DEAD, "run-dead").finish("FAILED", timeout=1.0) == 1
            raise
    assert time.monotonic() - started < 30  # MLflow's own retries were turned short (default: minutes)
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == SHORT_HTTP_RETRIES["MLFLOW_HTTP_REQUEST_MAX_RETRIES"]
    assert len(_lines(capsys.readouterr().out, "could not be delivered to http://127.0.0.1:9")) == 1


def test_closing_loggers_delivers_a_worker_loop_s_records_even_when_it_raises(local_store):
    uri, client, experiment_id = local_store
    run_id = client.create_run(experiment_id).info.run_id

    def loop(config: dict) -> None:
        RunLogger(uri, run_id).log_metrics({"loss": config["loss"]}, step=1)
        raise RuntimeError("worker lost")

    with pytest.raises(RuntimeError, match="worker lost"):
        closing_loggers(loop)({"loss": 0.5})
    assert [m.value for m in client.get_metric_history(run_id, "loss")] == [0.5]


class _HealthHandler(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self):  # noqa: N802 - the name http.server calls
        self.send_response(self.status if self.path == "/health" else 404)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.mark.parametrize("status, answers", [(200, True), (401, True), (503, False)])
def test_check_answers_asks_the_health_endpoint(status, answers):
    handler = type("Handler", (_HealthHandler,), {"status": status})
    server = http.server.HTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    uri = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        if answers:
            check_answers(uri)
        else:
            with pytest.raises(ConfigError, match=f"at {uri} does not answer.*HTTP 503"):
                check_answers(uri)
    finally:
        server.shutdown()
        server.server_close()


def test_a_server_that_takes_the_connection_and_stays_silent_fails_in_bounded_time():
    with socket.socket() as silent:  # listens, never accepts nor answers: a hung server
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        uri = f"http://127.0.0.1:{silent.getsockname()[1]}"
        started = time.monotonic()
        with pytest.raises(ConfigError, match=f"at {uri} does not answer \\(no answer within 1 s\\)"):
            check_answers(uri, timeout=1.0)
        assert time.monotonic() - started < 5


@pytest.mark.parametrize("read", [lambda uri: get_run(uri, "0" * 32, "--run"), lambda uri: logged_model(uri, "0" * 32)],
                         ids=["evaluate --run", "export --run"])
def test_reading_paths_fail_fast_naming_the_server(read):
    started = time.monotonic()
    with pytest.raises(ConfigError, match="MLflow tracking server at http://127.0.0.1:9 does not answer"):
        read(DEAD)
    assert time.monotonic() - started < 10


def _cli_seconds(args: list[str]) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "pipelines.cli", *args], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    return result, time.monotonic() - started


def test_compare_against_a_server_that_does_not_answer_fails_within_15_s():
    result, seconds = _cli_seconds(["compare", "--tracking-uri", DEAD])
    assert result.returncode != 0
    assert "MLflow tracking server at http://127.0.0.1:9 does not answer" in result.stderr
    # 15 s on an idle machine (its start-up takes ~3 s); on a loaded one only the start-up may take longer
    startup = _cli_seconds(["compare", "--help"])[1]
    assert seconds < 15 + max(0.0, startup - 5), f"{seconds:.1f} s (start-up alone {startup:.1f} s)"


OUTAGE_S = 25
"""How long the server stays stopped (then it takes its start-up time to answer again)."""


def _wait_until(ready, search: subprocess.Popen, output: list[str], what: str, timeout: float = 600) -> None:
    """Until ``ready()``, while the search runs."""
    deadline = time.monotonic() + timeout
    while not ready():
        assert search.poll() is None and time.monotonic() < deadline, \
            f"no {what} (search exit {search.poll()}):\n" + "".join(output)[-4000:]
        time.sleep(0.5)


def _has_trial_run(client: MlflowClient) -> bool:
    experiment = client.get_experiment_by_name("nasplat-search")
    runs = client.search_runs([experiment.experiment_id]) if experiment is not None else []
    return any(r.data.tags.get("mlflow.parentRunId") for r in runs)


@pytest.mark.slow
def test_a_search_survives_a_tracking_server_outage(tmp_path):
    """`mlflow server` on 127.0.0.1 is stopped (by its pid) once a 3-epoch search has made its trial run, and
    started again on the same port and store OUTAGE_S s later (or once the first epoch's checkpoint is stored,
    if later): the search exits 0 and the trial run holds every epoch, including those recorded while the
    server was down."""
    root, port = tmp_path / "server", _free_port()
    root.mkdir()
    uri, run_dir = f"http://127.0.0.1:{port}", tmp_path / "nasplat_runs" / "outage"
    args = list(TINY_SEARCH)
    args[args.index("--epochs") + 1] = "3"
    server = start_mlflow_server(root, port)
    try:
        output: list[str] = []
        search = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "search", *args, "--name", "outage",
                                   "--tracking-uri", uri], cwd=tmp_path, env={**os.environ, "PYTHONUNBUFFERED": "1"},
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        reader = threading.Thread(target=lambda: output.extend(search.stdout), daemon=True)
        reader.start()
        client = MlflowClient(tracking_uri=uri)
        try:
            _wait_until(lambda: _has_trial_run(client), search, output, "trial run on the server")
            stop_mlflow_server(server)
            stopped = time.time()
            time.sleep(OUTAGE_S)
            # down until an epoch has been recorded: its checkpoint is stored after its records are made
            _wait_until(lambda: any(run_dir.rglob("checkpoint_*")), search, output, "checkpoint")
            server = start_mlflow_server(root, port)
            back = time.time()
            returncode = search.wait(timeout=900)
            ended = time.time()
        finally:
            if search.poll() is None:
                search.terminate()
                search.wait(60)
            reader.join(10)
        out = "".join(output)
        assert returncode == 0, out[-6000:]
        experiment = client.get_experiment_by_name("nasplat-search")
        runs = client.search_runs([experiment.experiment_id])
        trial = [r for r in runs if r.data.tags.get("mlflow.parentRunId")]
        parent = [r for r in runs if r.data.tags.get("nasplat.kind") == "search"]
        assert len(trial) == 1 and len(parent) == 1
        trial_id = trial[0].info.run_id
        history = client.get_metric_history(trial_id, "val_miou")
        assert sorted(m.step for m in history) == [1, 2, 3]
        during = [m.step for m in history if stopped * 1000 <= m.timestamp <= back * 1000]
        assert during, (f"no epoch fell in the outage ({[m.timestamp / 1000 - stopped for m in history]} s after it "
                        f"began, {back - stopped:.0f} s long):\n{out[-4000:]}")
        genotypes = {a.path for a in client.list_artifacts(trial_id, "genotypes")}
        assert genotypes == {f"genotypes/epoch_00{e}.json" for e in (1, 2, 3)}
        pictures = {a.path for a in client.list_artifacts(trial_id, "pictures")}
        assert pictures == {"pictures/epoch_001", "pictures/epoch_002", "pictures/epoch_003", "pictures/final"}
        assert trial[0].info.status == "FINISHED" and parent[0].info.status == "FINISHED"
        down, again = _lines(out, "does not answer"), _lines(out, "answers again")
        processes = {line.split("[nasplat]")[0] for line in down}  # Ray prefixes a worker's lines with its pid
        assert 1 <= len(down) == len(processes) == len(again), out[-6000:]  # once per process that had records
        assert all(uri in line for line in down + again)
        assert "could not be delivered" not in out
        print(f"outage figures: server stopped {back - stopped:.0f} s ({OUTAGE_S} s + start-up); epochs "
              f"{during} recorded during it; search ended {ended - back:.0f} s after the server was back; "
              f"{[line.split('[nasplat] ')[1] for line in again]}")
    finally:
        stop_mlflow_server(server)
