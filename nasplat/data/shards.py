"""Parquet shards: a packed, checksummed, resumable copy of a segmentation dataset.

:func:`prepare_shards` writes one split's samples into ``{split}-{index:05d}.parquet``
files (see :data:`SCHEMA`) and ``manifest.json`` last; a directory without a
manifest is an incomplete shard set.  :func:`verify_shards` checks a set against its
manifest, :class:`ShardDataset` reads one split as a torch Dataset and
:func:`ray_dataset` as a Ray Dataset.

Records are any objects with ``sample_id``, ``split``, ``image_path`` and
``mask_path`` attributes (e.g. ``nasplat.data.records.SampleRecord``); a
:data:`Loader` turns one into ``(encoded image bytes, uint8 [H, W] train-id mask)``
and raises ``ValueError`` (e.g. ``DataError``) or ``OSError`` for a bad sample.
``prepare_shards`` loads every sample twice (a validating pass, then a writing pass
that only checks each sample's digest against the first), so the writing pass may use
a cheaper loader that skips decoding the image.
"""

from __future__ import annotations

import bisect
import hashlib
import io
import itertools
import json
import os
import re
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image
from torch.utils.data import Dataset

from nasplat.training.metrics import IGNORE_INDEX

if TYPE_CHECKING:  # pragma: no cover
    import ray.data

__all__ = [
    "DEFAULT_MAX_SHARD_BYTES",
    "FORMAT",
    "IGNORE_INDEX",
    "MANIFEST_NAME",
    "PROGRESS_NAME",
    "SCHEMA",
    "VERSION",
    "Loader",
    "Manifest",
    "ShardDataset",
    "ShardError",
    "ShardInfo",
    "SplitInfo",
    "decode_batch",
    "decode_image",
    "decode_mask",
    "prepare_shards",
    "sample_generator",
    "ray_dataset",
    "read_manifest",
    "verify_shards",
]

FORMAT = "nasplat-shards"
VERSION = 1
MANIFEST_NAME = "manifest.json"
PROGRESS_NAME = "_progress.json"  # per-shard content keys + checksums, for resuming
DEFAULT_MAX_SHARD_BYTES = 256 * 2**20
ROWS_PER_GROUP = 1  # parquet row-group size, the unit ShardDataset reads: one sample, as shuffled reads want

Loader = Callable[[Any], tuple[bytes, np.ndarray]]

SCHEMA = pa.schema(
    [
        ("sample_id", pa.string()),
        ("split", pa.string()),
        ("image", pa.binary()),  # encoded image file, byte-for-byte as on disk
        ("mask", pa.binary()),  # train-id mask as a lossless 8-bit grey ('L') PNG
        ("height", pa.int32()),
        ("width", pa.int32()),
        ("source_image", pa.string()),
        ("source_mask", pa.string()),
    ]
)

_TMP_SUFFIX = ".tmp"
_RECORD_FIELDS = ("sample_id", "split", "image_path", "mask_path")
_MAX_LISTED = 10
_SPLIT_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
_SHARD_RE = re.compile(r".+-\d{5}\.parquet")


class ShardError(ValueError):
    """A shard set cannot be written, read or verified; the message says why."""


# --------------------------------------------------------------------------- manifest


@dataclass(frozen=True)
class ShardInfo:
    """One shard file: name (relative to the shard directory), rows, size and sha256."""

    file: str
    samples: int
    bytes: int
    sha256: str


@dataclass(frozen=True)
class SplitInfo:
    """One split: sample count, its shards, per-class pixel counts and ignored pixels."""

    samples: int
    shards: tuple[ShardInfo, ...]
    class_histogram: tuple[int, ...]
    ignored_pixels: int


@dataclass(frozen=True)
class Manifest:
    """Contents of ``manifest.json`` plus the directory it describes (``root``)."""

    root: Path
    dataset: str
    num_classes: int
    class_names: tuple[str, ...]
    splits: dict[str, SplitInfo]
    skipped: tuple[dict[str, str], ...] = ()

    def split(self, split: str) -> SplitInfo:
        """The :class:`SplitInfo` of ``split``; ShardError naming the known splits if absent."""
        try:
            return self.splits[split]
        except KeyError:
            known = ", ".join(self.splits) or "none"
            raise ShardError(f"{self.root}: no split {split!r} (splits: {known})") from None

    def files(self, split: str) -> list[Path]:
        """Absolute paths of the shard files of ``split``, in order."""
        return [self.root / s.file for s in self.split(split).shards]

    def to_dict(self) -> dict[str, Any]:
        """The JSON document written as ``manifest.json``."""
        return {
            "format": FORMAT,
            "version": VERSION,
            "dataset": self.dataset,
            "num_classes": self.num_classes,
            "class_names": list(self.class_names),
            "splits": {
                name: {
                    "samples": info.samples,
                    "shards": [vars(s).copy() for s in info.shards],
                    "class_histogram": list(info.class_histogram),
                    "ignored_pixels": info.ignored_pixels,
                }
                for name, info in self.splits.items()
            },
            "skipped": [dict(s) for s in self.skipped],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], root: str | Path) -> Manifest:
        """Parse a manifest document; ShardError if it is not one this version reads."""
        root = Path(root)
        if data.get("format") != FORMAT or data.get("version") != VERSION:
            raise ShardError(
                f"{root / MANIFEST_NAME}: not a {FORMAT} v{VERSION} manifest "
                f"(format={data.get('format')!r}, version={data.get('version')!r})"
            )
        try:
            splits = {
                name: SplitInfo(
                    samples=int(s["samples"]),
                    shards=tuple(ShardInfo(str(f["file"]), int(f["samples"]), int(f["bytes"]),
                                           str(f["sha256"])) for f in s["shards"]),
                    class_histogram=tuple(int(c) for c in s["class_histogram"]),
                    ignored_pixels=int(s["ignored_pixels"]),
                )
                for name, s in data["splits"].items()
            }
            return cls(root, str(data["dataset"]), int(data["num_classes"]),
                       tuple(data["class_names"]), splits, tuple(data.get("skipped", ())))
        except (KeyError, TypeError, ValueError) as err:
            raise ShardError(f"{root / MANIFEST_NAME}: malformed manifest ({type(err).__name__}: {err})") from err


def read_manifest(root: str | Path) -> Manifest:
    """Read ``manifest.json`` of a shard directory without checking the shard files."""
    path = Path(root) / MANIFEST_NAME
    if not path.is_file():
        raise ShardError(
            f"{root}: no {MANIFEST_NAME}: the directory is not a complete shard set "
            "(was prepare interrupted? re-run it)"
        )
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ShardError(f"{path}: unreadable manifest ({err})") from err
    return Manifest.from_dict(data, root)


def verify_shards(root: str | Path, splits: Collection[str] | None = None) -> Manifest:
    """Check the listed shards' sizes and sha256 and that no unlisted ``*.parquet`` exists.

    ``splits`` limits the size and checksum checks to those splits' shards (default: all).
    """
    root = Path(root)
    manifest = read_manifest(root)
    for split in splits or ():
        manifest.split(split)  # ShardError naming the known splits
    problems: list[str] = []
    listed = {shard.file for info in manifest.splits.values() for shard in info.shards}
    for name, info in manifest.splits.items():
        if splits is not None and name not in splits:
            continue
        for shard in info.shards:
            path = root / shard.file
            if not path.is_file():
                problems.append(f"{path}: listed in the manifest but missing")
                continue
            size = path.stat().st_size
            if size != shard.bytes:
                problems.append(f"{path}: size is {size} bytes, manifest says {shard.bytes}")
            elif (digest := _file_sha256(path)) != shard.sha256:
                problems.append(f"{path}: sha256 is {digest}, manifest says {shard.sha256}")
    for path in sorted(root.glob("*.parquet")):
        if path.name not in listed:
            problems.append(f"{path}: parquet file not listed in the manifest")
    if problems:
        raise ShardError(f"{root}: shard set does not match its manifest:\n" + _listing(problems))
    return manifest


# --------------------------------------------------------------------------- preparing


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


class _BadSample(Exception):
    def __init__(self, path: Any, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path, self.problem = str(path), problem


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
    ``ValueError``/``OSError``, labels outside ``0..C-1``/255, image and mask sizes
    differ) raise ShardError before anything is written, or with ``skip_bad`` are left
    out and listed under ``"skipped"``.  The writing pass loads samples with ``reload``
    (default ``load``), which need not check what the validation pass checked (e.g. it
    may return the image file's bytes without decoding them): a sample whose bytes differ
    from the validated ones (sha256) stops the run.  Re-running into the same ``out_dir`` resumes:
    shards whose content key and checksum (kept in ``_progress.json``) still match are
    reused, the rest rewritten, stale shards and temporary files removed.  One process
    at a time per ``out_dir``.
    """
    out = Path(out_dir)
    num_classes = len(class_names)
    if not 1 <= num_classes <= IGNORE_INDEX:
        raise ShardError(f"need 1..{IGNORE_INDEX} class names, got {num_classes}")
    if max_shard_bytes < 1:
        raise ShardError(f"max_shard_bytes must be positive, got {max_shard_bytes}")
    say = progress or (lambda _msg: None)
    _check_records(records)
    _check_out_dir(out)

    samples, histograms, skipped = _validate(records, load, num_classes, say)
    if skipped and not skip_bad:
        raise ShardError(
            f"{len(skipped)} bad sample(s) of {len(records)}; nothing was written "
            "(fix them or pass skip_bad=True to leave them out):\n"
            + _listing([f"{s['sample_id']}: {s['path']}: {s['problem']}" for s in skipped])
        )
    plan = _plan(samples, max_shard_bytes)
    written = _write_shards(plan, reload or load, out, say)
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
        raise ShardError(f"{len(duplicates)} duplicate sample_id(s): {', '.join(duplicates[:_MAX_LISTED])}")


def _check_out_dir(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise ShardError(f"{out}: exists and is not a directory")
    foreign = [p.name for p in sorted(out.glob("*.parquet")) if not _SHARD_RE.fullmatch(p.name)]
    if foreign:
        raise ShardError(f"{out}: holds parquet files that are not shards ({', '.join(foreign[:_MAX_LISTED])}); "
                         "use an empty or shard-only directory")


def _load_checked(record: Any, load: Loader, num_classes: int) -> tuple[bytes, bytes, np.ndarray, tuple[int, int]]:
    """``(image bytes, mask PNG, 256-bin label histogram, (height, width))``; _BadSample on any problem."""
    try:
        image, mask = load(record)
    except (ValueError, OSError) as err:
        path = getattr(err, "path", None) or getattr(err, "filename", None) or record.image_path
        raise _BadSample(path, getattr(err, "problem", None) or str(err)) from err
    if not isinstance(image, (bytes, bytearray, memoryview)) or len(image) == 0:
        raise _BadSample(record.image_path, f"loader returned {type(image).__name__} image data, not non-empty bytes")
    image = bytes(image)
    if not isinstance(mask, np.ndarray) or mask.dtype != np.uint8 or mask.ndim != 2:
        raise _BadSample(record.mask_path, f"loader returned mask {getattr(mask, 'dtype', type(mask).__name__)} "
                                           f"{getattr(mask, 'shape', '')}, expected uint8 [H, W]")
    try:
        with Image.open(io.BytesIO(image)) as img:
            width, height = img.size
    except Exception as err:  # PIL raises many types for unreadable headers
        raise _BadSample(record.image_path, f"unreadable image ({type(err).__name__}: {err})") from err
    if (height, width) != mask.shape:
        raise _BadSample(record.mask_path, f"mask is {mask.shape[0]}x{mask.shape[1]} but image "
                                           f"{record.image_path} is {height}x{width}")
    histogram = np.bincount(mask.ravel(), minlength=256)
    bad = np.flatnonzero(histogram[num_classes:IGNORE_INDEX]) + num_classes
    if bad.size:
        raise _BadSample(record.mask_path, f"label values {bad[:_MAX_LISTED].tolist()} outside "
                                           f"0..{num_classes - 1} and not {IGNORE_INDEX}")
    return image, _encode_mask(mask), histogram, (height, width)


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
        except _BadSample as bad:
            skipped.append({"sample_id": record.sample_id, "path": bad.path, "problem": bad.problem})
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


def _write_shards(
    plan: dict[str, list[_Shard]], load: Loader, out: Path, say: Callable[[str], None]
) -> dict[str, list[ShardInfo]]:
    """Pass 2: reuse or write each planned shard; remove stale shards and temp files."""
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST_NAME).unlink(missing_ok=True)  # the directory is incomplete from here on
    for stale in out.glob(f"*{_TMP_SUFFIX}"):
        stale.unlink()
    progress = _read_progress(out)
    wanted = {shard.file for shards in plan.values() for shard in shards}
    written: dict[str, list[ShardInfo]] = {split: [] for split in plan}
    for split, shards in plan.items():
        for shard in shards:
            path, key = out / shard.file, shard.key
            entry = progress.get(shard.file)
            if entry is not None and entry.get("key") == key and _matches(path, entry):
                say(f"reused {shard.file} ({len(shard.samples)} samples)")
            else:
                entry = {"key": key, **vars(_write_one(shard, load, path))}
                progress[shard.file] = entry
                _write_json_atomic(out / PROGRESS_NAME, {"format": FORMAT, "shards": progress})
                say(f"wrote {shard.file} ({len(shard.samples)} samples, {entry['bytes'] / 2**20:.1f} MiB)")
            written[split].append(ShardInfo(shard.file, len(shard.samples), entry["bytes"], entry["sha256"]))
    for path in out.glob("*.parquet"):
        if path.name not in wanted:
            path.unlink()
    _write_json_atomic(out / PROGRESS_NAME,
                       {"format": FORMAT, "shards": {k: v for k, v in progress.items() if k in wanted}})
    return written


def _write_one(shard: _Shard, load: Loader, path: Path) -> ShardInfo:
    """Load, check the digest against pass 1 and write one shard via a temporary file."""
    columns: dict[str, list[Any]] = {name: [] for name in SCHEMA.names}
    for s in shard.samples:
        try:
            image, mask = load(s.record)
            image, mask_png = bytes(image), _encode_mask(mask)
        except (ValueError, OSError, TypeError) as err:
            raise ShardError(f"{s.record.image_path}: {err} (sample {s.sample_id!r} was valid in the "
                             "validation pass; did the files change? re-run)") from err
        if _digest(image, mask_png) != s.digest:
            raise ShardError(f"{s.record.image_path}: sample {s.sample_id!r} changed since validation; re-run")
        for name, value in zip(SCHEMA.names, (s.sample_id, s.split, image, mask_png, s.height, s.width,
                                              str(s.record.image_path), str(s.record.mask_path))):
            columns[name].append(value)
    tmp = path.with_name(path.name + _TMP_SUFFIX)
    try:
        pq.write_table(pa.table(columns, schema=SCHEMA), tmp, compression="none",
                       row_group_size=ROWS_PER_GROUP)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return ShardInfo(path.name, len(shard.samples), path.stat().st_size, _file_sha256(path))


def _matches(path: Path, entry: dict[str, Any]) -> bool:
    """Whether ``path`` is the complete file recorded in a progress entry."""
    return path.is_file() and path.stat().st_size == entry.get("bytes") and _file_sha256(path) == entry.get("sha256")


def _read_progress(out: Path) -> dict[str, dict[str, Any]]:
    try:
        data = json.loads((out / PROGRESS_NAME).read_text())
    except (OSError, ValueError):
        return {}
    shards = data.get("shards") if isinstance(data, dict) else None
    return dict(shards) if isinstance(shards, dict) else {}


# --------------------------------------------------------------------------- helpers


def _encode_mask(mask: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(mask).save(buf, format="PNG")  # uint8 [H, W] -> lossless 'L' PNG
    return buf.getvalue()


def _digest(image: bytes, mask_png: bytes) -> str:
    h = hashlib.sha256(image)
    h.update(mask_png)
    return h.hexdigest()


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(2**20), b""):
            h.update(chunk)
    return h.hexdigest()


def _write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + _TMP_SUFFIX)
    try:
        tmp.write_text(json.dumps(data, indent=1) + "\n")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _listing(lines: Sequence[str]) -> str:
    shown = [f"  {line}" for line in lines[:_MAX_LISTED]]
    if len(lines) > _MAX_LISTED:
        shown.append(f"  ... and {len(lines) - _MAX_LISTED} more")
    return "\n".join(shown)


# --------------------------------------------------------------------------- reading


def decode_image(data: bytes) -> np.ndarray:
    """Encoded image bytes -> RGB uint8 ``[H, W, 3]``."""
    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("RGB"))


def decode_mask(data: bytes) -> np.ndarray:
    """Mask PNG bytes (as written by :func:`prepare_shards`) -> uint8 ``[H, W]``."""
    with Image.open(io.BytesIO(data)) as img:
        if img.mode != "L":
            raise ShardError(f"shard mask has mode {img.mode!r}, expected 'L'")
        return np.asarray(img)


def _to_arrays(image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """uint8 HWC image + uint8 mask -> float32 ``[3, H, W]`` in 0..1, int64 ``[H, W]``."""
    return (np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32) / 255.0,
            mask.astype(np.int64))


Transform = Callable[[np.ndarray, np.ndarray], Any]


class ShardDataset(Dataset):
    """Torch Dataset over one split of a shard directory (verified on construction).

    Items are ``transform(image, mask)`` with image RGB uint8 ``[H, W, 3]`` and mask
    uint8 ``[H, W]`` (train ids, 255 = ignore) when ``transform`` is given, else
    ``(float32 [3, H, W] in 0..1, int64 [H, W])``.  Rows are read one parquet row
    group at a time; each file keeps its open handle and last-read row group.
    Pickles without its open files, so it works with DataLoader workers.
    """

    def __init__(self, root: str | Path, split: str, transform: Transform | None = None,
                 *, verify: bool = True) -> None:
        self.root = Path(root)
        self.split = split
        self.transform = transform
        self.manifest = verify_shards(self.root, [split]) if verify else read_manifest(self.root)
        info = self.manifest.split(split)
        self.class_names = self.manifest.class_names
        self.num_classes = self.manifest.num_classes
        self._files = self.manifest.files(split)
        self._counts = [s.samples for s in info.shards]
        self._starts = [0, *itertools.accumulate(self._counts)]
        self._open: dict[int, tuple[pq.ParquetFile, list[int]]] = {}
        self._cached: dict[int, tuple[tuple[int, tuple[str, ...]], pa.Table]] = {}

    def __len__(self) -> int:
        return self._starts[-1]

    def _locate(self, i: int) -> tuple[int, int]:
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"index {i} out of range for {n} samples")
        f = bisect.bisect_right(self._starts, i) - 1
        return f, i - self._starts[f]

    def _row(self, i: int, columns: Iterable[str]) -> dict[str, Any]:
        """The named columns of sample ``i`` as Python values."""
        f, row = self._locate(i)
        if f not in self._open:
            handle = pq.ParquetFile(self._files[f], memory_map=True)
            if handle.metadata.num_rows != self._counts[f]:
                raise ShardError(f"{self._files[f]}: {handle.metadata.num_rows} rows, manifest says {self._counts[f]}")
            sizes = [handle.metadata.row_group(g).num_rows for g in range(handle.num_row_groups)]
            self._open[f] = (handle, [0, *itertools.accumulate(sizes)])
        handle, group_starts = self._open[f]
        g = bisect.bisect_right(group_starts, row) - 1
        columns = tuple(columns)
        if self._cached.get(f, (None,))[0] != (g, columns):  # reads only the columns asked for
            self._cached[f] = ((g, columns), handle.read_row_group(g, columns=list(columns)))
        table = self._cached[f][1]
        return {c: table.column(c)[row - group_starts[g]].as_py() for c in columns}

    def sample_ids(self) -> list[str]:
        """Every ``sample_id`` of the split in item order (reads only that column)."""
        return [sid for path in self._files for sid in pq.read_table(path, columns=["sample_id"]).column(0).to_pylist()]

    def __getitem__(self, i: int) -> Any:
        row = self._row(i, ["image", "mask"])
        image, mask = decode_image(row["image"]), decode_mask(row["mask"])
        if self.transform is not None:
            return self.transform(image, mask)
        x, y = _to_arrays(image, mask)
        return torch.from_numpy(x), torch.from_numpy(y)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_open"], state["_cached"] = {}, {}
        return state

    def __repr__(self) -> str:
        return f"ShardDataset({str(self.root)!r}, split={self.split!r}, samples={len(self)})"


def _stack(arrays: list[np.ndarray]) -> np.ndarray:
    """Stack equal shapes into one array; otherwise a 1-D object array of per-row arrays."""
    if arrays and all(a.shape == arrays[0].shape for a in arrays):
        return np.stack(arrays)
    out = np.empty(len(arrays), dtype=object)
    for k, a in enumerate(arrays):
        out[k] = a
    return out


def sample_generator(seed: int, epoch: int, sample_id: str) -> np.random.Generator:
    """The random generator of one sample in one epoch: the same whichever process draws it."""
    key = int.from_bytes(hashlib.blake2b(sample_id.encode(), digest_size=8).digest(), "little")
    return np.random.default_rng([seed, epoch, key])


def _execution_index(context: Any = None) -> int:
    """Ray Data's count of executions of a dataset (``context``: its DataContext; default: the
    running one's), read through the public ``RandomSeedConfig``; it grows by one per epoch."""
    from ray.data import DataContext, RandomSeedConfig

    seeded = RandomSeedConfig(seed=0, reseed_after_execution=True).get_seed_tuple(
        data_context=context or DataContext.get_current())
    return int(seeded.execution_idx or 0)


def decode_batch(
    batch: dict[str, np.ndarray], transform: Transform | None = None, seed: int | None = None,
    first_execution: int = 0, uint8: bool = False,
) -> dict[str, np.ndarray]:
    """Decode a numpy batch of shard rows into ``sample_id``, ``image`` and ``mask`` columns.

    ``image`` is float32 ``[B, 3, H, W]`` and ``mask`` int64 ``[B, H, W]`` when every
    sample has the same size (e.g. after a cropping transform); otherwise both are
    1-D object arrays of per-sample arrays (Ray stores them as variable-shaped tensors).
    With ``uint8`` the transform's geometric half runs here (``transform.place``, e.g.
    :meth:`SegmentationAugment.place`): ``image`` and ``mask`` are uint8 and a ``box``
    column (int32 ``[B, 4]``) tells ``transform.normalize`` where the padding is.
    With ``seed``, ``transform`` must take ``rng=`` (like ``SegmentationAugment``) and gets
    :func:`sample_generator` of ``(seed, epoch, sample_id)``; inside Ray Data the epoch is
    1 + the dataset's executions since ``first_execution``.
    """
    epoch = None if seed is None or transform is None else 1 + _execution_index() - first_execution
    apply = transform.place if uint8 else transform
    images, masks, boxes = [], [], []
    for sample_id, image_bytes, mask_bytes in zip(batch["sample_id"], batch["image"], batch["mask"]):
        image, mask = decode_image(image_bytes), decode_mask(mask_bytes)
        if transform is None:
            out = _to_arrays(image, mask)
        elif epoch is not None:
            out = apply(image, mask, rng=sample_generator(seed, epoch, str(sample_id)))
        else:
            out = apply(image, mask)
        images.append(np.asarray(out[0], dtype=np.uint8 if uint8 else np.float32))
        masks.append(np.asarray(out[1], dtype=np.uint8 if uint8 else np.int64))
        boxes += out[2:]
    columns = {"sample_id": np.asarray(batch["sample_id"]), "image": _stack(images), "mask": _stack(masks)}
    if uint8:
        columns["box"] = np.stack(boxes).astype(np.int32)
    return columns


CACHE_FRACTION = 0.25
"""``ray_dataset(cache=None)`` keeps a split's encoded rows in the object store when their
size is at most this fraction of the cluster's object store memory."""
BLOCK_BYTES = 128 * 2**20
"""Encoded rows are cut into blocks of at most about this size (and at least one per CPU)."""
OUTPUT_BLOCK_BYTES = 8 * 2**20
"""Decoded blocks are cut at about this size, so the first batches stream out while a task runs."""


def ray_dataset(
    root: str | Path,
    split: str,
    transform: Transform | None = None,
    *,
    sample_ids: Collection[str] | None = None,
    cache: bool | None = None,
    seed: int | None = None,
    uint8: bool = False,
    batch_size: int = 16,
    verify: bool = True,
) -> ray.data.Dataset:
    """A Ray Dataset of ``split`` with columns ``sample_id``, ``image``, ``mask``.

    Shards are read with ``ray.data.read_parquet``; ``sample_ids`` keeps only those rows
    (an ``is_in`` filter that Ray pushes down into the Parquet scan).  The encoded rows are
    cut into at least one block per CPU (and blocks of about :data:`BLOCK_BYTES`), so that
    every CPU decodes.  With ``cache`` they are read once and kept in the object store
    (``materialize``), so an epoch only decodes; ``cache=None`` caches when the
    split's shard bytes fit in :data:`CACHE_FRACTION` of the object store (otherwise every
    epoch reads the files again).  Decoding and ``transform`` run in Ray Data tasks every
    epoch (``map_batches(decode_batch)``; see :func:`decode_batch` for the shapes), so a
    random transform draws afresh each epoch; with ``seed`` (the transform must accept
    ``rng=``) every sample's draws follow from ``(seed, epoch, sample_id)``, so they are
    reproducible whichever process decodes it (epochs count Ray Data executions of this
    dataset: 1, 2, ...).  With ``uint8`` (the transform needs ``place`` and ``normalize``,
    like ``SegmentationAugment``) only the geometric half runs in Ray Data and the rows carry
    uint8 ``image``/``mask`` plus ``box``, a quarter of the bytes: the consumer finishes
    with ``transform.normalize(image, box)`` and ``mask.long()``, bit-identical to the
    float transform.  Without a fixed-size transform, samples of
    different sizes come out as variable-shaped tensors: iterate with ``batch_size=1`` (or
    ``iter_rows``) rather than collating them into torch batches.  Leave CPUs free for
    Ray Data when Train workers run on the same cluster.
    """
    import ray  # lazy: Ray is only needed here
    import ray.data
    from ray.data.expressions import col

    if uint8 and not (hasattr(transform, "place") and hasattr(transform, "normalize")):
        raise ValueError(f"uint8=True needs a transform with place() and normalize(), got {transform!r}")
    manifest = verify_shards(root, [split]) if verify else read_manifest(root)
    info = manifest.split(split)
    files = [str(p) for p in manifest.files(split)]
    if not files:
        raise ShardError(f"{root}: split {split!r} has no shards (all samples skipped?)")
    ds = ray.data.read_parquet(files).select_columns(["sample_id", "image", "mask"])
    rows, nbytes = info.samples, sum(s.bytes for s in info.shards)
    if sample_ids is not None:
        ds = ds.filter(expr=col("sample_id").is_in(sorted(sample_ids)))
        rows, nbytes = len(sample_ids), nbytes * len(sample_ids) // max(info.samples, 1)
    if not ray.is_initialized():
        ray.init()  # as Ray Data would on first execution; the cluster's size is needed here
    resources = ray.cluster_resources()
    # at least a block per CPU, so that every CPU decodes (one shard file is one block when read);
    # a streaming repartition, with no all-to-all exchange
    blocks = max(int(resources.get("CPU", 1)), -(-nbytes // BLOCK_BYTES), 1)
    ds = ds.repartition(target_num_rows_per_block=max(1, -(-rows // blocks)), strict=True)
    if cache is None:
        cache = nbytes <= CACHE_FRACTION * resources.get("object_store_memory", 0)
    if cache:
        ds = ds.materialize()
    decode = partial(decode_batch, transform=transform, seed=seed, first_execution=_execution_index(ds.context),
                     uint8=uint8)
    ds = ds.map_batches(decode, batch_format="numpy", batch_size=batch_size)
    ds.context.target_max_block_size = OUTPUT_BLOCK_BYTES
    # Decoding is the only operator that needs CPUs here; Ray Data's per-operator reservation
    # (half of the budget) would otherwise run one decode task at a time on 2 CPUs.
    ds.context.op_resource_reservation_enabled = False
    return ds
