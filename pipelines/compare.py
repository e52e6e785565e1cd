"""`nasplat compare` (a table of the searches in an MLflow experiment) and `nasplat ui` (the MLflow UI).

``search_rows`` reads what ``pipelines.search`` records: one parent run per search (tag
``nasplat.kind`` = ``search``) and one child run per Tune trial (tag ``nasplat.kind`` =
``search-trial``, ``mlflow.parentRunId`` = the parent). ``format_rows`` renders them.
"""
from __future__ import annotations

import argparse
import csv
import datetime as _dt
import io
import json
import os
import subprocess
import sys
from collections.abc import Iterable, Sequence
from typing import Any

from nasplat.tracking import schema
from nasplat.tracking.schema import PARENT_TAG
from nasplat.tracking.uri import existing_store_uri, local_artifact_root

DEFAULT_EXPERIMENT = "nasplat-search"
DEFAULT_EXPERIMENTS = ("nasplat-search", "nasplat-retrain", "nasplat-baselines")
"""Where searches, retrains and baselines go by default: the table shows those that exist unless --experiment."""
FORMATS = ("table", "csv", "json")

COLUMNS: tuple[tuple[str, str], ...] = (
    ("run_name", "run name"),
    ("run_id", "run id"),
    ("status", "status"),
    ("kind", "kind"),
    ("space", "space / model"),
    ("dataset", "dataset"),
    ("best_miou", "best mIoU"),
    ("params", "params"),
    ("gflops", "GFLOPs"),
    ("epochs", "epochs"),
    ("device_hours", "device-h"),  # the table says CPU-h or GPU-h (see ``device_unit``)
    ("genotype_hash", "genotype"),
    ("source", "from"),
    ("started_at", "started"),
)
"""Row keys in display order, with their table headings."""

NUMERIC = {"best_miou", "params", "gflops", "epochs", "device_hours"}
SORT_ALIASES = {
    "name": "run_name", "run": "run_name", "id": "run_id", "miou": "best_miou", "best_val_miou": "best_miou",
    "supernet_params": "params", "supernet_weight_params": "params", "flops": "gflops", "epoch": "epochs",
    "model": "space",
    "hours": "device_hours", "cpu_h": "device_hours", "gpu_h": "device_hours", "device_h": "device_hours",
    "cpu_hours": "device_hours", "gpu_hours": "device_hours", "genotype": "genotype_hash",
    "started": "started_at", "start": "started_at", "start_time": "started_at",
}


class CompareError(Exception):
    """The store, the experiment or an option is wrong; the CLI prints it and exits with 2."""


# ---------------------------------------------------------------------------------------- reading


def _is_remote(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def open_store(tracking_uri: str | None):
    """An ``MlflowClient`` on an existing store (never creates one) whose server answers, and the resolved URI."""
    from nasplat.tracking.reachability import check_answers
    from nasplat.training.config import ConfigError

    try:
        uri = existing_store_uri(tracking_uri)
        check_answers(uri)  # before MLflow is imported: a server that does not answer fails in seconds
    except (FileNotFoundError, ConfigError) as err:
        raise CompareError(str(err)) from None
    from nasplat.tracking.runs import client

    return client(uri), uri


def _all_runs(client, experiment_id: str, filter_string: str) -> list:
    runs: list = []
    token = None
    while True:
        page = client.search_runs([experiment_id], filter_string=filter_string, max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def _number(value: Any) -> float | None:
    if value is None or value in ("", "None", "none", "null"):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _wall_seconds(client, run) -> float | None:
    """end - start; a run that never ended (running, or interrupted) counts its epochs' ``epoch_time_s``."""
    info = run.info
    if info.start_time and info.end_time:
        return max(0.0, (info.end_time - info.start_time) / 1000.0)
    if "epoch_time_s" in run.data.metrics:
        history = client.get_metric_history(info.run_id, "epoch_time_s")
        by_step = {m.step: m.value for m in history}  # a resumed epoch is logged again with its step
        return float(sum(by_step.values()))
    return None


def _device(params: dict[str, str], fallback: dict[str, str]) -> tuple[str, float, int]:
    """("GPU"|"CPU", devices per worker, workers) from a run's params."""
    def get(key: str) -> Any:
        return params.get(key, fallback.get(key))

    workers = int(_number(get("workers")) or 1)
    gpus = _number(get("gpus_per_worker")) or 0.0
    if gpus > 0:
        return "GPU", gpus, workers
    cpus = _number(get("cpus_per_worker"))
    return "CPU", cpus if cpus and cpus > 0 else 1.0, workers


def _started(ms: int | None) -> str | None:
    if not ms:
        return None
    return _dt.datetime.fromtimestamp(ms / 1000.0).astimezone().isoformat(timespec="seconds")


def _row(client, parent, children: list) -> dict[str, Any]:
    tags, params, metrics = parent.data.tags, parent.data.params, parent.data.metrics
    best_id = tags.get(schema.BEST_TRIAL_RUN_TAG)
    best = next((c for c in children if c.info.run_id == best_id), None)
    if best is None and children:  # search still running (or failed): the best trial so far
        scored = [c for c in children if "val_miou" in c.data.metrics]
        best = max(scored, key=lambda c: c.data.metrics["val_miou"]) if scored else None

    retrain = tags.get(schema.KIND_TAG) == "retrain"
    size, flops = None, None
    for run in ([best] if best is not None else []) + children:
        if retrain:  # the retrained network's own figures, logged as metrics by its trials
            size, flops = _number(run.data.metrics.get("params")), _number(run.data.metrics.get("flops"))
        else:  # the supernet's, logged as params by the search trials
            size, flops = (_number(run.data.params.get("supernet_weight_params")),
                           _number(run.data.params.get("supernet_flops")))
        if size is not None:
            break

    epochs = None
    if best is not None and "epoch" in best.data.metrics:
        history = client.get_metric_history(best.info.run_id, "epoch")
        epochs = max((m.value for m in history), default=best.data.metrics["epoch"])
    if epochs is None:
        epochs = _number((best.data.params if best is not None else {}).get("epochs", params.get("epochs")))

    unit = _device(params, {})[0]
    hours = None
    for child in children:
        seconds = _wall_seconds(client, child)
        if seconds is None:
            continue
        child_unit, child_per_worker, child_workers = _device(child.data.params, params)
        unit = child_unit
        hours = (hours or 0.0) + seconds / 3600.0 * child_workers * child_per_worker

    return {
        "run_name": tags.get(schema.RUN_NAME_TAG) or parent.info.run_name or tags.get("mlflow.runName"),
        "run_id": parent.info.run_id,
        "status": parent.info.status,
        "kind": tags.get(schema.KIND_TAG),
        "space": tags.get(schema.MODEL_TAG) if retrain else tags.get(schema.SPACE_TAG) or params.get("space"),
        "dataset": params.get("dataset"),
        "best_miou": metrics.get("best_val_miou"),
        "params": int(size) if size is not None else None,
        "gflops": flops / 1e9 if flops is not None else None,
        "epochs": int(epochs) if epochs is not None else None,
        "device_hours": hours,
        "device_unit": f"{unit}-h",
        "genotype_hash": tags.get("genotype_hash"),
        "source": _lineage(tags),
        "started_at": _started(parent.info.start_time),
        "trials": len(children),
    }


def _lineage(tags: dict[str, str]) -> str | None:
    """Where a retrain's network came from: ``search <run id>`` (with ``#N`` for a top-k rank above 1), the
    genotype file's name, or nothing (a search, a baseline)."""
    search_run = tags.get(schema.SEARCH_RUN_TAG)
    if search_run:
        rank = tags.get(schema.SOURCE_RANK_TAG)
        return f"search {search_run[:8]}" + (f" #{rank}" if rank and rank != "1" else "")
    genotype_file = tags.get(schema.GENOTYPE_FILE_TAG)
    return os.path.basename(genotype_file) if genotype_file else None


def sort_key_name(column: str) -> str:
    """A row key from a key, a heading or an alias (case, spaces and dashes don't matter)."""
    name = column.strip().lower().replace("-", "_").replace(" ", "_")
    keys = {key for key, _ in COLUMNS}
    headings = {heading.lower().replace("-", "_").replace(" ", "_"): key for key, heading in COLUMNS}
    if name in keys:
        return name
    if name in headings:
        return headings[name]
    if name in SORT_ALIASES:
        return SORT_ALIASES[name]
    raise CompareError(f"cannot sort by {column!r}; columns: {', '.join(key for key, _ in COLUMNS)}")


def sort_rows(rows: Iterable[dict[str, Any]], column: str = "best_miou", ascending: bool = False) -> list[dict[str, Any]]:
    """Rows ordered by ``column``; rows missing it go last either way."""
    key = sort_key_name(column)
    rows = list(rows)
    present = [r for r in rows if r.get(key) is not None]
    missing = [r for r in rows if r.get(key) is None]
    sort_value = (lambda r: float(r[key])) if key in NUMERIC else (lambda r: str(r[key]).lower())
    return sorted(present, key=sort_value, reverse=not ascending) + missing


def search_rows(
    tracking_uri: str | None = None, experiment: str | Sequence[str] | None = DEFAULT_EXPERIMENT,
    sort: str = "best_miou", ascending: bool = False, limit: int | None = None,
) -> list[dict[str, Any]]:
    """One dict per search or retrain (parent run) in ``experiment``: a name, several, or None for those of
    ``DEFAULT_EXPERIMENTS`` the store holds. Raises ``CompareError`` for a missing store or experiment. A search
    row's params and GFLOPs are its supernet's; a retrain row's, its network's."""
    if limit is not None and limit < 0:
        raise CompareError(f"--limit must be >= 0, got {limit}")
    sort_key_name(sort)  # a bad column fails before the store is read
    client, uri = open_store(tracking_uri)
    from mlflow.exceptions import MlflowException

    try:
        rows = [row for found in _experiments(client, uri, experiment) for row in _experiment_rows(client, found)]
    except MlflowException as err:
        raise CompareError(f"cannot read the MLflow store {uri}: {err.message}") from err
    return sort_rows(rows, sort, ascending)[:limit]  # limit None: every row


def _experiments(client, uri: str, wanted: str | Sequence[str] | None) -> list:
    """The experiments asked for (None: those of ``DEFAULT_EXPERIMENTS`` the store holds); CompareError listing the
    store's experiments when one asked for, or every default, is missing."""
    present = {e.name: e for e in client.search_experiments()}
    names = DEFAULT_EXPERIMENTS if wanted is None else [wanted] if isinstance(wanted, str) else list(wanted)
    missing = [name for name in names if name not in present]
    if missing and (wanted is not None or len(missing) == len(names)):
        what = (f"no experiment {missing[0]!r}" if wanted is not None else
                f"none of the experiments {', '.join(repr(n) for n in names)} is")
        raise CompareError(f"{what} in {uri}; existing experiments: "
                           + (", ".join(repr(n) for n in sorted(present)) or "none"))
    return [present[name] for name in names if name in present]


def _experiment_rows(client, experiment) -> list[dict[str, Any]]:
    """The rows of one experiment, unsorted."""
    def of_kind(*kinds: str) -> list:  # MLflow's filter has no IN for tags
        return [run for kind in kinds
                for run in _all_runs(client, experiment.experiment_id, f"tags.`{schema.KIND_TAG}` = '{kind}'")]

    parents = of_kind("search", "retrain")
    trials = of_kind("search-trial", "retrain-trial") if parents else []
    children: dict[str, list] = {}
    for trial in trials:
        children.setdefault(trial.data.tags.get(PARENT_TAG, ""), []).append(trial)
    return [_row(client, p, children.get(p.info.run_id, [])) for p in parents]


# ---------------------------------------------------------------------------------------- formatting


def _hours(value: float) -> str:
    if value >= 100:
        return f"{value:.0f}"
    return f"{value:.2f}" if value >= 1 else f"{value:.3f}"


def _cell(key: str, row: dict[str, Any], mixed_units: bool) -> str:
    value = row.get(key)
    if value is None or value == "":
        return "-"
    if key == "run_id":
        return str(value)[:8]
    if key == "best_miou":
        return f"{value:.4f}"
    if key == "params":
        return f"{value:,}"
    if key == "gflops":
        return f"{value:.3g}"
    if key == "device_hours":
        return _hours(value) + (f" {row['device_unit']}" if mixed_units else "")
    if key == "started_at":
        return _dt.datetime.fromisoformat(value).strftime("%Y-%m-%d %H:%M")
    return str(value)


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    units = {r["device_unit"] for r in rows if r.get("device_hours") is not None} or {r["device_unit"] for r in rows}
    mixed = len(units) > 1
    hours_heading = "device-h" if mixed or not units else next(iter(units))
    headings = [hours_heading if key == "device_hours" else heading for key, heading in COLUMNS]
    cells = [[_cell(key, row, mixed) for key, _ in COLUMNS] for row in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headings)]

    def line(values: Sequence[str]) -> str:
        parts = [
            v.rjust(w) if key in NUMERIC else v.ljust(w)
            for (key, _), v, w in zip(COLUMNS, values, widths)
        ]
        return "  ".join(parts).rstrip()

    return "\n".join([line(headings), line(["-" * w for w in widths]), *(line(c) for c in cells)])


CSV_FIELDS = [key for key, _ in COLUMNS] + ["device_unit", "trials"]


def format_csv(rows: Sequence[dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_FIELDS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row[k]) for k in CSV_FIELDS})
    return out.getvalue().rstrip("\n")


def format_rows(rows: Sequence[dict[str, Any]], fmt: str = "table") -> str:
    """``table`` (aligned, "-" for missing values), ``csv`` (empty cells) or ``json`` (null)."""
    if fmt == "table":
        return format_table(rows)
    if fmt == "csv":
        return format_csv(rows)
    if fmt == "json":
        return json.dumps([{k: r.get(k) for k in CSV_FIELDS} for r in rows], indent=2)
    raise CompareError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")


def run_compare(args: argparse.Namespace) -> int:
    """The table of ``--experiment`` (repeatable; default: the searches, retrains and baselines); the exit status."""
    try:
        rows = search_rows(args.tracking_uri, args.experiment, args.sort, args.ascending, args.limit)
    except CompareError as err:
        print(f"nasplat: error: {err}", file=sys.stderr)
        return 2
    if not rows:
        shown = ", ".join(repr(name) for name in args.experiment or DEFAULT_EXPERIMENTS)
        message = f"no search or retrain runs in experiment {shown}"
        if args.format == "table":
            print(message)
            return 0
        print(message, file=sys.stderr)  # stdout stays parseable
    print(format_rows(rows, args.format))
    return 0


# ---------------------------------------------------------------------------------------- nasplat ui


def ui_argv(tracking_uri: str, host: str = "127.0.0.1", port: int = 5000) -> list[str]:
    """The ``mlflow ui`` command line serving ``tracking_uri`` (a resolved, local store)."""
    if _is_remote(tracking_uri):
        raise CompareError(
            f"{tracking_uri} is already an MLflow tracking server: open {tracking_uri} in a browser instead"
        )
    argv = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", tracking_uri]
    root = local_artifact_root(tracking_uri)
    if root is not None:
        argv += ["--default-artifact-root", root]
    return argv + ["--host", host, "--port", str(port)]


def ui_url(host: str, port: int) -> str:
    shown = "127.0.0.1" if host in ("", "0.0.0.0") else host
    return f"http://[{shown}]:{port}" if ":" in shown else f"http://{shown}:{port}"


def run_ui(args: argparse.Namespace) -> int:
    try:
        if args.tracking_uri and _is_remote(args.tracking_uri):
            ui_argv(args.tracking_uri)  # raises with the message
        _, uri = open_store(args.tracking_uri)
        argv = ui_argv(uri, args.host, args.port)
    except CompareError as err:
        print(f"nasplat: error: {err}", file=sys.stderr)
        return 2
    print(f"MLflow UI: {ui_url(args.host, args.port)}  (store {uri}; Ctrl+C stops it)", flush=True)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"nasplat: warning: listening on {args.host}, not only this machine", file=sys.stderr, flush=True)
    env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **os.environ}  # no GenAI job runner: 6 slow processes
    if os.name == "posix":
        os.execve(sys.executable, argv, env)  # signals (Ctrl+C, SIGTERM) go straight to the server
    try:
        return subprocess.call(argv, env=env)
    except KeyboardInterrupt:
        return 130
