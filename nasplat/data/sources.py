"""Datasets a search can run on, resolved from the ``dataset`` and ``data_root`` config fields.

``synthetic`` (built in), ``voc`` and ``cityscapes`` (official layouts under ``data_root``) and
``parquet:DIR`` (shards written by ``nasplat data prepare``). The training split is cut into the
two disjoint halves of a DARTS search by sample id: sorted ids alternate between A and B, so the
halves are disjoint by construction, balanced, and the same whichever reader (a local Dataset or
Ray Data) sees the shards.
"""
from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Collection, Sequence

from torch.utils.data import Dataset, Subset

from nasplat.data.cityscapes import CityscapesSegmentation
from nasplat.data.shard_format import read_manifest
from nasplat.data.shard_reader import ShardDataset
from nasplat.data.synthetic import synthetic_splits
from nasplat.data.transforms import SegmentationAugment
from nasplat.data.voc import AUG_SPLIT, VOCSegmentation, voc_has_split

DATASETS = ("synthetic", "voc", "cityscapes", "parquet:DIR")


@dataclasses.dataclass(frozen=True)
class SearchData:
    """The three disjoint splits of a search: weights on ``train_a``, architecture on ``train_b``."""

    train_a: Dataset
    train_b: Dataset
    val: Dataset
    num_classes: int
    class_names: tuple[str, ...]
    description: dict


def search_data(
    dataset: str, image_size: int, train_samples: int, val_samples: int, seed: int, data_root: str | None = None
) -> SearchData:
    """Build the search splits; ``train_samples``/``val_samples`` size the synthetic data only."""
    if dataset == "synthetic":
        return _synthetic(image_size, train_samples, val_samples, seed)
    train_tf, val_tf = search_transforms(image_size, seed)
    if dataset.startswith("parquet:"):
        root = Path(dataset.split(":", 1)[1])
        manifest = read_manifest(root)
        train_split = train_split_name(manifest.splits)
        # verified before the first read in each process that reads: a worker fed by Ray Data
        # only needs the metadata, and never hashes the shards
        train = ShardDataset(root, train_split, train_tf, defer_verify=True)
        val = ShardDataset(root, "val", val_tf, defer_verify=True)
        if len(train) < 2:
            raise ValueError(f"parquet: the training split has {len(train)} sample(s); a search needs at least 2")
        halves = ShardHalf(train, "a"), ShardHalf(train, "b")
        return _search_data(*halves, val, tuple(manifest.class_names),
                            {"dataset": "parquet", "root": str(root), "train_split": train_split})
    if dataset in ("voc", "cityscapes"):
        if not data_root:
            raise ValueError(f"dataset {dataset!r} needs --data-root (the folder holding the official layout)")
        if dataset == "voc":
            train_split = AUG_SPLIT if voc_has_split(data_root, AUG_SPLIT) else "train"
            train = VOCSegmentation(data_root, train_split, transform=train_tf)
            val = VOCSegmentation(data_root, "val", transform=val_tf)
        else:
            train_split = "train"
            train = CityscapesSegmentation(data_root, "train", transform=train_tf)
            val = CityscapesSegmentation(data_root, "val", transform=val_tf)
        return _halves(train, val, tuple(train.class_names),
                       {"dataset": dataset, "root": str(data_root), "train_split": train_split})
    raise ValueError(f"unknown dataset {dataset!r}; available: {', '.join(DATASETS)}")


def train_split_name(splits: Collection[str]) -> str:
    """The split a search trains on: VOC's SBD-augmented ``train_aug`` when present, else ``train``."""
    return AUG_SPLIT if AUG_SPLIT in splits else "train"


def search_transforms(image_size: int, seed: int) -> tuple[SegmentationAugment, SegmentationAugment]:
    """Training (random scale, crop, flip) and validation (centre crop/pad) transforms of a search."""
    crop = (image_size, image_size)
    return SegmentationAugment(crop=crop, train=True, seed=seed), SegmentationAugment(crop=crop, train=False)


SPLIT_RULE = "sample ids sorted; alternate ids go to train_a (weights) and train_b (architecture)"


def split_halves(sample_ids: Sequence[str]) -> tuple[frozenset[str], frozenset[str]]:
    """The ids of search halves A and B: sorted ids, alternately assigned (disjoint, balanced)."""
    ordered = sorted(sample_ids)
    return frozenset(ordered[0::2]), frozenset(ordered[1::2])


def half_indices(sample_ids: Sequence[str], half: str) -> list[int]:
    """Positions in ``sample_ids`` of half ``"a"`` or ``"b"`` by :func:`split_halves`, in order."""
    if half not in ("a", "b"):
        raise ValueError(f"half must be 'a' or 'b', got {half!r}")
    chosen = split_halves(sample_ids)["ab".index(half)]
    return [i for i, sid in enumerate(sample_ids) if sid in chosen]


class ShardHalf(Dataset):
    """Search half ``"a"`` or ``"b"`` of a :class:`ShardDataset` by :func:`split_halves`.

    Its length follows from the rule (A gets the odd one out); the sample-id column is read
    only when an item is first asked for, so a Ray Data worker that streams the halves and
    needs only the metadata never reads it.
    """

    def __init__(self, dataset: ShardDataset, half: str) -> None:
        if half not in ("a", "b"):
            raise ValueError(f"half must be 'a' or 'b', got {half!r}")
        self.dataset, self.half = dataset, half

    @functools.cached_property
    def indices(self) -> list[int]:
        """Indices into ``dataset`` of this half's samples, in dataset order."""
        return half_indices(self.dataset.sample_ids(), self.half)

    def __len__(self) -> int:
        n = len(self.dataset)
        return (n + 1) // 2 if self.half == "a" else n // 2

    def __getitem__(self, i: int):
        return self.dataset[self.indices[i]]


def _halves(train: Dataset, val: Dataset, class_names: tuple[str, ...], description: dict) -> SearchData:
    ids = [record.sample_id for record in train.records]
    if len(ids) < 2:
        raise ValueError(f"{description['dataset']}: the training split has {len(ids)} sample(s); a search needs at least 2")
    train_a, train_b = (Subset(train, half_indices(ids, half)) for half in "ab")
    return _search_data(train_a, train_b, val, class_names, description)


def _search_data(train_a: Dataset, train_b: Dataset, val: Dataset, class_names: tuple[str, ...],
                 description: dict) -> SearchData:
    description = {**description, "split_rule": SPLIT_RULE,
                   "counts": {"train_a": len(train_a), "train_b": len(train_b), "val": len(val)}}
    return SearchData(train_a, train_b, val, len(class_names), class_names, description)


def _synthetic(image_size: int, train_samples: int, val_samples: int, seed: int) -> SearchData:
    splits = synthetic_splits(train_samples, val_samples, size=(image_size, image_size), seed=seed)
    first = splits["train_a"]
    return SearchData(
        train_a=splits["train_a"],
        train_b=splits["train_b"],
        val=splits["val"],
        num_classes=len(first.class_names),
        class_names=tuple(first.class_names),
        description={"dataset": "synthetic", "seed": seed, "size": image_size,
                     "index_ranges": {name: list(split.index_range) for name, split in splits.items()}},
    )
