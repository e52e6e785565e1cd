"""On-disk segmentation samples: records, validated reading and a generic Dataset.

A :class:`SampleRecord` names one image file and its label mask.  Reading goes
through :func:`read_image_bytes` and :func:`read_mask`, which fully decode the
files with PIL and turn every problem (missing file, truncated file, colour
mask, unknown label value, size mismatch) into a :class:`DataError` that names
the offending file.  The checks themselves (:func:`decoded_size`,
:func:`check_labels`, :func:`check_sizes`) are shared with the shard writer, which
applies them to whatever its loader returns (e.g. :func:`read_sample`, which
reads without checking).

Masks are returned as uint8 ``[H, W]`` arrays of *train ids*: ``0..num_classes-1``
plus ``255`` for "ignore".  Palette ('P') PNGs are read as their palette
indices, never converted to RGB (that would turn class ids into colours).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from nasplat.training.metrics import IGNORE_INDEX

__all__ = [
    "IGNORE_INDEX",
    "DataError",
    "LayoutDataset",
    "RecordDataset",
    "SampleRecord",
    "Transform",
    "check_labels",
    "check_sizes",
    "decoded_size",
    "load_sample",
    "read_image_bytes",
    "read_labels",
    "read_mask",
    "read_sample",
]


# Single-channel modes whose pixel values are label indices.
_INDEX_MODES = frozenset({"P", "L", "I", "I;16", "I;16L", "I;16B"})
_MAX_LISTED = 10

Transform = Callable[[np.ndarray, np.ndarray], tuple[Tensor, Tensor]]


class DataError(ValueError):
    """A problem with one dataset file or folder; the message is ``"{path}: {problem}"``."""

    def __init__(self, path: str | Path, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = Path(path)
        self.problem = problem

    def __reduce__(self):  # keep (path, problem) when pickled across processes
        return (type(self), (self.path, self.problem))


@dataclass(frozen=True)
class SampleRecord:
    """One sample on disk: its id, split, image file and label-mask file."""

    sample_id: str
    split: str
    image_path: Path
    mask_path: Path


def _read_bytes(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise DataError(path, f"{what} file not found") from None
    except OSError as err:
        raise DataError(path, f"cannot read {what} file ({err})") from err


def _decode(data: bytes, path: Path, what: str) -> Image.Image:
    """Open and fully decode ``data`` with PIL; any failure becomes a DataError."""
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except Exception as err:  # PIL raises many types for corrupt input
        raise DataError(
            path, f"truncated or unreadable {what} ({type(err).__name__}: {err})"
        ) from err
    return img


def _open_image(path: str | Path) -> tuple[bytes, Image.Image]:
    """Raw bytes of an image file plus the fully decoded PIL image."""
    path = Path(path)
    data = _read_bytes(path, "image")
    return data, _decode(data, path, "image")


def decoded_size(data: bytes, path: str | Path) -> tuple[int, int]:
    """``(height, width)`` of encoded image bytes, fully decoded (DataError naming ``path`` if not)."""
    img = _decode(data, Path(path), "image")
    return img.height, img.width


def read_image_bytes(path: str | Path) -> tuple[bytes, tuple[int, int]]:
    """Return the image file's bytes as on disk and its ``(height, width)``.

    The image is fully decoded first, so a truncated or corrupt file raises
    :class:`DataError` here rather than later in a training worker.
    """
    data = _read_bytes(Path(path), "image")
    return data, decoded_size(data, path)


def _check_label_map(label_map: np.ndarray) -> np.ndarray:
    table = np.asarray(label_map)
    if table.shape != (256,) or table.dtype != np.uint8:
        raise ValueError(
            f"label_map must be a uint8 array of 256 entries, got {table.dtype} {table.shape}"
        )
    return table


def read_labels(path: str | Path, label_map: np.ndarray | None) -> np.ndarray:
    """Read a single-channel label mask as uint8 ``[H, W]`` (``label_map`` applied), unchecked.

    Palette ('P') and grey ('L') PNGs are read as indices without conversion;
    ``label_map`` (256-entry uint8 lookup table, e.g. Cityscapes labelId ->
    trainId) is applied when given.  Colour masks raise :class:`DataError`; the
    label range is not checked (see :func:`check_labels`).
    """
    path = Path(path)
    img = _decode(_read_bytes(path, "mask"), path, "mask")
    if img.mode not in _INDEX_MODES:
        raise DataError(
            path,
            f"mask has mode {img.mode!r}; masks must be single-channel index images "
            "(palette 'P' or 8-bit 'L' PNG), not colour images",
        )
    raw = np.array(img)  # a writable copy: callers and transforms may modify it
    if raw.dtype != np.uint8:  # 16/32-bit index images: values must still fit 0..255
        too_big = np.unique(raw[(raw < 0) | (raw > 255)])
        if too_big.size:
            raise DataError(path, f"label values {_listed(too_big)} do not fit 0..255")
        raw = raw.astype(np.uint8)
    mask = raw if label_map is None else _check_label_map(label_map)[raw]
    return np.ascontiguousarray(mask, dtype=np.uint8)


def check_labels(mask: np.ndarray, num_classes: int, path: str | Path) -> np.ndarray:
    """The 256-bin histogram of a uint8 train-id mask; DataError naming ``path`` for a value
    outside ``0..num_classes-1`` that is not 255 (ignore)."""
    histogram = np.bincount(mask.ravel(), minlength=256)
    bad = np.flatnonzero(histogram[num_classes:IGNORE_INDEX]) + num_classes
    if bad.size:
        raise DataError(
            path, f"label values {_listed(bad)} outside 0..{num_classes - 1} and not {IGNORE_INDEX}"
        )
    return histogram


def read_mask(path: str | Path, label_map: np.ndarray | None, num_classes: int) -> np.ndarray:
    """:func:`read_labels` plus :func:`check_labels`: uint8 ``[H, W]`` train ids (255 = ignore)."""
    if not 1 <= num_classes <= IGNORE_INDEX:
        raise ValueError(f"num_classes must be in [1, {IGNORE_INDEX}], got {num_classes}")
    mask = read_labels(path, label_map)
    check_labels(mask, num_classes, path)
    return mask


def _listed(values: np.ndarray) -> str:
    shown = [int(v) for v in values[:_MAX_LISTED]]
    more = f", ... ({values.size} in all)" if values.size > _MAX_LISTED else ""
    return "[" + ", ".join(map(str, shown)) + more + "]"


def check_sizes(record: SampleRecord, image_hw: tuple[int, int], mask: np.ndarray) -> None:
    """DataError naming the mask (and the image) when their sizes differ."""
    (h, w), (mh, mw) = image_hw, mask.shape
    if (h, w) != (mh, mw):
        raise DataError(
            record.mask_path, f"mask is {mh}x{mw} but image {record.image_path} is {h}x{w}"
        )


def load_sample(record: SampleRecord, label_map: np.ndarray | None, num_classes: int) -> tuple[bytes, np.ndarray]:
    """Image bytes and validated train-id mask of ``record`` (sizes must agree)."""
    data, hw = read_image_bytes(record.image_path)
    mask = read_mask(record.mask_path, label_map, num_classes)
    check_sizes(record, hw, mask)
    return data, mask


def read_sample(record: SampleRecord, label_map: np.ndarray | None) -> tuple[bytes, np.ndarray]:
    """The image file's bytes (not decoded) and the mask in train ids, unchecked: a loader for
    ``prepare_shards``, which runs :func:`decoded_size`, :func:`check_sizes` and
    :func:`check_labels` on what it loads."""
    return _read_bytes(Path(record.image_path), "image"), read_labels(record.mask_path, label_map)


class RecordDataset(Dataset):
    """Segmentation Dataset over :class:`SampleRecord` s.

    Items are ``(image, mask)``: image float32 ``[3, H, W]`` in ``0..1``, mask
    int64 ``[H, W]`` of train ids with 255 = ignore; when ``transform`` is given
    it is called as ``transform(image, mask)`` on the decoded arrays (RGB uint8
    ``[H, W, 3]`` and uint8 ``[H, W]``, as :class:`nasplat.data.shard_reader.ShardDataset`
    does) and its result is returned.
    Every item is validated like :func:`load_sample` (the image is decoded once).
    """

    ignore_index: int = IGNORE_INDEX

    def __init__(
        self,
        records: Sequence[SampleRecord],
        class_names: Sequence[str],
        palette: Sequence[tuple[int, int, int]],
        label_map: np.ndarray | None = None,
        transform: Transform | None = None,
    ) -> None:
        self.records: tuple[SampleRecord, ...] = tuple(records)
        self.class_names: tuple[str, ...] = tuple(class_names)
        self.palette: list[tuple[int, int, int]] = [tuple(c) for c in palette]
        self.num_classes = len(self.class_names)
        self.label_map = None if label_map is None else _check_label_map(label_map)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        record = self.records[i]  # IndexError for out-of-range i, negatives allowed
        _, img = _open_image(record.image_path)
        mask = read_mask(record.mask_path, self.label_map, self.num_classes)
        check_sizes(record, (img.height, img.width), mask)
        rgb = np.array(img.convert("RGB"))  # writable: transforms may work in place
        if self.transform is not None:
            return self.transform(rgb, mask)
        image = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1))).float().div_(255.0)
        return image, torch.from_numpy(mask.astype(np.int64))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(samples={len(self)}, num_classes={self.num_classes})"


class LayoutDataset(RecordDataset):
    """One split of a dataset in its official layout under ``root``, as a :class:`RecordDataset`.

    Subclasses only name the layout: ``list_records(root, split)``, ``CLASSES``,
    ``PALETTE`` and the ``LABEL_MAP`` from stored label ids to train ids (``None``: none).
    """

    CLASSES: Sequence[str] = ()
    PALETTE: Sequence[tuple[int, int, int]] = ()
    LABEL_MAP: np.ndarray | None = None

    @staticmethod
    def list_records(root: str | Path, split: str) -> list[SampleRecord]:
        raise NotImplementedError

    def __init__(self, root: str | Path, split: str, transform: Transform | None = None) -> None:
        super().__init__(self.list_records(root, split), self.CLASSES, self.PALETTE, self.LABEL_MAP, transform)
        self.root = Path(root)
        self.split = split
