"""A run's folder and the settings it keeps: recording them, checking a re-run against them, and ``--resume``.

A run folder (``<storage>/<name>``) holds Tune's experiment state, each trial's Ray Train checkpoints and
``nasplat_config.json``, the settings the run started with. ``--resume`` finds the folder (by run name, path or
MLflow run id) and reads the settings back, so the user types no flags again; a flag that asks for something
else is refused unless ``--resume-override`` names it. Nothing here imports Ray.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Mapping, TypeVar

from nasplat.tracking.uri import resolve_tracking_uri
from nasplat.training.config import ConfigError, ExperimentConfig
from nasplat.training.storage import is_uri, read_bytes, resolve_storage, run_location, write_bytes

CONFIG_FILE = "nasplat_config.json"
"""The settings a run started with (changed only by ``--resume-override``), in its run folder."""
OVERRIDES_FILE = "nasplat_overrides.json"
"""Every setting changed on resume so far: applied to restored trials, whose configs Tune keeps as they began."""
FIXED_ON_RESUME = {
    "name": "it names the run", "storage": "it is where the run is", "experiment": "the MLflow runs are found in it",
    "trials": "Tune keeps the trials it made", "seed": "each trial keeps its seed", "space": "the checkpoints hold it",
    "space_options": "the checkpoints hold the supernet", "genotype": "the checkpoints hold the network",
    "from_run": "the checkpoints hold the network", "baseline": "the checkpoints hold the network",
    "model_options": "the checkpoints hold the network",
}
"""Settings ``--resume-override`` cannot change, and why."""
MLFLOW_RUN_ID = re.compile(r"[0-9a-f]{32}")

_Config = TypeVar("_Config", bound=ExperimentConfig)


def absolute_locations(values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` with the locations among them made absolute as a run records them (Ray workers run elsewhere):
    a ``parquet:DIR`` dataset, ``data_root``, ``genotype``, ``storage`` and ``tracking_uri`` (None: the default)."""
    result = dict(values)
    dataset = result.get("dataset")
    if isinstance(dataset, str) and dataset.startswith("parquet:"):
        result["dataset"] = "parquet:" + str(Path(dataset.split(":", 1)[1]).expanduser().resolve())
    for key in ("data_root", "genotype"):
        if isinstance(result.get(key), str) and result[key]:
            result[key] = str(Path(result[key]).expanduser().resolve())
    if isinstance(result.get("storage"), str):
        result["storage"] = resolve_storage(result["storage"])
    if "tracking_uri" in result:
        result["tracking_uri"] = resolve_tracking_uri(result["tracking_uri"])
    return result


def _read_json(location: str) -> dict[str, Any] | None:
    data = read_bytes(location)
    return None if data is None else json.loads(data)


def _write_json(location: str, data: Mapping[str, Any]) -> None:
    write_bytes(location, (json.dumps(data, indent=2) + "\n").encode())


def keep_settings(config: ExperimentConfig, run_dir: str) -> dict[str, Any]:
    """Record ``config``'s settings in the run folder, or check them against the recorded ones.

    A re-run of the name with other settings is refused with the list of differences (Tune would silently keep
    the stored ones); a resumed run may differ in the settings its ``resume_override`` names (and in ``storage``,
    when the folder was moved), which are recorded. Returns every setting changed on resume so far."""
    location = f"{run_dir}/{CONFIG_FILE}"
    recorded = _read_json(location)
    current = config.settings()
    if recorded is None:
        _write_json(location, current)
        return {}
    changed = _differences(recorded, current, set(recorded) | set(current), type(config)().settings())
    allowed = {*config.resume_override, "storage"} if config.resume else set()
    refused = {key: change for key, change in changed.items() if key not in allowed}
    if refused:
        listed = _listed(refused)
        raise ConfigError(f"run {config.name!r} in {run_dir} was started with other settings ({listed}); resume it "
                          f"with --resume {config.name} (its stored settings, plus --resume-override KEY=VALUE for "
                          "each one to change), or start a new run with another --name")
    overrides = _read_json(f"{run_dir}/{OVERRIDES_FILE}") or {}
    if changed:
        overrides.update({key: current[key] for key in changed})
        _write_json(f"{run_dir}/{OVERRIDES_FILE}", overrides)
        _write_json(location, current)
    return overrides


def _differences(recorded: Mapping[str, Any], current: Mapping[str, Any], keys: set[str],
                 defaults: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """``key -> (recorded, current)`` for each of ``keys`` whose values differ; a setting the run folder does not
    record (added to nasplat after the run started) counts as its default."""
    return {key: (recorded.get(key, defaults.get(key)), current.get(key, defaults.get(key)))
            for key in sorted(keys) if recorded.get(key, defaults.get(key)) != current.get(key, defaults.get(key))}


def _listed(changes: Mapping[str, tuple[Any, Any]]) -> str:
    return "; ".join(f"{key}: {old!r} -> {new!r}" for key, (old, new) in changes.items())


def resumed_config(config_type: type[_Config], given: Mapping[str, Any]) -> _Config:
    """The config of the run that ``given["resume"]`` names, with ``given["resume_override"]`` applied.

    ``given`` holds only what the user gave (flags, a ``--config`` file, keyword options); any of it that differs
    from the run's stored settings is refused, listing the differences, unless ``resume_override`` names it."""
    given = dict(given)
    reference = str(given.pop("resume"))
    overrides = dict(given.pop("resume_override", None) or {})
    kind = config_type.__name__.removesuffix("Config").lower()
    defaults = config_type().settings()
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise ConfigError(f"unknown option {unknown[0]!r} of `nasplat {kind}` (options: {', '.join(sorted(defaults))})")
    run_dir, storage, recorded = find_run_folder(reference, given, kind, defaults["storage"])
    _check_overrides(kind, overrides, recorded, defaults)
    if run_location(str(recorded.get("storage")), str(recorded.get("name"))) != run_dir:
        recorded["storage"] = storage  # the folder was moved: the run goes on where it is now
    given = absolute_locations(given)
    changed = _differences(recorded, given, set(given) - set(overrides), defaults)
    if changed:
        raise ConfigError(
            f"--resume {reference}: run {recorded.get('name')!r} ({run_dir}) was started with other settings "
            f"({_listed(changed)}); leave those options out to resume with the stored ones, or name each with "
            f"--resume-override KEY=VALUE to change it"
        )
    values = {**recorded, **absolute_locations(overrides), "resume": reference, "resume_override": overrides}
    try:
        return config_type.from_dict(values, source=f"run folder {run_dir}")
    except ConfigError as err:
        raise ConfigError(f"--resume {reference}: {run_dir} does not hold a {kind} run this version can resume "
                          f"({err})") from None


def _check_overrides(kind: str, overrides: Mapping[str, Any], recorded: Mapping[str, Any],
                     defaults: Mapping[str, Any]) -> None:
    for key in overrides:
        if key not in defaults:
            raise ConfigError(f"--resume-override {key}: not an option of `nasplat {kind}` "
                              f"(options: {', '.join(sorted(defaults))})")
        if key in FIXED_ON_RESUME:
            raise ConfigError(f"--resume-override {key}: cannot change when resuming ({FIXED_ON_RESUME[key]}); "
                              "start a new run instead")
    if "epochs" in overrides and recorded.get("trials", 1) > 1:
        raise ConfigError("--resume-override epochs: a run of several trials keeps its epochs (ASHA's budget is "
                          "part of the stored experiment)")


def find_run_folder(reference: str, given: Mapping[str, Any], kind: str,
                    default_storage: str) -> tuple[str, str, dict]:
    """``(run folder, its storage, recorded settings)`` of the run that ``reference`` names: a run folder (path or
    URI), a run name under the given (or default) storage, or an MLflow run id (its parent run's, or a trial's)."""
    if is_uri(reference) or "/" in reference or reference.startswith(("~", ".")):
        run_dir = reference.rstrip("/") if is_uri(reference) else str(Path(reference).expanduser().resolve())
        recorded = _read_json(f"{run_dir}/{CONFIG_FILE}")
        if recorded is None:
            raise ConfigError(f"--resume {reference}: {run_dir} is not a nasplat run folder (no {CONFIG_FILE})")
        if recorded.get("name") != run_dir.rsplit("/", 1)[-1]:
            raise ConfigError(f"--resume {reference}: the folder holds run {recorded.get('name')!r}; name the folder "
                              f"{recorded.get('name')} again (its checkpoints are found by the run's name)")
        return run_dir, run_dir.rsplit("/", 1)[0], recorded
    storage = resolve_storage(given.get("storage") or default_storage)
    run_dir = run_location(storage, reference)
    recorded = _read_json(f"{run_dir}/{CONFIG_FILE}")
    if recorded is not None:
        return run_dir, storage, recorded
    if not MLFLOW_RUN_ID.fullmatch(reference):
        raise ConfigError(f"--resume {reference}: no run {reference!r} in {storage}{_runs_in(storage)}; give a run "
                          "name (with its --storage), a run folder, or an MLflow run id")
    from nasplat.tracking.queries import run_folder_of
    from nasplat.tracking.uri import existing_store_uri

    try:
        tracking_uri = existing_store_uri(given.get("tracking_uri"))
    except FileNotFoundError as err:
        raise ConfigError(f"--resume {reference}: not a run name in {storage}, and {err}") from None
    name, storage = run_folder_of(tracking_uri, reference, kind)
    run_dir = run_location(storage, name)
    recorded = _read_json(f"{run_dir}/{CONFIG_FILE}")
    if recorded is None:
        raise ConfigError(f"--resume {reference}: MLflow run {reference} is {kind} {name!r}, but its folder {run_dir} "
                          f"holds no {CONFIG_FILE} (moved? give the folder's path to --resume)")
    return run_dir, storage, recorded


def _runs_in(storage: str) -> str:
    """`` (runs there: a, b)`` for a local storage folder holding runs, else nothing."""
    if is_uri(storage) or not Path(storage).is_dir():
        return ""
    names = sorted(p.parent.name for p in Path(storage).glob(f"*/{CONFIG_FILE}"))
    return f" (runs there: {', '.join(names)})" if names else " (it holds no runs)"
