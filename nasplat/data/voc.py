"""PASCAL VOC 2012 segmentation (optionally with the SBD-augmented ``train_aug`` split).

Layout (under ``VOCdevkit/VOC2012``)::

    JPEGImages/{id}.jpg
    SegmentationClass/{id}.png        palette PNGs: class index 0..20, 255 = void
    SegmentationClassAug/{id}.png     SBD-augmented masks (no void border)
    ImageSets/Segmentation/{split}.txt

Split ``train_aug`` reads ``ImageSets/Segmentation/train_aug.txt`` and takes its
masks from ``SegmentationClassAug``; every other split uses ``SegmentationClass``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from nasplat.data.records import DataError, LayoutDataset, SampleRecord

__all__ = [
    "AUG_SPLIT",
    "VOC_CLASSES",
    "VOC_NUM_CLASSES",
    "VOC_PALETTE",
    "VOCSegmentation",
    "voc_colormap",
    "voc_has_split",
    "voc_records",
]

VOC_CLASSES: tuple[str, ...] = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
    "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
    "sheep", "sofa", "train", "tvmonitor",
)
VOC_NUM_CLASSES = len(VOC_CLASSES)

AUG_SPLIT = "train_aug"


def voc_colormap(n: int = 256) -> np.ndarray:
    """The VOC colour map as uint8 ``[n, 3]``: the bits of index ``i`` are dealt
    round-robin to R, G, B, most significant output bit first (so 1 -> (128, 0, 0))."""
    cmap = np.zeros((n, 3), dtype=np.uint8)
    for i in range(n):
        c, rgb = i, [0, 0, 0]
        for shift in range(7, -1, -1):
            for channel in range(3):
                rgb[channel] |= ((c >> channel) & 1) << shift
            c >>= 3
        cmap[i] = rgb
    return cmap


# Colours of the 21 classes (index 255, void, is (224, 224, 192) in ``voc_colormap()``).
VOC_PALETTE: tuple[tuple[int, int, int], ...] = tuple(
    (int(r), int(g), int(b)) for r, g, b in voc_colormap(VOC_NUM_CLASSES)
)


def voc_has_split(root: str | Path, split: str) -> bool:
    """Whether ``ImageSets/Segmentation/{split}.txt`` exists (the split itself is not checked)."""
    return (_voc_base(Path(root)) / "ImageSets" / "Segmentation" / f"{split}.txt").is_file()


def _voc_base(root: Path) -> Path:
    """The ``VOC2012`` folder for either accepted root form."""
    if not root.is_dir():
        raise DataError(root, "dataset root not found")
    nested = root / "VOCdevkit" / "VOC2012"
    if nested.is_dir():
        return nested
    if (root / "ImageSets").is_dir() or (root / "JPEGImages").is_dir():
        return root
    raise DataError(
        root,
        "not a VOC root: expected VOCdevkit/VOC2012/ or ImageSets/ and JPEGImages/ inside",
    )


def _read_ids(split_file: Path) -> list[str]:
    """Sample ids of a split file; lines may also be ``/JPEGImages/{id}.jpg /...png`` pairs."""
    lines = split_file.read_text().splitlines()
    ids = [Path(line.split()[0]).stem for line in lines if line.strip()]
    if not ids:
        raise DataError(split_file, "split file lists no sample ids")
    return ids


def voc_records(root: str | Path, split: str) -> list[SampleRecord]:
    """Records of VOC 2012 ``split`` in split-file order.

    ``root`` may be the folder that contains ``VOCdevkit`` or the
    ``VOCdevkit/VOC2012`` folder itself.  Every listed id must have its image
    and mask on disk; otherwise a :class:`DataError` names the missing file.
    """
    base = _voc_base(Path(root))
    sets = base / "ImageSets" / "Segmentation"
    split_file = sets / f"{split}.txt"
    if not split_file.is_file():
        found = sorted(p.stem for p in sets.glob("*.txt")) if sets.is_dir() else []
        raise DataError(
            split_file, f"split file not found; available splits: {', '.join(found) or 'none'}"
        )
    mask_dir = base / ("SegmentationClassAug" if split == AUG_SPLIT else "SegmentationClass")
    records = []
    for sample_id in _read_ids(split_file):
        image = base / "JPEGImages" / f"{sample_id}.jpg"
        mask = mask_dir / f"{sample_id}.png"
        if not image.is_file():
            raise DataError(image, f"image listed in {split_file} is missing")
        if not mask.is_file():
            raise DataError(mask, f"mask listed in {split_file} is missing")
        records.append(SampleRecord(sample_id, split, image, mask))
    return records


class VOCSegmentation(LayoutDataset):
    """VOC 2012 ``split`` as a Dataset of ``(image [3,H,W] in 0..1, mask int64 [H,W])``.

    Mask values are class indices 0..20 with 255 = void; ``transform(image, mask)``
    is applied when given.
    """

    CLASSES, PALETTE = VOC_CLASSES, VOC_PALETTE
    list_records = staticmethod(voc_records)
