"""The cost model of the Auto-DeepLab space: the cell's ops at every level a path can take, weighted by beta.

Costs follow the retrain network (TF ``hnasnet``, :mod:`.network`): layer ``l`` runs the cell at level ``t`` with
``F * 2^t`` filters per block at the level's size; when the path goes down (``t = s + 1``) the ops on the two cell
inputs are strided and read the level-``s`` size. A genotype's cost sums its cell's ops over its path.

Relaxed, the path is the Markov chain of the normalised beta with the paper's normalisation (eq. 7: a softmax over
each node's existing moves, so the moves out of a node sum to 1) started at the stem: ``P(l, t) = sum_s P(l-1, s) *
T[l, s -> t]``. The expected cost is ``sum_l sum_{s,t} P(l-1, s) T[l, s -> t] * cell(s -> t)``, ``cell`` the relaxed
cell cost of :func:`nasplat.expected_cell_cost`: the exact expectation over paths drawn from the chain and cells drawn
as that function states. With the ``boundary_scaled`` normalisation the moves do not sum to 1, so the chain always
uses the paper's.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import torch

from nasplat import (CostModel, OpShape, cell_edge_weights, cell_op_shapes, choice_shapes, cost_matrix,
                     expected_cell_cost, lookup)

from search_spaces.autodeeplab.paths import NUM_LEVELS, level_sizes, normalized_beta

Move = tuple[int, int]
"""(source level, target level)."""


class AutoDeepLabCostModel(CostModel):
    """Costs of the cell's ops along any path of ``L`` layers, for ``F`` filters per block at a crop ``image_size``."""

    def __init__(self, image_size: int, ops: Sequence[str], F: int, L: int, B: int,
                 build_options: Mapping[str, Any]) -> None:
        super().__init__(build_options)
        stem = math.ceil(math.ceil(image_size / 2) / 2)  # two stride-2 convs
        self.sizes = level_sizes((stem, stem))
        self.ops, self.F, self.L, self.B = tuple(ops), F, L, B
        self.moves = [(s, t) for s in range(NUM_LEVELS) for t in (s - 1, s, s + 1) if 0 <= t < NUM_LEVELS]
        self._matrices: tuple[Mapping[OpShape, float], torch.device, dict[Move, torch.Tensor]] | None = None

    def _cell_input(self, move: Move) -> tuple[int, tuple[int, int], int]:
        """(channels, input size, input stride) of the cell that ``move`` enters."""
        source, target = move
        if target == source + 1:
            return self.F * 2**target, self.sizes[source], 2
        return self.F * 2**target, self.sizes[target], 1

    def _grid(self, move: Move) -> list[list[OpShape | None]]:
        channels, size, stride = self._cell_input(move)
        return cell_op_shapes(self.ops, self.B, channels, size, stride)

    def op_shapes(self) -> list[OpShape]:
        return sorted({shape for move in self.moves for row in self._grid(move) for shape in row if shape is not None})

    def _cost_matrices(self, costs: Mapping[OpShape, float], device: torch.device) -> dict[Move, torch.Tensor]:
        """Move -> the ``[edge, op]`` cost matrix of the cell it enters under ``costs``, on ``device``; built once per
        table (``expected`` runs every architecture step with the same table)."""
        if self._matrices is None or self._matrices[0] is not costs or self._matrices[1] != device:
            self._matrices = (costs, device,
                              {move: cost_matrix([self._grid(move)], costs).to(device) for move in self.moves})
        return self._matrices[2]

    def expected(self, arch: Mapping[str, torch.Tensor], costs: Mapping[OpShape, float]) -> torch.Tensor:
        alpha, beta = arch["alpha"], arch["beta"]
        edge_weights = cell_edge_weights(arch, "alpha", self.B)
        cell = {move: expected_cell_cost(alpha, matrix, self.ops, self.B, edge_weights=edge_weights)
                for move, matrix in self._cost_matrices(costs, alpha.device).items()}
        moves = normalized_beta(beta.double(), "paper")  # [L, 4, 3]: k = 0 finer, 1 same, 2 coarser
        reach = [torch.ones((), dtype=torch.float64, device=beta.device)] + [None] * (NUM_LEVELS - 1)  # the stem
        total = torch.zeros((), dtype=torch.float64, device=beta.device)
        for layer in range(beta.shape[0]):
            after: list[torch.Tensor | None] = [None] * NUM_LEVELS
            for source, target in self.moves:
                if reach[source] is None:
                    continue
                flow = reach[source] * moves[layer, source, target - source + 1]
                total = total + flow * cell[(source, target)]
                after[target] = flow if after[target] is None else after[target] + flow
            reach = after
        return total

    def genotype_cost(self, genotype: Any, costs: Mapping[OpShape, float]) -> float:
        total, source = 0.0, 0
        for target in genotype.levels:
            channels, size, stride = self._cell_input((source, target))
            total += sum(lookup(costs, shape) for shape in choice_shapes(genotype.cell, channels, size, stride))
            source = target
        return total
