"""nasplat: distributed neural architecture search for semantic segmentation.

This module is the public API. Search spaces (built-in or a user's) use only the names below.
Each name is imported from its module on first use (PEP 562), so ``import nasplat`` and the
``nasplat`` command's ``--help`` load neither PyTorch nor matplotlib until something needs them.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from nasplat.version import __version__

_EXPORTS: dict[str, tuple[str, ...]] = {
    "nasplat.api": ("search", "retrain"),
    "nasplat.searching.config": ("SearchConfig",),
    "nasplat.retraining.config": ("RetrainConfig",),
    "nasplat.training.result": ("ExperimentResult",),
    "nasplat.searching.bilevel": ("BilevelOptimizer",),
    "nasplat.searching.cost": ("CostModel", "OpShape", "cell_op_shapes", "choice_shapes", "cost_matrix",
                               "expected_cell_cost", "lookup"),
    "nasplat.searching.topk": ("k_best", "top_cells"),
    "nasplat.spaces.cells": ("DiscreteCell", "MixedCell", "OpChoice", "cell_edges", "decode_cell", "resize_to"),
    "nasplat.spaces.checkpointing": ("checkpointed_call",),
    "nasplat.spaces.fused": ("GroupInput", "group_batch_norm", "register_group_forward", "stacked_conv"),
    "nasplat.spaces.genotype": ("Genotype", "GenotypeError", "save_genotype", "validate_cell_pairs", "validate_concat"),
    "nasplat.spaces.partial": ("cell_edge_weights", "channel_shuffle", "check_partial_channels", "check_pc_options",
                               "edge_parameter_names", "node_edge_weights", "uses_edge_normalization"),
    "nasplat.spaces.registry": ("UnknownSpaceError", "available_spaces", "genotype_from_dict", "get_space",
                                "load_genotype", "register_space"),
    "nasplat.spaces.space": ("DecisionCell", "SearchSpace", "Supernet"),
    "nasplat.spaces.ops": ("DARTS_OPS", "DilConv", "FactorizedReduce", "Identity", "MixedOp", "PoolBN", "ReLUConvBN",
                           "SepConv", "UnknownOpError", "Zero", "build_op", "get_op", "register_op", "registered_ops"),
    "nasplat.training.metrics": ("IGNORE_INDEX", "ConfusionMatrix"),
    "nasplat.models": ("available_models", "get_model", "register_model"),  # the package: it registers the baselines
    "nasplat.models.layers": ("ASPP", "ASPPPooling", "conv_bn_relu"),
    "nasplat.viz": ("render_arch_figures", "render_cell", "save_figure"),
}
"""Module -> the public names it defines."""

_ORIGIN = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = [*_ORIGIN, "__version__"]

if TYPE_CHECKING:  # the same names for type checkers and IDEs (and the layering rules' import scanner)
    from nasplat.api import retrain, search
    from nasplat.models import available_models, get_model, register_model
    from nasplat.models.layers import ASPP, ASPPPooling, conv_bn_relu
    from nasplat.retraining.config import RetrainConfig
    from nasplat.searching.bilevel import BilevelOptimizer
    from nasplat.searching.cost import (CostModel, OpShape, cell_op_shapes, choice_shapes, cost_matrix,
                                        expected_cell_cost, lookup)
    from nasplat.searching.topk import k_best, top_cells
    from nasplat.searching.config import SearchConfig
    from nasplat.spaces.cells import DiscreteCell, MixedCell, OpChoice, cell_edges, decode_cell, resize_to
    from nasplat.spaces.checkpointing import checkpointed_call
    from nasplat.spaces.fused import GroupInput, group_batch_norm, register_group_forward, stacked_conv
    from nasplat.spaces.genotype import Genotype, GenotypeError, save_genotype, validate_cell_pairs, validate_concat
    from nasplat.spaces.partial import (cell_edge_weights, channel_shuffle, check_partial_channels, check_pc_options,
                                        edge_parameter_names, node_edge_weights, uses_edge_normalization)
    from nasplat.spaces.ops import (DARTS_OPS, DilConv, FactorizedReduce, Identity, MixedOp, PoolBN, ReLUConvBN, SepConv,
                                    UnknownOpError, Zero, build_op, get_op, register_op, registered_ops)
    from nasplat.spaces.registry import (UnknownSpaceError, available_spaces, genotype_from_dict, get_space,
                                         load_genotype, register_space)
    from nasplat.spaces.space import DecisionCell, SearchSpace, Supernet
    from nasplat.training.metrics import IGNORE_INDEX, ConfusionMatrix
    from nasplat.training.result import ExperimentResult
    from nasplat.viz import render_arch_figures, render_cell, save_figure


def __getattr__(name: str) -> Any:
    """A public name, imported from its module when first asked for (then kept in this module)."""
    module = _ORIGIN.get(name)
    if module is None:
        raise AttributeError(f"module 'nasplat' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
