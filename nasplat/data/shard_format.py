"""The on-disk format of a shard set: row schema, manifest, checksums, encoding of a row.

A shard directory holds ``{split}-{index:05d}.parquet`` files (rows as in :data:`SCHEMA`),
``manifest.json`` (:class:`Manifest`: counts, class histogram and a sha256 per shard) and, while
or after :func:`nasplat.data.shard_writer.prepare_shards` runs, ``_progress.json``.  A directory
without a manifest is an incomplete shard set.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from PIL import Image

__all__ = [
    "DEFAULT_MAX_SHARD_BYTES", "FORMAT", "MANIFEST_NAME", "PROGRESS_NAME", "ROWS_PER_GROUP", "SCHEMA",
    "SHARD_NAME", "TMP_SUFFIX", "VERSION", "Manifest", "ShardError", "ShardInfo", "SplitInfo", "decode_image",
    "decode_mask", "encode_mask", "file_sha256", "listing", "read_manifest", "to_arrays",
]

FORMAT = "nasplat-shards"
VERSION = 1
MANIFEST_NAME = "manifest.json"
PROGRESS_NAME = "_progress.json"  # per-shard content keys + checksums, for resuming
TMP_SUFFIX = ".nasplat-tmp"  # files being written: ``{name}.nasplat-tmp``, renamed to ``name`` when complete
DEFAULT_MAX_SHARD_BYTES = 256 * 2**20
ROWS_PER_GROUP = 1  # parquet row-group size, the unit ShardDataset reads: one sample, as shuffled reads want
SHARD_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*-\d{5}\.parquet")
"""Names of shard files: ``{split}-{index:05d}.parquet``."""

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

_MAX_LISTED = 10


class ShardError(ValueError):
    """A shard set cannot be written, read or verified; the message says why."""


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
    """Contents of ``manifest.json`` plus the directory it describes (``root``).

    ``sha256`` is the checksum of ``manifest.json`` as it was read (empty for a manifest built
    in memory); readers key their once-per-process verification on it.
    """

    root: Path
    dataset: str
    num_classes: int
    class_names: tuple[str, ...]
    splits: dict[str, SplitInfo]
    skipped: tuple[dict[str, str], ...] = ()
    sha256: str = field(default="", compare=False)

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
    def from_dict(cls, data: dict[str, Any], root: str | Path, sha256: str = "") -> Manifest:
        """Parse a manifest document; ShardError if it is not one this version reads."""
        root = Path(root)
        if not isinstance(data, dict) or data.get("format") != FORMAT or data.get("version") != VERSION:
            found = (data.get("format"), data.get("version")) if isinstance(data, dict) else (None, None)
            raise ShardError(f"{root / MANIFEST_NAME}: not a {FORMAT} v{VERSION} manifest "
                             f"(format={found[0]!r}, version={found[1]!r})")
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
            return cls(root, str(data["dataset"]), int(data["num_classes"]), tuple(data["class_names"]),
                       splits, tuple(data.get("skipped", ())), sha256)
        except (KeyError, TypeError, ValueError, AttributeError) as err:
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
        raw = path.read_bytes()
        data = json.loads(raw)
    except (OSError, ValueError) as err:
        raise ShardError(f"{path}: unreadable manifest ({err})") from err
    return Manifest.from_dict(data, root, hashlib.sha256(raw).hexdigest())


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(2**20), b""):
            h.update(chunk)
    return h.hexdigest()


def listing(lines: Sequence[str]) -> str:
    """Indented lines for an error message: the first ten, then how many more."""
    shown = [f"  {line}" for line in lines[:_MAX_LISTED]]
    if len(lines) > _MAX_LISTED:
        shown.append(f"  ... and {len(lines) - _MAX_LISTED} more")
    return "\n".join(shown)


# --------------------------------------------------------------------------- rows


def encode_mask(mask: np.ndarray) -> bytes:
    """uint8 ``[H, W]`` train-id mask -> lossless 8-bit grey ('L') PNG bytes."""
    buf = io.BytesIO()
    Image.fromarray(mask).save(buf, format="PNG")
    return buf.getvalue()


def decode_image(data: bytes) -> np.ndarray:
    """Encoded image bytes -> RGB uint8 ``[H, W, 3]``."""
    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("RGB"))


def decode_mask(data: bytes) -> np.ndarray:
    """Mask PNG bytes (as :func:`encode_mask` writes them) -> uint8 ``[H, W]``."""
    with Image.open(io.BytesIO(data)) as img:
        if img.mode != "L":
            raise ShardError(f"shard mask has mode {img.mode!r}, expected 'L'")
        return np.asarray(img)


def to_arrays(image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """uint8 HWC image + uint8 mask -> float32 ``[3, H, W]`` in 0..1, int64 ``[H, W]``."""
    return (np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32) / 255.0,
            mask.astype(np.int64))
