"""Opening, finding and querying the runs of nasplat experiments (parent and trial runs, lineage)."""
from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Mapping

from mlflow.tracking import MlflowClient

from nasplat.tracking.logger import RunLogger
from nasplat.tracking.reachability import check_answers
from nasplat.tracking.schema import (
    COMMAND_TAG,
    EXPERIMENT_KIND_TAG,
    GIT_COMMIT_TAG,
    KIND_TAG,
    MODEL_DEVELOPMENT,
    PARENT_TAG,
    RAY_JOB_TAG,
    RUN_NAME_TAG,
    TRIAL_ID_TAG,
    VERSION_TAG,
)
from nasplat.tracking.uri import local_artifact_root, mask_credentials
from nasplat.version import __version__

RAY_JOB_CONFIG_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"
"""Set by Ray's job supervisor for a job's entrypoint: JSON with ``metadata.job_submission_id``."""


def client(tracking_uri: str) -> MlflowClient:
    """The one place nasplat builds an ``MlflowClient`` for a store."""
    return MlflowClient(tracking_uri=tracking_uri)


def reading_client(tracking_uri: str) -> MlflowClient:
    """``client(tracking_uri)`` for reading commands: fails within seconds when the server does not answer,
    instead of waiting in MLflow's retries."""
    check_answers(tracking_uri)
    return client(tracking_uri)


def open_store_early(tracking_uri: str) -> threading.Thread | None:
    """Open a local SQLite store in a background thread, so that a new store's tables (MLflow's schema migrations,
    about 5 s on a 2-core machine) are made while the caller does something else, e.g. starts Ray; join the thread
    before using the store. None for other stores (a server may not answer: nothing must wait on it here)."""
    if not tracking_uri.startswith("sqlite:"):
        return None

    def open_store() -> None:
        try:
            client(tracking_uri).search_experiments(max_results=1)
        except Exception:  # the first real call meets the same error and reports it, in its context
            pass

    thread = threading.Thread(target=open_store, name="nasplat-open-store", daemon=True)
    thread.start()
    return thread


def ensure_experiment(mlflow_client: MlflowClient, name: str, tracking_uri: str) -> str:
    """The id of experiment ``name``, created if missing; tagged as model development (the MLflow 3 UI opens it in
    its model-training view), unless it already says what it is."""
    experiment = mlflow_client.get_experiment_by_name(name)
    if experiment is None:
        return mlflow_client.create_experiment(name, artifact_location=local_artifact_root(tracking_uri),
                                               tags={EXPERIMENT_KIND_TAG: MODEL_DEVELOPMENT})
    if EXPERIMENT_KIND_TAG not in experiment.tags:  # made by an older nasplat or by hand
        mlflow_client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, MODEL_DEVELOPMENT)
    return experiment.experiment_id


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
    tags = {
        KIND_TAG: kind,
        COMMAND_TAG: mask_credentials(" ".join(argv or sys.argv)),
        VERSION_TAG: __version__,
        "python": platform.python_version(),
    }
    commit = git_commit()
    if commit:
        tags[GIT_COMMIT_TAG] = commit
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


def find_run(mlflow_client: MlflowClient, experiment_id: str, tags: Mapping[str, str]) -> str | None:
    """The id of a run carrying all ``tags`` (used to reattach to a run on resume)."""
    query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
    runs = mlflow_client.search_runs([experiment_id], filter_string=query, max_results=1)
    return runs[0].info.run_id if runs else None


def open_parent_run(tracking_uri: str, experiment: str, name: str, kind: str, params: Mapping[str, Any],
                    tags: Mapping[str, str] | None = None, argv: list[str] | None = None) -> str:
    """The parent run of a search or retrain called ``name``: created with provenance tags, or found again on
    resume; tagged with the Ray job that runs it now (if any) and given ``params``."""
    mlflow_client = client(tracking_uri)
    experiment_id = ensure_experiment(mlflow_client, experiment, tracking_uri)
    run_id = find_run(mlflow_client, experiment_id, {RUN_NAME_TAG: name, KIND_TAG: kind})
    if run_id is None:
        run_tags = {**provenance_tags(kind, argv), **(tags or {}), RUN_NAME_TAG: name}
        run_id = mlflow_client.create_run(experiment_id, run_name=name, tags=run_tags).info.run_id
    logger = RunLogger(tracking_uri, run_id)
    job_tags = ray_job_tags()  # set again on resume: the tag names the latest Ray Job that ran it
    if job_tags:
        logger.set_tags(job_tags)
    logger.log_params(masked(params))
    logger.flush()  # bounded: the run holds its params when this returns, unless the store is down
    return run_id


def open_trial_run(tracking_uri: str, parent_run_id: str, trial_id: str, run_name: str, kind: str,
                   params: Mapping[str, Any], tags: Mapping[str, str] | None = None) -> str:
    """The child run of one Tune trial: created under the parent's experiment, or found again on resume."""
    mlflow_client = client(tracking_uri)
    experiment_id = mlflow_client.get_run(parent_run_id).info.experiment_id
    identity = {PARENT_TAG: parent_run_id, TRIAL_ID_TAG: trial_id}
    run_id = find_run(mlflow_client, experiment_id, identity)
    if run_id is None:
        run_id = mlflow_client.create_run(experiment_id, run_name=run_name,
                                   tags={**identity, **(tags or {}), KIND_TAG: kind}).info.run_id
    logger = RunLogger(tracking_uri, run_id)
    logger.log_params(masked(params))
    logger.flush()  # as in open_parent_run
    return run_id



def masked(params: Mapping[str, Any]) -> dict[str, Any]:
    """``params`` with credentials in string values (URIs) masked."""
    return {key: mask_credentials(value) if isinstance(value, str) else value for key, value in params.items()}


def find_trial_run(tracking_uri: str, parent_run_id: str, trial_id: str) -> str | None:
    """The child run of Tune trial ``trial_id`` under ``parent_run_id``, if there is one."""
    mlflow_client = client(tracking_uri)
    experiment_id = mlflow_client.get_run(parent_run_id).info.experiment_id
    return find_run(mlflow_client, experiment_id, {PARENT_TAG: parent_run_id, TRIAL_ID_TAG: trial_id})
