"""The confusion matrix of a validation pass as a picture.

Rows are the ground-truth classes, columns the predicted ones. Each row is divided by its pixel count, so a
cell is the share of that class's pixels predicted as the column's class and the diagonal is the per-class
recall; a class with no pixels has an empty (white) row. Cells carry their percentage when the matrix is small
enough to read (up to 25 classes).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from matplotlib.figure import Figure

from nasplat.viz.cells import save_figure

CONFUSION_GID = "confusion-matrix"
ANNOTATE_UP_TO = 25


def row_normalised(matrix: Sequence[Sequence[float]]) -> np.ndarray:
    """``matrix`` with each row divided by its sum; NaN for rows that sum to 0 (a class absent from the labels)."""
    counts = np.asarray(matrix, dtype=np.float64)
    if counts.ndim != 2 or counts.shape[0] != counts.shape[1]:
        raise ValueError(f"a confusion matrix must be square, got shape {counts.shape}")
    totals = counts.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(totals > 0, counts / np.where(totals > 0, totals, 1), np.nan)


def render_confusion_matrix(matrix: Sequence[Sequence[float]], class_names: Sequence[str], directory: str | Path,
                            title: str = "", name: str = "confusion_matrix") -> list[Path]:
    """Write ``NAME.png`` into ``directory``: the row-normalised confusion matrix (see the module docstring)."""
    shares = row_normalised(matrix)
    if len(class_names) != shares.shape[0]:
        raise ValueError(f"{len(class_names)} class names for a {shares.shape[0]}-class confusion matrix")
    side = 2.0 + 0.35 * len(class_names)
    fig = Figure(figsize=(side + 1.0, side))
    ax = fig.add_subplot()
    image = ax.imshow(np.ma.masked_invalid(shares), cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    image.set_gid(CONFUSION_GID)
    ticks = range(len(class_names))
    ax.set_xticks(ticks, class_names, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(ticks, class_names, fontsize=7)
    ax.set_xlabel("predicted", fontsize=8)
    ax.set_ylabel("ground truth", fontsize=8)
    ax.set_title(title or "confusion matrix (share of each ground-truth class)", fontsize=9)
    if len(class_names) <= ANNOTATE_UP_TO:
        for (row, col), value in np.ndenumerate(shares):
            if not np.isnan(value):
                ax.text(col, row, f"{100 * value:.0f}", ha="center", va="center", fontsize=6,
                        color="white" if value > 0.5 else "black")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    return save_figure(fig, Path(directory) / name, formats=("png",))
