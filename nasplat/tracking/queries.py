"""Questions the reading commands ask of a store: the latest search, a search's genotype, a retrain's model run."""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

from mlflow.exceptions import MlflowException
from mlflow.entities import Run

from nasplat.spaces.genotype import GenotypeError
from nasplat.spaces.registry import genotype_from_dict, load_genotype
from nasplat.tracking import schema
from nasplat.tracking.runs import reading_client
from nasplat.training.config import ConfigError


def get_run(tracking_uri: str, run_id: str, field: str) -> Run:
    """The run ``run_id``; ConfigError naming ``field`` and the store when there is none."""
    try:
        return reading_client(tracking_uri).get_run(run_id)
    except MlflowException:
        raise ConfigError(f"{field}: no MLflow run {run_id!r} in {tracking_uri}") from None


def latest_search_run(tracking_uri: str, experiment: str) -> str | None:
    """The id of the most recently started finished search (parent run) in ``experiment``."""
    mlflow_client = reading_client(tracking_uri)
    found = mlflow_client.get_experiment_by_name(experiment)
    if found is None:
        return None
    runs = mlflow_client.search_runs(
        [found.experiment_id],
        filter_string=f"tags.`{schema.KIND_TAG}` = '{schema.SEARCH}' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"], max_results=1,
    )
    return runs[0].info.run_id if runs else None


def genotype_file_dict(path: str | Path) -> dict:
    """A genotype file's content, validated against its (registered) space; errors name the file."""
    try:
        return load_genotype(path).to_dict()
    except GenotypeError as err:
        if err.field == "<file>" and err.problem == "no such file":
            raise FileNotFoundError(f"genotype file not found: {path}") from None
        raise ConfigError(str(err)) from None


def genotype_from_run(tracking_uri: str, run_id: str, rank: int = 1) -> tuple[dict, dict[str, str]]:
    """The genotype a search run holds, and lineage tags: a search parent run or one of its trial runs. ``rank`` > 1:
    the trial's ``rank``-th strongest genotype (its top-k record; of a parent run, its best trial's)."""
    tags = get_run(tracking_uri, run_id, "config field 'from_run'").data.tags
    kind = tags.get(schema.KIND_TAG)
    if kind == schema.SEARCH:
        lineage = {schema.SEARCH_RUN_TAG: run_id, schema.TRIAL_RUN_TAG: tags.get(schema.BEST_TRIAL_RUN_TAG, "")}
    elif kind == schema.SEARCH_TRIAL:
        lineage = {schema.SEARCH_RUN_TAG: tags.get(schema.PARENT_TAG, ""), schema.TRIAL_RUN_TAG: run_id}
    else:
        raise ConfigError(f"config field 'from_run': run {run_id} is a {kind or 'non-nasplat'} run, "
                          "not a search (parent) run or a search trial run")
    if rank != 1:
        genotype = _ranked_genotype(tracking_uri, lineage[schema.TRIAL_RUN_TAG], rank, run_id)
        lineage[schema.SOURCE_RANK_TAG] = str(rank)
        return genotype, {k: v for k, v in lineage.items() if v}
    with tempfile.TemporaryDirectory(prefix="nasplat-genotype-") as tmp:
        try:
            path = reading_client(tracking_uri).download_artifacts(run_id, schema.GENOTYPE_ARTIFACT, tmp)
        except (MlflowException, OSError):
            raise ConfigError(f"config field 'from_run': run {run_id} has no {schema.GENOTYPE_ARTIFACT} artifact "
                              "(an unfinished search?)") from None
        genotype = genotype_file_dict(path)
    return genotype, {k: v for k, v in lineage.items() if v}


def _ranked_genotype(tracking_uri: str, trial_run: str, rank: int, asked: str) -> dict:
    """Entry ``rank`` of the top-k record of search trial run ``trial_run``; errors name ``--rank``."""
    field = f"config field 'rank' (--rank {rank})"
    if not trial_run:
        raise ConfigError(f"{field}: search run {asked} names no best trial run ({schema.BEST_TRIAL_RUN_TAG}); "
                          "give a search trial run to --from-run")
    with tempfile.TemporaryDirectory(prefix="nasplat-topk-") as tmp:
        try:
            path = reading_client(tracking_uri).download_artifacts(trial_run, schema.TOP_K_ARTIFACT, tmp)
            entries = json.loads(Path(path).read_text())["genotypes"]
        except (MlflowException, OSError):
            raise ConfigError(f"{field}: search trial run {trial_run} has no {schema.TOP_K_ARTIFACT} artifact (an "
                              "unfinished search, or one made before top-k); only --rank 1 is available") from None
        except (ValueError, KeyError, TypeError):
            raise ConfigError(f"{field}: {schema.TOP_K_ARTIFACT} of run {trial_run} is not a top-k record") from None
    if rank > len(entries):
        raise ConfigError(f"{field}: search trial run {trial_run} logged {len(entries)} genotype(s) in "
                          f"{schema.TOP_K_ARTIFACT}; choose --rank 1..{len(entries)} (search with --top-k {rank} "
                          "or more for more)")
    entry = entries[rank - 1]
    try:
        return genotype_from_dict(entry["genotype"]).to_dict()
    except (GenotypeError, KeyError, TypeError) as err:
        raise ConfigError(f"{field}: entry {rank} of {schema.TOP_K_ARTIFACT} in run {trial_run}: {err}") from None


def model_run(tracking_uri: str, run_id: str, field: str = "--run") -> Run:
    """The run holding a retrain's best model: ``run_id`` itself, or for a retrain parent run the trial run named
    by its ``nasplat.model_run`` tag."""
    run = get_run(tracking_uri, run_id, field)
    if run.data.tags.get(schema.KIND_TAG) != schema.RETRAIN:
        return run
    target = run.data.tags.get(schema.MODEL_RUN_TAG)
    if target is None:
        raise ConfigError(f"{field}: retrain run {run_id} has no best model yet (tag {schema.MODEL_RUN_TAG} missing)")
    return get_run(tracking_uri, target, field)


def download_best_model(tracking_uri: str, run_id: str, directory: str | Path, field: str = "--run") -> Path:
    """Download the best model file of a retrain (parent or trial run) into ``directory``."""
    holder = model_run(tracking_uri, run_id, field).info.run_id
    try:
        return Path(reading_client(tracking_uri).download_artifacts(holder, schema.BEST_MODEL_ARTIFACT, str(directory)))
    except (MlflowException, OSError):
        raise ConfigError(f"{field}: run {holder} has no {schema.BEST_MODEL_ARTIFACT} artifact "
                          "(not a retrain run?)") from None


def logged_model(tracking_uri: str, run_id: str) -> tuple[str, str]:
    """``(model_id, run id holding it)`` for ``run_id``, following ``nasplat.model_run`` once.

    Among several logged models of a run, the one named ``model`` wins, then the newest. Raises ConfigError
    naming the run when there is no such run or no model.
    """
    run = get_run(tracking_uri, run_id, "--run")
    models = reading_client(tracking_uri).search_logged_models(
        experiment_ids=[run.info.experiment_id], filter_string=f"source_run_id = '{run_id}'",
        order_by=[{"field_name": "creation_timestamp", "ascending": False}],
    )
    if models:
        named = [m for m in models if m.name == schema.LOGGED_MODEL_NAME]
        return (named or list(models))[0].model_id, run_id
    target = run.data.tags.get(schema.MODEL_RUN_TAG)
    if target and target != run_id:
        try:
            model_id, _ = logged_model(tracking_uri, target)
        except ConfigError as err:
            raise ConfigError(f"run {run_id} points to its model run with {schema.MODEL_RUN_TAG}={target}, "
                              f"but: {err}") from None
        return model_id, target
    raise ConfigError(
        f"run {run_id} ({run.info.run_name}) holds no logged model and has no {schema.MODEL_RUN_TAG} tag; "
        "export takes a retrain run (or its parent run), not a search run"
    )


def run_folder_of(tracking_uri: str, run_id: str, kind: str) -> tuple[str, str]:
    """``(run name, storage)`` of the ``kind`` run (search or retrain) that MLflow run ``run_id`` records: its
    parent run or one of its trial runs (``--resume RUN_ID``)."""
    run = get_run(tracking_uri, run_id, f"--resume {run_id}")
    if run.data.tags.get(schema.KIND_TAG) == schema.TRIAL_KIND.get(kind):
        run = get_run(tracking_uri, run.data.tags.get(schema.PARENT_TAG, ""), f"--resume {run_id}")
    found = run.data.tags.get(schema.KIND_TAG)
    if found != kind:
        raise ConfigError(f"--resume {run_id}: MLflow run {run_id} is a {found or 'non-nasplat'} run, not a {kind}")
    name, storage = run.data.tags.get(schema.RUN_NAME_TAG), run.data.params.get("storage")
    if not name or not storage or "***" in storage:
        raise ConfigError(f"--resume {run_id}: MLflow run {run_id} does not say where its run folder is; "
                          "give the folder's path to --resume")
    return name, storage
