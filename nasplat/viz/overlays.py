"""Validation predictions next to their images, coloured with the dataset's palette.

One row per sample: image | ground truth | prediction | prediction blended over the image, with a
title row and a legend of the class colours. Masks are painted with the exact palette colours
(label 255, "ignore", in neutral grey) and enlarged by pixel repetition, so a pixel of the PNG
is a palette colour, not an interpolation. Written with Pillow; no matplotlib needed.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw

from nasplat.data.cityscapes import CITYSCAPES_CLASSES, CITYSCAPES_PALETTE
from nasplat.data.synthetic import CLASS_NAMES as SYNTHETIC_CLASSES
from nasplat.data.synthetic import PALETTE as SYNTHETIC_PALETTE
from nasplat.data.voc import voc_colormap
from nasplat.training.metrics import IGNORE_INDEX

NEUTRAL: tuple[int, int, int] = (128, 128, 128)
COLUMNS: tuple[str, ...] = ("image", "ground truth", "prediction", "overlay")
HEADER = 16
GAP = 4
BLEND = 0.5
MIN_PANEL = 96

Palette = Sequence[Sequence[int]]


def dataset_palette(dataset: Any, class_names: Sequence[str]) -> list[tuple[int, int, int]]:
    """The colours of a dataset: its ``palette`` attribute (also through ``Subset``), else the known
    palette whose class names match (VOC, Cityscapes, synthetic), else the VOC colour map."""
    while dataset is not None:
        palette = getattr(dataset, "palette", None)
        if palette is not None and len(palette) >= len(class_names):
            return [tuple(int(v) for v in colour) for colour in palette]
        dataset = getattr(dataset, "dataset", None)
    names = tuple(class_names)
    if names == CITYSCAPES_CLASSES:
        return [tuple(c) for c in CITYSCAPES_PALETTE]
    if names == SYNTHETIC_CLASSES[: len(names)]:
        return list(SYNTHETIC_PALETTE[: len(names)])
    return [tuple(c) for c in voc_colormap(len(names)).tolist()]


def colorize(mask: np.ndarray, palette: Palette, ignore_index: int = IGNORE_INDEX,
             neutral: Sequence[int] = NEUTRAL) -> np.ndarray:
    """uint8 ``[H, W, 3]``: each label's palette colour; ``ignore_index`` neutral grey."""
    mask = np.asarray(mask).astype(np.int64)
    ignored = mask == ignore_index
    valid = mask[~ignored]
    if valid.size and (valid.min() < 0 or valid.max() >= len(palette)):
        raise ValueError(f"mask labels {int(valid.min())}..{int(valid.max())} outside the palette's 0..{len(palette) - 1}")
    lut = np.asarray([tuple(c) for c in palette], dtype=np.uint8).reshape(-1, 3)
    out = lut[np.where(ignored, 0, mask)]
    out[ignored] = neutral
    return out


def display_image(image: Any) -> np.ndarray:
    """uint8 ``[H, W, 3]`` from a normalised ``[3, H, W]`` tensor, stretched to its own min..max."""
    array = image.detach().cpu().float().numpy() if isinstance(image, torch.Tensor) else np.asarray(image, np.float32)
    array = array.transpose(1, 2, 0)
    low, high = float(array.min()), float(array.max())
    scaled = (array - low) / (high - low) if high > low else np.zeros_like(array)
    return (scaled * 255).round().astype(np.uint8)


def overlay_grid(images: Sequence[Any], masks: Sequence[np.ndarray], predictions: Sequence[np.ndarray],
                 palette: Palette, class_names: Sequence[str] = (), scale: int | None = None,
                 ignore_index: int = IGNORE_INDEX) -> tuple[np.ndarray, dict[tuple[int, int], tuple[int, int]]]:
    """The picture as uint8 ``[H, W, 3]`` and the (top, left) pixel of each (sample, column) panel.

    ``scale`` (default: enough for panels of at least 96 px) enlarges masks by pixel repetition.
    """
    if not len(images) == len(masks) == len(predictions) > 0:
        raise ValueError(f"need as many images, masks and predictions (>= 1), got {len(images)}, {len(masks)}, {len(predictions)}")
    height, width = np.asarray(masks[0]).shape
    scale = scale or max(1, -(-MIN_PANEL // min(height, width)))
    ph, pw = height * scale, width * scale
    legend = 14 * (len(class_names) > 0) * -(-len(class_names) // 4) + GAP
    canvas = np.full((HEADER + len(images) * (ph + GAP) + legend, len(COLUMNS) * (pw + GAP) + GAP, 3), 255, np.uint8)
    boxes: dict[tuple[int, int], tuple[int, int]] = {}
    for row, (image, mask, prediction) in enumerate(zip(images, masks, predictions)):
        shown = display_image(image)
        truth = colorize(mask, palette, ignore_index)
        predicted = colorize(prediction, palette, ignore_index)
        blended = (BLEND * predicted + (1 - BLEND) * shown).round().astype(np.uint8)
        for col, panel in enumerate((shown, truth, predicted, blended)):
            top, left = HEADER + row * (ph + GAP), GAP + col * (pw + GAP)
            canvas[top: top + ph, left: left + pw] = panel.repeat(scale, 0).repeat(scale, 1)
            boxes[(row, col)] = (top, left)
    picture = Image.fromarray(canvas)
    draw = ImageDraw.Draw(picture)
    for col, title in enumerate(COLUMNS):
        draw.text((GAP + col * (pw + GAP), 2), title, fill=(0, 0, 0))
    base = HEADER + len(images) * (ph + GAP)
    step = (len(COLUMNS) * (pw + GAP)) // 4
    for index, name in enumerate(class_names):
        x, y = GAP + (index % 4) * step, base + (index // 4) * 14
        draw.rectangle((x, y + 1, x + 10, y + 11), fill=tuple(palette[index]), outline=(0, 0, 0))
        draw.text((x + 14, y), str(name), fill=(0, 0, 0))
    return np.asarray(picture).copy(), boxes


@torch.no_grad()
def predict_samples(model: torch.nn.Module, dataset: Any, indices: Sequence[int],
                    device: torch.device | str = "cpu") -> tuple[list[torch.Tensor], list[np.ndarray], list[np.ndarray]]:
    """Images, ground-truth masks and argmax predictions of ``dataset[i]`` for ``i`` in ``indices``.

    The model is put in eval mode and restored to its previous mode afterwards.
    """
    samples = [dataset[i] for i in indices]
    images = torch.stack([torch.as_tensor(image) for image, _ in samples])
    was_training = model.training
    model.eval()
    try:
        predictions = model(images.to(device)).argmax(1).cpu().numpy()
    finally:
        model.train(was_training)
    return list(images), [np.asarray(mask) for _, mask in samples], list(predictions)


def render_overlays(images: Sequence[Any], masks: Sequence[np.ndarray], predictions: Sequence[np.ndarray],
                    palette: Palette, directory: str | Path, class_names: Sequence[str] = (),
                    name: str = "predictions") -> list[Path]:
    """Write ``NAME.png`` (see :func:`overlay_grid`) into ``directory``."""
    picture, _ = overlay_grid(images, masks, predictions, palette, class_names)
    path = Path(directory) / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(picture).save(path)
    return [path]
