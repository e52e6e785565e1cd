"""Pictures of a search: cells as DAGs, arch heatmaps, prediction overlays; generic, for every space.

A space draws its own architecture pictures through ``SearchSpace.figures`` with these helpers.
Matplotlib is used through ``matplotlib.figure.Figure`` (Agg for PNG, no pyplot state), graphviz's
``dot`` draws cells when installed. Every ``render_*`` function returns the files it wrote.
"""
from nasplat.viz.cells import (
    FORMATS,
    Rendered,
    cell_dot,
    cell_graph,
    render_cell,
    render_genotype_cells,
    renderer_of,
    save_figure,
)
from nasplat.viz.confusion import render_confusion_matrix, row_normalised
from nasplat.viz.heatmaps import render_arch_figures, render_arch_heatmaps, render_evolution
from nasplat.viz.overlays import dataset_palette, predict_samples, render_overlays
from nasplat.viz.pictures import PictureSet, Predictions, log_figures, render_pictures

__all__ = [
    "FORMATS", "PictureSet", "Predictions", "Rendered", "cell_dot", "cell_graph", "dataset_palette", "log_figures",
    "predict_samples", "render_arch_figures", "render_arch_heatmaps", "render_cell", "render_confusion_matrix",
    "render_evolution", "render_genotype_cells", "render_overlays", "render_pictures", "renderer_of", "row_normalised",
    "save_figure",
]
