"""The cost model of the DARTS space: every cell's candidate ops at that cell's width and resolution.

A network of the DARTS space stacks cells; all normal cells share alpha ``normal`` and all reduction cells share
``reduce``. The cost of an op on edge ``e`` of a cell type sums over the cells of that type (their widths and
resolutions differ), and each cell's relaxed cost is :func:`nasplat.expected_cell_cost` (a node keeps 2 of its
inputs, ``none`` is never kept). A genotype's cost sums its 8 ops per cell over every cell.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import torch

from nasplat import (CostModel, OpShape, cell_edge_weights, cell_op_shapes, choice_shapes, cost_matrix,
                     expected_cell_cost, lookup)

CellLayout = tuple[int, tuple[int, int], bool]
"""(channels, input size, reduction) of one cell."""


def cell_layout(image_size: int, C: int, reductions_at: Sequence[int], layers: int,
                stem_stride: int) -> list[CellLayout]:
    """Each cell's width, input resolution and kind: the stem keeps ``ceil(S / stem_stride)``, a reduction cell
    doubles the width and halves the resolution (ceil)."""
    size = math.ceil(image_size / stem_stride)
    cells, channels = [], C
    for i in range(layers):
        reduction = i in reductions_at
        channels = channels * 2 if reduction else channels
        cells.append((channels, (size, size), reduction))
        size = math.ceil(size / 2) if reduction else size
    return cells


class DartsCostModel(CostModel):
    """Costs of the searched ops of a DARTS network laid out by :func:`cell_layout`."""

    def __init__(self, cells: Sequence[CellLayout], ops: Sequence[str], num_nodes: int,
                 build_options: Mapping[str, Any]) -> None:
        super().__init__(build_options)
        self.cells, self.ops, self.num_nodes = list(cells), tuple(ops), num_nodes
        self._matrices: tuple[Mapping[OpShape, float], torch.device, dict[str, torch.Tensor]] | None = None

    def _grids(self, reduction: bool) -> list[list[list[OpShape | None]]]:
        return [cell_op_shapes(self.ops, self.num_nodes, channels, size, 2 if red else 1)
                for channels, size, red in self.cells if red == reduction]

    def op_shapes(self) -> list[OpShape]:
        found = {shape for reduction in (False, True) for grid in self._grids(reduction) for row in grid
                 for shape in row if shape is not None}
        return sorted(found)

    def _cost_matrices(self, costs: Mapping[OpShape, float], device: torch.device) -> dict[str, torch.Tensor]:
        """Alpha name -> its ``[edge, op]`` cost matrix under ``costs`` on ``device``; built once per table
        (``expected`` runs every architecture step with the same table)."""
        if self._matrices is None or self._matrices[0] is not costs or self._matrices[1] != device:
            grids = {name: self._grids(reduction) for name, reduction in (("normal", False), ("reduce", True))}
            matrices = {name: cost_matrix(cells, costs).to(device) for name, cells in grids.items() if cells}
            self._matrices = (costs, device, matrices)
        return self._matrices[2]

    def expected(self, arch: Mapping[str, torch.Tensor], costs: Mapping[OpShape, float]) -> torch.Tensor:
        total = torch.zeros((), dtype=torch.float64, device=arch["normal"].device)
        for name, matrix in self._cost_matrices(costs, total.device).items():
            total = total + expected_cell_cost(arch[name], matrix, self.ops, self.num_nodes,
                                               edge_weights=cell_edge_weights(arch, name, self.num_nodes))
        return total

    def genotype_cost(self, genotype: Any, costs: Mapping[OpShape, float]) -> float:
        total = 0.0
        for channels, size, reduction in self.cells:
            choices = genotype.reduce if reduction else genotype.normal
            total += sum(lookup(costs, s) for s in choice_shapes(choices, channels, size, 2 if reduction else 1))
        return total
