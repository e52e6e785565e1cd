"""All pictures of one search epoch in one folder, and logging a folder to an MLflow run.

The architecture pictures come from the space (``SearchSpace.figures``: by default the genotype's
cells, the arch heatmaps and their evolution), the prediction overlays from here. Each part is drawn
on its own: a part that fails is reported in :attr:`PictureSet.warnings` and the other is still
written.
"""
from __future__ import annotations

import dataclasses
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from nasplat.viz.cells import renderer_of
from nasplat.viz.heatmaps import History
from nasplat.viz.overlays import render_overlays


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


def render_pictures(directory: str | Path, space: Any, genotype: Any, distributions: Mapping[str, Any] | None,
                    history: History = (), predictions: Predictions | None = None, title: str = "") -> PictureSet:
    """The space's architecture pictures (``space.figures``, a :class:`nasplat.SearchSpace`) and the
    prediction overlays, written into ``directory``."""
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

    part("architecture", lambda: space.figures(genotype, directory, distributions, history, title))
    result.cell_renderer = renderer_of(result.paths)
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
