"""Tests for Parquet shards (nasplat.data.shard_format, shard_writer, shard_reader; the Ray Data reader in
nasplat.runtime.ray_data) and SegmentationAugment."""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import os
import pickle
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from nasplat.data import SyntheticScenes
from nasplat.data.shard_format import (
    MANIFEST_NAME,
    PROGRESS_NAME,
    SCHEMA,
    ShardError,
    decode_image,
    decode_mask,
    read_manifest,
)
from nasplat.data.shard_reader import ShardDataset, verify_shards
from nasplat.data.shard_writer import prepare_shards
from nasplat.data.transforms import SegmentationAugment, sample_generator

NUM_CLASSES = 6
CLASS_NAMES = SyntheticScenes(1, num_classes=NUM_CLASSES).class_names


# --------------------------------------------------------------------------- stand-ins


class DataError(ValueError):
    """Stand-in for nasplat.data.records.DataError."""

    def __init__(self, path: Path, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path, self.problem = path, problem


@dataclass(frozen=True)
class Record:
    """Stand-in for nasplat.data.records.SampleRecord."""

    sample_id: str
    split: str
    image_path: Path
    mask_path: Path


def load(record: Record) -> tuple[bytes, np.ndarray]:
    """Trivial loader: file bytes and the mask PNG as uint8."""
    for path in (record.image_path, record.mask_path):
        if not path.is_file():
            raise DataError(path, "file not found")
    return record.image_path.read_bytes(), np.asarray(Image.open(record.mask_path))


class CountingLoader:
    """Loader that counts calls and raises KeyboardInterrupt on call ``interrupt_at``."""

    def __init__(self, interrupt_at: int | None = None) -> None:
        self.calls, self.interrupt_at = 0, interrupt_at

    def __call__(self, record: Record) -> tuple[bytes, np.ndarray]:
        self.calls += 1
        if self.calls == self.interrupt_at:
            raise KeyboardInterrupt
        return load(record)


def _write_scenes(folder: Path, split: str, n: int, size: tuple[int, int], offset: int) -> list[Record]:
    folder.mkdir(parents=True, exist_ok=True)
    scenes = SyntheticScenes(n, size=size, num_classes=NUM_CLASSES, seed=7, offset=offset)
    records = []
    for i in range(n):
        image, mask = scenes[i]
        rgb = ((image.numpy().transpose(1, 2, 0) * 0.27 + 0.5).clip(0, 1) * 255).astype(np.uint8)
        labels = mask.numpy().astype(np.uint8)
        if i % 3 == 0:
            labels[:2] = 255  # some ignore pixels
        sid = f"{split}_{i:03d}"
        image_path = folder / (f"{sid}.jpg" if i % 4 == 1 else f"{sid}.png")
        Image.fromarray(rgb).save(image_path)
        Image.fromarray(labels).save(folder / f"{sid}_mask.png")
        records.append(Record(sid, split, image_path, folder / f"{sid}_mask.png"))
    return records


@pytest.fixture(scope="module")
def records(tmp_path_factory: pytest.TempPathFactory) -> list[Record]:
    """12 train samples (32x40) and 5 val samples (24x24), PNG and JPEG images."""
    src = tmp_path_factory.mktemp("src")
    return _write_scenes(src, "train", 12, (32, 40), 0) + _write_scenes(src, "val", 5, (24, 24), 100)


MAX_BYTES = 12_000  # a few samples per shard


def _prepare(records: list[Record], out: Path, **kw) -> object:
    kw = {"dataset": "synthetic", "class_names": CLASS_NAMES, "max_shard_bytes": MAX_BYTES,
          "progress": None, **kw}
    return prepare_shards(records, kw.pop("load", load), out, **kw)


@pytest.fixture(scope="module")
def shard_dir(records: list[Record], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("shards")
    _prepare(records, out)
    return out


def _rows(out: Path, split: str) -> list[dict]:
    manifest = read_manifest(out)
    return [row for f in manifest.files(split) for row in pq.read_table(f).to_pylist()]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --------------------------------------------------------------------------- writing


def test_round_trip_bytes_and_masks(records: list[Record], shard_dir: Path) -> None:
    for split in ("train", "val"):
        expected = [r for r in records if r.split == split]
        rows = _rows(shard_dir, split)
        assert [row["sample_id"] for row in rows] == [r.sample_id for r in expected]
        for row, rec in zip(rows, expected):
            assert row["image"] == rec.image_path.read_bytes()  # exactly as on disk
            source_mask = np.asarray(Image.open(rec.mask_path))
            assert np.array_equal(decode_mask(row["mask"]), source_mask)
            assert Image.open(io.BytesIO(row["mask"])).mode == "L"
            assert (row["height"], row["width"]) == source_mask.shape
            assert row["split"] == split
            assert (row["source_image"], row["source_mask"]) == (str(rec.image_path), str(rec.mask_path))
    assert pq.read_schema(read_manifest(shard_dir).files("train")[0]).equals(SCHEMA)


def test_shards_respect_max_bytes(shard_dir: Path) -> None:
    files = read_manifest(shard_dir).files("train")
    assert len(files) >= 3
    payloads = []
    for f in files:
        table = pq.read_table(f, columns=["image", "mask"])
        sizes = [len(i) + len(m) for i, m in zip(table["image"].to_pylist(), table["mask"].to_pylist())]
        assert sum(sizes) <= MAX_BYTES or len(sizes) == 1
        payloads.append(sizes)
    for this, nxt in itertools.pairwise(payloads):  # greedy: the next sample did not fit
        assert sum(this) + nxt[0] > MAX_BYTES
    assert [f.name for f in files] == [f"train-{i:05d}.parquet" for i in range(len(files))]


def test_manifest_counts_histogram_checksums(records: list[Record], shard_dir: Path) -> None:
    manifest = read_manifest(shard_dir)
    on_disk = json.loads((shard_dir / MANIFEST_NAME).read_text())
    assert on_disk == manifest.to_dict()
    assert on_disk["format"] == "nasplat-shards" and on_disk["version"] == 1
    assert (manifest.dataset, manifest.num_classes, manifest.class_names) == ("synthetic", NUM_CLASSES, CLASS_NAMES)
    assert manifest.skipped == ()
    for split in ("train", "val"):
        masks = [np.asarray(Image.open(r.mask_path)) for r in records if r.split == split]
        counts = np.bincount(np.concatenate([m.ravel() for m in masks]), minlength=256)
        info = manifest.splits[split]
        assert info.samples == len(masks)
        assert sum(s.samples for s in info.shards) == len(masks)
        assert list(info.class_histogram) == counts[:NUM_CLASSES].tolist()
        assert info.ignored_pixels == counts[255] > 0
        for shard, path in zip(info.shards, manifest.files(split)):
            assert shard.bytes == path.stat().st_size and shard.sha256 == _sha(path)
            assert pq.ParquetFile(path).metadata.num_rows == shard.samples
    with pytest.raises(ShardError, match="no split 'test'"):
        manifest.files("test")


@pytest.mark.parametrize("damage", ["flip_byte", "truncate", "delete_shard", "extra_parquet", "delete_manifest"])
def test_verify_detects_damage(records: list[Record], tmp_path: Path, damage: str) -> None:
    out = tmp_path / "shards"
    _prepare(records, out)
    verify_shards(out)  # intact
    victim = read_manifest(out).files("train")[1]
    if damage == "flip_byte":
        data = bytearray(victim.read_bytes())
        data[len(data) // 2] ^= 0xFF
        victim.write_bytes(bytes(data))
        expected = rf"{victim.name}: sha256 is"
    elif damage == "truncate":
        victim.write_bytes(victim.read_bytes()[:-10])
        expected = rf"{victim.name}: size is"
    elif damage == "delete_shard":
        victim.unlink()
        expected = rf"{victim.name}: listed in the manifest but missing"
    elif damage == "extra_parquet":
        (out / "train-00099.parquet").write_bytes(victim.read_bytes())
        expected = r"train-00099.parquet: parquet file not listed"
    else:
        (out / MANIFEST_NAME).unlink()
        expected = r"no manifest.json: the directory is not a complete shard set \(was prepare interrupted"
    with pytest.raises(ShardError, match=expected):
        verify_shards(out)
    with pytest.raises(ShardError):
        ShardDataset(out, "train")
    if damage in ("flip_byte", "truncate", "delete_shard"):  # a train shard: val alone still verifies
        assert verify_shards(out, ["val"]).split("val").samples == len(ShardDataset(out, "val")) == 5
    elif damage == "extra_parquet":  # a stray file is refused whichever split is opened
        with pytest.raises(ShardError, match=expected):
            ShardDataset(out, "val")


def _bad_records(records: list[Record], tmp_path: Path) -> tuple[list[Record], list[Record]]:
    """Three broken samples: missing image, label 9 >= 6 classes, mask size mismatch."""
    bad = tmp_path / "bad"
    bad.mkdir()
    template = records[0]
    labels = np.asarray(Image.open(template.mask_path)).copy()
    labels[5, 5] = 9
    Image.fromarray(labels).save(bad / "label9.png")
    Image.fromarray(labels[:-1]).save(bad / "short.png")
    broken = [
        Record("missing", "train", bad / "nope.png", template.mask_path),
        Record("label9", "train", template.image_path, bad / "label9.png"),
        Record("short", "val", template.image_path, bad / "short.png"),
    ]
    return records[:3] + broken[:1] + records[3:6] + broken[1:] + records[12:14], broken


def test_bad_samples_fail_before_writing(records: list[Record], tmp_path: Path) -> None:
    mixed, _ = _bad_records(records, tmp_path)
    out = tmp_path / "shards"
    with pytest.raises(ShardError) as info:
        _prepare(mixed, out)
    message = str(info.value)
    assert message.startswith("3 bad sample(s)")
    assert "nope.png: file not found" in message
    assert "label9.png: label values [9] outside 0..5" in message
    assert "short.png: mask is 31x40 but image" in message
    assert not out.exists() or (not list(out.glob("*.parquet")) and not (out / MANIFEST_NAME).exists())


def test_skip_bad_writes_the_rest(records: list[Record], tmp_path: Path) -> None:
    mixed, broken = _bad_records(records, tmp_path)
    mixed.append(Record("lonely", "test", tmp_path / "gone.png", records[0].mask_path))
    manifest = _prepare(mixed, tmp_path / "shards", skip_bad=True)
    skipped = {s["sample_id"]: s for s in manifest.skipped}
    assert set(skipped) == {"missing", "label9", "short", "lonely"}
    assert manifest.split("test").samples == 0 and len(ShardDataset(tmp_path / "shards", "test")) == 0
    assert skipped["missing"]["path"] == str(broken[0].image_path)
    assert skipped["label9"]["path"] == str(broken[1].mask_path) and "9" in skipped["label9"]["problem"]
    assert manifest.split("train").samples == 6 and manifest.split("val").samples == 2
    good_ids = [r.sample_id for r in mixed if r.sample_id not in skipped]
    seen = [row["sample_id"] for split in ("train", "val", "test") for row in _rows(tmp_path / "shards", split)]
    assert seen == good_ids
    assert json.loads((tmp_path / "shards" / MANIFEST_NAME).read_text())["skipped"] == list(manifest.skipped)
    verify_shards(tmp_path / "shards")


# --------------------------------------------------------------------------- resuming


def test_writing_pass_only_loads_and_checks_digests(records: list[Record], shard_dir: Path, tmp_path: Path) -> None:
    """Pass 2 uses ``reload`` (no decoding needed) and trusts nothing but the pass-1 digest."""
    validate, reread = CountingLoader(), CountingLoader()
    _prepare(records, tmp_path / "a", load=validate, reload=reread)
    assert validate.calls == reread.calls == len(records)  # each loader once per sample
    assert _checksums(tmp_path / "a") == _checksums(shard_dir)

    def raw_bytes_plus_one(record: Record) -> tuple[bytes, np.ndarray]:
        image, mask = load(record)
        return (image + b"!" if record.sample_id == "val_002" else image), mask

    with pytest.raises(ShardError, match=r"val_002.*'val_002' changed since validation"):
        _prepare(records, tmp_path / "b", reload=raw_bytes_plus_one)
    assert not (tmp_path / "b" / MANIFEST_NAME).exists()


def _checksums(out: Path) -> dict[str, str]:
    return {s.file: s.sha256 for info in read_manifest(out).splits.values() for s in info.shards}


def test_interrupted_prepare_resumes(records: list[Record], shard_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "shards"
    n = len(records)
    interrupted = CountingLoader(interrupt_at=n + 8)  # validation pass + 7 samples written
    with pytest.raises(KeyboardInterrupt):
        _prepare(records, out, load=interrupted)
    assert not (out / MANIFEST_NAME).exists()
    partial = sorted(p.name for p in out.glob("*.parquet"))
    assert 0 < len(partial) < len(_checksums(shard_dir))
    with pytest.raises(ShardError, match="no manifest.json"):
        verify_shards(out)
    (out / "train-00001.parquet.nasplat-tmp").write_bytes(b"half a shard")  # stale temp file
    (out / "val-00042.parquet").write_bytes(b"stale shard of an older run")  # recorded, as prepare does
    progress = json.loads((out / PROGRESS_NAME).read_text())
    progress["shards"]["val-00042.parquet"] = {"key": "older", "bytes": 27, "sha256": _sha(out / "val-00042.parquet")}
    (out / PROGRESS_NAME).write_text(json.dumps(progress))

    messages: list[str] = []
    resumed = CountingLoader()
    manifest = _prepare(records, out, load=resumed, progress=messages.append)
    assert _checksums(out) == _checksums(shard_dir)  # identical to an uninterrupted run
    assert manifest.to_dict() == read_manifest(shard_dir).to_dict()
    assert sum(m.startswith("reused") for m in messages) == len(partial)
    assert resumed.calls < 2 * n  # the reused shards were not loaded again
    assert not list(out.glob("*tmp")) and not (out / "val-00042.parquet").exists()
    verify_shards(out)


def test_rerun_rewrites_only_changed_shards(records: list[Record], tmp_path: Path) -> None:
    src = tmp_path / "src"
    local = _write_scenes(src, "train", 8, (32, 40), 0)
    out = tmp_path / "shards"
    _prepare(local, out)
    before = _checksums(out)
    changed = local[0].image_path
    image = np.asarray(Image.open(changed)).copy()
    image[0, 0] ^= 0xFF
    Image.fromarray(image).save(changed)
    messages: list[str] = []
    _prepare(local, out, progress=messages.append)
    after = _checksums(out)
    assert after["train-00000.parquet"] != before["train-00000.parquet"]
    assert {k: v for k, v in after.items() if k != "train-00000.parquet"} == {
        k: v for k, v in before.items() if k != "train-00000.parquet"}
    assert [m.split()[1] for m in messages if m.startswith("wrote ") and ".parquet" in m] == ["train-00000.parquet"]
    assert _rows(out, "train")[0]["image"] == changed.read_bytes()


# --------------------------------------------------------------------------- reading


def test_shard_dataset_items_match_sources(records: list[Record], shard_dir: Path) -> None:
    for split in ("train", "val"):
        expected = [r for r in records if r.split == split]
        ds = ShardDataset(shard_dir, split)
        assert len(ds) == len(expected)
        assert ds.sample_ids() == [rec.sample_id for rec in expected]
        for i, rec in enumerate(expected):
            image, mask = ds[i]
            rgb = np.asarray(Image.open(rec.image_path).convert("RGB"))
            assert image.dtype == torch.float32 and image.shape == (3, *rgb.shape[:2])
            assert torch.allclose(image, torch.from_numpy(rgb.transpose(2, 0, 1) / 255.0).float())
            assert mask.dtype == torch.int64
            assert torch.equal(mask, torch.from_numpy(np.asarray(Image.open(rec.mask_path)).astype(np.int64)))
        assert torch.equal(ds[-1][1], ds[len(ds) - 1][1])
        with pytest.raises(IndexError):
            ds[len(ds)]
    copy = pickle.loads(pickle.dumps(ShardDataset(shard_dir, "train")))
    assert torch.equal(copy[5][0], ShardDataset(shard_dir, "train")[5][0])


def test_shard_dataset_transform_gets_uint8_arrays(shard_dir: Path) -> None:
    seen = []

    def transform(image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        seen.append((image.dtype, image.shape, mask.dtype, mask.shape))
        return image, mask

    ds = ShardDataset(shard_dir, "val", transform=transform)
    ds[0]
    assert seen == [(np.uint8, (24, 24, 3), np.uint8, (24, 24))]
    aug = ShardDataset(shard_dir, "train", transform=SegmentationAugment((16, 16), seed=0))
    image, mask = aug[3]
    assert image.shape == (3, 16, 16) and mask.shape == (16, 16)


@pytest.mark.slow
def test_ray_data_two_workers_see_each_sample_once(records: list[Record], shard_dir: Path) -> None:
    ray = pytest.importorskip("ray")
    from nasplat.runtime.ray_data import ray_dataset

    if ray.is_initialized():
        pytest.skip("Ray is already initialised in this process")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        ray.data.DataContext.get_current().enable_progress_bars = False

        @ray.remote(num_cpus=0)  # consumers hold no CPU, so Ray Data can still run
        class Worker:
            def __init__(self, it) -> None:
                self.it = it

            def epoch(self) -> tuple[dict[str, np.ndarray], list[tuple], set[int]]:
                images, shapes, labels = {}, [], set()
                for batch in self.it.iter_batches(batch_size=4, batch_format="numpy"):
                    images.update((str(s), x) for s, x in zip(batch["sample_id"], batch["image"]))
                    shapes.append((str(batch["image"].dtype), batch["image"].shape[1:],
                                   str(batch["mask"].dtype), batch["mask"].shape[1:]))
                    labels |= set(np.unique(batch["mask"]).tolist())
                return images, shapes, labels

        train_ids = sorted(r.sample_id for r in records if r.split == "train")
        half_b = set(train_ids[1::2])  # a search half: rows filtered in the Parquet scan
        first_epochs = []
        for cache in (True, False):
            ds = ray_dataset(shard_dir, "train", SegmentationAugment((16, 16)), sample_ids=half_b,
                             cache=cache, seed=7, batch_size=2)
            workers = [Worker.remote(it) for it in ds.streaming_split(2, equal=True)]
            epochs = []
            for _ in range(2):
                results = ray.get([w.epoch.remote() for w in workers], timeout=120)
                ids = [sorted(r[0]) for r in results]
                assert all(ids) and sorted(ids[0] + ids[1]) == sorted(half_b), cache  # each sample once
                assert {s for r in results for s in r[1]} == {("float32", (3, 16, 16), "int64", (16, 16))}
                assert set().union(*(r[2] for r in results)) <= set(range(NUM_CLASSES)) | {255}
                epochs.append({**results[0][0], **results[1][0]})
            # augmentation runs in Ray Data every epoch and draws afresh (scale 0.5-2x, crop, flip)
            assert sum(np.array_equal(epochs[0][k], epochs[1][k]) for k in half_b) <= 1, cache
            first_epochs.append(epochs[0])
        # ... from (seed, epoch, sample_id), whichever process or pipeline decodes the sample
        train = ShardDataset(shard_dir, "train")
        for i, sample_id in enumerate(train.sample_ids()):
            if sample_id in half_b:
                image, mask = decode_image(train._row(i, ["image"])["image"]), train[i][1].numpy().astype(np.uint8)
                expected, _ = SegmentationAugment((16, 16))(image, mask, rng=sample_generator(7, 1, sample_id))
                assert np.array_equal(first_epochs[0][sample_id], expected.numpy())
                assert np.array_equal(first_epochs[1][sample_id], expected.numpy())
        # uint8 rows (a quarter of the bytes) finished by the consumer are the same floats
        aug = SegmentationAugment((16, 16))
        rows = ray_dataset(shard_dir, "train", aug, sample_ids=half_b, seed=7, uint8=True).take_all()
        assert sorted(row["sample_id"] for row in rows) == sorted(half_b)
        for row in rows:
            assert row["image"].dtype == row["mask"].dtype == np.uint8
            image = aug.normalize(torch.from_numpy(row["image"]), torch.from_numpy(row["box"]))
            assert torch.equal(image, torch.from_numpy(first_epochs[0][row["sample_id"]]))

        # Without a transform, samples keep their own sizes and decode like ShardDataset.
        rows = {row["sample_id"]: row for row in ray_dataset(shard_dir, "val").take_all()}
        reference = ShardDataset(shard_dir, "val")
        assert list(rows) and sorted(rows) == sorted(reference.sample_ids())
        for i, sample_id in enumerate(reference.sample_ids()):
            image, mask = reference[i]
            assert np.array_equal(rows[sample_id]["image"], image.numpy())
            assert np.array_equal(rows[sample_id]["mask"], mask.numpy())
    finally:
        ray.shutdown()


# --------------------------------------------------------------------------- verified once per process


def _flip_byte_keep_stat(path: Path) -> None:
    """Corrupt one byte in place, keeping size and modification time (a change the stat check misses)."""
    st = path.stat()
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_readers_hash_each_split_once_per_process(records: list[Record], tmp_path: Path, monkeypatch) -> None:
    import nasplat.data.shard_reader as shard_reader

    out = tmp_path / "shards"
    manifest = _prepare(records, out)
    hashed: list[str] = []
    real = shard_reader.file_sha256
    monkeypatch.setattr(shard_reader, "file_sha256", lambda path: hashed.append(Path(path).name) or real(path))
    ShardDataset(out, "val")
    assert sorted(hashed) == sorted(s.file for s in manifest.split("val").shards)
    hashed.clear()
    ShardDataset(out, "val")
    assert hashed == []  # already verified in this process
    lazy = ShardDataset(out, "train", defer_verify=True)
    assert hashed == []  # nothing read yet
    lazy[0]
    assert sorted(hashed) == sorted(s.file for s in manifest.split("train").shards)
    hashed.clear()
    lazy[1], ShardDataset(out, "train")[0]
    assert hashed == []
    victim = manifest.files("val")[0]
    os.utime(victim, ns=(victim.stat().st_atime_ns, victim.stat().st_mtime_ns + 10**9))
    ShardDataset(out, "val")  # a file whose size or time changed is hashed again
    assert hashed == [victim.name]


def test_fresh_process_detects_a_shard_corrupted_after_verification(records: list[Record], tmp_path: Path) -> None:
    out = tmp_path / "shards"
    _prepare(records, out)
    ShardDataset(out, "train")  # verified (and cached) in this process
    victim = read_manifest(out).files("train")[1]
    _flip_byte_keep_stat(victim)
    probe = ("import sys\nfrom nasplat.data.shard_reader import ShardDataset\n"
             "from nasplat.data.shard_format import ShardError\n"
             "try:\n    ShardDataset(sys.argv[1], 'train')\n"
             "except ShardError as err:\n    print(err)\n    sys.exit(3)\n")
    done = subprocess.run([sys.executable, "-c", probe, str(out)], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 3, done.stderr
    assert f"{victim}: sha256 is" in done.stdout
    lazy = ShardDataset(out, "train", defer_verify=True)
    pickle.loads(pickle.dumps(lazy))  # a copy for another process carries no verification with it
    with pytest.raises(ShardError, match=rf"{victim.name}: sha256 is"):
        verify_shards(out, ["train"])  # the explicit check always hashes, and the failure is remembered
    with pytest.raises(ShardError, match=rf"{victim.name}: sha256 is"):
        ShardDataset(out, "train")


def test_ray_data_reader_verifies_before_reading(records: list[Record], tmp_path: Path) -> None:
    ray = pytest.importorskip("ray")
    from nasplat.runtime.ray_data import ray_dataset

    out = tmp_path / "shards"
    _prepare(records, out)
    victim = read_manifest(out).files("val")[0]
    _flip_byte_keep_stat(victim)
    started = ray.is_initialized()
    with pytest.raises(ShardError, match=rf"{victim.name}: sha256 is"):
        ray_dataset(out, "val")
    assert ray.is_initialized() == started  # refused before Ray was needed


# --------------------------------------------------------------------------- transforms


def _sample(h: int = 20, w: int = 30, labels: tuple[int, ...] = (0, 1, 2, 255)) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    mask = np.asarray(labels, dtype=np.uint8)[rng.integers(0, len(labels), (h, w))]
    return image, mask


@pytest.mark.parametrize("crop", [(16, 16), (48, 40), (20, 30)])
def test_augment_shapes_and_label_values(crop: tuple[int, int]) -> None:
    image, mask = _sample()
    aug = SegmentationAugment(crop, scale=(0.5, 2.0), seed=3)
    for _ in range(10):
        x, y = aug(image, mask)
        assert x.shape == (3, *crop) and x.dtype == torch.float32
        assert y.shape == crop and y.dtype == torch.int64
        assert set(torch.unique(y).tolist()) <= {0, 1, 2, 255}  # NEAREST: no blended labels


def test_augment_pads_with_ignore_and_zero() -> None:
    image, mask = _sample(10, 12, labels=(0, 1, 2))
    aug = SegmentationAugment((16, 20), scale=(1.0, 1.0), flip=False, mean=(0.5,) * 3, std=(0.25,) * 3)
    x, y = aug(image, mask)
    assert (y[10:] == 255).all() and (y[:, 12:] == 255).all()
    assert (x[:, 10:] == 0).all() and (x[:, :, 12:] == 0).all()
    assert torch.equal(y[:10, :12], torch.from_numpy(mask.astype(np.int64)))
    expected = (image.astype(np.float32) / 255 - 0.5) / 0.25
    assert np.allclose(x[:, :10, :12].numpy(), expected.transpose(2, 0, 1), atol=1e-5)


def test_augment_flips_image_and_mask_together() -> None:
    w = 24
    cols = np.tile(np.arange(w, dtype=np.uint8), (8, 1))
    image = np.stack([cols * 10, cols, cols], axis=-1)
    mask = cols % 5
    aug = SegmentationAugment((8, w), scale=(1.0, 1.0), mean=(0, 0, 0), std=(1 / 255,) * 3)
    flipped = 0
    for seed in range(20):
        x, y = aug(image, mask, rng=np.random.default_rng(seed))
        column = x[1].round().long()  # the original column index of each pixel
        assert torch.equal(y, column % 5)  # the mask moved with the image
        flipped += int(column[0, 0] == w - 1)
    assert 0 < flipped < 20


def test_augment_is_deterministic_and_eval_mode() -> None:
    image, mask = _sample(40, 50)
    a, b = SegmentationAugment((24, 24), seed=5), SegmentationAugment((24, 24), seed=5)
    for _ in range(3):
        (xa, ya), (xb, yb) = a(image, mask), b(image, mask)
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    r1, r2 = a(image, mask, rng=np.random.default_rng(0)), a(image, mask, rng=np.random.default_rng(0))
    assert torch.equal(r1[0], r2[0])
    full = SegmentationAugment(None, train=False)
    x, y = full(image, mask)
    assert x.shape == (3, 40, 50) and torch.equal(y, torch.from_numpy(mask.astype(np.int64)))
    center = SegmentationAugment((30, 60), train=False)
    x, y = center(image, mask)
    assert y.shape == (30, 60)
    assert torch.equal(y[:, 5:55], torch.from_numpy(mask[5:35].astype(np.int64)))
    assert (y[:, :5] == 255).all() and (y[:, 55:] == 255).all()
    with pytest.raises(ValueError, match="crop is required"):
        SegmentationAugment(None)
    with pytest.raises(ValueError, match="mask must be a uint8"):
        full(image, mask.astype(np.int64))


def test_augment_place_ships_uint8_and_normalize_finishes_a_batch() -> None:
    image, mask = _sample(10, 12, labels=(0, 1, 2))
    aug = SegmentationAugment((16, 20), scale=(1.0, 1.0), mean=(0.5,) * 3, std=(0.25,) * 3)
    flipped = next(seed for seed in range(50)  # a draw with the flip
                   if aug.place(image, mask, rng=np.random.default_rng(seed))[2][1] != 0)
    placed, out_mask, box = aug.place(image, mask, rng=np.random.default_rng(flipped))
    assert placed.dtype == out_mask.dtype == np.uint8 and placed.shape == (3, 16, 20)
    assert box.tolist() == [0, 8, 10, 12]  # flipped: the 12 image columns end at the right edge
    assert np.array_equal(out_mask[:10, 8:], mask[:, ::-1]) and (out_mask[10:] == 255).all()
    batch = aug.normalize(torch.from_numpy(np.stack([placed, placed])), torch.from_numpy(np.stack([box, box])))
    expected = (image[:, ::-1].astype(np.float32) / 255 - 0.5) / 0.25
    assert np.allclose(batch[1, :, :10, 8:].numpy(), expected.transpose(2, 0, 1), atol=1e-5)
    assert (batch[:, :, :, :8] == 0).all() and (batch[:, :, 10:] == 0).all()  # padding: the mean colour
    single, single_mask = aug(image, mask, rng=np.random.default_rng(flipped))
    assert torch.equal(single, batch[0]) and torch.equal(single_mask, torch.from_numpy(out_mask).long())
