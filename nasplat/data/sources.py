"""Datasets a search can run on, resolved from the ``dataset`` config field."""
from __future__ import annotations

import dataclasses

from torch.utils.data import Dataset

from nasplat.data.synthetic import synthetic_splits


@dataclasses.dataclass(frozen=True)
class SearchData:
    """The three disjoint splits of a search: weights on ``train_a``, architecture on ``train_b``."""

    train_a: Dataset
    train_b: Dataset
    val: Dataset
    num_classes: int
    class_names: tuple[str, ...]
    description: dict


DATASETS = ("synthetic",)


def search_data(dataset: str, image_size: int, train_samples: int, val_samples: int, seed: int) -> SearchData:
    """Build the search splits of ``dataset``; raise ValueError naming the choices if unknown."""
    if dataset != "synthetic":
        raise ValueError(f"unknown dataset {dataset!r}; available: {', '.join(DATASETS)}")
    splits = synthetic_splits(train_samples, val_samples, size=(image_size, image_size), seed=seed)
    description = {name: list(split.index_range) for name, split in splits.items()}
    first = splits["train_a"]
    return SearchData(
        train_a=splits["train_a"],
        train_b=splits["train_b"],
        val=splits["val"],
        num_classes=len(first.class_names),
        class_names=tuple(first.class_names),
        description={"dataset": "synthetic", "seed": seed, "size": image_size, "index_ranges": description},
    )
