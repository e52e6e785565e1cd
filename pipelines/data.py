"""`nasplat data prepare`: turn a dataset in its official layout into verified Parquet shards."""
from __future__ import annotations

import functools
import tempfile
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image

from nasplat.data.cityscapes import (
    CITYSCAPES_CLASSES,
    LABEL_ID_TO_TRAIN_ID,
    cityscapes_records,
)
from nasplat.data.records import SampleRecord, read_sample
from nasplat.data.shard_format import DEFAULT_MAX_SHARD_BYTES, Manifest
from nasplat.data.shard_writer import prepare_shards
from nasplat.data.synthetic import SyntheticScenes
from nasplat.data.voc import AUG_SPLIT, VOC_CLASSES, voc_has_split, voc_records
from nasplat.training.config import ConfigError

SOURCES = ("voc", "cityscapes", "synthetic")


def default_splits(source: str, root: str | None) -> list[str]:
    """VOC: train_aug (if present) or train, plus val; Cityscapes and synthetic: train, val."""
    if source == "voc" and voc_has_split(root, AUG_SPLIT):
        return [AUG_SPLIT, "val"]
    return ["train", "val"]


def prepare(
    source: str, out: str | Path, root: str | None = None, splits: Sequence[str] | None = None,
    skip_bad: bool = False, max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    synthetic_samples: tuple[int, int] = (384, 64), image_size: int = 64, seed: int = 0,
    progress: Callable[[str], None] | None = print,
) -> Manifest:
    """Write ``out`` (shards + manifest.json) from ``source``; errors name the file at fault.

    Options that cannot work raise ConfigError (one line, before anything is read or written).
    """
    if source not in SOURCES:
        raise ConfigError(f"unknown data source {source!r}; available: {', '.join(SOURCES)}")
    if source == "synthetic":
        return _prepare_synthetic(out, synthetic_samples, image_size, seed, skip_bad, max_shard_bytes, progress)
    if not root:
        raise ConfigError(f"`nasplat data prepare {source}` needs --data-root DIR, the folder holding the dataset "
                          "in its official layout (see docs/data.md)")
    splits = list(splits or default_splits(source, root))
    if source == "voc":
        records = [r for split in splits for r in voc_records(root, split)]
        label_map, names = None, VOC_CLASSES
    else:
        records = [r for split in splits for r in cityscapes_records(root, split)]
        label_map, names = LABEL_ID_TO_TRAIN_ID, CITYSCAPES_CLASSES
    return _prepare_records(records, out, source, names, label_map, skip_bad, max_shard_bytes, progress)


def _prepare_records(records, out, dataset, names, label_map, skip_bad, max_shard_bytes, progress) -> Manifest:
    """Shard ``records``: files are read unchecked, ``prepare_shards`` checks each sample once."""
    load = functools.partial(read_sample, label_map=label_map)
    return prepare_shards(records, load, out, dataset=dataset, class_names=names, max_shard_bytes=max_shard_bytes,
                          skip_bad=skip_bad, progress=progress)


def _prepare_synthetic(out, samples, image_size, seed, skip_bad, max_shard_bytes, progress) -> Manifest:
    """Render the synthetic scenes to PNG files, then shard them like any other dataset."""
    train, val = samples
    with tempfile.TemporaryDirectory(prefix="nasplat-synthetic-") as tmp:
        records = []
        for split, offset, count in (("train", 0, train), ("val", train, val)):
            scenes = SyntheticScenes(count, size=(image_size, image_size), seed=seed, offset=offset)
            for i in range(count):
                records.append(_write_png_pair(Path(tmp), split, f"synthetic_{offset + i:06d}", *scenes[i]))
        return _prepare_records(records, out, "synthetic", scenes.class_names, None, skip_bad, max_shard_bytes,
                                progress)


def _write_png_pair(folder: Path, split: str, sample_id: str, image, mask) -> SampleRecord:
    pixels = image.permute(1, 2, 0).numpy()
    pixels = (255 * (pixels - pixels.min()) / max(float(pixels.max() - pixels.min()), 1e-6)).astype(np.uint8)
    image_path, mask_path = folder / f"{sample_id}.png", folder / f"{sample_id}_mask.png"
    Image.fromarray(pixels, "RGB").save(image_path)
    Image.fromarray(mask.numpy().astype(np.uint8), "L").save(mask_path)
    return SampleRecord(sample_id, split, image_path, mask_path)


def describe(manifest: Manifest, out: Path) -> str:
    lines = [f"wrote {out} ({manifest.dataset}, {manifest.num_classes} classes)"]
    for name, info in manifest.splits.items():
        lines.append(f"  {name}: {info.samples} samples in {len(info.shards)} shard(s), "
                     f"{info.ignored_pixels} ignored pixels")
    if manifest.skipped:
        lines.append(f"  skipped {len(manifest.skipped)} bad sample(s), listed in manifest.json")
    lines.append(f"search on it with: nasplat search --dataset parquet:{out}")
    return "\n".join(lines)
