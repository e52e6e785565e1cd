"""Tiny VOC 2012 and Cityscapes trees in the official layouts, for tests and benchmarks.

Everything is a pure function of ``seed``: the same arguments write the same
files.  Images are small (24x32 by default) and loosely coloured after their
masks, so a model can learn something from them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from PIL import Image

from nasplat.data.cityscapes import CITYSCAPES_LABELS
from nasplat.data.records import IGNORE_INDEX
from nasplat.data.voc import VOC_NUM_CLASSES, voc_colormap

__all__ = ["CITYSCAPES_FIXTURE_IGNORED_IDS", "make_cityscapes_fixture", "make_voc_fixture"]

_SIZE = (24, 32)  # (height, width)
_VOC_AUG_EXTRA = 2  # ids only in train_aug (the SBD images)
# Ignored labelIds drawn into every Cityscapes fixture mask.
CITYSCAPES_FIXTURE_IGNORED_IDS: tuple[int, ...] = (0, 1, 4, 6, 9, 14, 29, 30)
_CITYSCAPES_COLORS = {lb.id: lb.color for lb in CITYSCAPES_LABELS if lb.id >= 0}
_HAS_INSTANCES = frozenset({24, 25, 26, 27, 28, 29, 30, 31, 32, 33})


def _boxes(
    rng: np.random.Generator, size: tuple[int, int], count: int
) -> list[tuple[slice, slice]]:
    """``count`` random axis-aligned boxes of at least 4x4 pixels inside ``size``."""
    h, w = size
    out = []
    for _ in range(count):
        bh, bw = int(rng.integers(4, h // 2 + 1)), int(rng.integers(4, w // 2 + 1))
        y, x = int(rng.integers(0, h - bh + 1)), int(rng.integers(0, w - bw + 1))
        out.append((slice(y, y + bh), slice(x, x + bw)))
    return out


def _image_from(colors: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """RGB image: per-pixel ``colors`` [H, W, 3] plus mild noise."""
    noise = rng.normal(0.0, 12.0, colors.shape)
    return Image.fromarray(np.clip(colors + noise, 0, 255).astype(np.uint8))


def _border(mask: np.ndarray, regions: np.ndarray) -> np.ndarray:
    """Pixels of ``regions`` whose 4-neighbourhood contains another region id."""
    band = np.zeros(mask.shape, dtype=bool)
    band[1:, :] |= regions[1:, :] != regions[:-1, :]
    band[:-1, :] |= regions[:-1, :] != regions[1:, :]
    band[:, 1:] |= regions[:, 1:] != regions[:, :-1]
    band[:, :-1] |= regions[:, :-1] != regions[:, 1:]
    return band


def _voc_masks(rng: np.random.Generator, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(SBD-style mask without void, VOC-style mask with a 255 band around objects)."""
    labels = np.zeros(size, dtype=np.uint8)
    regions = np.zeros(size, dtype=np.int32)
    for k, box in enumerate(_boxes(rng, size, int(rng.integers(2, 4))), start=1):
        labels[box] = rng.integers(1, VOC_NUM_CLASSES)
        regions[box] = k
    voc = labels.copy()
    voc[_border(labels, regions)] = IGNORE_INDEX
    return labels, voc


def _write_lines(path: Path, lines: Sequence[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{line}\n" for line in lines))


def make_voc_fixture(
    root: str | Path, train: int = 3, val: int = 2, aug: bool = True, seed: int = 0
) -> Path:
    """Write a tiny ``VOCdevkit/VOC2012`` tree under ``root`` and return ``root``.

    Splits ``train``/``val``/``trainval``; masks in ``SegmentationClass`` are
    palette PNGs (0..20 plus a 255 band around objects).  With ``aug``, also
    ``SegmentationClassAug`` (8-bit 'L' PNGs without the band, as in the common
    SBD release) for train + val + extra ids, and ``train_aug.txt`` = train +
    extra ids.
    """
    root = Path(root)
    base = root / "VOCdevkit" / "VOC2012"
    rng = np.random.default_rng(seed)
    n_extra = _VOC_AUG_EXTRA if aug else 0
    ids = [f"{2007 + i // 4}_{32 + 7 * i:06d}" for i in range(train + val + n_extra)]
    train_ids, val_ids, extra_ids = ids[:train], ids[train : train + val], ids[train + val :]
    cmap = voc_colormap(256)
    palette = cmap.flatten().tolist()
    for dirname in ("JPEGImages", "SegmentationClass", "SegmentationClassAug"):
        if dirname != "SegmentationClassAug" or aug:
            (base / dirname).mkdir(parents=True, exist_ok=True)
    for sample_id in ids:
        sbd, voc = _voc_masks(rng, _SIZE)
        image = _image_from(cmap[sbd].astype(np.float64), rng)
        image.save(base / "JPEGImages" / f"{sample_id}.jpg", quality=90)
        if sample_id not in extra_ids:
            png = Image.fromarray(voc)
            png.putpalette(palette)  # turns the "L" image into a palette ("P") image
            png.save(base / "SegmentationClass" / f"{sample_id}.png")
        if aug:
            Image.fromarray(sbd).save(base / "SegmentationClassAug" / f"{sample_id}.png")
    sets = base / "ImageSets" / "Segmentation"
    _write_lines(sets / "train.txt", train_ids)
    _write_lines(sets / "val.txt", val_ids)
    _write_lines(sets / "trainval.txt", train_ids + val_ids)
    if aug:
        _write_lines(sets / "train_aug.txt", train_ids + extra_ids)
    return root


def _cityscapes_label_ids(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    """A street-like labelId mask: sky / building / road bands, objects and ignored patches."""
    h, w = size
    ids = np.empty(size, dtype=np.uint8)
    ids[: h // 4] = 23  # sky
    ids[h // 4 : h // 2] = 11  # building
    ids[h // 2 :] = 7  # road
    ids[h // 2 :, : w // 6] = 8  # sidewalk
    ids[h // 4 : h // 2, int(rng.integers(w // 3, w - 2))] = 17  # a pole
    for label_id, box in zip((26, 24, 21), _boxes(rng, (h // 2, w), 3)):  # car, person, vegetation
        ids[box[0].start + h // 4 : box[0].stop + h // 4, box[1]] = label_id
    ids[-2:] = 1  # ego vehicle
    ids[:, 0] = 0  # unlabeled
    patches = CITYSCAPES_FIXTURE_IGNORED_IDS[2:]  # 4, 6, 9, 14, 29, 30: one 2x2 patch each
    for k, label_id in enumerate(patches):
        y = int(rng.integers(0, h - 4))
        x = 2 + k * (w - 4) // len(patches)
        ids[y : y + 2, x : x + 2] = label_id
    return ids


def _instance_ids(ids: np.ndarray) -> np.ndarray:
    """instanceIds as in gtFine: labelId*1000 + k for instance classes, labelId otherwise."""
    out = ids.astype(np.int32)
    mask = np.isin(ids, list(_HAS_INSTANCES))
    out[mask] = ids[mask].astype(np.int32) * 1000
    return out


def make_cityscapes_fixture(
    root: str | Path,
    per_city: int = 2,
    cities: Mapping[str, Sequence[str]] | None = None,
    seed: int = 0,
) -> Path:
    """Write a tiny Cityscapes tree (``leftImg8bit`` + ``gtFine``) under ``root``; return ``root``.

    ``cities`` maps split -> city names (default train: aachen, bochum; val:
    frankfurt); each city gets ``per_city`` frames.  Each frame has an RGB
    ``_leftImg8bit.png`` and ``_gtFine_labelIds.png`` ('L') /
    ``_gtFine_instanceIds.png`` (16-bit) / ``_gtFine_color.png`` (RGB) siblings.
    Label masks contain several train classes and the ignored ids
    :data:`CITYSCAPES_FIXTURE_IGNORED_IDS`.
    """
    root = Path(root)
    if cities is None:
        cities = {"train": ["aachen", "bochum"], "val": ["frankfurt"]}
    rng = np.random.default_rng(seed)
    lut = np.zeros((256, 3), dtype=np.uint8)
    for label_id, color in _CITYSCAPES_COLORS.items():
        lut[label_id] = color
    for split, names in cities.items():
        for city in names:
            image_dir = root / "leftImg8bit" / split / city
            mask_dir = root / "gtFine" / split / city
            image_dir.mkdir(parents=True, exist_ok=True)
            mask_dir.mkdir(parents=True, exist_ok=True)
            for k in range(per_city):
                prefix = f"{city}_{k:06d}_{19 + 10 * k:06d}"
                ids = _cityscapes_label_ids(rng, _SIZE)
                image = _image_from(lut[ids].astype(np.float64), rng)
                image.save(image_dir / f"{prefix}_leftImg8bit.png")
                Image.fromarray(ids).save(mask_dir / f"{prefix}_gtFine_labelIds.png")
                Image.fromarray(_instance_ids(ids).astype(np.uint16)).save(
                    mask_dir / f"{prefix}_gtFine_instanceIds.png"
                )
                Image.fromarray(lut[ids]).save(mask_dir / f"{prefix}_gtFine_color.png")
    return root
