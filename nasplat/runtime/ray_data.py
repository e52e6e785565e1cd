"""Ray Data ingestion of Parquet shards for a search: one dataset per split, a shard per worker.

The driver builds the datasets (reading, decoding and the geometric augmentation run in Ray Data
tasks, not on the Train workers; the rows travel as uint8 and each worker normalises its batches);
``TorchTrainer`` splits each one with ``streaming_split(equal=True)``, so every worker sees a
disjoint, equally long part of every split each epoch.
"""
from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Iterator

import ray.train
import torch

from nasplat.searching.config import SearchConfig
from nasplat.data.shards import ShardDataset, ray_dataset, read_manifest
from nasplat.data.sources import search_transforms, split_halves, train_split_name
from nasplat.data.transforms import SegmentationAugment
from nasplat.searching.loop import BatchStream

SPLITS = ("train_a", "train_b", "val")
RESERVED_CPUS = 1.0
"""CPUs left to Ray Data's read/decode tasks; without them the stream stalls behind the workers."""


def uses_ray_data(config: SearchConfig) -> bool:
    return config.dataset.startswith("parquet:")


def search_datasets(config: SearchConfig) -> dict[str, "ray.data.Dataset"]:
    """Ray Datasets of search halves A and B (the same sample-id rule as the local reader) and val."""
    root = Path(config.dataset.split(":", 1)[1])
    train_split = train_split_name(read_manifest(root).splits)
    half_a, half_b = split_halves(ShardDataset(root, train_split, verify=False).sample_ids())
    train, val = search_transforms(config.image_size, config.seed)
    common = {"uint8": True, "verify": False, "batch_size": max(config.batch_size, 16)}
    datasets = {
        "train_a": ray_dataset(root, train_split, train, sample_ids=half_a, seed=config.seed, **common),
        "train_b": ray_dataset(root, train_split, train, sample_ids=half_b, seed=config.seed, **common),
        "val": ray_dataset(root, "val", val, **common),
    }
    datasets = {name: ds.drop_columns(["sample_id"]) for name, ds in datasets.items()}
    for ds in datasets.values():
        ds.context.enable_progress_bars = False  # the search reports its own progress
    return datasets


def worker_streams(config: SearchConfig) -> dict[str, BatchStream]:
    """This worker's shard of every split as epoch-batch callables (call only with Ray Data datasets)."""
    train, val = search_transforms(config.image_size, config.seed)
    return {name: partial(_batches, ray.train.get_dataset_shard(name), config.batch_size, name != "val",
                          val if name == "val" else train) for name in SPLITS}


def _batches(shard, batch_size: int, drop_last: bool, transform: SegmentationAugment
             ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches of uint8 rows finished here: normalised float32 images, int64 masks."""
    for batch in shard.iter_torch_batches(batch_size=batch_size, drop_last=drop_last):
        yield transform.normalize(batch["image"], batch["box"]), batch["mask"].long()
