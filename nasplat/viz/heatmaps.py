"""Heatmaps of the architecture distributions and their evolution over epochs.

Input is what ``Supernet.arch_distributions()`` returns (name -> probabilities), so a search
draws exactly what it optimises:

* a 2-D tensor ``[edges, ops]`` (softmax alpha): one row per edge, labelled ``node <- input`` in the
  official row order (:func:`nasplat.cell_edges`), one column per op;
* a 3-D tensor ``[layers, sources, choices]`` when the caller labels its ``(source, choice)`` pairs
  (``moves``, e.g. a hierarchical space's moves between levels): one row per labelled pair, one
  column per layer; blank where the source has no choice at that layer (its row is all zero, the
  ``arch_distributions`` convention);
* any other tensor: its rows as they are.

The evolution plot takes a list of ``(epoch, distributions)`` and draws, per edge (2-D) or per
layer (labelled 3-D), each choice's weight as a line over epochs.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from nasplat.spaces.cells import cell_edges
from nasplat.viz.cells import DARTS_INPUTS, FORMATS, save_figure

HEATMAP_GID = "arch-heatmap"

History = Sequence[tuple[int, Mapping[str, Any]]]
Moves = Mapping[tuple[int, int], str]
"""``(source, choice) -> row label`` of a labelled 3-D distribution."""


def as_array(value: Any) -> np.ndarray:
    """A tensor, nested list or array as a float64 numpy array."""
    if hasattr(value, "detach"):
        value = value.detach().cpu().double().numpy()
    return np.asarray(value, dtype=np.float64)


def is_moves(value: np.ndarray, moves: Moves | None) -> bool:
    """Whether ``value`` is drawn as a labelled 3-D distribution (``[layers, sources, choices]``)."""
    return bool(moves) and value.ndim == 3 and all(s < value.shape[1] and c < value.shape[2] for s, c in moves)


def edge_labels(rows: int, inputs: Sequence[str] = DARTS_INPUTS) -> list[str]:
    """``node <- input`` for each alpha row of a cell with ``rows`` edges (plain indices if no cell fits)."""
    nodes = 1
    while len(cell_edges(nodes, len(inputs))) < rows:
        nodes += 1
    if len(cell_edges(nodes, len(inputs))) != rows:
        return [str(i) for i in range(rows)]
    names = [*inputs, *(str(k) for k in range(nodes))]
    return [f"{node} \u2190 {names[source]}" for node, source in cell_edges(nodes, len(inputs))]


def moves_matrix(value: Any, moves: Moves) -> np.ndarray:
    """``[len(moves), layers]`` weights of the labelled ``(source, choice)`` pairs of ``[layers, sources,
    choices]``; NaN where the source's row is all zero at that layer (no choice there)."""
    value = as_array(value)
    matrix = np.full((len(moves), value.shape[0]), np.nan)
    for row, (source, choice) in enumerate(moves):
        for layer in range(value.shape[0]):
            if np.any(value[layer, source] != 0):
                matrix[row, layer] = value[layer, source, choice]
    return matrix


def _heatmap(ax, matrix: np.ndarray, rows: Sequence[str], cols: Sequence[str], title: str) -> None:
    image = ax.imshow(np.ma.masked_invalid(matrix), cmap="viridis", vmin=0.0, vmax=max(1e-9, np.nanmax(matrix)),
                      aspect="auto", interpolation="nearest")
    image.set_gid(HEATMAP_GID)
    ax.set_xticks(range(len(cols)), cols, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(len(rows)), rows, fontsize=7)
    ax.set_title(title, fontsize=9)
    if matrix.size <= 200:
        for (r, c), value in np.ndenumerate(matrix):
            if not math.isnan(value):
                ax.text(c, r, f"{value:.2f}", ha="center", va="center", fontsize=5.5,
                        color="white" if value < 0.6 * np.nanmax(matrix) else "black")
    ax.figure.colorbar(image, ax=ax, fraction=0.04, pad=0.02)


def arch_figure(distributions: Mapping[str, Any], ops: Sequence[str], title: str = "",
                inputs: Sequence[str] = DARTS_INPUTS, moves: Moves | None = None) -> Figure:
    """One heatmap panel per architecture tensor (see the module docstring); ``inputs`` names the cell
    inputs, ``moves`` labels the ``(source, choice)`` pairs of 3-D tensors."""
    arrays = {name: as_array(value) for name, value in distributions.items()}
    heights = [max(2.5, 0.22 * (len(moves) if is_moves(a, moves) else a.reshape(-1, a.shape[-1]).shape[0]) + 1.5)
               for a in arrays.values()]
    fig = Figure(figsize=(7.5 * len(arrays), max(heights)))
    for index, (name, value) in enumerate(arrays.items()):
        ax = fig.add_subplot(1, len(arrays), index + 1)
        if is_moves(value, moves):
            _heatmap(ax, moves_matrix(value, moves), list(moves.values()),
                     [str(layer + 1) for layer in range(value.shape[0])], f"{name}: weight per layer")
            ax.set_xlabel("layer")
        else:
            matrix = value.reshape(-1, value.shape[-1])
            cols = list(ops) if matrix.shape[1] == len(ops) else [str(i) for i in range(matrix.shape[1])]
            _heatmap(ax, matrix, edge_labels(matrix.shape[0], inputs), cols, f"{name}: op weight per edge")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def _series(history: History, name: str) -> tuple[list[int], np.ndarray]:
    epochs = [int(epoch) for epoch, _ in history]
    return epochs, np.stack([as_array(dists[name]) for _, dists in history])


def evolution_figure(history: History, name: str, ops: Sequence[str], inputs: Sequence[str] = DARTS_INPUTS,
                     moves: Moves | None = None) -> Figure:
    """Per edge (2-D) or per layer (labelled 3-D) a small panel: each choice's weight over epochs."""
    epochs, series = _series(history, name)
    if is_moves(series[0], moves):
        matrices = np.stack([moves_matrix(b, moves) for b in series])  # [T, moves, L]
        panels = [(f"layer {layer + 1}", matrices[:, :, layer], list(moves.values()))
                  for layer in range(series.shape[1])]
    else:
        flat = series.reshape(series.shape[0], -1, series.shape[-1])  # [T, edges, ops]
        labels = list(ops) if flat.shape[2] == len(ops) else [str(i) for i in range(flat.shape[2])]
        panels = [(f"edge {label}", flat[:, row, :], labels) for row, label in enumerate(edge_labels(flat.shape[1], inputs))]
    cols = min(5, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig = Figure(figsize=(2.6 * cols + 1.8, 1.9 * rows + 0.6))
    axes = fig.subplots(rows, cols, squeeze=False, sharex=True, sharey=True)
    handles = {}
    for ax, (title, values, labels) in zip(axes.flat, panels):
        for column, label in enumerate(labels):
            if np.all(np.isnan(values[:, column])):
                continue
            (line,) = ax.plot(epochs, values[:, column], lw=1.2, marker="." if len(epochs) < 15 else None)
            line.set_color(f"C{column % 10}")
            handles.setdefault(label, line)
        ax.set_title(title, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax in axes[-1]:
        ax.set_xlabel("epoch", fontsize=8)
    fig.legend(handles.values(), handles.keys(), loc="center right", fontsize=7)
    fig.suptitle(f"{name} over epochs", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1 - 1.6 / fig.get_figwidth(), 1))
    return fig


def render_arch_heatmaps(distributions: Mapping[str, Any], ops: Sequence[str], directory: str | Path,
                         title: str = "", formats: Sequence[str] = FORMATS,
                         inputs: Sequence[str] = DARTS_INPUTS, moves: Moves | None = None) -> list[Path]:
    """Write ``arch_heatmap.*`` (all tensors side by side) into ``directory``."""
    return save_figure(arch_figure(distributions, ops, title, inputs, moves), Path(directory) / "arch_heatmap", formats)


def render_evolution(history: History, ops: Sequence[str], directory: str | Path,
                     formats: Sequence[str] = FORMATS, inputs: Sequence[str] = DARTS_INPUTS,
                     moves: Moves | None = None) -> list[Path]:
    """Write ``evolution_NAME.*`` for every architecture tensor of a history of two or more epochs."""
    if len(history) < 2:
        return []
    written = []
    for name in history[-1][1]:
        figure = evolution_figure(history, name, ops, inputs, moves)
        written += save_figure(figure, Path(directory) / f"evolution_{name}", formats)
    return written


def render_arch_figures(distributions: Mapping[str, Any] | None, history: History, ops: Sequence[str],
                        directory: str | Path, title: str = "", inputs: Sequence[str] = DARTS_INPUTS,
                        moves: Moves | None = None) -> list[Path]:
    """The heatmaps of ``distributions`` (when given) and their evolution over ``history``."""
    written = [] if distributions is None else render_arch_heatmaps(distributions, ops, directory, title,
                                                                      inputs=inputs, moves=moves)
    return written + render_evolution(history, ops, directory, inputs=inputs, moves=moves)
