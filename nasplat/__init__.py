"""nasplat: distributed neural architecture search for semantic segmentation.

This module is the public API. Search spaces (built-in or a user's) use only the names below.
"""
from nasplat.searching.bilevel import BilevelOptimizer
from nasplat.spaces.cells import DiscreteCell, MixedCell, OpChoice, cell_edges, decode_cell, resize_to
from nasplat.spaces.genotype import Genotype, GenotypeError, save_genotype
from nasplat.spaces.registry import genotype_from_dict, load_genotype
from nasplat.training.metrics import IGNORE_INDEX, ConfusionMatrix
from nasplat.models import available_models, get_model, register_model
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

__version__ = "0.1.0"

__all__ = [
    "BilevelOptimizer", "ConfusionMatrix", "DARTS_OPS", "DilConv", "DiscreteCell", "FactorizedReduce",
    "Genotype", "GenotypeError", "IGNORE_INDEX", "Identity", "MixedCell", "MixedOp", "OpChoice",
    "ReLUConvBN", "SearchSpace", "SepConv", "Supernet", "UnknownOpError", "UnknownSpaceError", "Zero",
    "available_models", "available_spaces", "build_op", "cell_edges", "decode_cell", "genotype_from_dict", "get_model", "get_op",
    "get_space", "load_genotype", "register_model", "register_op", "register_space", "registered_ops", "resize_to",
    "save_genotype", "__version__",
]
