"""MLflow tracking: resolving the store, experiments with absolute artifact roots, run logging.

Everything goes through ``MlflowClient`` with explicit run ids, so a Ray worker in any working
directory logs to the run the driver created.
"""
from __future__ import annotations

import importlib.metadata
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Mapping

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

PARENT_TAG = "mlflow.parentRunId"
TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"
RAY_JOB_TAG = "nasplat.ray_job_id"
RAY_JOB_CONFIG_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"
"""Set by Ray's job supervisor for a job's entrypoint: JSON with ``metadata.job_submission_id``."""
MAX_PARAM_LENGTH = 6000


def resolve_tracking_uri(uri: str | None, base_dir: str | Path | None = None, create: bool = True) -> str:
    """``uri``, else ``MLFLOW_TRACKING_URI`` (as MLflow itself does), else ``sqlite:///<cwd>/mlflow.db``.

    Relative SQLite paths become absolute. A plain folder path means ``<folder>/mlflow.db``; the folder is
    made unless ``create`` is False.
    """
    base = Path(base_dir or Path.cwd()).resolve()
    uri = uri or os.environ.get(TRACKING_URI_ENV)
    if uri is None or uri == "":
        return f"sqlite:///{base / 'mlflow.db'}"
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return f"sqlite:///{(base / uri[len('sqlite:///'):]).resolve()}"
    if "://" not in uri and ":" not in uri[:2]:
        path = (base / uri).resolve()
        db = path if path.suffix == ".db" else path / "mlflow.db"
        if create:
            db.parent.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{db}"
    return uri


def existing_store_uri(uri: str | None) -> str:
    """The resolved URI of a store that must already exist (reading commands never create one)."""
    resolved = resolve_tracking_uri(uri, create=False)
    if resolved.startswith("sqlite:///") and not Path(resolved[len("sqlite:///"):]).is_file():
        raise FileNotFoundError(f"no MLflow store at {resolved} (the file does not exist); run `nasplat search` "
                                "in this folder first, or pass --tracking-uri")
    if resolved.startswith("file://") and not Path(resolved[len("file://"):]).is_dir():
        raise FileNotFoundError(f"no MLflow store at {resolved} (the folder does not exist)")
    return resolved


def local_artifact_root(tracking_uri: str) -> str | None:
    """For a local SQLite store, an absolute ``mlartifacts`` folder beside the database."""
    if tracking_uri.startswith("sqlite:///"):
        return (Path(tracking_uri[len("sqlite:///"):]).parent / "mlartifacts").resolve().as_uri()
    return None


def ui_command(tracking_uri: str) -> str:
    if tracking_uri.startswith("sqlite:///"):
        root = local_artifact_root(tracking_uri)
        return f"mlflow ui --backend-store-uri {tracking_uri} --default-artifact-root {root} --host 127.0.0.1 --port 5000"
    return f"open {tracking_uri} in a browser"


def ensure_experiment(client: MlflowClient, name: str, tracking_uri: str) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    return client.create_experiment(name, artifact_location=local_artifact_root(tracking_uri))


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
    """Writes to one existing MLflow run; safe to construct in any process."""

    def __init__(self, tracking_uri: str, run_id: str) -> None:
        self.client = MlflowClient(tracking_uri=tracking_uri)
        self.run_id = run_id

    def log_params(self, params: Mapping[str, Any]) -> None:
        existing = self.client.get_run(self.run_id).data.params
        items = [
            Param(key, str(value)[:MAX_PARAM_LENGTH])
            for key, value in flatten(params).items()
            if key not in existing
        ]
        for start in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[start : start + 100])

    def log_metrics(self, metrics: Mapping[str, Any], step: int) -> None:
        now = int(time.time() * 1000)
        items = [
            Metric(key, float(value), now, step)
            for key, value in flatten(metrics).items()
            if isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(float(value))
        ]
        if items:
            self.client.log_batch(self.run_id, metrics=items)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_json(self, data: Any, artifact_file: str) -> None:
        self.client.log_text(self.run_id, json.dumps(data, indent=2) + "\n", artifact_file)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_artifacts(self, directory: str | Path, artifact_path: str | None = None) -> None:
        """Every file under ``directory``, sub-folders kept, in one call."""
        self.client.log_artifacts(self.run_id, str(directory), artifact_path)

    def finish(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status=status)


PROVENANCE_PACKAGES = ("torch", "torchvision", "ray", "mlflow", "optuna", "pyarrow")


def git_commit(path: str | Path | None = None) -> str | None:
    """The commit of the git checkout holding ``path`` (default: this package), with ``-dirty`` if changed."""
    where = Path(path or Path(__file__).parent)
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=10)
        if commit.returncode != 0:
            return None
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=where,
                                capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return commit.stdout.strip() + ("-dirty" if status.stdout.strip() else "")


def provenance_tags(kind: str, argv: list[str] | None = None) -> dict[str, str]:
    """Tags every parent run carries: its kind, the command line, nasplat's git commit and package versions."""
    import nasplat

    tags = {
        "nasplat.kind": kind,
        "nasplat.command": " ".join(argv or sys.argv),
        "nasplat.version": nasplat.__version__,
        "python": platform.python_version(),
    }
    commit = git_commit()
    if commit:
        tags["nasplat.git_commit"] = commit
    for package in PROVENANCE_PACKAGES:
        try:
            tags[f"version.{package}"] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            pass
    return tags


def ray_job_tags() -> dict[str, str]:
    """``{"nasplat.ray_job_id": <submission id>}`` when this process is a Ray Job's entrypoint, else ``{}``.

    Ray's job supervisor (ray/dashboard/modules/job/job_supervisor.py) starts the entrypoint with the
    environment variable ``RAY_JOB_CONFIG_JSON_ENV_VAR`` holding the job's runtime env and metadata;
    the metadata's ``job_submission_id`` is the id ``nasplat submit`` and ``ray job submit`` print.
    """
    raw = os.environ.get(RAY_JOB_CONFIG_ENV)
    if not raw:
        return {}
    try:
        metadata = json.loads(raw).get("metadata") or {}
    except (ValueError, AttributeError):
        return {}
    job_id = metadata.get("job_submission_id")
    return {RAY_JOB_TAG: str(job_id)} if job_id else {}


def find_run(client: MlflowClient, experiment_id: str, tags: Mapping[str, str]) -> str | None:
    """The id of a run carrying all ``tags`` (used to reattach to a run on resume)."""
    query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
    runs = client.search_runs([experiment_id], filter_string=query, max_results=1)
    return runs[0].info.run_id if runs else None


def open_parent_run(tracking_uri: str, experiment: str, name: str, kind: str, params: Mapping[str, Any],
                    tags: Mapping[str, str] | None = None, argv: list[str] | None = None) -> str:
    """The parent run of a search or retrain called ``name``: created with provenance tags, or found again on
    resume; tagged with the Ray job that runs it now (if any) and given ``params``."""
    client = MlflowClient(tracking_uri=tracking_uri)
    experiment_id = ensure_experiment(client, experiment, tracking_uri)
    run_id = find_run(client, experiment_id, {"nasplat.run_name": name, "nasplat.kind": kind})
    if run_id is None:
        run_tags = {**provenance_tags(kind, argv), **(tags or {}), "nasplat.run_name": name}
        run_id = client.create_run(experiment_id, run_name=name, tags=run_tags).info.run_id
    logger = RunLogger(tracking_uri, run_id)
    job_tags = ray_job_tags()  # set again on resume: the tag names the latest Ray Job that ran it
    if job_tags:
        logger.set_tags(job_tags)
    logger.log_params(params)
    return run_id


def open_trial_run(tracking_uri: str, parent_run_id: str, trial_id: str, run_name: str, kind: str,
                   params: Mapping[str, Any], tags: Mapping[str, str] | None = None) -> str:
    """The child run of one Tune trial: created under the parent's experiment, or found again on resume."""
    client = MlflowClient(tracking_uri=tracking_uri)
    experiment_id = client.get_run(parent_run_id).info.experiment_id
    identity = {PARENT_TAG: parent_run_id, "nasplat.trial_id": trial_id}
    run_id = find_run(client, experiment_id, identity)
    if run_id is None:
        run_id = client.create_run(experiment_id, run_name=run_name,
                                   tags={**identity, **(tags or {}), "nasplat.kind": kind}).info.run_id
    RunLogger(tracking_uri, run_id).log_params(params)
    return run_id

