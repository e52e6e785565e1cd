"""Cityscapes fine annotations, read as the 19 train classes.

Layout::

    leftImg8bit/{split}/{city}/{city}_{seq:06d}_{frame:06d}_leftImg8bit.png
    gtFine/{split}/{city}/{city}_{seq:06d}_{frame:06d}_gtFine_labelIds.png

The ``labelIds`` masks (ids 0..33) are mapped to train ids with
:data:`LABEL_ID_TO_TRAIN_ID`; every id that is not one of the 19 evaluated
classes becomes 255 (ignore).  Other gtFine siblings (``_instanceIds``,
``_color``, ``_polygons.json``, ``_labelTrainIds``) are not read.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import NamedTuple

import numpy as np

from nasplat.data.records import IGNORE_INDEX, DataError, LayoutDataset, SampleRecord

__all__ = [
    "CITYSCAPES_CLASSES",
    "CITYSCAPES_LABELS",
    "CITYSCAPES_NUM_CLASSES",
    "CITYSCAPES_PALETTE",
    "CityscapesLabel",
    "CityscapesSegmentation",
    "LABEL_ID_TO_TRAIN_ID",
    "cityscapes_records",
]


class CityscapesLabel(NamedTuple):
    """One row of the cityscapesScripts label table (train_id 255 = not evaluated)."""

    name: str
    id: int
    train_id: int
    color: tuple[int, int, int]


_L = CityscapesLabel
_IGN = IGNORE_INDEX
CITYSCAPES_LABELS: tuple[CityscapesLabel, ...] = (
    _L("unlabeled", 0, _IGN, (0, 0, 0)),
    _L("ego vehicle", 1, _IGN, (0, 0, 0)),
    _L("rectification border", 2, _IGN, (0, 0, 0)),
    _L("out of roi", 3, _IGN, (0, 0, 0)),
    _L("static", 4, _IGN, (0, 0, 0)),
    _L("dynamic", 5, _IGN, (111, 74, 0)),
    _L("ground", 6, _IGN, (81, 0, 81)),
    _L("road", 7, 0, (128, 64, 128)),
    _L("sidewalk", 8, 1, (244, 35, 232)),
    _L("parking", 9, _IGN, (250, 170, 160)),
    _L("rail track", 10, _IGN, (230, 150, 140)),
    _L("building", 11, 2, (70, 70, 70)),
    _L("wall", 12, 3, (102, 102, 156)),
    _L("fence", 13, 4, (190, 153, 153)),
    _L("guard rail", 14, _IGN, (180, 165, 180)),
    _L("bridge", 15, _IGN, (150, 100, 100)),
    _L("tunnel", 16, _IGN, (150, 120, 90)),
    _L("pole", 17, 5, (153, 153, 153)),
    _L("polegroup", 18, _IGN, (153, 153, 153)),
    _L("traffic light", 19, 6, (250, 170, 30)),
    _L("traffic sign", 20, 7, (220, 220, 0)),
    _L("vegetation", 21, 8, (107, 142, 35)),
    _L("terrain", 22, 9, (152, 251, 152)),
    _L("sky", 23, 10, (70, 130, 180)),
    _L("person", 24, 11, (220, 20, 60)),
    _L("rider", 25, 12, (255, 0, 0)),
    _L("car", 26, 13, (0, 0, 142)),
    _L("truck", 27, 14, (0, 0, 70)),
    _L("bus", 28, 15, (0, 60, 100)),
    _L("caravan", 29, _IGN, (0, 0, 90)),
    _L("trailer", 30, _IGN, (0, 0, 110)),
    _L("train", 31, 16, (0, 80, 100)),
    _L("motorcycle", 32, 17, (0, 0, 230)),
    _L("bicycle", 33, 18, (119, 11, 32)),
    _L("license plate", -1, _IGN, (0, 0, 142)),
)
del _L, _IGN

_TRAIN_LABELS = sorted((lb for lb in CITYSCAPES_LABELS if lb.train_id != IGNORE_INDEX),
                       key=lambda lb: lb.train_id)
CITYSCAPES_CLASSES: tuple[str, ...] = tuple(lb.name for lb in _TRAIN_LABELS)
CITYSCAPES_PALETTE: tuple[tuple[int, int, int], ...] = tuple(lb.color for lb in _TRAIN_LABELS)
CITYSCAPES_NUM_CLASSES = len(CITYSCAPES_CLASSES)


def _label_id_to_train_id() -> np.ndarray:
    table = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    for lb in CITYSCAPES_LABELS:
        if lb.id >= 0:
            table[lb.id] = lb.train_id
    table.setflags(write=False)
    return table


# labelId -> trainId lookup table (256 entries, uint8, read-only; 255 = ignore).
LABEL_ID_TO_TRAIN_ID: np.ndarray = _label_id_to_train_id()

_IMAGE_SUFFIX = "_leftImg8bit.png"
_MASK_SUFFIX = "_gtFine_labelIds.png"
_NAME = re.compile(r"(?P<city>.+)_\d{6}_\d{6}")


def _contents(folder: Path) -> str:
    names = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
    return ", ".join(names) or "nothing"


def _split_dir(root: Path, kind: str, split: str) -> Path:
    top = root / kind
    if not top.is_dir():
        raise DataError(top, f"folder not found; {root} contains: {_contents(root)}")
    folder = top / split
    if not folder.is_dir():
        raise DataError(folder, f"split folder not found; available splits: {_contents(top)}")
    return folder


def _prefixes(folder: Path, suffix: str) -> dict[str, Path]:
    """``{city}_{seq}_{frame}`` -> file for every ``*{suffix}`` file under ``folder/<city>/``."""
    found = {}
    for path in folder.glob(f"*/*{suffix}"):
        prefix = path.name[: -len(suffix)]
        match = _NAME.fullmatch(prefix)
        if match is None or match["city"] != path.parent.name:
            raise DataError(
                path, f"file name does not match {path.parent.name}_<seq6>_<frame6>{suffix}"
            )
        found[prefix] = path
    return found


def cityscapes_records(root: str | Path, split: str) -> list[SampleRecord]:
    """Records of Cityscapes ``split`` (train / val / test ...), sorted by image path.

    Every ``leftImg8bit`` image needs its ``gtFine_labelIds`` mask and every
    mask its image; otherwise a :class:`DataError` names the file and the
    expected counterpart.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(root, "dataset root not found")
    image_dir = _split_dir(root, "leftImg8bit", split)
    mask_dir = _split_dir(root, "gtFine", split)
    images = _prefixes(image_dir, _IMAGE_SUFFIX)
    masks = _prefixes(mask_dir, _MASK_SUFFIX)
    if not images:
        raise DataError(image_dir, f"no <city>/*{_IMAGE_SUFFIX} images found")
    records = []
    for prefix, image in sorted(images.items(), key=lambda kv: kv[1]):
        mask = masks.get(prefix)
        if mask is None:
            expected = mask_dir / image.parent.name / f"{prefix}{_MASK_SUFFIX}"
            raise DataError(image, f"image has no gtFine labelIds mask (expected {expected})")
        records.append(SampleRecord(prefix, split, image, mask))
    for prefix in sorted(masks.keys() - images.keys()):
        mask = masks[prefix]
        expected = image_dir / mask.parent.name / f"{prefix}{_IMAGE_SUFFIX}"
        raise DataError(mask, f"labelIds mask has no leftImg8bit image (expected {expected})")
    return records


class CityscapesSegmentation(LayoutDataset):
    """Cityscapes ``split`` as a Dataset of ``(image [3,H,W] in 0..1, mask int64 [H,W])``.

    Masks hold train ids 0..18 with 255 = ignore; ``transform(image, mask)`` is
    applied when given.
    """

    CLASSES, PALETTE, LABEL_MAP = CITYSCAPES_CLASSES, CITYSCAPES_PALETTE, LABEL_ID_TO_TRAIN_ID
    list_records = staticmethod(cityscapes_records)
