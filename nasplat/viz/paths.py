"""The Auto-DeepLab network path in the paper's figure style, and its cell as a DAG.

x axis: the stem then layers 1..L; y axis: output stride 4/8/16/32 (finer at the top, as in the
paper's Figure 1). Grey dots mark every position a path can take (layer ``l`` reaches stride
``4 * 2**min(l, 3)`` at most); the chosen path is drawn over them and ends in the ASPP head.
Works on any genotype with a ``path`` field of output strides (and ``cell``/``cell_concat``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from matplotlib.figure import Figure

from nasplat.viz.cells import FORMATS, Rendered, render_cell, save_figure

STRIDES: tuple[int, ...] = (4, 8, 16, 32)
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


def render_network_path(path: Sequence[int], directory: str | Path, name: str = "network_path",
                        title: str = "", formats: Sequence[str] = FORMATS) -> list[Path]:
    """Write ``NAME.{png,svg}`` of the network path into ``directory``."""
    return save_figure(network_path_figure(path, title), Path(directory) / name, formats)


def render_autodeeplab(genotype: Any, directory: str | Path, formats: Sequence[str] = FORMATS) -> tuple[list[Path], Rendered]:
    """The network path and the cell (inputs ``H^{l-2}``, ``H^{l-1}``) of an Auto-DeepLab genotype."""
    paths = render_network_path(genotype.path, directory, formats=formats)
    cell = render_cell(genotype.cell, genotype.cell_concat, directory, "cell", "Auto-DeepLab cell",
                       inputs=CELL_INPUTS, output=CELL_OUTPUT, formats=formats)
    return paths, cell
