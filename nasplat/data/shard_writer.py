"""Writing a shard set: :func:`prepare_shards`, checked, resumable, and safe for the folder it writes.

Records are any objects with ``sample_id``, ``split``, ``image_path`` and ``mask_path``
attributes (e.g. :class:`nasplat.data.records.SampleRecord`); a :data:`Loader` turns one into
``(encoded image bytes, uint8 [H, W] train-id mask)`` and raises ``ValueError`` (e.g.
``DataError``) or ``OSError`` for a bad sample.  ``prepare_shards`` checks what the loader
returns itself (the image decodes fully, image and mask sizes agree, labels are in range), once,
in a first pass; a second pass loads every sample again and only checks its digest against the
first, then writes.

The output folder may hold only what ``prepare_shards`` wrote: ``manifest.json``,
``_progress.json``, the shards they name and ``*.nasplat-tmp`` files of shards or of those two.
A folder that holds anything else, or another dataset's shards, is refused before anything is
read or deleted; only files of this kind are ever replaced or removed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from nasplat.data.records import DataError, check_labels, check_sizes, decoded_size
from nasplat.data.shard_format import (
    DEFAULT_MAX_SHARD_BYTES, FORMAT, MANIFEST_NAME, PROGRESS_NAME, ROWS_PER_GROUP, SCHEMA, SHARD_NAME, TMP_SUFFIX,
    VERSION, Manifest, ShardError, ShardInfo, SplitInfo, encode_mask, file_sha256, listing, read_manifest,
)
from nasplat.training.metrics import IGNORE_INDEX

__all__ = ["Loader", "prepare_shards"]

Loader = Callable[[Any], tuple[bytes, np.ndarray]]

_RECORD_FIELDS = ("sample_id", "split", "image_path", "mask_path")
_SPLIT_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


@dataclass
class _Sample:
    """A validated sample: what the writing pass needs, not the payload itself."""

    sample_id: str
    split: str
    record: Any
    payload: int  # image bytes + mask PNG bytes
    digest: str  # sha256 of image bytes + mask PNG bytes
    height: int
    width: int


@dataclass
class _Shard:
    file: str
    split: str
    samples: list[_Sample] = field(default_factory=list)
    payload: int = 0

    @property
    def key(self) -> str:
        """Content key: changes whenever anything this shard would contain changes."""
        rows = [[s.sample_id, s.split, str(s.record.image_path), str(s.record.mask_path), s.digest]
                for s in self.samples]
        blob = json.dumps({"version": VERSION, "rows": rows}, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()


def prepare_shards(
    records: Sequence[Any],
    load: Loader,
    out_dir: str | Path,
    *,
    dataset: str,
    class_names: Sequence[str],
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    skip_bad: bool = False,
    progress: Callable[[str], None] | None = print,
    reload: Loader | None = None,
) -> Manifest:
    """Validate every sample, then write the Parquet shards and ``manifest.json`` last.

    Samples keep their order within a split; a new shard starts when the next sample's
    payload (image bytes + mask PNG) would push the current one past ``max_shard_bytes``
    (a shard always holds at least one sample).  Bad samples (the loader raised
    ``ValueError``/``OSError``, the image does not decode, labels outside ``0..C-1``/255,
    image and mask sizes differ) raise ShardError before anything is written, or with
    ``skip_bad`` are left out and listed under ``"skipped"``.  The writing pass loads samples
    with ``reload`` (default ``load``): a sample whose bytes differ from the validated ones
    (sha256) stops the run.  ``out_dir`` must be empty, absent, or hold only what an earlier
    run for the same ``dataset`` wrote (anything else: ShardError naming the file, nothing
    deleted).  Such a re-run resumes: shards whose content key and checksum (kept in
    ``_progress.json``) still match are reused, the rest rewritten, shards it no longer needs
    removed.  One process at a time per ``out_dir``.
    """
    out = Path(out_dir)
    num_classes = len(class_names)
    if not 1 <= num_classes <= IGNORE_INDEX:
        raise ShardError(f"need 1..{IGNORE_INDEX} class names, got {num_classes}")
    if max_shard_bytes < 1:
        raise ShardError(f"max_shard_bytes must be positive, got {max_shard_bytes}")
    say = progress or (lambda _msg: None)
    _check_records(records)
    ours = _own_files(out, dataset)

    samples, histograms, skipped = _validate(records, load, num_classes, say)
    if skipped and not skip_bad:
        raise ShardError(
            f"{len(skipped)} bad sample(s) of {len(records)}; nothing was written "
            "(fix them or pass skip_bad=True to leave them out):\n"
            + listing([f"{s['sample_id']}: {s['path']}: {s['problem']}" for s in skipped])
        )
    written = _write_shards(_plan(samples, max_shard_bytes), reload or load, out, dataset, ours, say)
    manifest = Manifest(
        root=out,
        dataset=dataset,
        num_classes=num_classes,
        class_names=tuple(class_names),
        splits={
            split: SplitInfo(  # every split seen, even one whose samples were all skipped
                samples=sum(s.samples for s in written.get(split, ())),
                shards=tuple(written.get(split, ())),
                class_histogram=tuple(int(c) for c in histogram[:num_classes]),
                ignored_pixels=int(histogram[IGNORE_INDEX]),
            )
            for split, histogram in histograms.items()
        },
        skipped=tuple(skipped),
    )
    _write_json_atomic(out / MANIFEST_NAME, manifest.to_dict())
    say(f"{out}: wrote {MANIFEST_NAME} ({sum(i.samples for i in manifest.splits.values())} samples, "
        f"{len(skipped)} skipped)")
    return manifest


def _check_records(records: Sequence[Any]) -> None:
    if not records:
        raise ShardError("no records to shard")
    seen: set[str] = set()
    duplicates: list[str] = []
    for r in records:
        missing = [name for name in _RECORD_FIELDS if not hasattr(r, name)]
        if missing:
            raise ShardError(f"record {r!r} lacks {', '.join(missing)} (records need {', '.join(_RECORD_FIELDS)})")
        sample_id, split = r.sample_id, r.split
        if not isinstance(sample_id, str) or not sample_id:
            raise ShardError(f"sample_id must be a non-empty string, got {sample_id!r}")
        if not isinstance(split, str) or not _SPLIT_RE.fullmatch(split):
            raise ShardError(f"split {split!r} of {sample_id!r} must match {_SPLIT_RE.pattern}")
        if sample_id in seen:
            duplicates.append(sample_id)
        seen.add(sample_id)
    if duplicates:
        raise ShardError(f"{len(duplicates)} duplicate sample_id(s): {', '.join(duplicates[:10])}")


# --------------------------------------------------------------------------- the output folder


def _own_files(out: Path, dataset: str) -> set[str]:
    """Names in ``out`` that an earlier run for ``dataset`` wrote (so may be replaced or removed);
    ShardError naming ``out`` and the file if it holds anything else or another dataset."""
    if out.exists() and not out.is_dir():
        raise ShardError(f"{out}: exists and is not a directory")
    if not out.is_dir() or not any(out.iterdir()):
        return set()
    refuse = f"; `prepare` writes only into an empty folder or one it filled for {dataset!r} (nothing was deleted)"
    listed: set[str] = set()
    if (out / MANIFEST_NAME).exists():
        try:
            manifest = read_manifest(out)
        except ShardError as err:
            raise ShardError(f"{out}: holds {MANIFEST_NAME}, which is not a readable shard manifest ({err})"
                             + refuse) from None
        if manifest.dataset != dataset:
            raise ShardError(f"{out}: holds the shards of another dataset ({manifest.dataset!r}, "
                             f"see {out / MANIFEST_NAME})" + refuse)
        listed |= {s.file for info in manifest.splits.values() for s in info.shards}
    if (out / PROGRESS_NAME).exists():
        recorded = _read_progress(out)
        if recorded is None:
            raise ShardError(f"{out}: holds {PROGRESS_NAME}, which is unreadable or not nasplat's" + refuse)
        if recorded["dataset"] != dataset:
            raise ShardError(f"{out}: holds {PROGRESS_NAME} of a run for another dataset "
                             f"({recorded['dataset']!r})" + refuse)
        listed |= set(recorded["shards"])
    ours = {MANIFEST_NAME, PROGRESS_NAME} | {name for name in listed if SHARD_NAME.fullmatch(name)}
    temporary = {name + TMP_SUFFIX for name in ours}
    for path in sorted(out.iterdir()):
        if path.name not in ours and not (path.name in temporary or _is_own_tmp(path.name)):
            raise ShardError(f"{out}: holds {path.name}, which `nasplat data prepare` did not write" + refuse)
    return {p.name for p in out.iterdir()}


def _is_own_tmp(name: str) -> bool:
    """A temporary file of a shard (the run that wrote it was killed before recording it)."""
    return name.endswith(TMP_SUFFIX) and SHARD_NAME.fullmatch(name[: -len(TMP_SUFFIX)]) is not None


def _read_progress(out: Path) -> dict[str, Any] | None:
    """``_progress.json`` as ``{"dataset": ..., "shards": {file: entry}}``; None if absent or unreadable."""
    try:
        data = json.loads((out / PROGRESS_NAME).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("shards"), dict):
        return None
    return {"dataset": data.get("dataset"), "shards": dict(data["shards"])}


# --------------------------------------------------------------------------- pass 1: checking


def _load_checked(record: Any, load: Loader, num_classes: int) -> tuple[bytes, bytes, np.ndarray, tuple[int, int]]:
    """``(image bytes, mask PNG, 256-bin label histogram, (height, width))``; DataError on any problem."""
    try:
        image, mask = load(record)
    except (ValueError, OSError) as err:
        path = getattr(err, "path", None) or getattr(err, "filename", None) or record.image_path
        raise DataError(path, getattr(err, "problem", None) or str(err)) from err
    if not isinstance(image, (bytes, bytearray, memoryview)) or len(image) == 0:
        raise DataError(record.image_path, f"loader returned {type(image).__name__} image data, not non-empty bytes")
    image = bytes(image)
    if not isinstance(mask, np.ndarray) or mask.dtype != np.uint8 or mask.ndim != 2:
        raise DataError(record.mask_path, f"loader returned mask {getattr(mask, 'dtype', type(mask).__name__)} "
                                          f"{getattr(mask, 'shape', '')}, expected uint8 [H, W]")
    height, width = decoded_size(image, record.image_path)
    check_sizes(record, (height, width), mask)
    histogram = check_labels(mask, num_classes, record.mask_path)
    return image, encode_mask(mask), histogram, (height, width)


def _validate(
    records: Sequence[Any], load: Loader, num_classes: int, say: Callable[[str], None]
) -> tuple[list[_Sample], dict[str, np.ndarray], list[dict[str, str]]]:
    """Pass 1: load every sample; keep sizes, digests and histograms, collect problems."""
    samples: list[_Sample] = []
    histograms: dict[str, np.ndarray] = {}
    skipped: list[dict[str, str]] = []
    step = max(500, len(records) // 10)
    for i, record in enumerate(records, 1):
        histograms.setdefault(record.split, np.zeros(256, dtype=np.int64))
        try:
            image, mask_png, hist, (height, width) = _load_checked(record, load, num_classes)
        except DataError as bad:
            skipped.append({"sample_id": record.sample_id, "path": str(bad.path), "problem": bad.problem})
        else:
            histograms[record.split] += hist
            samples.append(_Sample(record.sample_id, record.split, record,
                                   len(image) + len(mask_png), _digest(image, mask_png), height, width))
        if i % step == 0 or i == len(records):
            say(f"validated {i}/{len(records)} samples ({len(skipped)} bad)")
    return samples, histograms, skipped


def _plan(samples: Sequence[_Sample], max_shard_bytes: int) -> dict[str, list[_Shard]]:
    """Deterministic assignment of samples to shards, per split in first-seen order."""
    plan: dict[str, list[_Shard]] = {}
    for s in samples:
        shards = plan.setdefault(s.split, [])
        if not shards or (shards[-1].samples and shards[-1].payload + s.payload > max_shard_bytes):
            shards.append(_Shard(f"{s.split}-{len(shards):05d}.parquet", s.split))
        shards[-1].samples.append(s)
        shards[-1].payload += s.payload
    return plan


# --------------------------------------------------------------------------- pass 2: writing


def _write_shards(
    plan: dict[str, list[_Shard]], load: Loader, out: Path, dataset: str, ours: set[str], say: Callable[[str], None]
) -> dict[str, list[ShardInfo]]:
    """Reuse or write each planned shard; remove the files of ``ours`` that are no longer needed.

    A shard's progress entry is recorded before its file is renamed into place, so every shard
    file in ``out`` is named in ``_progress.json``, whenever the run is stopped.
    """
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST_NAME).unlink(missing_ok=True)  # the directory is incomplete from here on
    progress = (_read_progress(out) or {"shards": {}})["shards"]
    wanted = {shard.file for shards in plan.values() for shard in shards}
    written: dict[str, list[ShardInfo]] = {split: [] for split in plan}
    for split, shards in plan.items():
        for shard in shards:
            path, key = out / shard.file, shard.key
            entry = progress.get(shard.file)
            if entry is not None and entry.get("key") == key and _matches(path, entry):
                say(f"reused {shard.file} ({len(shard.samples)} samples)")
            else:
                tmp = _write_tmp(shard, load, path)
                entry = {"key": key, "bytes": tmp.stat().st_size, "sha256": file_sha256(tmp)}
                progress[shard.file] = entry
                _write_json_atomic(out / PROGRESS_NAME, {"format": FORMAT, "dataset": dataset, "shards": progress})
                os.replace(tmp, path)
                say(f"wrote {shard.file} ({len(shard.samples)} samples, {entry['bytes'] / 2**20:.1f} MiB)")
            written[split].append(ShardInfo(shard.file, len(shard.samples), entry["bytes"], entry["sha256"]))
    for name in sorted(ours - wanted - {MANIFEST_NAME, PROGRESS_NAME}):
        (out / name).unlink(missing_ok=True)  # this run's or an earlier run's shards and temporary files
    _write_json_atomic(out / PROGRESS_NAME, {"format": FORMAT, "dataset": dataset,
                                             "shards": {k: v for k, v in progress.items() if k in wanted}})
    return written


def _write_tmp(shard: _Shard, load: Loader, path: Path) -> Path:
    """Load the shard's samples, check their digests against pass 1, write ``{path}.nasplat-tmp``."""
    columns: dict[str, list[Any]] = {name: [] for name in SCHEMA.names}
    for s in shard.samples:
        try:
            image, mask = load(s.record)
            image, mask_png = bytes(image), encode_mask(mask)
        except (ValueError, OSError, TypeError) as err:
            raise ShardError(f"{s.record.image_path}: {err} (sample {s.sample_id!r} was valid in the "
                             "validation pass; did the files change? re-run)") from err
        if _digest(image, mask_png) != s.digest:
            raise ShardError(f"{s.record.image_path}: sample {s.sample_id!r} changed since validation; re-run")
        for name, value in zip(SCHEMA.names, (s.sample_id, s.split, image, mask_png, s.height, s.width,
                                              str(s.record.image_path), str(s.record.mask_path))):
            columns[name].append(value)
    tmp = path.with_name(path.name + TMP_SUFFIX)
    try:
        pq.write_table(pa.table(columns, schema=SCHEMA), tmp, compression="none", row_group_size=ROWS_PER_GROUP)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def _matches(path: Path, entry: dict[str, Any]) -> bool:
    """Whether ``path`` is the complete file recorded in a progress entry."""
    return path.is_file() and path.stat().st_size == entry.get("bytes") and file_sha256(path) == entry.get("sha256")


def _digest(image: bytes, mask_png: bytes) -> str:
    h = hashlib.sha256(image)
    h.update(mask_png)
    return h.hexdigest()


def _write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + TMP_SUFFIX)
    try:
        tmp.write_text(json.dumps(data, indent=1) + "\n")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
