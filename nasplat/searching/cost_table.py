"""Per-op cost tables: latency measured on this machine, FLOPs and parameters counted; saved and read as JSON.

``nasplat profile-ops`` writes one with :func:`profile_ops` and :func:`save_table`; a cost-aware search reads it
with :func:`load_table`. Each entry is one :class:`OpShape` (key ``op|C=N|stride=S|HxW``) with ``latency_ms`` (the
median of ``repeats`` timed forward passes of the op alone, batch 1, eval mode), ``gflops`` and ``params`` of the op
as a built network holds it (affine BatchNorm), counted by :mod:`nasplat.training.model_stats`.
"""
from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import torch

from nasplat.searching.cost import OpShape
from nasplat.spaces.ops import build_op
from nasplat.training.config import ConfigError
from nasplat.training.model_stats import count_flops, count_parameters, measure_latency

METRICS = {"latency": "latency_ms", "flops": "gflops", "params": "params"}
"""``--cost`` name -> the table column (and metric name) it reads: milliseconds, GFLOPs, parameters."""
TABLE_VERSION = 1


def counted_costs(shape: OpShape, metrics: Iterable[str] = ("gflops", "params")) -> dict[str, float]:
    """``gflops`` and/or ``params`` of one op at its input shape, counted (no timing)."""
    op = build_op(shape.op, shape.channels, shape.stride, affine=True)
    counters = {"gflops": lambda: count_flops(op, shape.input_size) / 1e9, "params": lambda: float(count_parameters(op))}
    return {name: counters[name]() for name in metrics}


def profile_ops(shapes: Iterable[OpShape], repeats: int = 20, warmup: int = 3, device: str = "cpu",
                progress: Callable[[int, int], None] | None = None) -> dict[OpShape, dict[str, float]]:
    """Every shape's ``latency_ms`` (median of ``repeats`` runs after ``warmup``), ``latency_iqr_ms``, ``gflops`` and
    ``params``; ``progress(done, total)`` after each op."""
    shapes = sorted(set(shapes))
    entries: dict[OpShape, dict[str, float]] = {}
    for index, shape in enumerate(shapes):
        op = build_op(shape.op, shape.channels, shape.stride, affine=True).to(device)
        timing = measure_latency(op, shape.input_size, warmup=warmup, repeats=repeats)
        entries[shape] = {"latency_ms": timing["median_ms"], "latency_iqr_ms": timing["iqr_ms"], **counted_costs(shape)}
        if progress is not None:
            progress(index + 1, len(shapes))
    return entries


def machine_description(device: str = "cpu") -> dict[str, Any]:
    """Where a table was measured: device, processor, torch version and threads."""
    name = torch.cuda.get_device_name(torch.device(device)) if device.startswith("cuda") else \
        (platform.processor() or platform.machine())
    return {"device": device, "device_name": name, "torch": torch.__version__, "threads": torch.get_num_threads(),
            "host": platform.node(), "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def save_table(path: str | Path, entries: Mapping[OpShape, Mapping[str, float]], meta: Mapping[str, Any]) -> Path:
    """Write a table: ``meta`` (space, image size, options, machine, repeats) and the entries by key, sorted."""
    path = Path(path)
    body = {"version": TABLE_VERSION, **meta, "entries": {s.key: dict(entries[s]) for s in sorted(entries)}}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(body, indent=1) + "\n")
    return path


class CostTableFile:
    """A table read from disk: its metadata and one cost per op shape for each metric it holds."""

    def __init__(self, path: str | Path, meta: dict[str, Any], entries: dict[OpShape, dict[str, float]]) -> None:
        self.path, self.meta, self.entries = Path(path), meta, entries

    def costs(self, metric: str) -> dict[OpShape, float]:
        """Shape -> the ``metric`` column (``latency_ms``, ``gflops`` or ``params``); ConfigError if absent."""
        missing = [s.key for s, values in self.entries.items() if metric not in values]
        if missing:
            raise ConfigError(f"cost table {self.path}: entry {missing[0]} has no {metric!r}")
        return {shape: float(values[metric]) for shape, values in self.entries.items()}


def load_table(path: str | Path) -> CostTableFile:
    """Read and check a table written by :func:`save_table`; errors (ConfigError) name the file and the entry."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"cost table not found: {path} (write one with `nasplat profile-ops --space NAME "
                          f"--image-size S --out {path.name}`)")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(f"cost table {path}: not readable JSON ({err})") from None
    if not isinstance(data, dict) or data.get("version") != TABLE_VERSION or not isinstance(data.get("entries"), dict):
        raise ConfigError(f"cost table {path}: expected a version-{TABLE_VERSION} table with an 'entries' mapping "
                          "(written by `nasplat profile-ops`)")
    entries: dict[OpShape, dict[str, float]] = {}
    for key, values in data["entries"].items():
        try:
            shape = OpShape.from_key(key)
        except ValueError as err:
            raise ConfigError(f"cost table {path}: {err}") from None
        numbers = isinstance(values, dict) and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0 for v in values.values())
        if not numbers:
            raise ConfigError(f"cost table {path}: entry {key} must map metric names to numbers >= 0, got {values!r}")
        entries[shape] = {name: float(v) for name, v in values.items()}
    meta = {k: v for k, v in data.items() if k != "entries"}
    return CostTableFile(path, meta, entries)
