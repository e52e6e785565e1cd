"""VOC 2012 and Cityscapes loaders on tiny fixtures in the official layouts."""
from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nasplat.data.cityscapes import (
    CITYSCAPES_CLASSES,
    CITYSCAPES_LABELS,
    CITYSCAPES_PALETTE,
    LABEL_ID_TO_TRAIN_ID,
    CityscapesSegmentation,
    cityscapes_records,
)
from nasplat.data.fixtures import (
    CITYSCAPES_FIXTURE_IGNORED_IDS,
    make_cityscapes_fixture,
    make_voc_fixture,
)
from nasplat.data.records import DataError, SampleRecord, load_sample, read_image_bytes, read_mask, read_sample
from nasplat.data.voc import VOC_CLASSES, VOC_PALETTE, VOCSegmentation, voc_colormap, voc_records

VOC_BASE = ("VOCdevkit", "VOC2012")


@pytest.fixture(scope="module")
def voc_root(tmp_path_factory) -> Path:
    """Read-only VOC fixture shared by the tests that do not modify it."""
    return make_voc_fixture(tmp_path_factory.mktemp("voc"))


@pytest.fixture(scope="module")
def cs_root(tmp_path_factory) -> Path:
    """Read-only Cityscapes fixture shared by the tests that do not modify it."""
    return make_cityscapes_fixture(tmp_path_factory.mktemp("cityscapes"))


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _write_palette_png(path: Path, values: np.ndarray) -> None:
    img = Image.fromarray(values.astype(np.uint8))
    img.putpalette(voc_colormap().flatten().tolist())
    img.save(path)


# --------------------------------------------------------------------------- records


def test_data_error_message_attributes_and_pickle():
    err = DataError(Path("/x/a.png"), "broken")
    assert str(err) == "/x/a.png: broken"
    assert isinstance(err, ValueError)
    assert (err.path, err.problem) == (Path("/x/a.png"), "broken")
    again = pickle.loads(pickle.dumps(err))
    assert (str(again), again.path, again.problem) == (str(err), err.path, err.problem)


def test_read_image_bytes_returns_file_bytes_and_size(voc_root):
    path = voc_records(voc_root, "train")[0].image_path
    data, hw = read_image_bytes(path)
    assert data == path.read_bytes()
    assert hw == (24, 32)


def test_read_mask_rejects_bad_label_map(voc_root):
    path = voc_records(voc_root, "train")[0].mask_path
    with pytest.raises(ValueError, match="256 entries"):
        read_mask(path, np.zeros(10, dtype=np.uint8), 21)


def test_missing_files_are_data_errors(tmp_path):
    with pytest.raises(DataError, match="image file not found"):
        read_image_bytes(tmp_path / "nope.jpg")
    with pytest.raises(DataError, match="mask file not found"):
        read_mask(tmp_path / "nope.png", None, 21)


def test_bad_values_listed_at_most_ten(tmp_path):
    path = tmp_path / "m.png"
    _write_palette_png(path, np.arange(30, 60).reshape(5, 6))
    with pytest.raises(DataError) as info:
        read_mask(path, None, 21)
    assert "[30, 31, 32, 33, 34, 35, 36, 37, 38, 39, ... (30 in all)]" in str(info.value)


# --------------------------------------------------------------------------- VOC


def test_voc_palette_well_known_colours():
    assert len(VOC_PALETTE) == 21 == len(VOC_CLASSES)
    assert VOC_PALETTE[0] == (0, 0, 0)
    assert VOC_PALETTE[1] == (128, 0, 0)
    assert VOC_PALETTE[2] == (0, 128, 0)
    assert VOC_PALETTE[3] == (128, 128, 0)
    assert VOC_PALETTE[4] == (0, 0, 128)
    assert VOC_PALETTE[8] == (64, 0, 0)
    assert VOC_PALETTE[15] == (192, 128, 128)
    assert VOC_PALETTE[20] == (0, 64, 128)
    assert tuple(voc_colormap()[255]) == (224, 224, 192)

    def devkit_colour(index: int) -> tuple[int, int, int]:  # VOCdevkit's labelcolormap, written out
        r = g = b = 0
        for shift in range(7, -1, -1):
            r |= ((index >> 0) & 1) << shift
            g |= ((index >> 1) & 1) << shift
            b |= ((index >> 2) & 1) << shift
            index >>= 3
        return r, g, b

    assert [tuple(int(v) for v in c) for c in voc_colormap(256)] == [devkit_colour(i) for i in range(256)]
    assert VOC_CLASSES[0] == "background" and VOC_CLASSES[15] == "person"
    assert VOC_CLASSES[20] == "tvmonitor"


def test_voc_counts_per_split(tmp_path):
    root = make_voc_fixture(tmp_path, train=4, val=3)
    counts = {s: len(voc_records(root, s)) for s in ("train", "val", "trainval", "train_aug")}
    assert counts == {"train": 4, "val": 3, "trainval": 7, "train_aug": 6}
    assert len(VOCSegmentation(root, "val")) == 3


def test_voc_masks_read_as_palette_indices_not_rgb(voc_root):
    record = voc_records(voc_root, "val")[0]
    img = Image.open(record.mask_path)
    assert img.mode == "P"
    mask = read_mask(record.mask_path, None, 21)
    assert np.array_equal(mask, np.asarray(img))
    assert set(np.unique(mask)) <= set(range(21)) | {255}
    assert (mask > 0).any() and (mask < 21).any()
    rgb = np.asarray(img.convert("RGB"))  # the pitfall: colours, not class ids
    assert rgb.shape == mask.shape + (3,)
    assert not np.array_equal(rgb[..., 0], mask)
    assert (rgb[mask == 255] == (224, 224, 192)).all()


def test_voc_border_band_kept_as_ignore(voc_root):
    ds = VOCSegmentation(voc_root, "train")
    for i in range(len(ds)):
        image, mask = ds[i]
        assert image.shape == (3, 24, 32) and image.dtype == torch.float32
        assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
        assert mask.shape == (24, 32) and mask.dtype == torch.int64
        assert (mask == 255).any()
        assert set(mask.unique().tolist()) <= set(range(21)) | {255}
    assert ds.num_classes == 21 and ds.class_names == VOC_CLASSES and ds.ignore_index == 255


def test_voc_train_aug_uses_segmentation_class_aug(voc_root):
    aug = voc_records(voc_root, "train_aug")
    train = voc_records(voc_root, "train")
    trainval_ids = {r.sample_id for r in voc_records(voc_root, "trainval")}
    assert [r.sample_id for r in aug[: len(train)]] == [r.sample_id for r in train]
    assert {r.sample_id for r in aug} - trainval_ids  # extra SBD ids
    assert all(r.mask_path.parent.name == "SegmentationClassAug" for r in aug)
    assert all(r.mask_path.parent.name == "SegmentationClass" for r in train)
    assert all(r.split == "train_aug" for r in aug)
    for record in aug:  # SBD masks: no void border
        _, mask = load_sample(record, None, 21)
        assert not (mask == 255).any()


def test_voc_split_file_with_path_pairs(tmp_path):
    root = make_voc_fixture(tmp_path)
    sets = root.joinpath(*VOC_BASE, "ImageSets", "Segmentation")
    ids = (sets / "train_aug.txt").read_text().split()
    (sets / "train_aug.txt").write_text(
        "".join(f"/JPEGImages/{i}.jpg /SegmentationClassAug/{i}.png\n" for i in ids)
    )
    assert [r.sample_id for r in voc_records(root, "train_aug")] == ids


def test_voc_both_root_forms(voc_root):
    outer = voc_records(voc_root, "trainval")
    inner = voc_records(voc_root.joinpath(*VOC_BASE), "trainval")
    assert outer == inner and len(outer) == 5
    assert len(VOCSegmentation(str(voc_root.joinpath(*VOC_BASE)), "val")) == 2


def test_voc_transform_gets_decoded_uint8_arrays(voc_root):
    seen = []
    ds = VOCSegmentation(voc_root, "val", transform=lambda img, m: seen.append((img, m)) or ("x", "y"))
    assert ds[0] == ("x", "y")
    image, mask = seen[0]
    raw_image, raw_mask = VOCSegmentation(voc_root, "val")[0]
    assert image.dtype == np.uint8 and image.shape == (*raw_mask.shape, 3) and mask.dtype == np.uint8
    assert torch.equal(torch.from_numpy(image).permute(2, 0, 1).float() / 255, raw_image)
    assert torch.equal(torch.from_numpy(mask).long(), raw_mask)


def test_voc_missing_root(tmp_path):
    with pytest.raises(DataError, match="dataset root not found") as info:
        voc_records(tmp_path / "absent", "train")
    assert info.value.path == tmp_path / "absent"
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="not a VOC root"):
        voc_records(tmp_path / "empty", "train")


def test_voc_missing_split_lists_available(tmp_path):
    root = make_voc_fixture(tmp_path, aug=False)
    with pytest.raises(DataError) as info:
        voc_records(root, "train_aug")
    assert info.value.path.name == "train_aug.txt"
    assert "split file not found; available splits: train, trainval, val" in str(info.value)
    assert not root.joinpath(*VOC_BASE, "SegmentationClassAug").exists()


def test_voc_image_without_mask_and_mask_without_image(tmp_path):
    root = make_voc_fixture(tmp_path)
    base = root.joinpath(*VOC_BASE)
    first, second = (r.sample_id for r in voc_records(root, "train")[:2])
    (base / "SegmentationClass" / f"{first}.png").unlink()
    with pytest.raises(DataError, match="mask listed in .*train.txt is missing") as info:
        voc_records(root, "train")
    assert info.value.path == base / "SegmentationClass" / f"{first}.png"
    (base / "JPEGImages" / f"{second}.jpg").unlink()
    with pytest.raises(DataError, match="image listed in .*train_aug.txt is missing") as info:
        voc_records(root, "train_aug")
    assert info.value.path == base / "JPEGImages" / f"{second}.jpg"


def test_voc_truncated_image_and_mask(tmp_path):
    root = make_voc_fixture(tmp_path)
    image_rec, mask_rec = voc_records(root, "train")[:2]
    _truncate(image_rec.image_path)
    _truncate(mask_rec.mask_path)
    records = voc_records(root, "train")  # listing only checks existence
    with pytest.raises(DataError, match="truncated or unreadable image") as info:
        load_sample(records[0], None, 21)
    assert info.value.path == image_rec.image_path
    # the unchecked read (prepare_shards checks what it loads) returns the file's bytes without decoding them
    data, _ = read_sample(records[0], None)
    assert data == image_rec.image_path.read_bytes()
    with pytest.raises(DataError, match="truncated or unreadable mask") as info:
        VOCSegmentation(root, "train")[1]
    assert info.value.path == mask_rec.mask_path


def test_voc_label_outside_class_set(tmp_path):
    root = make_voc_fixture(tmp_path)
    record = voc_records(root, "val")[0]
    mask = np.asarray(Image.open(record.mask_path)).copy()
    mask[0, 0] = 40
    _write_palette_png(record.mask_path, mask)
    with pytest.raises(DataError) as info:
        VOCSegmentation(root, "val")[0]
    assert info.value.path == record.mask_path
    assert "label values [40] outside 0..20 and not 255" in str(info.value)


def test_voc_size_mismatch_names_both(tmp_path):
    root = make_voc_fixture(tmp_path)
    record = voc_records(root, "train")[0]
    _write_palette_png(record.mask_path, np.zeros((20, 30)))
    with pytest.raises(DataError) as info:
        load_sample(record, None, 21)
    assert info.value.path == record.mask_path
    assert f"mask is 20x30 but image {record.image_path} is 24x32" in str(info.value)


def test_voc_rgb_mask_rejected(tmp_path):
    root = make_voc_fixture(tmp_path)
    record = voc_records(root, "train")[0]
    Image.open(record.mask_path).convert("RGB").save(record.mask_path)
    with pytest.raises(DataError, match="single-channel index images") as info:
        VOCSegmentation(root, "train")[0]
    assert info.value.path == record.mask_path and "'RGB'" in str(info.value)


# --------------------------------------------------------------------------- Cityscapes

# cityscapesScripts helpers/labels.py: label id -> train id of the 19 evaluated classes; the rest is ignored
EXPECTED_TRAIN_IDS = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9,
    23: 10, 24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}
EXPECTED_IGNORED = (0, 1, 2, 3, 4, 5, 6, 9, 10, 14, 15, 16, 18, 29, 30)


def test_cityscapes_label_id_to_train_id_full_table():
    table = LABEL_ID_TO_TRAIN_ID
    assert table.shape == (256,) and table.dtype == np.uint8
    for label_id, train_id in EXPECTED_TRAIN_IDS.items():
        assert table[label_id] == train_id, label_id
    for label_id in EXPECTED_IGNORED:
        assert table[label_id] == 255, label_id
    assert set(EXPECTED_TRAIN_IDS) | set(EXPECTED_IGNORED) == set(range(34))  # table is complete
    assert (table[34:] == 255).all()
    with pytest.raises(ValueError):
        table[0] = 3  # shared table is read-only


def test_cityscapes_classes_colours_and_labels():
    assert len(CITYSCAPES_CLASSES) == 19 == len(CITYSCAPES_PALETTE)
    assert CITYSCAPES_CLASSES[:3] == ("road", "sidewalk", "building")
    assert CITYSCAPES_CLASSES[13] == "car" and CITYSCAPES_CLASSES[18] == "bicycle"
    assert CITYSCAPES_PALETTE[0] == (128, 64, 128)
    assert CITYSCAPES_PALETTE[10] == (70, 130, 180)
    assert CITYSCAPES_PALETTE[13] == (0, 0, 142)
    assert CITYSCAPES_PALETTE[18] == (119, 11, 32)
    assert [lb.id for lb in CITYSCAPES_LABELS] == list(range(34)) + [-1]
    by_name = {lb.name: lb for lb in CITYSCAPES_LABELS}
    assert by_name["license plate"].train_id == 255
    assert by_name["traffic light"] == ("traffic light", 19, 6, (250, 170, 30))


def test_cityscapes_counts_per_split_and_city(tmp_path):
    root = make_cityscapes_fixture(
        tmp_path, per_city=3, cities={"train": ["aachen", "bochum", "bremen"], "val": ["lindau"]}
    )
    train = cityscapes_records(root, "train")
    val = cityscapes_records(root, "val")
    assert len(train) == 9 and len(val) == 3
    cities = [r.sample_id.split("_")[0] for r in train]
    assert {c: cities.count(c) for c in set(cities)} == {"aachen": 3, "bochum": 3, "bremen": 3}
    assert [r.image_path for r in train] == sorted(r.image_path for r in train)
    assert train[0].sample_id == "aachen_000000_000019"
    assert train[0].mask_path.name == "aachen_000000_000019_gtFine_labelIds.png"
    # instanceIds / color siblings exist but are not samples
    city_dir = root / "gtFine" / "train" / "aachen"
    assert len(list(city_dir.iterdir())) == 9
    assert len(CityscapesSegmentation(root, "val")) == 3


def test_cityscapes_mapping_applied_to_masks(cs_root):
    ds = CityscapesSegmentation(cs_root, "train")
    assert ds.num_classes == 19 and ds.class_names == CITYSCAPES_CLASSES
    seen_raw: set[int] = set()
    for i, record in enumerate(ds.records):
        raw = np.asarray(Image.open(record.mask_path))
        image, mask = ds[i]
        assert image.shape == (3, 24, 32) and mask.dtype == torch.int64
        mask = mask.numpy()
        assert (mask[raw == 26] == 13).all() and (raw == 26).any()
        assert (mask[raw == 7] == 0).all()
        assert (mask[raw == 4] == 255).all() and (raw == 4).any()
        expected = np.vectorize(lambda v: EXPECTED_TRAIN_IDS.get(int(v), 255))(raw)  # the independent table
        assert np.array_equal(mask, expected)
        seen_raw |= set(np.unique(raw).tolist())
    assert set(CITYSCAPES_FIXTURE_IGNORED_IDS) <= seen_raw
    assert len(seen_raw & set(EXPECTED_TRAIN_IDS)) >= 5


def test_cityscapes_missing_root_and_split(tmp_path, cs_root):
    with pytest.raises(DataError, match="dataset root not found"):
        cityscapes_records(tmp_path / "absent", "train")
    expected = "split folder not found; available splits: train, val"
    with pytest.raises(DataError, match=expected) as info:
        cityscapes_records(cs_root, "test")
    assert info.value.path == cs_root / "leftImg8bit" / "test"
    (tmp_path / "only_images" / "leftImg8bit" / "train").mkdir(parents=True)
    with pytest.raises(DataError, match="folder not found; .* contains: leftImg8bit") as info:
        cityscapes_records(tmp_path / "only_images", "train")
    assert info.value.path.name == "gtFine"


def test_cityscapes_image_without_mask(tmp_path):
    root = make_cityscapes_fixture(tmp_path)
    record = cityscapes_records(root, "train")[1]
    record.mask_path.unlink()
    with pytest.raises(DataError) as info:
        cityscapes_records(root, "train")
    assert info.value.path == record.image_path
    assert f"image has no gtFine labelIds mask (expected {record.mask_path})" in str(info.value)


def test_cityscapes_mask_without_image(tmp_path):
    root = make_cityscapes_fixture(tmp_path)
    record = cityscapes_records(root, "val")[0]
    record.image_path.unlink()
    with pytest.raises(DataError) as info:
        cityscapes_records(root, "val")
    assert info.value.path == record.mask_path
    expected = f"labelIds mask has no leftImg8bit image (expected {record.image_path})"
    assert expected in str(info.value)


def test_cityscapes_bad_file_name(tmp_path):
    root = make_cityscapes_fixture(tmp_path)
    bad = root / "leftImg8bit" / "train" / "aachen" / "bochum_000000_000019_leftImg8bit.png"
    shutil.copy(cityscapes_records(root, "train")[0].image_path, bad)
    with pytest.raises(DataError, match="file name does not match") as info:
        cityscapes_records(root, "train")
    assert info.value.path == bad


def test_cityscapes_truncated_image(tmp_path):
    root = make_cityscapes_fixture(tmp_path)
    record = cityscapes_records(root, "train")[0]
    _truncate(record.image_path)
    with pytest.raises(DataError, match="truncated or unreadable image") as info:
        CityscapesSegmentation(root, "train")[0]
    assert info.value.path == record.image_path
    with pytest.raises(DataError, match="truncated or unreadable image"):
        read_image_bytes(record.image_path)


def test_cityscapes_size_mismatch_and_rgb_mask(tmp_path):
    root = make_cityscapes_fixture(tmp_path)
    first, second = cityscapes_records(root, "val")
    Image.fromarray(np.full((12, 16), 7, dtype=np.uint8)).save(first.mask_path)
    with pytest.raises(DataError) as info:
        load_sample(first, LABEL_ID_TO_TRAIN_ID, 19)
    assert info.value.path == first.mask_path
    assert f"mask is 12x16 but image {first.image_path} is 24x32" in str(info.value)
    color = Path(str(second.mask_path).replace("_labelIds", "_color"))
    shutil.copy(color, second.mask_path)  # a colour mask saved under the labelIds name
    with pytest.raises(DataError, match="single-channel index images") as info:
        CityscapesSegmentation(root, "val")[1]
    assert info.value.path == second.mask_path


def test_fixtures_are_deterministic(tmp_path):
    a = make_voc_fixture(tmp_path / "a", seed=3)
    b = make_voc_fixture(tmp_path / "b", seed=3)
    c = make_voc_fixture(tmp_path / "c", seed=4)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    assert any((a / f).read_bytes() != (c / f).read_bytes() for f in files if f.suffix == ".png")
    x = make_cityscapes_fixture(tmp_path / "x", seed=1)
    y = make_cityscapes_fixture(tmp_path / "y", seed=1)
    rec_x, rec_y = cityscapes_records(x, "val")[0], cityscapes_records(y, "val")[0]
    assert rec_x.mask_path.read_bytes() == rec_y.mask_path.read_bytes()
    assert isinstance(rec_x, SampleRecord)
