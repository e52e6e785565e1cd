"""Faults: a lost Ray Train worker and a SIGKILLed driver. The search goes on from its last checkpoint, records each
epoch once, counts the restarts, and ends with the genotype of an uninterrupted search with the same seed."""
from __future__ import annotations

import json
import os
import queue
import secrets
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
from mlflow.tracking import MlflowClient

from nasplat.runtime.worker import STARTS_FOLDER, count_start
from nasplat.tracking import schema
from nasplat.tracking.logger import RunLogger

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--train-samples", "64", "--val-samples", "8", "--image-size", "32", "--batch-size", "2", "--workers", "2",
        "--space-option", "C=4", "--space-option", "layers=3", "--epochs", "2", "--seed", "3", "--max-failures", "2"]
"""Epochs of a few seconds (8 bi-level steps of 2 images per worker): long enough to kill a process inside one."""


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

HEAD = """
import sys
import ray
ray.init(num_cpus=4, resources={"nasplat_driver": 2}, include_dashboard=True, dashboard_host="127.0.0.1",
         log_to_driver=False, configure_logging=True, logging_level="WARNING")
print("address", ray.get_runtime_context().gcs_address, flush=True)
sys.stdin.read()  # until the test closes it
ray.shutdown()
"""
"""A Ray head on this machine (4 logical CPUs, 2 trial-driver slots, token authentication) for the searches to join
with --address: one Ray start for every search here, and a driver killed with SIGKILL leaves the cluster as a
cluster's driver would."""


OUTSIDE_SETTINGS = ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")
"""Left out of the commands' environment: a module fixture is set up before the per-test clean-up
(conftest.py), and an earlier module's ``mlflow.set_tracking_uri`` leaves MLFLOW_TRACKING_URI set, which would
send the searches' records to that module's store."""


@pytest.fixture(scope="module")
def ray_head():
    """``(pid, address, environment)`` of the head; the environment holds its token (Ray's token authentication)."""
    env = {**{key: value for key, value in os.environ.items() if key not in OUTSIDE_SETTINGS},
           "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    head = subprocess.Popen([sys.executable, "-c", HEAD], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            start_new_session=True, env=env)
    try:
        line = head.stdout.readline()
        assert line.startswith("address "), f"the Ray head did not start (exit {head.poll()})"
        yield head.pid, line.split()[1], env
    finally:
        head.stdin.close()  # the head shuts Ray down and exits
        try:
            head.wait(60)
        finally:
            _kill_group(head.pid)  # what Ray left of the head's processes


class Search:
    """`nasplat search ...` as a subprocess in its own session, its output lines read as they come."""

    def __init__(self, args: list[str], cwd: Path, env: dict[str, str]) -> None:
        cwd.mkdir(parents=True, exist_ok=True)
        self.cwd, self.lines, self._queue = cwd, [], queue.Queue()
        env = {**env, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)}
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
                line = self._queue.get(timeout=0.2)
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
        """Wait for the command to end (killed after ``timeout`` s: a negative return code); its whole output."""
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.end_session()
            self.process.wait(30)
        finally:
            self.end_session()
        while (line := self._queue.get(timeout=10)) is not None:
            self.lines.append(line)
        self._queue.put(None)
        return "".join(self.lines)

    def end_session(self) -> None:
        """Kill what is left of the command's own processes (its session)."""
        _kill_group(self.process.pid)


def _kill_group(pid: int) -> None:
    """SIGKILL the process group (session) that the process ``pid`` started, if anything is left of it."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _trial_run(folder: Path):
    client = MlflowClient(tracking_uri=f"sqlite:///{folder / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("nasplat-search")
    if experiment is None:  # not visible to this reader yet: the caller asks again
        return client, None
    runs = client.search_runs([experiment.experiment_id], f"tags.`{schema.KIND_TAG}` = '{schema.SEARCH_TRIAL}'")
    return client, runs[0] if runs else None


def _worker_pid(search: Search, rank: int, head_pid: int, deadline: float) -> int:
    """The process id of ``rank`` of the search's trial, from its MLflow tag, checked to be a Ray Train worker of
    the test's own Ray head (never another process on this machine)."""
    folder = search.cwd
    while time.monotonic() < deadline:
        if search.process.poll() is not None:
            raise AssertionError(f"the search ended (exit {search.process.returncode}) before its trial run in "
                                 f"{folder / 'mlflow.db'} showed {schema.WORKER_PID_TAG}.{rank}")
        if not any(folder.glob(f"nasplat_runs/*/{STARTS_FOLDER}/*.json")):  # the workers have not started yet (the
            time.sleep(0.2)                                                 # MLflow store may not exist yet either)
            continue
        _, run = _trial_run(folder)
        pid = run and run.data.tags.get(f"{schema.WORKER_PID_TAG}.{rank}")
        if pid:
            owned = {p.pid for p in psutil.Process(head_pid).children(recursive=True)}
            assert int(pid) in owned and "RayTrainWorker" in " ".join(psutil.Process(int(pid)).cmdline())
            return int(pid)
        time.sleep(0.2)
    raise AssertionError(f"no {schema.WORKER_PID_TAG}.{rank} tag")


@pytest.mark.slow
def test_a_search_survives_a_lost_worker_and_a_killed_driver(tmp_path, ray_head):
    """One run loses Ray Train worker 1 (SIGKILL by pid) in epoch 2, then its driver (SIGKILL) while the restarted
    workers redo epoch 2; `nasplat search --resume hit` finishes it. An uninterrupted run with the same seed runs
    beside it on the same cluster."""
    head_pid, address, env = ray_head
    started = time.monotonic()
    deadline = started + 600  # a bound for a hang; an idle 2-core machine needs about a tenth of it
    args = [*TINY, "--address", address]
    plain = Search([*args, "--name", "plain"], tmp_path / "plain", env)
    hit = Search([*args, "--name", "hit"], tmp_path / "hit", env)
    try:
        killed_pid = _worker_pid(hit, 1, head_pid, deadline)  # known before epoch 1 ends: no delay at the kill
        hit.wait_for("epoch 1/2", deadline)  # epoch 1 is checkpointed; the workers are in epoch 2
        os.kill(killed_pid, signal.SIGKILL)  # ProcessLookupError: the search ended before the kill
        killed_worker = time.monotonic()
        first_epoch_s = killed_worker - started
        restarted = hit.wait_for("resumed from", deadline)
        restart_s = time.monotonic() - killed_worker
        os.kill(hit.process.pid, signal.SIGKILL)  # the driver, while the restarted workers compute epoch 2
        hit.process.wait(30)
    finally:
        hit.end_session()
    killed_run = hit.finish(10)
    assert hit.process.returncode == -signal.SIGKILL
    assert "epoch 2/2" not in killed_run, "the kills came too late: epoch 2 finished first"
    assert restarted.rstrip().endswith("at epoch 1"), restarted  # from the last checkpoint: epoch 1 is not redone

    refusals_started = time.monotonic()
    refusals = {listed: subprocess.Popen([sys.executable, "-m", "pipelines.cli", "search", *changed],
                                         cwd=tmp_path / "hit", env={**env, "PYTHONPATH": str(ROOT)},
                                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                for changed, listed in ((["--resume", "hit", "--epochs", "3"], "epochs: 2 -> 3"),
                                        ([*args, "--name", "hit", "--w-lr", "0.1"], "w_lr: 0.025 -> 0.1"))}
    for listed, refusal in refusals.items():  # both refused before Ray is joined, listing the change
        _, err = refusal.communicate(timeout=120)
        assert refusal.returncode == 2 and listed in err and "--resume-override KEY=VALUE" in err, err[-2000:]
    refused_s = time.monotonic() - refusals_started
    resume_started = time.monotonic()
    resumed = Search(["--resume", "hit", "--resume-override", "max_failures=3"], tmp_path / "hit", env)
    resumed.wait_for("resumed from", deadline)
    back_s = time.monotonic() - resume_started
    resumed_output = resumed.finish(max(1.0, deadline - time.monotonic()))
    resume_s = time.monotonic() - resume_started
    plain_output = plain.finish(max(1.0, deadline - time.monotonic()))
    assert resumed.process.returncode == 0, resumed_output[-4000:]
    assert plain.process.returncode == 0, plain_output[-4000:]
    print(f"\nstart -> epoch 1 of the hit run: {first_epoch_s:.1f} s; worker lost -> workers restarted from the "
          f"checkpoint: {restart_s:.1f} s; two refused commands: {refused_s:.1f} s; "
          f"--resume -> training again: {back_s:.1f} s, -> finished: {resume_s:.1f} s; test: "
          f"{time.monotonic() - started:.0f} s")

    assert "resuming the search stored in" in resumed_output and "at epoch 1" in resumed_output
    progress = [line for line in (killed_run + resumed_output).splitlines() if "[nasplat] trial" in line]
    assert [line.split(" | ")[0].split()[-1] for line in progress] == ["1/2", "2/2"]  # each epoch reported once
    genotype = json.loads((tmp_path / "hit" / "nasplat_runs" / "hit" / "genotype.json").read_text())
    assert genotype == json.loads((tmp_path / "plain" / "nasplat_runs" / "plain" / "genotype.json").read_text())

    client, trial = _trial_run(tmp_path / "hit")
    plain_client, plain_trial = _trial_run(tmp_path / "plain")
    assert trial.info.status == "FINISHED"
    assert (trial.data.tags[schema.RESTARTS_TAG], trial.data.tags[schema.RESUMES_TAG]) == ("1", "1")
    assert int(trial.data.tags[f"{schema.WORKER_PID_TAG}.1"]) != killed_pid  # the tag names the latest start
    parent = client.get_run(trial.data.tags[schema.PARENT_TAG])
    for run in (parent, trial):  # the params keep the first value, the tag says what the resume changed
        assert run.data.params["max_failures"] == "2"
        assert json.loads(run.data.tags[schema.RESUME_OVERRIDES_TAG]) == {"max_failures": 3}
    assert (plain_trial.data.tags[schema.RESTARTS_TAG], plain_trial.data.tags[schema.RESUMES_TAG]) == ("0", "0")
    for key in ("epoch", "train_loss", "val_miou", "arch_entropy"):
        assert [m.step for m in client.get_metric_history(trial.info.run_id, key)] == [1, 2], key
        assert ([m.value for m in client.get_metric_history(trial.info.run_id, key)]
                == [m.value for m in plain_client.get_metric_history(plain_trial.info.run_id, key)]), key
