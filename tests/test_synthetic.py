"""Tests for the synthetic-scenes dataset."""

from __future__ import annotations


import numpy as np
import pytest
import torch

from nasplat.data import SyntheticScenes, synthetic_splits
from nasplat.data.synthetic import render_scene


def test_same_seed_and_index_give_identical_samples() -> None:
    a, b = SyntheticScenes(6, seed=3), SyntheticScenes(6, seed=3)
    for i in reversed(range(6)):  # order of generation must not matter
        xa, ya = a[i]
        xb, yb = b[i]
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_offset_shifts_global_index() -> None:
    full, shifted = SyntheticScenes(10, seed=1), SyntheticScenes(4, seed=1, offset=6)
    assert torch.equal(full[7][0], shifted[1][0])
    assert torch.equal(full[7][1], shifted[1][1])


def test_different_seeds_and_indices_differ() -> None:
    s0, s1 = SyntheticScenes(2, seed=0), SyntheticScenes(2, seed=1)
    assert not torch.equal(s0[0][0], s1[0][0])
    assert not torch.equal(s0[0][0], s0[1][0])


@pytest.mark.parametrize("size", [(64, 64), (33, 47), (16, 20), (48, 32)])
def test_shapes_and_dtypes(size: tuple[int, int]) -> None:
    image, mask = SyntheticScenes(2, size=size)[1]
    assert image.shape == (3, *size) and image.dtype == torch.float32
    assert mask.shape == size and mask.dtype == torch.int64
    assert torch.isfinite(image).all()


@pytest.mark.parametrize("num_classes", [2, 4, 6, 10])
def test_mask_values_in_range(num_classes: int) -> None:
    ds = SyntheticScenes(8, num_classes=num_classes)
    masks = torch.stack([ds[i][1] for i in range(len(ds))])
    assert masks.min() >= 0 and masks.max() <= num_classes - 1
    assert len(ds.class_names) == num_classes and len(ds.palette) == num_classes
    assert ds.ignore_index == 255


def test_many_classes_present_across_few_samples() -> None:
    ds = SyntheticScenes(8)
    present = torch.unique(torch.stack([ds[i][1] for i in range(len(ds))]))
    assert len(present) == 6
    assert ds.class_names[0] == "background"


def test_image_roughly_normalised() -> None:
    ds = SyntheticScenes(40, seed=5)
    images = torch.stack([ds[i][0] for i in range(len(ds))])
    assert images.mean().abs() < 0.2
    assert 0.7 < images.std() < 1.3


def test_splits_are_disjoint_consecutive_ranges() -> None:
    splits = synthetic_splits(11, 5, size=(32, 32), seed=2)
    assert splits["train_a"].index_range == (0, 5)
    assert splits["train_b"].index_range == (5, 11)
    assert splits["val"].index_range == (11, 16)
    assert [len(splits[k]) for k in ("train_a", "train_b", "val")] == [5, 6, 5]
    ranges = [set(range(*splits[k].index_range)) for k in splits]
    assert not (ranges[0] & ranges[1]) and not (ranges[0] & ranges[2]) and not (ranges[1] & ranges[2])
    reference = SyntheticScenes(16, size=(32, 32), seed=2)
    assert torch.equal(splits["val"][0][0], reference[11][0])
    assert torch.equal(splits["train_b"][0][1], reference[5][1])


def test_mask_is_composite_of_objects_with_occlusion() -> None:
    occluded = 0
    for index in range(30):
        _, mask, objects = render_scene(np.random.default_rng([0, index]), (64, 64), 6)
        assert 2 <= len(objects) <= 5
        composite = np.zeros_like(mask)
        for cls, obj in objects:
            composite[obj] = cls
        assert np.array_equal(composite, mask)
        for j, (cls, obj) in enumerate(objects):
            later = np.zeros_like(obj)
            for _, other in objects[j + 1:]:
                later |= other
            visible = obj & ~later
            if visible.any() and (obj & later).any():
                assert (mask[visible] == cls).all()
                occluded += 1
    assert occluded >= 5


def test_colour_is_not_class_specific() -> None:
    """Per-image mean colour of each class varies widely; class means are close."""
    per_class: dict[int, list[np.ndarray]] = {k: [] for k in range(6)}
    for index in range(80):
        image, mask, _ = render_scene(np.random.default_rng([7, index]), (48, 48), 6)
        for k in np.unique(mask):
            per_class[int(k)].append(image[mask == k].mean(axis=0))
    class_means = []
    for k, colours in per_class.items():
        colours_arr = np.stack(colours)
        assert len(colours_arr) >= 10, k
        assert colours_arr.std(axis=0).mean() > 0.12, k  # spread across images
        class_means.append(colours_arr.mean(axis=0))
    spread_between = np.stack(class_means).std(axis=0).mean()
    assert spread_between < 0.06


def test_out_of_range_and_invalid_arguments() -> None:
    ds = SyntheticScenes(3)
    assert torch.equal(ds[-1][1], ds[2][1])
    with pytest.raises(IndexError):
        ds[3]
    with pytest.raises(ValueError):
        SyntheticScenes(3, num_classes=1)
    with pytest.raises(ValueError):
        SyntheticScenes(3, num_classes=99)
