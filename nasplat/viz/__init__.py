"""Pictures of a search: cells as DAGs, the Auto-DeepLab path, arch heatmaps, prediction overlays.

Matplotlib is used through ``matplotlib.figure.Figure`` (Agg for PNG, no pyplot state), graphviz's
``dot`` draws cells when installed. Every ``render_*`` function returns the files it wrote.
"""
from nasplat.viz.cells import Rendered, cell_dot, cell_graph, render_cell, render_genotype_cells
from nasplat.viz.heatmaps import render_arch_heatmaps, render_evolution
from nasplat.viz.overlays import dataset_palette, predict_samples, render_overlays
from nasplat.viz.paths import render_autodeeplab, render_network_path
from nasplat.viz.pictures import PictureSet, Predictions, log_figures, render_pictures

__all__ = [
    "PictureSet", "Predictions", "Rendered", "cell_dot", "cell_graph", "dataset_palette", "log_figures", "predict_samples",
    "render_arch_heatmaps", "render_autodeeplab", "render_cell", "render_evolution", "render_genotype_cells",
    "render_network_path", "render_overlays", "render_pictures",
]
