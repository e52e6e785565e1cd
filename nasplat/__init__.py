"""nasplat: distributed neural architecture search for semantic segmentation.

This module is the public API. Search spaces (built-in or a user's) use only the names below.
The drawing helpers (``render_cell``, ``render_arch_figures``, ``save_figure``, from
:mod:`nasplat.viz`) are imported on first use, so that ``import nasplat`` does not load matplotlib.
"""
from nasplat.api import retrain, search
from nasplat.retraining.config import RetrainConfig
from nasplat.searching.bilevel import BilevelOptimizer
from nasplat.searching.config import SearchConfig
from nasplat.training.result import ExperimentResult
from nasplat.spaces.cells import DiscreteCell, MixedCell, OpChoice, cell_edges, decode_cell, resize_to
from nasplat.spaces.genotype import Genotype, GenotypeError, save_genotype
from nasplat.spaces.registry import genotype_from_dict, load_genotype
from nasplat.training.metrics import IGNORE_INDEX, ConfusionMatrix
from nasplat.models import available_models, get_model, register_model
from nasplat.models.layers import ASPP, ASPPPooling, conv_bn_relu
from nasplat.spaces.ops import (
    DARTS_OPS,
    DilConv,
    FactorizedReduce,
    Identity,
    MixedOp,
    ReLUConvBN,
    SepConv,
    UnknownOpError,
    Zero,
    build_op,
    get_op,
    register_op,
    registered_ops,
)
from nasplat.spaces.registry import UnknownSpaceError, available_spaces, get_space, register_space
from nasplat.spaces.space import SearchSpace, Supernet

from nasplat.version import __version__

__all__ = [
    "search", "retrain", "SearchConfig", "RetrainConfig", "ExperimentResult",
    "ASPP", "ASPPPooling", "BilevelOptimizer", "ConfusionMatrix", "DARTS_OPS", "DilConv", "DiscreteCell", "FactorizedReduce",
    "Genotype", "GenotypeError", "IGNORE_INDEX", "Identity", "MixedCell", "MixedOp", "OpChoice",
    "ReLUConvBN", "SearchSpace", "SepConv", "Supernet", "UnknownOpError", "UnknownSpaceError", "Zero",
    "available_models", "available_spaces", "build_op", "cell_edges", "conv_bn_relu", "decode_cell", "genotype_from_dict", "get_model", "get_op",
    "get_space", "load_genotype", "register_model", "register_op", "register_space", "registered_ops",
    "render_arch_figures", "render_cell", "resize_to", "save_figure",
    "save_genotype", "__version__",
]

_DRAWING = ("render_arch_figures", "render_cell", "save_figure")


def __getattr__(name: str):
    """The drawing helpers of :mod:`nasplat.viz`, imported when first asked for."""
    if name in _DRAWING:
        from nasplat import viz

        return getattr(viz, name)
    raise AttributeError(f"module 'nasplat' has no attribute {name!r}")
