"""Faults: a lost Ray Train worker and a SIGKILLed driver. The search goes on from its last checkpoint, records each
epoch once, counts the restarts, and ends with the genotype of an uninterrupted search with the same seed."""
from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
from mlflow.tracking import MlflowClient

from nasplat.runtime.worker import count_start
from nasplat.tracking import schema
from nasplat.tracking.logger import RunLogger

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--train-samples", "16", "--val-samples", "8", "--image-size", "16", "--batch-size", "2", "--workers", "2",
        "--space-option", "C=4", "--space-option", "layers=3", "--epochs", "2", "--seed", "3", "--max-failures", "2"]


# ----- the pieces, without Ray ------------------------------------------------------------------

def test_starts_count_restarts_within_a_fit_and_resumes_across_fits(tmp_path):
    location = str(tmp_path / "starts" / "run.json")
    assert count_start(location, "fit-a") == (0, 0)  # the first start
    assert count_start(location, "fit-a") == (1, 0)  # Ray Train restarted the workers
    assert count_start(location, "fit-b") == (1, 1)  # a resumed driver made a new trainer
    assert count_start(location, "fit-b") == (2, 1)


def test_a_recomputed_epoch_is_recorded_once(tmp_path):
    """Rank 0 logged epoch 2, then lost its workers before the checkpoint: the restarted rank 0 computes epoch 2
    again; the run keeps the first record of it and gets epoch 3."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    run_id = client.create_run(client.create_experiment("faults")).info.run_id
    before = RunLogger(uri, run_id)
    for step in (1, 2):
        before.log_metrics({"train_loss": 1.0 / step, "val_iou": {"cat": 0.1 * step}}, step=step)
    before.close()
    after = RunLogger(uri, run_id)  # a new worker process
    assert after.skip_recorded_metrics() == 4
    after.log_metrics({"train_loss": 0.7, "val_iou": {"cat": 0.7}}, step=2)
    after.log_metrics({"train_loss": 0.3, "val_iou": {"cat": 0.3}}, step=3)
    after.close()
    history = [(m.step, m.value) for m in client.get_metric_history(run_id, "train_loss")]
    assert history == [(1, 1.0), (2, 0.5), (3, 0.3)]
    assert [m.step for m in client.get_metric_history(run_id, "val_iou.cat")] == [1, 2, 3]


def test_an_unreadable_store_skips_nothing_and_says_so(capsys):
    logger = RunLogger("http://127.0.0.1:9", "0" * 32)  # nothing listens on the discard port
    started = time.monotonic()
    assert logger.skip_recorded_metrics(timeout=1.0) == 0
    assert time.monotonic() - started < 5
    assert "may be recorded twice" in capsys.readouterr().out


# ----- against real Ray -------------------------------------------------------------------------

class Search:
    """`nasplat search ...` as a subprocess in its own session, its output lines read as they come."""

    def __init__(self, args: list[str], cwd: Path) -> None:
        cwd.mkdir(parents=True, exist_ok=True)
        self.cwd, self.lines, self._queue = cwd, [], queue.Queue()
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)}
        self.process = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "search", *args], cwd=cwd, env=env,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                        start_new_session=True)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self._queue.put(line)
        self._queue.put(None)

    def wait_for(self, text: str, deadline: float) -> str:
        """The next output line holding ``text``; fails at ``deadline`` or when the command ends first."""
        while time.monotonic() < deadline:
            try:
                line = self._queue.get(timeout=1)
            except queue.Empty:
                continue
            if line is None:
                self._queue.put(None)
                break
            self.lines.append(line)
            if text in line:
                return line
        raise AssertionError(f"no line with {text!r}; output:\n{''.join(self.lines)[-4000:]}")

    def finish(self, timeout: float) -> str:
        """Wait for the command to end; its whole output (read for up to 10 s more: what it started may hold the
        pipe open)."""
        self.process.wait(timeout)
        until = time.monotonic() + 10
        while time.monotonic() < until:
            try:
                line = self._queue.get(timeout=1)
            except queue.Empty:
                continue
            if line is None:
                self._queue.put(None)
                break
            self.lines.append(line)
        return "".join(self.lines)

    def end_session(self) -> None:
        """Kill what is left of the processes the command started (its local Ray's agents outlive a SIGKILL)."""
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _trial_run(folder: Path):
    client = MlflowClient(tracking_uri=f"sqlite:///{folder / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("nasplat-search")
    runs = client.search_runs([experiment.experiment_id], f"tags.`{schema.KIND_TAG}` = '{schema.SEARCH_TRIAL}'")
    return client, runs[0] if runs else None


def _worker_pid(search: Search, rank: int, deadline: float) -> int:
    """The process id of ``rank`` of the search's trial, from its MLflow tag, checked to be one of the search's own
    Ray Train workers (never another process on this machine)."""
    while time.monotonic() < deadline:
        _, run = _trial_run(search.cwd)
        pid = run and run.data.tags.get(f"{schema.WORKER_PID_TAG}.{rank}")
        if pid:
            owned = {p.pid for p in psutil.Process(search.process.pid).children(recursive=True)}
            assert int(pid) in owned and "RayTrainWorker" in " ".join(psutil.Process(int(pid)).cmdline())
            return int(pid)
        time.sleep(0.5)
    raise AssertionError(f"no {schema.WORKER_PID_TAG}.{rank} tag")


@pytest.mark.slow
def test_a_search_survives_a_lost_worker_and_a_killed_driver(tmp_path):
    """One run loses Ray Train worker 1 (SIGKILL by pid) in epoch 2, then its driver (SIGKILL) while the restarted
    workers redo epoch 2; `--resume` finishes it. An uninterrupted run with the same seed runs beside it."""
    started = time.monotonic()
    deadline = started + 400
    plain = Search([*TINY, "--name", "plain"], tmp_path / "plain")
    hit = Search([*TINY, "--name", "hit"], tmp_path / "hit")
    try:
        hit.wait_for("epoch 1/2", deadline)  # epoch 1 is checkpointed; the workers are in epoch 2
        os.kill(_worker_pid(hit, 1, deadline), signal.SIGKILL)
        killed_worker = time.monotonic()
        restarted = hit.wait_for("resumed from", deadline)
        restart_s = time.monotonic() - killed_worker
        os.kill(hit.process.pid, signal.SIGKILL)  # the driver, while the restarted workers compute epoch 2
        hit.process.wait(60)
        assert hit.process.returncode == -signal.SIGKILL
    finally:
        hit.end_session()
    killed_run = hit.finish(10)
    assert restarted.rstrip().endswith("at epoch 1"), restarted  # from the last checkpoint: epoch 1 is not redone
    resume_started = time.monotonic()
    resumed = Search(["--resume", "hit"], tmp_path / "hit")
    resumed_output = resumed.finish(300)
    resume_s = time.monotonic() - resume_started
    plain_output = plain.finish(max(1.0, deadline - time.monotonic()))
    assert resumed.process.returncode == 0, resumed_output[-4000:]
    assert plain.process.returncode == 0, plain_output[-4000:]
    print(f"worker-group restart {restart_s:.0f} s, resume {resume_s:.0f} s, test {time.monotonic() - started:.0f} s")

    assert "resuming the search stored in" in resumed_output and "resumed from" in resumed_output
    progress = [line for line in (killed_run + resumed_output).splitlines() if "[nasplat] trial" in line]
    assert [line.split(" | ")[0].split()[-1] for line in progress] == ["1/2", "2/2"]  # each epoch reported once
    genotype = json.loads((tmp_path / "hit" / "nasplat_runs" / "hit" / "genotype.json").read_text())
    assert genotype == json.loads((tmp_path / "plain" / "nasplat_runs" / "plain" / "genotype.json").read_text())

    client, trial = _trial_run(tmp_path / "hit")
    _, plain_trial = _trial_run(tmp_path / "plain")
    assert trial.info.status == "FINISHED"
    assert (trial.data.tags[schema.RESTARTS_TAG], trial.data.tags[schema.RESUMES_TAG]) == ("1", "1")
    for key in ("epoch", "train_loss", "val_miou", "arch_entropy"):
        assert [m.step for m in client.get_metric_history(trial.info.run_id, key)] == [1, 2], key
    plain_client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'plain' / 'mlflow.db'}")
    assert ([m.value for m in client.get_metric_history(trial.info.run_id, "train_loss")]
            == [m.value for m in plain_client.get_metric_history(plain_trial.info.run_id, "train_loss")])
