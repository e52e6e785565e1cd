"""The cost model of a space: which candidate ops run at which input shapes, and the expected cost of an architecture.

Cost-aware search (FBNet, arXiv 1812.03443; ProxylessNAS, arXiv 1812.00332) adds to the architecture loss the
expected cost of the relaxed architecture: a sum of per-op costs weighted by the architecture's probabilities, so
its gradient moves probability from dear ops to cheap ones. A space opts in with
:meth:`nasplat.SearchSpace.cost_model`, which returns a :class:`CostModel`: the list of :class:`OpShape` (one
candidate op at one input shape) that a table of per-op costs must cover, the differentiable expected cost of
arch parameters under such a table, and the cost of a decoded genotype under the same table.

The costs count the searched ops only (the parts the search chooses); stems, heads and cell input
preprocessing add a constant. This module imports torch and the cell layout only.
"""
from __future__ import annotations

import dataclasses
import math
from abc import ABC, abstractmethod
from typing import Any, Mapping, Sequence

import torch

from nasplat.spaces.cells import OpChoice, cell_edges

CostTable = Mapping["OpShape", float]
"""One cost (milliseconds, GFLOPs or parameters) per op at an input shape."""


@dataclasses.dataclass(frozen=True, order=True)
class OpShape:
    """One candidate op applied to a ``[1, channels, height, width]`` input with ``stride``."""

    op: str
    channels: int
    stride: int
    height: int
    width: int

    @property
    def key(self) -> str:
        """The op's name in a cost table file: ``op|C=16|stride=2|24x24``."""
        return f"{self.op}|C={self.channels}|stride={self.stride}|{self.height}x{self.width}"

    @classmethod
    def from_key(cls, key: str) -> "OpShape":
        """The inverse of :attr:`key`; ValueError naming the key when it is not of that form."""
        try:
            op, channels, stride, size = key.split("|")
            height, width = size.split("x")
            if not channels.startswith("C=") or not stride.startswith("stride="):
                raise ValueError
            return cls(op, int(channels[2:]), int(stride[7:]), int(height), int(width))
        except ValueError:
            raise ValueError(f"{key!r} is not an op shape key (op|C=N|stride=S|HxW)") from None

    @property
    def input_size(self) -> tuple[int, int, int, int]:
        return (1, self.channels, self.height, self.width)


def strided(size: tuple[int, int], stride: int) -> tuple[int, int]:
    """The output size of a stride-``stride`` op (ops keep ``H`` at stride 1 and give ``ceil(H/2)`` at stride 2)."""
    return (size[0], size[1]) if stride == 1 else (math.ceil(size[0] / stride), math.ceil(size[1] / stride))


def lookup(costs: CostTable, shape: OpShape) -> float:
    """``costs[shape]``; KeyError naming the op and shape when the table lacks it."""
    try:
        return float(costs[shape])
    except KeyError:
        raise KeyError(f"the cost table has no entry for {shape.key} (profile the space with the same image size "
                       "and space options)") from None


class CostModel(ABC):
    """What a space's cost-aware search needs. ``build_options``: the options of ``space.build`` that give the
    network whose ops the model counts (so its measured cost can be compared)."""

    def __init__(self, build_options: Mapping[str, Any] | None = None) -> None:
        self.build_options = dict(build_options or {})

    @abstractmethod
    def op_shapes(self) -> list[OpShape]:
        """Every candidate op at every input shape the architecture can use (no duplicates); what a table covers."""

    @abstractmethod
    def expected(self, arch: Mapping[str, torch.Tensor], costs: CostTable) -> torch.Tensor:
        """The expected cost of the architecture ``arch`` (``supernet.arch_parameters()``): a scalar tensor,
        differentiable with respect to the arch parameters."""

    @abstractmethod
    def genotype_cost(self, genotype: Any, costs: CostTable) -> float:
        """The cost of a decoded genotype: the sum of the costs of the ops it holds."""


# ------------------------------------------------------------------------------ cells in the DARTS notation


def cell_op_shapes(ops: Sequence[str], num_nodes: int, channels: int, size: tuple[int, int], input_stride: int = 1,
                   num_inputs: int = 2, excluded: Sequence[str] = ("none",)) -> list[list[OpShape | None]]:
    """``[edge][op]`` -> the :class:`OpShape` that edge's op runs at in a cell of ``channels`` whose inputs are
    ``size`` (``None`` for ``excluded`` ops, which a genotype never holds). Edges leaving the inputs use
    ``input_stride``; the nodes are at the strided size."""
    inner = strided(size, input_stride)
    grid = []
    for _, source in cell_edges(num_nodes, num_inputs):
        stride, at = (input_stride, size) if source < num_inputs else (1, inner)
        grid.append([None if op in excluded else OpShape(op, channels, stride, *at) for op in ops])
    return grid


def choice_shapes(choices: Sequence[OpChoice], channels: int, size: tuple[int, int], input_stride: int = 1,
                  num_inputs: int = 2) -> list[OpShape]:
    """The :class:`OpShape` of each ``(op, source)`` of a decoded cell, laid out as :func:`cell_op_shapes`."""
    inner = strided(size, input_stride)
    return [OpShape(op, channels, input_stride, *size) if source < num_inputs else OpShape(op, channels, 1, *inner)
            for op, source in choices]


def cost_matrix(grids: Sequence[Sequence[Sequence[OpShape | None]]], costs: CostTable) -> torch.Tensor:
    """``[edge, op]`` sums over ``grids`` (one :func:`cell_op_shapes` per cell sharing the arch row); 0 where
    ``None``."""
    rows, columns = len(grids[0]), len(grids[0][0])
    return torch.tensor([[sum(lookup(costs, grid[e][o]) for grid in grids if grid[e][o] is not None)
                          for o in range(columns)] for e in range(rows)], dtype=torch.float64)


def keep_weights(num_nodes: int, num_inputs: int = 2, keep: int = 2,
                 edge_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Per edge, the chance that the decoded cell keeps it when each node keeps ``keep`` of its inputs.

    Without ``edge_weights`` a node picks its inputs uniformly: ``keep / (num_inputs + node)``. With PC-DARTS's
    normalised edge weights (``[edges]``, summing to 1 per node; :func:`nasplat.cell_edge_weights`) the decode
    ranks a node's inputs by them, relaxed as ``min(1, keep * w_e)`` (differentiable in ``w``; a node with at most
    ``keep`` inputs keeps them all)."""
    edges = cell_edges(num_nodes, num_inputs)
    uniform = torch.tensor([min(1.0, keep / (num_inputs + node)) for node, _ in edges], dtype=torch.float64)
    if edge_weights is None:
        return uniform
    if tuple(edge_weights.shape) != (len(edges),):
        raise ValueError(f"edge_weights {tuple(edge_weights.shape)} must be [{len(edges)}], one per edge")
    weighted = (keep * edge_weights.double()).clamp(max=1.0)
    return torch.where(uniform.to(weighted.device) >= 1.0, torch.ones_like(weighted), weighted)


def expected_cell_cost(alpha: torch.Tensor, costs: torch.Tensor, ops: Sequence[str], num_nodes: int,
                       num_inputs: int = 2, keep: int = 2, excluded: Sequence[str] = ("none",),
                       edge_weights: torch.Tensor | None = None) -> torch.Tensor:
    """The expected cost of the cell a DARTS-rule decode (:func:`nasplat.decode_cell`) would give, relaxed.

    ``sum_e keep_e * sum_o q_eo * costs_eo``: ``q`` is the softmax of each alpha row over the ops not ``excluded``
    (a decoded cell never holds them, so they carry no cost and take no cost gradient) and ``keep_e`` is the chance
    a node keeps the edge (:func:`keep_weights`: uniform over its inputs, or from PC-DARTS's ``edge_weights``, which
    then take the cost gradient too). So a one-hot row costs that op's cost, uniform alpha costs the mean over
    genotypes drawn uniformly, and by linearity the value is the expected cost of a cell whose kept inputs are
    drawn by ``keep_e`` and whose ops are drawn from ``q``.
    """
    allowed = [k for k, name in enumerate(ops) if name not in excluded]
    if tuple(alpha.shape) != tuple(costs.shape) or alpha.shape[-1] != len(ops):
        raise ValueError(f"alpha {tuple(alpha.shape)} and costs {tuple(costs.shape)} must both be [edges, {len(ops)}]")
    q = torch.softmax(alpha[:, allowed].double(), dim=-1)
    weights = keep_weights(num_nodes, num_inputs, keep, edge_weights).to(q.device)
    return (weights[:, None] * q * costs[:, allowed].to(q.device)).sum()
