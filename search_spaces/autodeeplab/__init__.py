"""The Auto-DeepLab hierarchical space (Liu et al., CVPR 2019, arXiv 1901.02985), registered as ``autodeeplab``.

Two levels are searched at once: the cell (alpha ``[20, 8]`` for B = 5 blocks, shared by every
cell) and the network path (beta ``[L, 4, 3]`` over output strides 4/8/16/32). Modules:

* :mod:`.ops`: the op set (DARTS order, full atrous convs as TF ``nas_cell.py``);
* :mod:`.paths`: levels, beta masks and normalisation (``beta_norm``), Viterbi, path counting;
* :mod:`.genotype`: :class:`AutoDeepLabGenotype` and the published :data:`PAPER_GENOTYPE`;
* :mod:`.supernet`: the search network (paper eq. 6); :mod:`.network`: the retrain network (TF
  ``hnasnet``); :mod:`.stem`: their common stem;
* :mod:`.space`: :class:`AutoDeepLabSpace`; :mod:`.figures`: its pictures.

Conventions and design choices: ``docs/autodeeplab.md``. Built only from the public ``nasplat``
API, torch and the standard library (matplotlib for the pictures).
"""
from search_spaces.autodeeplab.genotype import PAPER_GENOTYPE, AutoDeepLabGenotype
from search_spaces.autodeeplab.network import AutoDeepLabNetwork
from search_spaces.autodeeplab.ops import AUTODEEPLAB_OPS, AtrousConv
from search_spaces.autodeeplab.paths import (
    BETA_NORMS,
    STRIDES,
    beta_mask,
    greedy_path,
    level_sizes,
    move_labels,
    normalized_beta,
    path_counts,
    path_log_prob,
    sample_path,
    viterbi_path,
)
from search_spaces.autodeeplab.space import AutoDeepLabSpace
from search_spaces.autodeeplab.supernet import AutoDeepLabSupernet

__all__ = [
    "AUTODEEPLAB_OPS",
    "BETA_NORMS",
    "STRIDES",
    "AtrousConv",
    "AutoDeepLabGenotype",
    "AutoDeepLabNetwork",
    "AutoDeepLabSpace",
    "AutoDeepLabSupernet",
    "PAPER_GENOTYPE",
    "beta_mask",
    "greedy_path",
    "level_sizes",
    "move_labels",
    "normalized_beta",
    "path_counts",
    "path_log_prob",
    "sample_path",
    "viterbi_path",
]
