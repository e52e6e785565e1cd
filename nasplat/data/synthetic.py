"""Synthetic scenes: the zero-setup default segmentation dataset.

Each image shows a textured, randomly coloured background with several
objects painted on top of each other (later objects occlude earlier ones).
Object classes differ by *shape* and *texture*; colours are drawn from one
shared distribution for every class (and the background), so colour carries
almost no class information and a model needs a receptive field larger than a
few pixels to segment the scene.

Every sample is a pure function of ``(seed, index)``: it is rendered from
``numpy.random.default_rng([seed, index])``, so any subset can be generated
lazily, in any order, on any worker or process.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from nasplat.training.metrics import IGNORE_INDEX

__all__ = [
    "CLASS_NAMES",
    "IGNORE_INDEX",
    "MAX_CLASSES",
    "PALETTE",
    "SyntheticScenes",
    "render_scene",
    "synthetic_splits",
]


# (name, shape, texture) for each object class, in class-id order (1, 2, ...).
_OBJECT_CLASSES: tuple[tuple[str, str, str], ...] = (
    ("disc", "disc", "speckle"),
    ("square", "square", "checker"),
    ("triangle", "triangle", "dots"),
    ("ring", "ring", "smooth"),
    ("bar", "bar", "stripes_h"),
    ("ellipse", "ellipse", "stripes_v"),
    ("cross", "cross", "stripes_d1"),
    ("half_disc", "half_disc", "stripes_d2"),
    ("hexagon", "hexagon", "grid"),
)

CLASS_NAMES: tuple[str, ...] = ("background",) + tuple(c[0] for c in _OBJECT_CLASSES)
MAX_CLASSES = len(CLASS_NAMES)

# Visualisation colours (RGB) for mask rendering, one per class.
PALETTE: tuple[tuple[int, int, int], ...] = (
    (0, 0, 0),
    (230, 25, 75),
    (60, 180, 75),
    (255, 225, 25),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
)

# Fixed normalisation constants (measured over many rendered images).
_MEAN = np.array([0.5, 0.5, 0.5], dtype=np.float32)
_STD = np.array([0.27, 0.27, 0.27], dtype=np.float32)

# Scene parameters, relative to min(height, width) where noted.
_NUM_OBJECTS = (2, 5)  # inclusive range of objects per image
_RADIUS = (0.15, 0.28)  # object radius as a fraction of min(H, W)
_MIN_CONTRAST = 0.45  # minimum RGB distance between the two texture colours
_STRIPE_ANGLES = {"stripes_h": 0.0, "stripes_v": 90.0, "stripes_d1": 45.0, "stripes_d2": -45.0}


# --------------------------------------------------------------------------- geometry


@lru_cache(maxsize=32)
def _grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates ``(yy, xx)`` of an image, read-only and cached."""
    yy, xx = np.meshgrid(
        np.arange(height, dtype=np.float32), np.arange(width, dtype=np.float32), indexing="ij"
    )
    yy.setflags(write=False)
    xx.setflags(write=False)
    return yy, xx


def _rotated(
    yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, angle: float
) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates relative to ``(cy, cx)`` in a frame rotated by ``angle`` radians."""
    dy, dx = yy - cy, xx - cx
    c, s = np.cos(angle), np.sin(angle)
    return dx * c + dy * s, -dx * s + dy * c


def _regular_polygon(
    yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, r: float, n: int, angle: float
) -> np.ndarray:
    """Mask of a regular ``n``-gon with circumradius ``r`` (half-plane tests)."""
    inside = np.ones(yy.shape, dtype=bool)
    apothem = r * np.cos(np.pi / n)
    for k in range(n):
        theta = angle + (2 * k + 1) * np.pi / n  # direction of the k-th edge normal
        inside &= (xx - cx) * np.cos(theta) + (yy - cy) * np.sin(theta) <= apothem
    return inside


def _shape_mask(
    shape: str, yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, r: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """Boolean mask of one object of kind ``shape`` centred at ``(cy, cx)``."""
    angle = rng.uniform(0.0, 2 * np.pi)
    if shape == "disc":
        return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    if shape == "ring":
        d2 = (yy - cy) ** 2 + (xx - cx) ** 2
        inner = r * rng.uniform(0.4, 0.6)
        return (d2 <= r * r) & (d2 >= inner * inner)
    if shape == "square":
        u, v = _rotated(yy, xx, cy, cx, rng.uniform(-0.3, 0.3))
        half = 0.85 * r
        return (np.abs(u) <= half) & (np.abs(v) <= half)
    if shape == "triangle":
        return _regular_polygon(yy, xx, cy, cx, 1.25 * r, 3, angle)
    if shape == "hexagon":
        return _regular_polygon(yy, xx, cy, cx, r, 6, angle)
    if shape == "bar":
        u, v = _rotated(yy, xx, cy, cx, angle)
        return (np.abs(u) <= 1.4 * r) & (np.abs(v) <= 0.45 * r)
    if shape == "ellipse":
        u, v = _rotated(yy, xx, cy, cx, angle)
        return (u / (1.3 * r)) ** 2 + (v / (0.65 * r)) ** 2 <= 1.0
    if shape == "cross":
        u, v = _rotated(yy, xx, cy, cx, angle)
        au, av = np.abs(u), np.abs(v)
        arm = 0.33 * r
        return ((au <= r) & (av <= arm)) | ((av <= r) & (au <= arm))
    if shape == "half_disc":
        u, _ = _rotated(yy, xx, cy, cx, angle)
        return ((yy - cy) ** 2 + (xx - cx) ** 2 <= 1.2 * r * r) & (u >= -0.15 * r)
    raise ValueError(f"unknown shape {shape!r}")


# --------------------------------------------------------------------------- textures


def _stripes(ys: np.ndarray, xs: np.ndarray, rng: np.random.Generator, degrees: float) -> np.ndarray:
    """Square-wave stripes running at ``degrees`` (0 = horizontal), period 4-6 px."""
    theta = np.deg2rad(degrees + rng.uniform(-8.0, 8.0))
    period = rng.uniform(4.0, 6.0)
    across = -xs * np.sin(theta) + ys * np.cos(theta)  # coordinate across the stripes
    return ((across / period + rng.random()) % 1.0 < 0.5).astype(np.float32)


def _texture(kind: str, ys: np.ndarray, xs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Texture field in [0, 1] at pixel coordinates ``(ys, xs)`` (1-D arrays)."""
    if kind in _STRIPE_ANGLES:
        return _stripes(ys, xs, rng, _STRIPE_ANGLES[kind])
    if kind == "speckle":
        return (rng.random(ys.shape) < 0.5).astype(np.float32)
    if kind == "checker":
        cell = rng.uniform(2.6, 3.6)
        oy, ox = rng.uniform(0.0, 2 * cell, size=2)
        parity = np.floor((ys + oy) / cell) + np.floor((xs + ox) / cell)
        return (parity % 2).astype(np.float32)
    if kind == "dots":
        period = rng.uniform(5.0, 6.5)
        oy, ox = rng.uniform(0.0, period, size=2)
        dy = (ys + oy) % period - period / 2
        dx = (xs + ox) % period - period / 2
        return (dy * dy + dx * dx <= (0.3 * period) ** 2).astype(np.float32)
    if kind == "grid":
        period = rng.uniform(5.0, 6.5)
        oy, ox = rng.uniform(0.0, period, size=2)
        return (((ys + oy) % period < 1.5) | ((xs + ox) % period < 1.5)).astype(np.float32)
    if kind == "smooth":
        theta = rng.uniform(0.0, 2 * np.pi)
        ramp = xs * np.cos(theta) + ys * np.sin(theta)
        if ramp.size == 0:
            return ramp
        span = max(float(np.ptp(ramp)), 1.0)
        return (0.25 * (ramp - ramp.min()) / span).astype(np.float32)
    raise ValueError(f"unknown texture {kind!r}")


def _colour_pair(rng: np.random.Generator, min_contrast: float) -> np.ndarray:
    """Two random RGB colours (shape [2, 3]) at least ``min_contrast`` apart."""
    for _ in range(16):
        pair = rng.random((2, 3), dtype=np.float32)
        if np.linalg.norm(pair[0] - pair[1]) >= min_contrast:
            break
    return pair


@lru_cache(maxsize=64)
def _interp_matrix(n_out: int, n_in: int) -> np.ndarray:
    """Linear interpolation weights [n_out, n_in] from a coarse to a fine axis."""
    pos = np.linspace(0.0, n_in - 1, n_out)
    eye = np.eye(n_in, dtype=np.float32)
    return np.stack([np.interp(pos, np.arange(n_in), eye[j]) for j in range(n_in)], axis=1).astype(
        np.float32
    )


def _smooth_field(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """Low-frequency random field in [0, 1] (a random coarse grid, upsampled)."""
    cells = max(3, round(min(height, width) / 12))
    gh = max(2, round(cells * height / min(height, width)))
    gw = max(2, round(cells * width / min(height, width)))
    coarse = rng.random((gh, gw), dtype=np.float32)
    return _interp_matrix(height, gh) @ coarse @ _interp_matrix(width, gw).T


def _background(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """Blotchy background mixing two random colours by a smooth field, [H, W, 3]."""
    colours = _colour_pair(rng, 0.25)
    t = _smooth_field(height, width, rng)[..., None]
    return colours[0] * (1.0 - t) + colours[1] * t


# --------------------------------------------------------------------------- scenes


def render_scene(
    rng: np.random.Generator, size: tuple[int, int], num_classes: int = 6
) -> tuple[np.ndarray, np.ndarray, list[tuple[int, np.ndarray]]]:
    """Render one scene from ``rng``.

    Returns ``(image, mask, objects)``: image float32 [H, W, 3] in [0, 1] (not yet
    normalised), mask int64 [H, W] of visible classes, and ``objects`` as
    ``(class_id, full_mask)`` pairs in paint order, i.e. before occlusion.
    """
    height, width = size
    _check_num_classes(num_classes)
    yy, xx = _grid(height, width)
    image = _background(height, width, rng)
    mask = np.zeros((height, width), dtype=np.int64)
    objects: list[tuple[int, np.ndarray]] = []
    scale = min(height, width)
    for _ in range(rng.integers(_NUM_OBJECTS[0], _NUM_OBJECTS[1] + 1)):
        cls = int(rng.integers(1, num_classes))
        _, shape, texture = _OBJECT_CLASSES[cls - 1]
        cy, cx = rng.uniform(0.1, 0.9) * height, rng.uniform(0.1, 0.9) * width
        radius = rng.uniform(*_RADIUS) * scale
        obj = _shape_mask(shape, yy, xx, cy, cx, radius, rng)
        ys, xs = yy[obj], xx[obj]
        t = _texture(texture, ys, xs, rng)[:, None]
        colours = _colour_pair(rng, _MIN_CONTRAST)
        image[obj] = colours[0] * (1.0 - t) + colours[1] * t
        mask[obj] = cls
        objects.append((cls, obj))
    return _photometric_jitter(image, rng), mask, objects


def _photometric_jitter(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Per-image contrast/brightness jitter plus Gaussian pixel noise, clipped to [0, 1]."""
    contrast = rng.uniform(0.75, 1.25)
    brightness = rng.uniform(-0.12, 0.12)
    noise = rng.standard_normal(image.shape, dtype=np.float32) * rng.uniform(0.02, 0.08)
    out = (image - 0.5) * contrast + 0.5 + brightness + noise
    return np.clip(out, 0.0, 1.0, out=out).astype(np.float32, copy=False)


def _check_num_classes(num_classes: int) -> None:
    if not 2 <= num_classes <= MAX_CLASSES:
        raise ValueError(f"num_classes must be in [2, {MAX_CLASSES}], got {num_classes}")


def _to_tensors(image: np.ndarray, mask: np.ndarray) -> tuple[Tensor, Tensor]:
    """Normalise an [H, W, 3] image and convert to ([3, H, W] float32, [H, W] int64)."""
    normed = (image - _MEAN) / _STD
    return torch.from_numpy(np.ascontiguousarray(normed.transpose(2, 0, 1))), torch.from_numpy(mask)


class SyntheticScenes(Dataset):
    """Deterministic synthetic segmentation scenes; sample ``i`` uses index ``offset + i``.

    Items are ``(image, mask)``: image float32 [3, H, W] roughly zero-mean unit-variance,
    mask int64 [H, W] with values in ``0..num_classes-1`` (no ignore pixels).
    """

    ignore_index: int = IGNORE_INDEX

    def __init__(
        self,
        length: int,
        size: tuple[int, int] = (64, 64),
        num_classes: int = 6,
        seed: int = 0,
        offset: int = 0,
    ) -> None:
        _check_num_classes(num_classes)
        if length < 0 or offset < 0 or seed < 0:
            raise ValueError("length, offset and seed must be non-negative")
        height, width = (int(s) for s in size)
        if height < 1 or width < 1:
            raise ValueError(f"size must be positive, got {size}")
        self.length = int(length)
        self.size = (height, width)
        self.num_classes = int(num_classes)
        self.seed = int(seed)
        self.offset = int(offset)
        self.class_names: tuple[str, ...] = CLASS_NAMES[:num_classes]
        self.palette: list[tuple[int, int, int]] = list(PALETTE[:num_classes])

    @property
    def index_range(self) -> tuple[int, int]:
        """Half-open range ``[start, stop)`` of global scene indices covered."""
        return self.offset, self.offset + self.length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        if i < 0:
            i += self.length
        if not 0 <= i < self.length:
            raise IndexError(f"index {i} out of range for length {self.length}")
        rng = np.random.default_rng([self.seed, self.offset + i])
        image, mask, _ = render_scene(rng, self.size, self.num_classes)
        return _to_tensors(image, mask)

    def __repr__(self) -> str:
        return (
            f"SyntheticScenes(length={self.length}, size={self.size}, "
            f"num_classes={self.num_classes}, seed={self.seed}, offset={self.offset})"
        )


def synthetic_splits(
    num_train: int,
    num_val: int,
    size: tuple[int, int] = (64, 64),
    num_classes: int = 6,
    seed: int = 0,
) -> dict[str, SyntheticScenes]:
    """Disjoint ``train_a`` / ``train_b`` / ``val`` splits over consecutive index ranges.

    train_a = [0, num_train//2), train_b = [num_train//2, num_train),
    val = [num_train, num_train + num_val).
    """
    half = num_train // 2

    def make(length: int, offset: int) -> SyntheticScenes:
        return SyntheticScenes(length, size=size, num_classes=num_classes, seed=seed, offset=offset)

    return {
        "train_a": make(half, 0),
        "train_b": make(num_train - half, half),
        "val": make(num_val, num_train),
    }
