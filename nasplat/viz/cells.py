"""A cell in the DARTS notation drawn as a labelled DAG: DOT source, then PNG and SVG.

Pairs ``2k`` and ``2k+1`` of a cell list feed intermediate node ``k``; each pair is
``[op, input]`` with input 0 and 1 the two cell inputs and ``2..`` the earlier nodes. The cell
output concatenates the nodes listed in ``*_concat``. Graphviz's ``dot`` lays the graph out when it
is on the PATH; otherwise the same graph is drawn by matplotlib in a fixed layered layout, and the
returned :class:`Rendered` says which renderer ran.
"""
from __future__ import annotations

import dataclasses
import shutil
import subprocess
from pathlib import Path
from typing import Any, Sequence

from matplotlib import rc_context
from matplotlib.figure import Figure

DARTS_INPUTS: tuple[str, str] = ("c_{k-2}", "c_{k-1}")
DARTS_OUTPUT = "c_{k}"
FORMATS: tuple[str, ...] = ("png", "svg")
DOT_TIMEOUT_S = 60
_COLOURS = {"input": "#cfe2f3", "node": "#fff2cc", "output": "#d9ead3"}


@dataclasses.dataclass(frozen=True)
class CellGraph:
    """The DAG of one cell: node names, ``(source, target, op)`` edges and the concatenated nodes."""

    inputs: tuple[str, ...]
    nodes: tuple[str, ...]
    output: str
    edges: tuple[tuple[str, str, str], ...]
    concat: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Rendered:
    """Files written for one picture and the renderer that drew them (``graphviz`` or ``matplotlib``)."""

    paths: tuple[Path, ...]
    renderer: str


def cell_graph(
    pairs: Sequence[Sequence[Any]], concat: Sequence[int],
    inputs: Sequence[str] = DARTS_INPUTS, output: str = DARTS_OUTPUT,
) -> CellGraph:
    """The DAG of a cell given as ``[op, input]`` pairs (two per node) and its ``concat`` list."""
    if len(pairs) % 2:
        raise ValueError(f"a cell needs two [op, input] pairs per node, got {len(pairs)} pairs")
    num_inputs = len(inputs)
    nodes = tuple(str(k) for k in range(len(pairs) // 2))

    def state(index: int, node: int) -> str:
        if not isinstance(index, int) or not 0 <= index < num_inputs + node:
            raise ValueError(f"pair of node {node}: input {index!r} must be in 0..{num_inputs + node - 1}")
        return inputs[index] if index < num_inputs else nodes[index - num_inputs]

    edges = tuple((state(int(source), i // 2), nodes[i // 2], str(op)) for i, (op, source) in enumerate(pairs))
    cat = []
    for index in concat:
        if not num_inputs <= int(index) < num_inputs + len(nodes):
            raise ValueError(f"concat index {index!r} is not an intermediate node ({num_inputs}..{num_inputs + len(nodes) - 1})")
        cat.append(nodes[int(index) - num_inputs])
    return CellGraph(tuple(inputs), nodes, output, edges, tuple(cat))


def genotype_cells(genotype: Any) -> dict[str, tuple[Sequence, Sequence]]:
    """Every ``NAME`` / ``NAME_concat`` field pair of a genotype dataclass: name -> (pairs, concat)."""
    fields = {f.name for f in dataclasses.fields(genotype)}
    return {name: (getattr(genotype, name), getattr(genotype, f"{name}_concat"))
            for name in sorted(fields) if f"{name}_concat" in fields}


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def cell_dot(graph: CellGraph, title: str = "") -> str:
    """Graphviz DOT source of a cell, left to right: inputs, intermediate nodes, the output concat."""
    lines = ["digraph cell {", "  rankdir=LR;", '  node [shape=box, style="rounded,filled", fontname="Helvetica"];',
             '  edge [fontname="Helvetica", fontsize=10];']
    if title:
        lines.append(f"  label={_quote(title)}; labelloc=t;")
    for name in graph.inputs:
        lines.append(f"  {_quote(name)} [fillcolor={_quote(_COLOURS['input'])}];")
    for name in graph.nodes:
        lines.append(f"  {_quote(name)} [shape=circle, fillcolor={_quote(_COLOURS['node'])}];")
    lines.append(f"  {_quote(graph.output)} [fillcolor={_quote(_COLOURS['output'])}];")
    for source, target, op in graph.edges:
        lines.append(f"  {_quote(source)} -> {_quote(target)} [label={_quote(op)}];")
    for name in graph.concat:
        lines.append(f"  {_quote(name)} -> {_quote(graph.output)} [style=dashed, color=gray40];")
    lines.append("}")
    return "\n".join(lines) + "\n"


def save_figure(fig: Figure, stem: Path, formats: Sequence[str] = FORMATS) -> list[Path]:
    """Save ``fig`` as ``stem.<fmt>`` for each format; SVG keeps its text as text (searchable, small)."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    written = []
    with rc_context({"svg.fonttype": "none"}):
        for fmt in formats:
            path = stem.with_suffix(f".{fmt}")
            fig.savefig(path, format=fmt, dpi=100, bbox_inches="tight")
            written.append(path)
    return written


def _run_dot(source: str, stem: Path, formats: Sequence[str]) -> tuple[Path, ...] | None:
    """PNG/SVG from DOT source with graphviz; None when ``dot`` is missing or fails."""
    dot = shutil.which("dot")
    if dot is None:
        return None
    paths = []
    for fmt in formats:
        path = stem.with_suffix(f".{fmt}")
        try:
            subprocess.run([dot, f"-T{fmt}", "-o", str(path)], input=source, text=True, check=True,
                           capture_output=True, timeout=DOT_TIMEOUT_S)
        except (OSError, subprocess.SubprocessError) as err:
            print(f"[nasplat] warning: graphviz dot failed ({err}); drawing {stem.name} with matplotlib", flush=True)
            return None
        paths.append(path)
    return tuple(paths)


def layered_positions(graph: CellGraph) -> dict[str, tuple[float, float]]:
    """A fixed layout: inputs in column 0, each node one column right of its deepest source, output last."""
    column = {name: 0 for name in graph.inputs}
    for node in graph.nodes:
        column[node] = 1 + max((column[s] for s, t, _ in graph.edges if t == node), default=0)
    column[graph.output] = 1 + max(column.values())
    by_column: dict[int, list[str]] = {}
    for name, col in column.items():
        by_column.setdefault(col, []).append(name)
    positions = {}
    for col, names in by_column.items():
        for row, name in enumerate(names):
            positions[name] = (float(col), (len(names) - 1) / 2 - row)
    return positions


def cell_figure(graph: CellGraph, title: str = "") -> Figure:
    """The cell drawn with matplotlib (the renderer used when graphviz is not installed)."""
    pos = layered_positions(graph)
    columns = max(x for x, _ in pos.values()) + 1
    rows = max(sum(1 for p in pos.values() if p[0] == c) for c in range(int(columns)))
    fig = Figure(figsize=(2.2 * columns + 1, 1.3 * rows + 1.2))
    ax = fig.add_subplot()
    boxes = {name: dict(boxstyle="round,pad=0.3", fc=_COLOURS["input"]) for name in graph.inputs}
    boxes.update({name: dict(boxstyle="circle,pad=0.3", fc=_COLOURS["node"]) for name in graph.nodes})
    boxes[graph.output] = dict(boxstyle="round,pad=0.3", fc=_COLOURS["output"])
    texts = {name: ax.text(*pos[name], f"${name}$" if ("_" in name or "^" in name) else name, ha="center", va="center",
                           bbox=boxes[name], zorder=3) for name in pos}
    for index, (source, target, op) in enumerate(graph.edges):
        rad = 0.15 if index % 2 else -0.15
        ax.annotate("", xy=pos[target], xytext=pos[source], zorder=1,
                    arrowprops=dict(arrowstyle="-|>", connectionstyle=f"arc3,rad={rad}", color="black",
                                    patchA=texts[source], patchB=texts[target], shrinkA=2, shrinkB=2))
        (x0, y0), (x1, y1) = pos[source], pos[target]
        # midpoint of the arc: the chord's midpoint pushed sideways by rad * chord length / 2
        mx, my = (x0 + x1) / 2 + rad * (y1 - y0) / 2, (y0 + y1) / 2 - rad * (x1 - x0) / 2
        ax.text(mx, my, op, fontsize=7, ha="center", va="center", zorder=2,
                bbox=dict(boxstyle="round,pad=0.1", fc="white", ec="none", alpha=0.8))
    for name in graph.concat:
        ax.annotate("", xy=pos[graph.output], xytext=pos[name], zorder=1,
                    arrowprops=dict(arrowstyle="-|>", linestyle="--", color="0.4",
                                    patchA=texts[name], patchB=texts[graph.output]))
    ax.set_xlim(-0.6, columns - 0.4)
    ax.set_ylim(-rows / 2 - 0.2, rows / 2 + 0.2)
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    return fig


def render_graph(graph: CellGraph, directory: str | Path, name: str, title: str = "",
                 formats: Sequence[str] = FORMATS) -> Rendered:
    """Write ``NAME.dot`` and ``NAME.{png,svg}`` into ``directory`` (graphviz, else matplotlib)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    source = cell_dot(graph, title)
    dot_path = directory / f"{name}.dot"
    dot_path.write_text(source)
    stem = directory / name
    drawn = _run_dot(source, stem, formats)
    if drawn is not None:
        return Rendered((dot_path, *drawn), "graphviz")
    return Rendered((dot_path, *save_figure(cell_figure(graph, title), stem, formats)), "matplotlib")


def render_cell(pairs: Sequence[Sequence[Any]], concat: Sequence[int], directory: str | Path, name: str,
                title: str = "", inputs: Sequence[str] = DARTS_INPUTS, output: str = DARTS_OUTPUT,
                formats: Sequence[str] = FORMATS) -> Rendered:
    """Draw one cell given in the DARTS notation; see :func:`render_graph`."""
    return render_graph(cell_graph(pairs, concat, inputs, output), directory, name, title, formats)


def render_genotype_cells(genotype: Any, directory: str | Path, inputs: Sequence[str] = DARTS_INPUTS,
                          output: str = DARTS_OUTPUT, formats: Sequence[str] = FORMATS) -> list[Rendered]:
    """Every cell of a genotype (each ``NAME``/``NAME_concat`` field pair) as ``cell_NAME.*``."""
    return [render_cell(pairs, concat, directory, f"cell_{name}", f"{name} cell", inputs, output, formats)
            for name, (pairs, concat) in genotype_cells(genotype).items()]


def renderer_of(paths: Sequence[Path]) -> str | None:
    """Which renderer drew the first cell among ``paths`` (a ``NAME.dot`` and its pictures): ``matplotlib``
    when its picture says it was made by matplotlib (PNG and SVG carry its name), else ``graphviz``;
    None when ``paths`` holds no cell."""
    paths = [Path(p) for p in paths]
    for dot in (p for p in paths if p.suffix == ".dot"):
        pictures = [p for p in paths if p.parent == dot.parent and p.stem == dot.stem and p.suffix != ".dot"]
        if pictures:
            with open(pictures[0], "rb") as handle:
                head = handle.read(4096).lower()
            return "matplotlib" if b"matplotlib" in head else "graphviz"
    return None
