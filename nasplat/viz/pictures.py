"""All pictures of one search epoch in one folder, and logging a folder to an MLflow run.

Each part (cells, network path, heatmaps, evolution, predictions) is drawn on its own: a part that
fails is reported in :attr:`PictureSet.warnings` and the others are still written.
"""
from __future__ import annotations

import dataclasses
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from nasplat.viz.cells import DARTS_INPUTS, render_genotype_cells
from nasplat.viz.heatmaps import History, render_arch_heatmaps, render_evolution
from nasplat.viz.overlays import render_overlays
from nasplat.viz.paths import CELL_INPUTS, render_autodeeplab


@dataclasses.dataclass(frozen=True)
class Predictions:
    """Fixed validation samples and the model's predictions for them, with the dataset's colours."""

    images: Sequence[Any]
    masks: Sequence[Any]
    predictions: Sequence[Any]
    palette: Sequence[Sequence[int]]
    class_names: Sequence[str]


@dataclasses.dataclass
class PictureSet:
    """What :func:`render_pictures` wrote, which renderer drew the cells, failures and the time taken."""

    paths: list[Path] = dataclasses.field(default_factory=list)
    cell_renderer: str | None = None
    warnings: list[str] = dataclasses.field(default_factory=list)
    seconds: float = 0.0


def render_pictures(directory: str | Path, genotype: Any, distributions: Mapping[str, Any] | None,
                    ops: Sequence[str], history: History = (), predictions: Predictions | None = None,
                    title: str = "") -> PictureSet:
    """Cells (or the Auto-DeepLab path and cell), arch heatmaps, their evolution, prediction overlays.

    A genotype with a ``path`` field is drawn as Auto-DeepLab (path figure plus its cell); any other
    genotype gets a picture per ``NAME``/``NAME_concat`` cell.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    result = PictureSet()
    started = time.perf_counter()

    def part(name: str, draw: Callable[[], list[Path]]) -> None:
        try:
            result.paths.extend(draw())
        except Exception as err:  # a picture must never end a search
            where = traceback.extract_tb(err.__traceback__)[-1]
            result.warnings.append(f"{name}: {type(err).__name__}: {err} ({Path(where.filename).name}:{where.lineno})")

    hierarchical = hasattr(genotype, "path") and hasattr(genotype, "cell")
    inputs = CELL_INPUTS if hierarchical else DARTS_INPUTS

    def cells() -> list[Path]:
        if hierarchical:
            figures, cell = render_autodeeplab(genotype, directory)
            rendered = [cell]
        else:
            figures, rendered = [], render_genotype_cells(genotype, directory)
        if rendered:
            result.cell_renderer = rendered[0].renderer
        return figures + [path for r in rendered for path in r.paths]

    part("cells", cells)
    if distributions is not None:
        part("heatmaps", lambda: render_arch_heatmaps(distributions, ops, directory, title, inputs=inputs))
    if len(history) > 1:
        part("evolution", lambda: render_evolution(history, ops, directory, inputs=inputs))
    if predictions is not None:
        part("predictions", lambda: render_overlays(
            predictions.images, predictions.masks, predictions.predictions, predictions.palette, directory,
            predictions.class_names))
    result.seconds = time.perf_counter() - started
    return result


def log_figures(logger: Any, directory: str | Path, artifact_path: str) -> int:
    """Log every file under ``directory`` to the run of ``logger`` (a :class:`nasplat.tracking.logger.RunLogger`)
    under ``artifact_path``, keeping sub-folders; returns the number of files."""
    logger.log_artifacts(directory, artifact_path)
    return sum(1 for p in Path(directory).rglob("*") if p.is_file())
