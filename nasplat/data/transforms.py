"""Joint image/mask augmentation for semantic segmentation.

:class:`SegmentationAugment` takes a decoded sample (image uint8 ``[H, W, 3]``,
mask uint8 ``[H, W]`` of train ids with ``ignore_index`` for "ignore") and
returns training tensors: a normalised float32 image ``[3, h, w]`` and an
int64 mask ``[h, w]``.  The mask is only ever resampled with NEAREST and padded
with ``ignore_index``, so it never gains label values it did not have.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from nasplat.training.metrics import IGNORE_INDEX

__all__ = ["SegmentationAugment", "sample_generator"]

_PROCESS_GENERATORS: dict[tuple[int, int], np.random.Generator] = {}
"""(seed, pid) -> this process's generator for transform copies unpickled here (see SegmentationAugment)."""


def sample_generator(seed: int, epoch: int, sample_id: str) -> np.random.Generator:
    """The random generator of one sample in one epoch: the same whichever process draws it."""
    key = int.from_bytes(hashlib.blake2b(sample_id.encode(), digest_size=8).digest(), "little")
    return np.random.default_rng([seed, epoch, key])


def _pair(value: Sequence[int], name: str) -> tuple[int, int]:
    """Validate a ``(height, width)`` pair of positive ints."""
    if len(value) != 2 or any(int(v) != v or v < 1 for v in value):
        raise ValueError(f"{name} must be a (height, width) pair of positive ints, got {value!r}")
    return int(value[0]), int(value[1])


class SegmentationAugment:
    """Random scale, pad, crop and horizontal flip of an (image, mask) pair, then normalise.

    Training (``train=True``), in this order:

    1. scale both by ``s ~ U(scale)``: bilinear for the image, NEAREST for the mask;
    2. random crop of ``crop`` (height, width); where the scaled sample is smaller
       than the crop it is padded at the bottom/right: the image with 0 *after
       normalisation* (the mean colour), the mask with ``ignore_index``;
    3. horizontal flip of image and mask together with probability 0.5 (if ``flip``).

    Evaluation (``train=False``): no scaling and no flip.  With ``crop=None`` the
    full image is kept (only normalised); with a ``crop`` the sample is centre
    cropped where larger and centre padded (same pad values) where smaller.

    Randomness: pass ``rng`` (an ``np.random.Generator``) per call for full
    control.  Otherwise the transform uses its own generator, seeded from
    ``seed`` in the process that built it, from ``(seed, worker seed)`` in a
    torch DataLoader worker (so workers and epochs differ, reproducibly under
    ``torch.manual_seed``), and from ``(seed, pid)`` in any other process (e.g.
    a Ray worker: distinct streams, not reproducible).  In such a process every
    copy of the transform with the same seed draws from one shared stream, since
    Ray Data unpickles a fresh copy for each task: a per-copy generator would
    repeat the same draws every task and every epoch.  ``seed=None`` uses fresh
    OS entropy in every process.
    """

    def __init__(
        self,
        crop: tuple[int, int] | None,
        scale: tuple[float, float] = (0.5, 2.0),
        flip: bool = True,
        mean: Sequence[float] = (0.485, 0.456, 0.406),
        std: Sequence[float] = (0.229, 0.224, 0.225),
        ignore_index: int = IGNORE_INDEX,
        train: bool = True,
        seed: int | None = None,
    ) -> None:
        if crop is None and train:
            raise ValueError("crop is required when train=True (crop=None is for evaluation only)")
        self.crop = None if crop is None else _pair(crop, "crop")
        lo, hi = (float(s) for s in scale)
        if not 0.0 < lo <= hi:
            raise ValueError(f"scale must satisfy 0 < low <= high, got {scale!r}")
        self.scale = (lo, hi)
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError(f"mean and std need 3 values each and std > 0, got {mean!r}, {std!r}")
        self.mean = np.asarray(mean, dtype=np.float32) * 255.0
        self.inv_std = 1.0 / (np.asarray(std, dtype=np.float32) * 255.0)
        if not 0 <= ignore_index <= 255:
            raise ValueError(f"ignore_index must fit in uint8, got {ignore_index}")
        self.ignore_index = int(ignore_index)
        self.flip = bool(flip)
        self.train = bool(train)
        self.seed = seed
        self._owner_pid = os.getpid()
        self._rng: np.random.Generator | None = None
        self._rng_pid = -1

    # ------------------------------------------------------------------ randomness

    def _generator(self) -> np.random.Generator:
        """The process-local generator (see the class docstring)."""
        pid = os.getpid()
        if self._rng is None or self._rng_pid != pid:
            info = torch.utils.data.get_worker_info()
            if self.seed is None:
                entropy = None
            elif info is not None:
                entropy = [self.seed, info.seed]
            elif pid != self._owner_pid:
                self._rng = _PROCESS_GENERATORS.setdefault((self.seed, pid), np.random.default_rng([self.seed, pid]))
                self._rng_pid = pid
                return self._rng
            else:
                entropy = self.seed
            self._rng, self._rng_pid = np.random.default_rng(entropy), pid
        return self._rng

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_rng"], state["_rng_pid"] = None, -1  # re-seeded lazily where it lands
        return state

    # ------------------------------------------------------------------ transform

    def __call__(
        self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """Augment one sample; see the class docstring.  Equals :meth:`place` then :meth:`normalize`."""
        placed, out_mask, box = self.place(image, mask, rng)
        image_t = self.normalize(torch.from_numpy(placed), torch.from_numpy(box))
        return image_t, torch.from_numpy(out_mask.astype(np.int64))

    def place(
        self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The geometric half of :meth:`__call__`, in uint8 (a quarter of the bytes to ship).

        Returns the image uint8 ``[3, h, w]``, the mask uint8 ``[h, w]`` (padded with
        ``ignore_index``) and ``box`` int32 ``(top, left, height, width)``: where the sample
        lies; image pixels outside it are padding, which :meth:`normalize` sets to 0.
        """
        self._check(image, mask)
        rng = self._generator() if rng is None else rng
        if self.train:
            image, mask = self._random_scale(image, mask, rng)
            image, mask = self._random_crop(image, mask, rng)
        elif self.crop is not None:
            image, mask = self._center_crop(image, mask)
        out_h, out_w = self.crop if self.crop is not None else mask.shape
        top, left = self._pad_offsets(mask.shape, (out_h, out_w))
        out_img = np.zeros((out_h, out_w, 3), dtype=np.uint8)
        out_mask = np.full((out_h, out_w), self.ignore_index, dtype=np.uint8)
        h, w = mask.shape
        out_img[top : top + h, left : left + w] = image
        out_mask[top : top + h, left : left + w] = mask
        if self.train and self.flip and rng.random() < 0.5:
            out_img, out_mask, left = out_img[:, ::-1], out_mask[:, ::-1], out_w - left - w
        box = np.asarray([top, left, h, w], dtype=np.int32)
        return np.ascontiguousarray(out_img.transpose(2, 0, 1)), np.ascontiguousarray(out_mask), box

    def normalize(self, images: Tensor, boxes: Tensor) -> Tensor:
        """uint8 images ``[3, H, W]`` or ``[B, 3, H, W]`` from :meth:`place` -> float32, normalised
        with ``mean``/``std`` inside each ``box`` (``[4]`` or ``[B, 4]``) and 0 outside it."""
        single = images.dim() == 3
        if single:
            images, boxes = images.unsqueeze(0), boxes.unsqueeze(0)
        mean = torch.from_numpy(self.mean).to(images.device).view(1, 3, 1, 1)
        inv_std = torch.from_numpy(self.inv_std).to(images.device).view(1, 3, 1, 1)
        out = (images.float() - mean) * inv_std
        height, width = images.shape[-2:]
        boxes = boxes.to(images.device, torch.int64)
        rows = torch.arange(height, device=images.device).view(1, height, 1)
        cols = torch.arange(width, device=images.device).view(1, 1, width)
        top, left, h, w = (boxes[:, k].view(-1, 1, 1) for k in range(4))
        inside = (rows >= top) & (rows < top + h) & (cols >= left) & (cols < left + w)
        out = out.masked_fill(~inside.unsqueeze(1), 0.0)
        return out[0] if single else out

    @staticmethod
    def _check(image: np.ndarray, mask: np.ndarray) -> None:
        if not (isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3
                and image.shape[2] == 3):
            raise ValueError(f"image must be a uint8 [H, W, 3] array, got {getattr(image, 'dtype', type(image))} "
                             f"{getattr(image, 'shape', '')}")
        if not (isinstance(mask, np.ndarray) and mask.dtype == np.uint8 and mask.shape == image.shape[:2]):
            raise ValueError(f"mask must be a uint8 [H, W] array matching the image {image.shape[:2]}, got "
                             f"{getattr(mask, 'dtype', type(mask))} {getattr(mask, 'shape', '')}")

    def _random_scale(
        self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        s = rng.uniform(*self.scale)
        h, w = mask.shape
        size = (max(1, round(w * s)), max(1, round(h * s)))  # PIL wants (width, height)
        if size == (w, h):
            return image, mask
        image = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BILINEAR))
        mask = np.asarray(Image.fromarray(mask).resize(size, Image.Resampling.NEAREST))
        return image, mask

    def _random_crop(
        self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """Random window of the crop size; smaller samples are padded later (bottom/right)."""
        assert self.crop is not None
        (h, w), (ch, cw) = mask.shape, self.crop
        top = int(rng.integers(0, max(h - ch, 0) + 1))
        left = int(rng.integers(0, max(w - cw, 0) + 1))
        return image[top : top + ch, left : left + cw], mask[top : top + ch, left : left + cw]

    def _center_crop(self, image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        assert self.crop is not None
        (h, w), (ch, cw) = mask.shape, self.crop
        top, left = max(h - ch, 0) // 2, max(w - cw, 0) // 2
        return image[top : top + ch, left : left + cw], mask[top : top + ch, left : left + cw]

    def _pad_offsets(self, shape: tuple[int, ...], out: tuple[int, int]) -> tuple[int, int]:
        """Where the (cropped) sample sits in the output: top-left in training, centred in eval."""
        if self.train:
            return 0, 0
        return (out[0] - shape[0]) // 2, (out[1] - shape[1]) // 2

    def __repr__(self) -> str:
        return (
            f"SegmentationAugment(crop={self.crop}, scale={self.scale}, flip={self.flip}, "
            f"ignore_index={self.ignore_index}, train={self.train}, seed={self.seed})"
        )
