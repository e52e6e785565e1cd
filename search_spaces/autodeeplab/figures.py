"""Pictures of an Auto-DeepLab architecture: the network path in the paper's figure style, the cell, the heatmaps.

Path figure: x axis the stem then layers 1..L; y axis output stride 4/8/16/32 (finer at the top, as
in the paper's Figure 1). Grey dots mark every position a path can take (layer ``l`` reaches
stride ``4 * 2**min(l, 3)`` at most); the chosen path is drawn over them and ends in the ASPP head.
Imported by :meth:`AutoDeepLabSpace.figures` only, so that matplotlib is loaded when drawing.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from matplotlib.figure import Figure

from nasplat import render_arch_figures, render_cell, save_figure

from search_spaces.autodeeplab.genotype import AutoDeepLabGenotype
from search_spaces.autodeeplab.paths import STRIDES, move_labels

CELL_INPUTS: tuple[str, str] = ("H^{l-2}", "H^{l-1}")
CELL_OUTPUT = "H^{l}"
PATH_GID = "network-path"
POSITIONS_GID = "possible-positions"


def reachable_strides(layer: int) -> tuple[int, ...]:
    """Output strides a path can be at after layer ``layer`` (1-based; the stem is layer 0 at stride 4)."""
    return STRIDES[: min(layer, len(STRIDES) - 1) + 1]


def network_path_figure(path: Sequence[int], title: str = "") -> Figure:
    """The chosen path (gid ``network-path``: x = 0..L, y = stride, starting at the stem) over the grid."""
    path = [int(s) for s in path]
    bad = [s for s in path if s not in STRIDES]
    if bad:
        raise ValueError(f"path strides {bad} are not among {list(STRIDES)}")
    layers = len(path)
    fig = Figure(figsize=(0.55 * layers + 2.6, 3.2))
    ax = fig.add_subplot()
    grid = [(layer, s) for layer in range(1, layers + 1) for s in reachable_strides(layer)]
    ax.scatter([x for x, _ in grid], [y for _, y in grid], s=60, facecolors="white", edgecolors="0.6",
               zorder=1, gid=POSITIONS_GID)
    xs, ys = list(range(layers + 1)), [STRIDES[0], *path]
    ax.plot(xs, ys, "-o", color="tab:blue", lw=2.5, ms=9, zorder=2, gid=PATH_GID)
    ax.plot([0], [STRIDES[0]], "s", color="0.3", ms=10, zorder=3)
    ax.annotate("stem", (0, STRIDES[0]), xytext=(0, 12), textcoords="offset points", ha="center", fontsize=8)
    head_x = layers + 1
    ax.annotate("", xy=(head_x, path[-1]), xytext=(layers, path[-1]),
                arrowprops=dict(arrowstyle="-|>", color="tab:blue", lw=2))
    ax.text(head_x, path[-1], "ASPP", ha="left", va="center", fontsize=9,
            bbox=dict(boxstyle="round,pad=0.3", fc="#f4cccc", ec="0.3"))
    ax.set_yscale("log", base=2)
    ax.set_yticks(STRIDES, [str(s) for s in STRIDES])
    ax.minorticks_off()
    ax.set_ylim(STRIDES[-1] * 1.5, STRIDES[0] / 1.6)  # finer strides at the top
    ax.set_xticks(xs, ["stem", *(str(x) for x in xs[1:])])
    ax.set_xlim(-0.6, head_x + 1.4)
    ax.set_xlabel("layer")
    ax.set_ylabel("output stride")
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.set_title(title or f"network path ({layers} layers)")
    fig.tight_layout()
    return fig


def draw(genotype: AutoDeepLabGenotype, ops: Sequence[str], directory: str | os.PathLike,
         distributions: Mapping[str, Any] | None, history: Sequence[tuple[int, Mapping[str, Any]]],
         title: str) -> list[Path]:
    """``network_path.{png,svg}``, ``cell.{dot,png,svg}`` (inputs ``H^{l-2}``, ``H^{l-1}``), the alpha and
    beta heatmaps (beta: one row per move ``stride -> stride``) and their evolution."""
    written = save_figure(network_path_figure(genotype.path), Path(directory) / "network_path")
    cell = render_cell(genotype.cell, genotype.cell_concat, directory, "cell", "Auto-DeepLab cell",
                       inputs=CELL_INPUTS, output=CELL_OUTPUT)
    arch = render_arch_figures(distributions, history, ops, directory, title, inputs=CELL_INPUTS, moves=move_labels())
    return written + list(cell.paths) + arch
