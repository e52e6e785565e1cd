"""Ray Data reading of Parquet shards: :func:`ray_dataset`, and the datasets and worker streams of a search.

:func:`ray_dataset` builds a Ray Dataset of one split (reading, decoding and the augmentation run
in Ray Data tasks).  For a search the driver builds one per split (:func:`search_datasets`: the
rows travel as uint8 and each worker normalises its batches); ``TorchTrainer`` splits each one with
``streaming_split(equal=True)``, so every worker sees a disjoint, equally long part of every split
each epoch (:func:`worker_streams`).
"""
from __future__ import annotations

from collections.abc import Collection
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np
import ray
import ray.data
import ray.train
import torch
from ray.data import DataContext, RandomSeedConfig
from ray.data.expressions import col

from nasplat.data.shard_format import ShardError, decode_image, decode_mask, read_manifest, to_arrays
from nasplat.data.shard_reader import ShardDataset, Transform, verify_shards_once
from nasplat.data.sources import search_transforms, split_halves, train_split_name
from nasplat.data.transforms import SegmentationAugment, sample_generator

if TYPE_CHECKING:  # annotations only: Ray Data's decode tasks import this module, and need neither
    from nasplat.searching.config import SearchConfig
    from nasplat.searching.loop import BatchStream

SPLITS = ("train_a", "train_b", "val")
RESERVED_CPUS = 1.0
"""CPUs left to Ray Data's read/decode tasks; without them the stream stalls behind the workers."""
CACHE_FRACTION = 0.25
"""``ray_dataset(cache=None)`` keeps a split's encoded rows in the object store when their
size is at most this fraction of the cluster's object store memory."""
BLOCK_BYTES = 128 * 2**20
"""Encoded rows are cut into blocks of at most about this size (and at least one per CPU)."""
OUTPUT_BLOCK_BYTES = 8 * 2**20
"""Decoded blocks are cut at about this size, so the first batches stream out while a task runs."""


# --------------------------------------------------------------------------- one split


def ray_dataset(
    root: str | Path,
    split: str,
    transform: Transform | None = None,
    *,
    sample_ids: Collection[str] | None = None,
    cache: bool | None = None,
    seed: int | None = None,
    uint8: bool = False,
    batch_size: int = 16,
) -> ray.data.Dataset:
    """A Ray Dataset of ``split`` with columns ``sample_id``, ``image``, ``mask``.

    The split's shards are verified against the manifest first (once per process:
    ``verify_shards_once``).  They are read with ``ray.data.read_parquet``; ``sample_ids`` keeps
    only those rows (an ``is_in`` filter that Ray pushes down into the Parquet scan).  The encoded
    rows are cut into at least one block per CPU (and blocks of about :data:`BLOCK_BYTES`), so that
    every CPU decodes.  With ``cache`` they are read once and kept in the object store
    (``materialize``), so an epoch only decodes; ``cache=None`` caches when the split's shard bytes
    fit in :data:`CACHE_FRACTION` of the object store (otherwise every epoch reads the files
    again).  Decoding and ``transform`` run in Ray Data tasks every epoch
    (``map_batches(decode_batch)``; see :func:`decode_batch` for the shapes), so a random
    transform draws afresh each epoch; with ``seed`` (the transform must accept ``rng=``) every
    sample's draws follow from ``(seed, epoch, sample_id)``, so they are reproducible whichever
    process decodes it (epochs count Ray Data executions of this dataset: 1, 2, ...).  With
    ``uint8`` (the transform needs ``place`` and ``normalize``, like ``SegmentationAugment``) only
    the geometric half runs in Ray Data and the rows carry uint8 ``image``/``mask`` plus ``box``, a
    quarter of the bytes: the consumer finishes with ``transform.normalize(image, box)`` and
    ``mask.long()``, bit-identical to the float transform.  Without a fixed-size transform,
    samples of different sizes come out as variable-shaped tensors: iterate with
    ``batch_size=1`` (or ``iter_rows``) rather than collating them into torch batches.  Leave
    CPUs free for Ray Data when Train workers run on the same cluster.
    """
    if uint8 and not (hasattr(transform, "place") and hasattr(transform, "normalize")):
        raise ValueError(f"uint8=True needs a transform with place() and normalize(), got {transform!r}")
    manifest = verify_shards_once(root, [split])
    info = manifest.split(split)
    files = [str(p) for p in manifest.files(split)]
    if not files:
        raise ShardError(f"{root}: split {split!r} has no shards (all samples skipped?)")
    ds = ray.data.read_parquet(files).select_columns(["sample_id", "image", "mask"])
    rows, nbytes = info.samples, sum(s.bytes for s in info.shards)
    if sample_ids is not None:
        ds = ds.filter(expr=col("sample_id").is_in(sorted(sample_ids)))
        rows, nbytes = len(sample_ids), nbytes * len(sample_ids) // max(info.samples, 1)
    if not ray.is_initialized():
        ray.init()  # as Ray Data would on first execution; the cluster's size is needed here
    resources = ray.cluster_resources()
    # at least a block per CPU, so that every CPU decodes (one shard file is one block when read);
    # a streaming repartition, with no all-to-all exchange
    blocks = max(int(resources.get("CPU", 1)), -(-nbytes // BLOCK_BYTES), 1)
    ds = ds.repartition(target_num_rows_per_block=max(1, -(-rows // blocks)), strict=True)
    if cache is None:
        cache = nbytes <= CACHE_FRACTION * resources.get("object_store_memory", 0)
    if cache:
        ds = ds.materialize()
    decode = partial(decode_batch, transform=transform, seed=seed, first_execution=_execution_index(ds.context),
                     uint8=uint8)
    ds = ds.map_batches(decode, batch_format="numpy", batch_size=batch_size)
    ds.context.target_max_block_size = OUTPUT_BLOCK_BYTES
    # Decoding is the only operator that needs CPUs here; Ray Data's per-operator reservation
    # (half of the budget) would otherwise run one decode task at a time on 2 CPUs.
    ds.context.op_resource_reservation_enabled = False
    return ds


def decode_batch(
    batch: dict[str, np.ndarray], transform: Transform | None = None, seed: int | None = None,
    first_execution: int = 0, uint8: bool = False,
) -> dict[str, np.ndarray]:
    """Decode a numpy batch of shard rows into ``sample_id``, ``image`` and ``mask`` columns.

    ``image`` is float32 ``[B, 3, H, W]`` and ``mask`` int64 ``[B, H, W]`` when every
    sample has the same size (e.g. after a cropping transform); otherwise both are
    1-D object arrays of per-sample arrays (Ray stores them as variable-shaped tensors).
    With ``uint8`` the transform's geometric half runs here (``transform.place``, e.g.
    :meth:`SegmentationAugment.place`): ``image`` and ``mask`` are uint8 and a ``box``
    column (int32 ``[B, 4]``) tells ``transform.normalize`` where the padding is.
    With ``seed``, ``transform`` must take ``rng=`` (like ``SegmentationAugment``) and gets
    ``sample_generator(seed, epoch, sample_id)``; inside Ray Data the epoch is
    1 + the dataset's executions since ``first_execution``.
    """
    epoch = None if seed is None or transform is None else 1 + _execution_index() - first_execution
    apply = transform.place if uint8 else transform
    images, masks, boxes = [], [], []
    for sample_id, image_bytes, mask_bytes in zip(batch["sample_id"], batch["image"], batch["mask"]):
        image, mask = decode_image(image_bytes), decode_mask(mask_bytes)
        if transform is None:
            out = to_arrays(image, mask)
        elif epoch is not None:
            out = apply(image, mask, rng=sample_generator(seed, epoch, str(sample_id)))
        else:
            out = apply(image, mask)
        images.append(np.asarray(out[0], dtype=np.uint8 if uint8 else np.float32))
        masks.append(np.asarray(out[1], dtype=np.uint8 if uint8 else np.int64))
        boxes += out[2:]
    columns = {"sample_id": np.asarray(batch["sample_id"]), "image": _stack(images), "mask": _stack(masks)}
    if uint8:
        columns["box"] = np.stack(boxes).astype(np.int32)
    return columns


def _execution_index(context: Any = None) -> int:
    """Ray Data's count of executions of a dataset (``context``: its DataContext; default: the
    running one's), read through the public ``RandomSeedConfig``; it grows by one per epoch."""
    seeded = RandomSeedConfig(seed=0, reseed_after_execution=True).get_seed_tuple(
        data_context=context or DataContext.get_current())
    return int(seeded.execution_idx or 0)


def _stack(arrays: list[np.ndarray]) -> np.ndarray:
    """Stack equal shapes into one array; otherwise a 1-D object array of per-row arrays."""
    if arrays and all(a.shape == arrays[0].shape for a in arrays):
        return np.stack(arrays)
    out = np.empty(len(arrays), dtype=object)
    for k, a in enumerate(arrays):
        out[k] = a
    return out


# --------------------------------------------------------------------------- a search


def uses_ray_data(config: SearchConfig) -> bool:
    return config.dataset.startswith("parquet:")


def search_datasets(config: SearchConfig) -> dict[str, ray.data.Dataset]:
    """Ray Datasets of search halves A and B (the same sample-id rule as the local reader) and val."""
    root = Path(config.dataset.split(":", 1)[1])
    train_split = train_split_name(read_manifest(root).splits)
    half_a, half_b = split_halves(ShardDataset(root, train_split).sample_ids())
    train, val = search_transforms(config.image_size, config.seed)
    common = {"uint8": True, "batch_size": max(config.batch_size, 16)}
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
