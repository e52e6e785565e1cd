"""`nasplat data prepare` and the datasets a search reads (no Ray needed)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import pyarrow.parquet as pq

from nasplat.data.cityscapes import LABEL_ID_TO_TRAIN_ID, cityscapes_records
from nasplat.data.fixtures import make_cityscapes_fixture, make_voc_fixture
from nasplat.data.records import DataError, load_sample
from nasplat.data.shard_format import decode_mask
from nasplat.data.shard_reader import ShardDataset
from nasplat.data.sources import search_data
from pipelines.cli import main


def test_prepare_voc_writes_train_aug_and_val(tmp_path, capsys):
    root = make_voc_fixture(tmp_path / "voc")
    assert main(["data", "prepare", "voc", "--data-root", str(root), "--out", str(tmp_path / "shards")]) == 0
    manifest = json.loads((tmp_path / "shards" / "manifest.json").read_text())
    assert set(manifest["splits"]) == {"train_aug", "val"} and manifest["num_classes"] == 21
    assert "nasplat search --dataset parquet:" in capsys.readouterr().out


def test_prepare_cityscapes_stores_train_ids(tmp_path):
    root = make_cityscapes_fixture(tmp_path / "cs")
    assert main(["data", "prepare", "cityscapes", "--data-root", str(root), "--out", str(tmp_path / "shards")]) == 0
    table = pq.read_table(sorted((tmp_path / "shards").glob("train-*.parquet"))[0])
    record = cityscapes_records(root, "train")[0]
    stored = decode_mask(table.column("mask")[0].as_py())
    _, expected = load_sample(record, LABEL_ID_TO_TRAIN_ID, 19)
    assert np.array_equal(stored, expected)
    assert set(np.unique(stored)) <= set(range(19)) | {255} and 255 in stored


def test_prepare_refuses_bad_input_and_writes_nothing(tmp_path, capsys):
    root = make_voc_fixture(tmp_path / "voc")
    image = next((root / "VOCdevkit" / "VOC2012" / "JPEGImages").glob("*.jpg"))
    image.write_bytes(image.read_bytes()[: len(image.read_bytes()) // 2])
    out = tmp_path / "shards"
    assert main(["data", "prepare", "voc", "--data-root", str(root), "--out", str(out)]) == 2
    assert image.name in capsys.readouterr().err
    assert not out.exists() or not any(out.iterdir())
    assert main(["data", "prepare", "voc", "--data-root", str(root), "--out", str(out), "--skip-bad"]) == 0
    skipped = json.loads((out / "manifest.json").read_text())["skipped"]
    assert len(skipped) >= 1 and any(image.name in s["path"] for s in skipped)


def test_prepare_missing_root_is_a_clear_error(tmp_path, capsys):
    assert main(["data", "prepare", "cityscapes", "--data-root", str(tmp_path / "nope"),
                 "--out", str(tmp_path / "o")]) == 2
    assert "nope" in capsys.readouterr().err


def test_search_data_from_shards_has_disjoint_halves(tmp_path, monkeypatch):
    out = tmp_path / "shards"
    assert main(["data", "prepare", "synthetic", "--out", str(out), "--train-samples", "11", "--val-samples", "4",
                 "--image-size", "20"]) == 0
    with monkeypatch.context() as patch:  # metadata and counts without reading the sample-id column
        patch.setattr(ShardDataset, "sample_ids", lambda self: pytest.fail("read the sample ids"))
        data = search_data(f"parquet:{out}", image_size=16, train_samples=0, val_samples=0, seed=0)
        assert data.description["counts"] == {"train_a": 6, "train_b": 5, "val": 4}
    assert (len(data.train_a.indices), len(data.train_b.indices), len(data.val)) == (6, 5, 4)
    assert set(data.train_a.indices).isdisjoint(data.train_b.indices)
    assert data.num_classes == 6 and data.description["split_rule"].startswith("sample ids sorted")
    ids = ShardDataset(out, "train").sample_ids()
    a_ids = sorted(ids[i] for i in data.train_a.indices)
    assert a_ids == sorted(ids)[0::2]  # alternate sorted ids: disjoint and balanced
    image, mask = data.train_a[0]
    assert tuple(image.shape) == (3, 16, 16) and tuple(mask.shape) == (16, 16)
    assert len(ShardDataset(out, "train")) == 11


def test_search_data_reads_official_layouts(tmp_path):
    voc = search_data("voc", 16, 0, 0, 0, data_root=str(make_voc_fixture(tmp_path / "voc")))
    assert voc.description["train_split"] == "train_aug" and voc.num_classes == 21
    assert len(voc.train_a) + len(voc.train_b) == 5
    cs = search_data("cityscapes", 16, 0, 0, 0, data_root=str(make_cityscapes_fixture(tmp_path / "cs")))
    assert cs.num_classes == 19 and len(cs.val) == 2
    _, mask = cs.val[0]
    assert set(mask.unique().tolist()) <= set(range(19)) | {255}


def test_search_data_errors_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="needs --data-root"):
        search_data("voc", 16, 0, 0, 0)
    with pytest.raises(ValueError, match="available: synthetic, voc, cityscapes, parquet:DIR"):
        search_data("coco", 16, 0, 0, 0)
    with pytest.raises(DataError, match="dataset root not found"):
        search_data("voc", 16, 0, 0, 0, data_root=str(tmp_path / "missing"))


def test_prepare_without_root_is_one_clear_line(tmp_path, capsys):
    assert main(["data", "prepare", "voc", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("nasplat: error: `nasplat data prepare voc` needs --data-root DIR")
    assert not (tmp_path / "o").exists()


def _listing(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.mark.parametrize("foreign", ["notes.txt", "train-00000.parquet", "subfolder"])
def test_prepare_refuses_a_folder_with_foreign_files_and_deletes_nothing(tmp_path, capsys, foreign):
    out = tmp_path / "shards"
    out.mkdir()
    if foreign == "subfolder":
        (out / foreign).mkdir()
        (out / foreign / "keep.png").write_bytes(b"mine")
    else:  # a shard-like name is foreign too unless an earlier prepare recorded it
        (out / foreign).write_bytes(b"not written by nasplat")
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    argv = ["data", "prepare", "synthetic", "--out", str(out), "--train-samples", "4", "--val-samples", "2",
            "--image-size", "16"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"{out}: holds {foreign}, which `nasplat data prepare` did not write" in err
    assert "nothing was deleted" in err
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_prepare_refuses_another_datasets_folder_and_resumes_its_own(tmp_path, capsys):
    out = tmp_path / "shards"
    cityscapes = ["data", "prepare", "cityscapes", "--data-root", str(make_cityscapes_fixture(tmp_path / "cs")),
                  "--out", str(out)]
    assert main(cityscapes) == 0
    before = _listing(out)
    assert main(["data", "prepare", "synthetic", "--out", str(out), "--train-samples", "4", "--val-samples", "2",
                 "--image-size", "16"]) == 2
    err = capsys.readouterr().err
    assert f"{out}: holds the shards of another dataset ('cityscapes'" in err
    assert _listing(out) == before  # nothing deleted or rewritten
    assert main(cityscapes) == 0  # the same dataset again: every shard reused, nothing refused
    assert _listing(out) == before
    assert "reused train-00000.parquet" in capsys.readouterr().out
