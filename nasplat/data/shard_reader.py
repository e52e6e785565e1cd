"""Reading a shard set: verification against the manifest and :class:`ShardDataset`.

Every reader checks the shards it reads against the manifest's sizes and sha256 once per
process: :func:`verify_shards` always hashes and records what it verified (a failed check
forgets the whole set); :func:`verify_shards_once` hashes a split only if this process has not
verified it yet under the same manifest (path and sha256) with its files unchanged since (size
and modification time).
"""

from __future__ import annotations

import bisect
import itertools
import os
from collections.abc import Callable, Collection, Iterable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch.utils.data import Dataset

from nasplat.data.shard_format import (
    MANIFEST_NAME, Manifest, ShardError, decode_image, decode_mask, file_sha256, listing, read_manifest, to_arrays,
)

__all__ = ["ShardDataset", "Transform", "verify_shards", "verify_shards_once"]

Transform = Callable[[Any, Any], Any]

_VERIFIED: dict[tuple[str, str], dict[str, tuple]] = {}
"""(manifest path, manifest sha256) -> {split: (file, size, mtime_ns) of its shards when verified}."""


def _signature(manifest: Manifest, split: str) -> tuple:
    stats = []
    for path in manifest.files(split):
        try:
            st = path.stat()
        except OSError:
            return ()  # a missing file: never counts as verified
        stats.append((path.name, st.st_size, st.st_mtime_ns))
    return tuple(stats)


def _cache_key(manifest: Manifest) -> tuple[str, str]:
    return str((manifest.root / MANIFEST_NAME).resolve()), manifest.sha256


def verify_shards(root: str | Path, splits: Collection[str] | None = None) -> Manifest:
    """Check the listed shards' sizes and sha256 and that no unlisted ``*.parquet`` exists.

    ``splits`` limits the size and checksum checks to those splits' shards (default: all).
    What passed is remembered for :func:`verify_shards_once` in this process.
    """
    root = Path(root)
    manifest = read_manifest(root)
    names = list(manifest.splits) if splits is None else list(splits)
    signatures = {name: _signature(manifest, name) for name in names}  # ShardError for an unknown split
    problems: list[str] = []
    for name in names:
        for shard in manifest.split(name).shards:
            path = root / shard.file
            if not path.is_file():
                problems.append(f"{path}: listed in the manifest but missing")
                continue
            size = path.stat().st_size
            if size != shard.bytes:
                problems.append(f"{path}: size is {size} bytes, manifest says {shard.bytes}")
            elif (digest := file_sha256(path)) != shard.sha256:
                problems.append(f"{path}: sha256 is {digest}, manifest says {shard.sha256}")
    listed = {shard.file for info in manifest.splits.values() for shard in info.shards}
    for path in sorted(root.glob("*.parquet")):
        if path.name not in listed:
            problems.append(f"{path}: parquet file not listed in the manifest")
    if problems:
        _VERIFIED.pop(_cache_key(manifest), None)  # nothing of this set counts as verified any more
        raise ShardError(f"{root}: shard set does not match its manifest:\n" + listing(problems))
    _VERIFIED.setdefault(_cache_key(manifest), {}).update(signatures)
    return manifest


def verify_shards_once(root: str | Path, splits: Collection[str]) -> Manifest:
    """:func:`verify_shards` of the ``splits`` this process has not verified yet (see the module)."""
    manifest = read_manifest(root)
    done = _VERIFIED.get(_cache_key(manifest), {})
    todo = [name for name in splits if done.get(name) != _signature(manifest, name)]
    return verify_shards(root, todo) if todo else manifest


class ShardDataset(Dataset):
    """Torch Dataset over one split of a shard directory, verified once per process.

    Items are ``transform(image, mask)`` with image RGB uint8 ``[H, W, 3]`` and mask
    uint8 ``[H, W]`` (train ids, 255 = ignore) when ``transform`` is given, else
    ``(float32 [3, H, W] in 0..1, int64 [H, W])``.  The split's shards are verified
    (:func:`verify_shards_once`) on construction, or with ``defer_verify`` before the first
    row is read; and again in every other process the dataset is pickled to (a DataLoader
    worker), before it reads there.  Rows are read one parquet row group at a time; each file
    keeps its open handle and last-read row group.  Pickles without its open files.
    """

    def __init__(self, root: str | Path, split: str, transform: Transform | None = None,
                 *, defer_verify: bool = False) -> None:
        self.root = Path(root)
        self.split = split
        self.transform = transform
        self.manifest = read_manifest(self.root)
        info = self.manifest.split(split)
        self.class_names = self.manifest.class_names
        self.num_classes = self.manifest.num_classes
        self._files = self.manifest.files(split)
        self._counts = [s.samples for s in info.shards]
        self._starts = [0, *itertools.accumulate(self._counts)]
        self._open: dict[int, tuple[pq.ParquetFile, list[int]]] = {}
        self._cached: dict[int, tuple[tuple[int, tuple[str, ...]], pa.Table]] = {}
        self._verified_in = -1  # the process id that verified the shards
        if not defer_verify:
            self._verify()

    def _verify(self) -> None:
        if self._verified_in != os.getpid():
            manifest = verify_shards_once(self.root, [self.split])
            if manifest.sha256 != self.manifest.sha256:
                raise ShardError(f"{self.root / MANIFEST_NAME}: changed since this dataset was opened; open it again")
            self._verified_in = os.getpid()

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
        self._verify()
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
        self._verify()
        return [sid for path in self._files for sid in pq.read_table(path, columns=["sample_id"]).column(0).to_pylist()]

    def __getitem__(self, i: int) -> Any:
        row = self._row(i, ["image", "mask"])
        image, mask = decode_image(row["image"]), decode_mask(row["mask"])
        if self.transform is not None:
            return self.transform(image, mask)
        x, y = to_arrays(image, mask)
        return torch.from_numpy(x), torch.from_numpy(y)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_open"], state["_cached"] = {}, {}
        return state

    def __repr__(self) -> str:
        return f"ShardDataset({str(self.root)!r}, split={self.split!r}, samples={len(self)})"
