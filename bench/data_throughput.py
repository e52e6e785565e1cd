"""Data-loading throughput: plain torch DataLoader vs Ray Data over the same Parquet shards.

Builds a shard set once (``--samples`` synthetic scenes of ``--size`` pixels, written
as PNG files and packed with :func:`nasplat.data.shards.prepare_shards`; ``--shards DIR``
reuses or fills a directory instead of a temp dir), then times one epoch read by two
workers, with the same augmentation (``SegmentationAugment(crop, train=True)``) and
batch size:

(a) plain: two spawned processes, each a ``DataLoader`` (``num_workers=0``) over
    ``ShardDataset`` with ``DistributedSampler(num_replicas=2, rank=r)``; timed from
    a common start (all processes ready) until both finished their shard of the epoch;
(b) Ray Data: ``ray.init(num_cpus=2)``, ``ray_dataset(...)`` split with
    ``streaming_split(2, equal=True)`` and consumed concurrently by two actors with
    ``num_cpus=0`` via ``iter_torch_batches``; the first (cold) and second (warm)
    epochs are reported separately, plus a ``.materialize()``-d variant (the
    materialize pass is timed on its own; note that it freezes the augmentation:
    every epoch then sees the same crops, so it is not equivalent for training).

``--tune`` adds Ray Data variants (map_batches batch size, iter prefetch, DataContext
settings, ~8 shard files, and a *proposed* pipeline that materializes the encoded rows
once and decodes + augments per epoch) to look for a configuration within ``--bound`` x
of the plain loader.  Prints a markdown table of samples/s (median over ``--repeats``)
and the ratio to the plain loader's epoch of the same index.

Observed on 2 CPUs (512 samples): a plain epoch takes ~0.25 s, a warm Ray Data epoch
~1.3 s, nearly all of it before the first batch (one parquet file -> one read task ->
one 512-row block -> one decode task on one CPU, plus per-epoch ListFiles/scheduling).

    python bench/data_throughput.py [--samples 512] [--size 128] [--repeats 3] [--tune]
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.multiprocessing as mp
from PIL import Image
from torch.utils.data import DataLoader, DistributedSampler

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nasplat.data import SyntheticScenes
from nasplat.data.records import SampleRecord, load_sample
from nasplat.data.shards import (
    MANIFEST_NAME,
    ShardDataset,
    decode_batch,
    prepare_shards,
    ray_dataset,
    read_manifest,
)
from nasplat.data.transforms import SegmentationAugment

SPLIT = "train"
WORLD = 2
NUM_CLASSES = 6
# SyntheticScenes normalises with these constants (nasplat.data.synthetic._MEAN/_STD).
SYN_MEAN, SYN_STD = 0.5, 0.27


# --------------------------------------------------------------------------- shards


def build_shards(out: Path, samples: int, size: int, max_shard_bytes: int | None, seed: int = 0) -> Path:
    """Synthetic scenes -> PNG image/mask files -> ``prepare_shards(out)`` (reused if present)."""
    if (out / MANIFEST_NAME).is_file():
        m = read_manifest(out)
        if m.splits.get(SPLIT) is not None and m.count(SPLIT) == samples:
            return out
    raw = out / "_png"
    raw.mkdir(parents=True, exist_ok=True)
    scenes = SyntheticScenes(samples, size=(size, size), num_classes=NUM_CLASSES, seed=seed)
    records = []
    for i in range(samples):
        image_path, mask_path = raw / f"{i:05d}.png", raw / f"{i:05d}_mask.png"
        if not (image_path.is_file() and mask_path.is_file()):
            x, y = scenes[i]
            rgb = (x.numpy().transpose(1, 2, 0) * SYN_STD + SYN_MEAN).clip(0.0, 1.0)
            Image.fromarray((rgb * 255.0 + 0.5).astype(np.uint8)).save(image_path)
            Image.fromarray(y.numpy().astype(np.uint8)).save(mask_path)
        records.append(SampleRecord(f"syn_{i:05d}", SPLIT, image_path, mask_path))
    kwargs = {} if max_shard_bytes is None else {"max_shard_bytes": max_shard_bytes}
    prepare_shards(records, partial(load_sample, label_map=None, num_classes=NUM_CLASSES), out,
                   dataset="synthetic", class_names=scenes.class_names, progress=None, **kwargs)
    return out


def make_transform(crop: int) -> SegmentationAugment:
    return SegmentationAugment((crop, crop), train=True, seed=0)


# --------------------------------------------------------------------------- (a) plain torch


def _plain_worker(rank: int, root: str, crop: int, batch_size: int, epochs: int, shuffle: bool,
                  barrier: Any, results: Any) -> None:
    torch.set_num_threads(1)
    ds = ShardDataset(root, SPLIT, make_transform(crop))
    sampler = DistributedSampler(ds, num_replicas=WORLD, rank=rank, shuffle=shuffle, seed=0)
    loader = DataLoader(ds, batch_size=batch_size, sampler=sampler, num_workers=0)
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        barrier.wait()  # common start: every process (and the parent) is ready
        n = 0
        for images, _masks in loader:
            n += images.shape[0]
        results.put((epoch, rank, n, time.monotonic()))


def run_plain(root: Path, crop: int, batch_size: int, epochs: int, shuffle: bool) -> list[tuple[float, int]]:
    """Per epoch ``(seconds, samples)`` for WORLD spawned DataLoader processes."""
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(WORLD + 1), ctx.Queue()
    procs = [ctx.Process(target=_plain_worker, args=(r, str(root), crop, batch_size, epochs, shuffle,
                                                    barrier, results)) for r in range(WORLD)]
    for p in procs:
        p.start()
    out = []
    try:
        for _ in range(epochs):
            barrier.wait(timeout=300)
            t0 = time.monotonic()
            done = [results.get(timeout=600) for _ in range(WORLD)]
            out.append((max(d[3] for d in done) - t0, sum(d[2] for d in done)))
    finally:
        for p in procs:
            p.join(timeout=60)
    bad = [p.exitcode for p in procs if p.exitcode != 0]
    if bad:
        raise RuntimeError(f"plain worker exit codes {bad}")
    return out


# --------------------------------------------------------------------------- (b) Ray Data


@dataclass
class RayVariant:
    """One Ray Data configuration (``name`` labels the table row)."""

    name: str
    map_batch_size: int = 16  # ray_dataset's default
    prefetch_batches: int = 1  # iter_torch_batches' default
    materialize: bool = False
    context: dict[str, Any] = field(default_factory=dict)  # DataContext attributes
    raw_rows_per_block: int | None = None  # None: ray_dataset(); else the proposed raw-materialized pipeline
    shards: str = "default"  # key into the shard sets built by main()


def _consumer_cls():
    import ray
    import ray.data

    @ray.remote(num_cpus=0)
    class Consumer:
        """Holds one streaming_split iterator and consumes one epoch per call."""

        def __init__(self) -> None:
            self.it = None

        def set_iterator(self, it) -> int:
            self.it = it
            return os.getpid()

        def epoch(self, batch_size: int, prefetch: int) -> tuple[int, float, float]:
            start = time.monotonic()
            n, first = 0, None
            for batch in self.it.iter_torch_batches(batch_size=batch_size, prefetch_batches=prefetch):
                if first is None:
                    first = time.monotonic() - start
                n += int(batch["image"].shape[0])
            return n, first if first is not None else float("nan"), time.monotonic()

    return Consumer


def _raw_materialized_dataset(root: Path, transform, map_batch_size: int, blocks: int):
    """A *proposed* ray_dataset option, built from public pieces: read the encoded rows
    once (``read_parquet`` -> ``repartition(blocks)`` -> ``materialize()``, ~file size in
    the object store), then decode + augment per epoch with ``map_batches(decode_batch)``.
    Unlike materializing after the transform, every epoch draws fresh augmentations.
    (``read_parquet(override_num_blocks=N)`` does not split a one-file set: still 1 block.)
    """
    import ray.data

    files = [str(p) for p in read_manifest(root).files(SPLIT)]
    raw = ray.data.read_parquet(files).select_columns(["sample_id", "image", "mask"])
    raw = raw.repartition(blocks).materialize()
    return raw.map_batches(partial(decode_batch, transform=transform), batch_format="numpy",
                           batch_size=map_batch_size)


def run_ray(v: RayVariant, root: Path, crop: int, batch_size: int, epochs: int) -> dict[str, Any]:
    """Per epoch ``(seconds, samples, first-batch latency)``, plus materialize seconds."""
    import ray
    import ray.data
    from ray.data import DataContext

    ctx = DataContext.get_current()
    saved = {k: getattr(ctx, k) for k in v.context}
    for k, val in v.context.items():
        setattr(ctx, k, val)
    try:
        transform = make_transform(crop)
        mat_s = None
        t0 = time.monotonic()
        if v.raw_rows_per_block is None:
            ds = ray_dataset(root, SPLIT, transform, batch_size=v.map_batch_size)
        else:
            blocks = -(-read_manifest(root).count(SPLIT) // v.raw_rows_per_block)
            ds = _raw_materialized_dataset(root, transform, v.map_batch_size, blocks)
            mat_s = time.monotonic() - t0
        # iter_torch_batches cannot turn the string column sample_id into a tensor
        # (TypeError: can't convert np.ndarray of type numpy.str_), so drop it here.
        ds = ds.drop_columns(["sample_id"])
        if v.materialize:
            t0 = time.monotonic()
            ds = ds.materialize()
            mat_s = time.monotonic() - t0
        Consumer = _consumer_cls()
        actors = [Consumer.remote() for _ in range(WORLD)]
        splits = ds.streaming_split(WORLD, equal=True)
        ray.get([a.set_iterator.remote(it) for a, it in zip(actors, splits)])
        out = []
        for _ in range(epochs):
            t0 = time.monotonic()
            done = ray.get([a.epoch.remote(batch_size, v.prefetch_batches) for a in actors])
            t1 = max(d[2] for d in done)
            out.append((t1 - t0, sum(d[0] for d in done), max(d[1] for d in done)))
        for a in actors:
            ray.kill(a)
        return {"epochs": out, "materialize_s": mat_s}
    finally:
        for k, val in saved.items():
            setattr(ctx, k, val)


# --------------------------------------------------------------------------- main


def _median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--samples", type=int, default=512)
    p.add_argument("--size", type=int, default=128, help="image side in pixels")
    p.add_argument("--crop", type=int, default=96)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--shards", type=Path, default=None, help="shard directory to build into / reuse (if it holds --samples samples); "
                        "--tune also uses DIR-8files")
    p.add_argument("--no-shuffle", action="store_true", help="DistributedSampler(shuffle=False) for (a)")
    p.add_argument("--no-materialize", action="store_true", help="skip the .materialize() variant")
    p.add_argument("--tune", action="store_true", help="also run Ray Data tuning variants")
    p.add_argument("--bound", type=float, default=1.5, help="target: Ray epoch time <= bound x plain")
    p.add_argument("--quiet-ray", action="store_true", help="hide Ray worker logs and disable "
                   "DataContext.enable_progress_bars for every variant")
    args = p.parse_args(argv)

    cpus = os.cpu_count()
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = cpus
    print(f"CPUs: os.cpu_count()={cpus}, usable (affinity)={affinity}")
    print(f"torch {torch.__version__}; samples={args.samples} size={args.size} crop={args.crop} "
          f"batch={args.batch_size} workers={WORLD} repeats={args.repeats}", flush=True)

    tmp = None
    if args.shards is None:
        tmp = tempfile.TemporaryDirectory(prefix="nasplat-bench-")
        base = Path(tmp.name)
    else:
        base = args.shards
    t0 = time.monotonic()
    roots = {"default": build_shards(base / "shards" if args.shards is None else base, args.samples,
                                     args.size, None)}
    if args.tune:  # same samples, ~8 shard files (more Ray read tasks)
        m = read_manifest(roots["default"])
        total = sum(s.bytes for s in m.split(SPLIT).shards)
        roots["8 files"] = build_shards(base.parent / (base.name + "-8files") if args.shards else base / "shards8",
                                        args.samples, args.size, max(1, total // 8))
    for name, root in roots.items():
        m = read_manifest(root)
        info = m.split(SPLIT)
        print(f"shards[{name}]: {root} ({info.samples} samples, {len(info.shards)} file(s), "
              f"{sum(s.bytes for s in info.shards) / 2**20:.1f} MiB)")
    print(f"shard build/reuse: {time.monotonic() - t0:.1f} s", flush=True)

    rows: list[tuple[str, str, list[float], str]] = []  # (path, epoch, samples/s per repeat, note)

    # (a) plain
    plain: list[list[tuple[float, int]]] = []
    for _ in range(args.repeats):
        plain.append(run_plain(roots["default"], args.crop, args.batch_size, 2, not args.no_shuffle))
        print("plain repeat: " + ", ".join(f"{s:.2f}s/{n}" for s, n in plain[-1]), flush=True)
    plain_rate = {e: _median([r[e][1] / r[e][0] for r in plain]) for e in (0, 1)}
    rows.append(("plain DataLoader x2 (DistributedSampler)", "1", [r[0][1] / r[0][0] for r in plain], ""))
    rows.append(("plain DataLoader x2 (DistributedSampler)", "2", [r[1][1] / r[1][0] for r in plain], ""))

    # (b) Ray Data
    variants = [RayVariant("Ray Data (ray_dataset defaults)")]
    if not args.no_materialize:
        variants.append(RayVariant("Ray Data .materialize() (frozen aug)", materialize=True))
    if args.tune:
        big_blocks = {"target_max_block_size": 8 * 2**20}  # default 128 MiB: 1 block here
        variants += [
            RayVariant("Ray: no progress bars", context={"enable_progress_bars": False}),
            RayVariant("Ray: map batch_size=8", map_batch_size=8),
            RayVariant("Ray: map batch_size=64", map_batch_size=64),
            RayVariant("Ray: prefetch_batches=4", prefetch_batches=4),
            RayVariant("Ray: ~8 shard files", shards="8 files"),
            RayVariant("Ray: target_max_block_size=8MiB", context=big_blocks),
            RayVariant("Ray: target_max_block_size=8MiB, prefetch 4, no bars", prefetch_batches=4,
                       context={**big_blocks, "enable_progress_bars": False}),
            RayVariant("Ray (proposed): raw rows materialized, 128 rows/block, decode per epoch",
                       raw_rows_per_block=128),
            RayVariant("Ray (proposed): raw rows materialized, 64 rows/block, decode per epoch",
                       raw_rows_per_block=64),
        ]

    import ray
    import ray.data

    if args.quiet_ray:
        os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    ray.init(num_cpus=WORLD, include_dashboard=False, log_to_driver=not args.quiet_ray,
             logging_level=logging.WARNING)
    try:
        if args.quiet_ray:
            ray.data.DataContext.get_current().enable_progress_bars = False
            warnings.filterwarnings("ignore")
        for v in variants:
            runs = []
            for _ in range(args.repeats):
                runs.append(run_ray(v, roots[v.shards], args.crop, args.batch_size, 2))
                ep = runs[-1]["epochs"]
                mat = runs[-1]["materialize_s"]
                print(f"{v.name} repeat: " + ", ".join(f"{s:.2f}s/{n} (first batch {f:.2f}s)" for s, n, f in ep)
                      + (f"; materialize {mat:.2f}s" if mat is not None else ""), flush=True)
            note = ""
            if v.materialize or v.raw_rows_per_block is not None:
                mats = [r["materialize_s"] for r in runs]
                note = f"one-off materialize {_median(mats):.2f} s"
            for e in (0, 1):
                rows.append((v.name, str(e + 1), [r["epochs"][e][1] / r["epochs"][e][0] for r in runs],
                             note if e == 0 else ""))
    finally:
        ray.shutdown()

    print()
    print("| path | epoch | samples/s (median) | ratio to plain | runs (samples/s) | note |")
    print("|---|---|---|---|---|---|")
    for name, epoch, rates, note in rows:
        med = _median(rates)
        ratio = med / plain_rate[int(epoch) - 1]
        runs = ", ".join(f"{r:.0f}" for r in rates)
        print(f"| {name} | {epoch} | {med:.0f} | {ratio:.2f} | {runs} | {note} |")
    print(f"\nratio = samples/s / plain samples/s of the same epoch index; "
          f"bound: Ray slower than {args.bound}x plain means ratio < {1 / args.bound:.2f}")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
