"""The DARTS cell space (Liu, Simonyan, Yang, ICLR 2019) adapted to semantic segmentation.

A stem, ``layers`` stacked cells (reduction cells evenly spaced, channels doubling at each), and a
light head whose logits are upsampled to the input size. Each cell has 4 intermediate nodes, 14
mixed edges over the 8 DARTS ops and outputs the concat of its 4 nodes; all normal cells share
alpha ``normal`` and all reduction cells share ``reduce`` (each [14, 8], official edge order).
Built only from the public ``nasplat`` API.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torch import nn

from nasplat import (
    DARTS_OPS,
    DecisionCell,
    DiscreteCell,
    FactorizedReduce,
    Genotype,
    MixedCell,
    ReLUConvBN,
    SearchSpace,
    Supernet,
    check_pc_options,
    cell_edge_weights,
    checkpointed_call,
    decode_cell,
    k_best,
    register_space,
    resize_to,
    top_cells,
    uses_edge_normalization,
)

from search_spaces.darts_cost import DartsCostModel, cell_layout
from search_spaces.darts_genotype import NUM_EDGES, NUM_NODES, DartsGenotype

def check_max_skip_normal(value: object) -> None:
    """ValueError unless ``value`` is None or a count of normal-cell edges (0..8)."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 2 * NUM_NODES):
        raise ValueError(f"space option max_skip_normal must be an integer 0..{2 * NUM_NODES} or null, got {value!r}")


def reduction_layers(layers: int, reductions: int) -> tuple[int, ...]:
    """Indices of reduction cells, evenly spaced (DARTS: L//3 and 2L//3 for 2 reductions)."""
    if layers < 1 or not 0 <= reductions < layers:
        raise ValueError(f"need layers >= 1 and 0 <= reductions < layers, got layers={layers}, reductions={reductions}")
    return tuple(layers * (i + 1) // (reductions + 1) for i in range(reductions))


class _Stem(nn.Sequential):
    def __init__(self, C_out: int, stride: int) -> None:
        super().__init__(nn.Conv2d(3, C_out, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(C_out))


class _Head(nn.Module):
    """ReLU-1x1-BN-ReLU then a 1x1 classifier; logits resized to the input."""

    def __init__(self, C_in: int, num_classes: int, hidden: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.ReLU(), nn.Conv2d(C_in, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU(),
            nn.Conv2d(hidden, num_classes, 1),
        )

    def forward(self, x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        return resize_to(self.body(x), size)


class _CellInputs(nn.Module):
    """Bring the k-2 and k-1 outputs to C channels at the k-1 resolution."""

    def __init__(self, C_pp: int, C_p: int, C: int, reduction_prev: bool, affine: bool) -> None:
        super().__init__()
        self.pre0 = FactorizedReduce(C_pp, C, affine) if reduction_prev else ReLUConvBN(C_pp, C, 1, 1, 0, affine)
        self.pre1 = ReLUConvBN(C_p, C, 1, 1, 0, affine)

    def forward(self, s0: torch.Tensor, s1: torch.Tensor) -> list[torch.Tensor]:
        return [self.pre0(s0), self.pre1(s1)]


class _Backbone(nn.Module):
    """Stem + cells + head; ``make_cell(i, C_pp, C_p, C, reduction, reduction_prev)`` builds cell i."""

    def __init__(self, num_classes: int, C: int, layers: int, reductions: int, stem_multiplier: int,
                 stem_stride: int, head_channels: int, make_cell) -> None:
        super().__init__()
        C_stem = stem_multiplier * C
        self.stem = _Stem(C_stem, stem_stride)
        self.reductions = reduction_layers(layers, reductions)
        self.cells = nn.ModuleList()
        C_pp, C_p, C_curr, reduction_prev = C_stem, C_stem, C, False
        for i in range(layers):
            reduction = i in self.reductions
            C_curr = C_curr * 2 if reduction else C_curr
            cell, multiplier = make_cell(i, C_pp, C_p, C_curr, reduction, reduction_prev)
            self.cells.append(cell)
            C_pp, C_p, reduction_prev = C_p, multiplier * C_curr, reduction
        self.head = _Head(C_p, num_classes, head_channels)

    def run(self, x: torch.Tensor, cell_call) -> torch.Tensor:
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            s0, s1 = s1, cell_call(cell, s0, s1)
        return self.head(s1, x.shape[-2:])


class _SearchCell(nn.Module):
    def __init__(self, C_pp: int, C_p: int, C: int, reduction: bool, reduction_prev: bool, fused: bool,
                 partial_channels: int) -> None:
        super().__init__()
        self.reduction = reduction
        self.inputs = _CellInputs(C_pp, C_p, C, reduction_prev, affine=False)
        self.dag = MixedCell(C, NUM_NODES, DARTS_OPS, input_stride=2 if reduction else 1, fused=fused,
                             partial_channels=partial_channels)

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, weights: torch.Tensor,
                edge_weights: torch.Tensor | None) -> torch.Tensor:
        states = self.dag(self.inputs(s0, s1), weights, edge_weights=edge_weights)
        return torch.cat(states[-NUM_NODES:], dim=1)


def check_options(C: int, max_skip_normal: object, partial_channels: object, edge_normalization: object) -> None:
    """ValueError naming the space option that the supernet cannot take."""
    check_max_skip_normal(max_skip_normal)
    check_pc_options(C, partial_channels, edge_normalization, f"C={C}")


class DartsSupernet(Supernet):
    """The DARTS supernet for segmentation (BN without affine, as in the official search).

    ``fused`` (default True) runs each cell's edges grouped by source state (:class:`nasplat.MixedCell`);
    False runs them edge by edge, the straightforward path it is checked against. ``checkpoint_cells=True``
    recomputes each cell in the backward pass (:func:`nasplat.checkpointed_call`): less memory, more time.
    ``partial_channels=K`` (PC-DARTS): 1/K of the channels through the mixed ops; ``edge_normalization`` (default:
    on with partial channels, as PC-DARTS) adds arch parameters ``<cell>_edges<node>`` weighting each node's edges.
    """

    def __init__(self, num_classes: int, C: int = 8, layers: int = 5, reductions: int = 2,
                 stem_multiplier: int = 3, stem_stride: int = 1, head_channels: int = 64, fused: bool = True,
                 checkpoint_cells: bool = False, max_skip_normal: int | None = None, partial_channels: int = 1,
                 edge_normalization: bool | None = None) -> None:
        super().__init__()
        check_options(C, max_skip_normal, partial_channels, edge_normalization)
        self.checkpoint_cells = checkpoint_cells
        self.max_skip_normal = max_skip_normal
        for cell in ("normal", "reduce"):
            self.add_arch_parameter(cell, 1e-3 * torch.randn(NUM_EDGES, len(DARTS_OPS)))
            if uses_edge_normalization(partial_channels, edge_normalization):
                self.add_edge_parameters(cell, NUM_NODES)

        def make_cell(i, C_pp, C_p, C_curr, reduction, reduction_prev):
            return _SearchCell(C_pp, C_p, C_curr, reduction, reduction_prev, fused, partial_channels), NUM_NODES

        self.net = _Backbone(num_classes, C, layers, reductions, stem_multiplier, stem_stride, head_channels, make_cell)

    def decode_options(self) -> dict[str, object]:
        return {"max_skip_normal": self.max_skip_normal}

    def decision_cells(self) -> dict[str, DecisionCell]:
        return {"normal": DecisionCell(NUM_NODES, DARTS_OPS, limits={"skip_connect": self.max_skip_normal}),
                "reduce": DecisionCell(NUM_NODES, DARTS_OPS)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = {cell: (torch.softmax(self.arch[cell], dim=-1), cell_edge_weights(self.arch, cell, NUM_NODES))
                   for cell in ("normal", "reduce")}
        call = checkpointed_call if self.checkpoint_cells else lambda cell, *args: cell(*args)
        return self.net.run(x, lambda cell, s0, s1: call(cell, s0, s1, *weights["reduce" if cell.reduction else "normal"]))


class _DiscreteCell(nn.Module):
    def __init__(self, genotype: DartsGenotype, C_pp: int, C_p: int, C: int, reduction: bool, reduction_prev: bool) -> None:
        super().__init__()
        pairs = genotype.reduce if reduction else genotype.normal
        self.concat = genotype.reduce_concat if reduction else genotype.normal_concat
        self.inputs = _CellInputs(C_pp, C_p, C, reduction_prev, affine=True)
        self.dag = DiscreteCell(C, pairs, input_stride=2 if reduction else 1)

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, drop_path: float) -> torch.Tensor:
        states = self.dag(self.inputs(s0, s1), drop_path)
        return torch.cat([states[i] for i in self.concat], dim=1)


class DartsNetwork(nn.Module):
    """The discrete network of a DARTS genotype, with optional drop-path for retraining."""

    def __init__(self, genotype: DartsGenotype, num_classes: int, C: int = 16, layers: int = 8,
                 reductions: int = 2, stem_multiplier: int = 3, stem_stride: int = 1,
                 head_channels: int = 128, drop_path: float = 0.0) -> None:
        super().__init__()
        self.genotype = genotype
        self.drop_path = drop_path

        def make_cell(i, C_pp, C_p, C_curr, reduction, reduction_prev):
            cell = _DiscreteCell(genotype, C_pp, C_p, C_curr, reduction, reduction_prev)
            return cell, len(cell.concat)

        self.net = _Backbone(num_classes, C, layers, reductions, stem_multiplier, stem_stride, head_channels, make_cell)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.run(x, lambda cell, s0, s1: cell(s0, s1, self.drop_path))


@register_space
class DartsSpace(SearchSpace):
    """DARTS cell space; ``ops`` is the official PRIMITIVES order (index breaks decode ties)."""

    name = "darts"
    ops = DARTS_OPS
    genotype_type = DartsGenotype
    search_defaults = {"max_skip_normal": 2}  # P-DARTS's cap against the skip collapse (docs/collapse.md)

    def supernet(self, num_classes: int, **options) -> DartsSupernet:
        return DartsSupernet(num_classes, **options)

    def min_image_size(self, stem_stride: int = 1, reductions: int = 2, layers: int = 5, C: int = 8,
                       max_skip_normal: int | None = None, partial_channels: int = 1,
                       edge_normalization: bool | None = None, **options) -> int:
        reduction_layers(layers, reductions)  # ValueError for a layout the supernet cannot build
        check_options(C, max_skip_normal, partial_channels, edge_normalization)
        return stem_stride * 2 ** reductions

    def decode(self, arch: Mapping[str, torch.Tensor], max_skip_normal: int | None = None,
               **options) -> DartsGenotype:
        """The DARTS rule (:func:`nasplat.decode_cell`) per cell; ``max_skip_normal``: at most that many
        ``skip_connect`` in the normal cell, by P-DARTS's refinement (the supernet option of the same name)."""
        self.require_arch(arch, "normal", "reduce")
        concat = tuple(range(2, 2 + NUM_NODES))
        return DartsGenotype(
            normal=decode_cell(arch["normal"], self.ops, NUM_NODES, limits={"skip_connect": max_skip_normal},
                               edge_weights=cell_edge_weights(arch, "normal", NUM_NODES)),
            normal_concat=concat,
            reduce=decode_cell(arch["reduce"], self.ops, NUM_NODES,
                               edge_weights=cell_edge_weights(arch, "reduce", NUM_NODES)),
            reduce_concat=concat,
        )

    def build(self, genotype: Genotype, num_classes: int, **options) -> DartsNetwork:
        self.require_genotype(genotype)
        return DartsNetwork(genotype, num_classes, **options)

    def cost_model(self, image_size: int, C: int = 8, layers: int = 5, reductions: int = 2, stem_multiplier: int = 3,
                   stem_stride: int = 1, head_channels: int = 64, fused: bool = True, checkpoint_cells: bool = False,
                   partial_channels: int = 1, edge_normalization: bool | None = None,
                   max_skip_normal: int | None = None) -> DartsCostModel:
        """The searched ops of the network these supernet options describe (``build`` takes the same options; how
        the supernet runs, ``fused``, ``checkpoint_cells`` and the PC-DARTS options, and the decode's
        ``max_skip_normal`` do not change them)."""
        cells = cell_layout(image_size, C, reduction_layers(layers, reductions), layers, stem_stride)
        options = {"C": C, "layers": layers, "reductions": reductions, "stem_multiplier": stem_multiplier,
                   "stem_stride": stem_stride, "head_channels": head_channels}
        return DartsCostModel(cells, self.ops, NUM_NODES, options)

    def top_genotypes(self, arch: Mapping[str, torch.Tensor], k: int, max_skip_normal: int | None = None,
                      **options) -> list[tuple[float, DartsGenotype]]:
        """Strength: the log of the product of the kept edges' op probabilities over both cells
        (:func:`nasplat.top_cells`); rank 1 is :meth:`decode`. With ``max_skip_normal``, the strongest normal cells
        within it (P-DARTS's capped decode is greedy and may rank lower)."""
        self.require_arch(arch, "normal", "reduce")
        concat = tuple(range(2, 2 + NUM_NODES))
        cells = [top_cells(arch["normal"], self.ops, NUM_NODES, k, limits={"skip_connect": max_skip_normal},
                           edge_weights=cell_edge_weights(arch, "normal", NUM_NODES)),
                 top_cells(arch["reduce"], self.ops, NUM_NODES, k,
                           edge_weights=cell_edge_weights(arch, "reduce", NUM_NODES))]
        return [(score, DartsGenotype(normal=normal, normal_concat=concat, reduce=reduce, reduce_concat=concat))
                for score, (normal, reduce) in k_best(cells, k)]


DARTS_V2 = DartsGenotype(
    normal=[["sep_conv_3x3", 0], ["sep_conv_3x3", 1], ["sep_conv_3x3", 0], ["sep_conv_3x3", 1],
            ["sep_conv_3x3", 1], ["skip_connect", 0], ["skip_connect", 0], ["dil_conv_3x3", 2]],
    normal_concat=[2, 3, 4, 5],
    reduce=[["max_pool_3x3", 0], ["max_pool_3x3", 1], ["skip_connect", 2], ["max_pool_3x3", 1],
            ["max_pool_3x3", 0], ["skip_connect", 2], ["skip_connect", 2], ["max_pool_3x3", 1]],
    reduce_concat=[2, 3, 4, 5],
)
"""The published DARTS (second order) cells, quark0/darts ``genotypes.py``."""
