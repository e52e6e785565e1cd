"""The Auto-DeepLab search network: cell alpha ``[B(B+3)/2, 8]`` shared by every cell, network beta ``[L, 4, 3]``.

Paper eq. 6: the state at stride ``s`` of layer ``l`` is ``sum over moves m in {s/2->s, s->s,
2s->s} of beta_m * Cell(H^{l-1} at the source, H^{l-2} at s)``; a node at stride ``s`` has
``B*F*s/4`` channels (``F*s/4`` per block).

* **Resampling** (the paper's choice): finer -> coarser through ReLU-3x3 stride-2 conv-BN
  (``ceil(H/2)``), coarser -> finer through a bilinear resize to the target level's size then
  ReLU-1x1 conv-BN, same level through ReLU-1x1 conv-BN. Level sizes: :func:`level_sizes`.
* **Cell weights**: one :class:`nasplat.MixedCell` per (layer, level) node, run once per incoming
  move (as in the NoamRosenberg port), with one input preprocessing per move and one for ``H^{l-2}``.
  The fused path runs the edges leaving ``H^{l-2}`` once per node, not once per move (they see the
  same input): same outputs, gradients and BN running statistics, less time and memory.
* **H^{l-2}** as in TF ``hnasnet``, the network the project retrains: layer 0 gets the stem's
  stride-2 output and layer 1 the stem's stride-4 output, resized bilinearly to the node's size
  (at every level those layers reach). From layer 2 on it is the node of layer ``l-2`` at the same
  stride; where that node does not exist (layer 2 at strides 16 and 32, layer 3 at 32) the cell
  has **no** ``H^{l-2}`` edges: they contribute nothing, and the alpha rows of "input 0" edges
  get no gradient from those cells.
* **Search head**: per level of the last layer, the paper's simplified ASPP (1x1, one 3x3 at rate
  ``96/s``, image pooling; ``B*F*s/4`` filters per branch), a 1x1 projection, a 1x1 classifier;
  the logits are resized to the input and summed over levels.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torch import nn

from nasplat import (DecisionCell, MixedCell, ReLUConvBN, Supernet, cell_edge_weights, cell_edges,
                     check_pc_options, checkpointed_call, resize_to, uses_edge_normalization)

from search_spaces.autodeeplab.ops import AUTODEEPLAB_OPS
from search_spaces.autodeeplab.paths import (
    DEFAULT_BETA_NORM,
    NUM_LEVELS,
    STRIDES,
    check_beta_norm,
    level_sizes,
    normalized_beta,
)
from search_spaces.autodeeplab.stem import Stem

DEFAULT_BLOCKS = 5
DEFAULT_LAYERS = 12


class SearchNode(nn.Module):
    """The cell of one (layer, level) node: a preprocessing per incoming move, one mixed DAG.

    ``sources`` maps each existing source level to its channel count; ``C_pp`` is the channel count
    of ``H^{l-2}``, or None when the node has none (then the DAG has no "input 0" edges).
    """

    def __init__(self, level: int, sources: Mapping[int, int], C_pp: int | None, C: int, blocks: int,
                 ops: Sequence[str], fused: bool = True, partial_channels: int = 1) -> None:
        super().__init__()
        self.blocks = blocks
        pre = {}
        for source, C_in in sources.items():
            if source == level - 1:  # finer -> coarser: stride-2 conv
                pre["down"] = ReLUConvBN(C_in, C, 3, 2, 1, affine=False)
            elif source == level:
                pre["same"] = ReLUConvBN(C_in, C, 1, 1, 0, affine=False)
            else:  # coarser -> finer: bilinear to the target size, then 1x1
                pre["up"] = ReLUConvBN(C_in, C, 1, 1, 0, affine=False)
        self.pre = nn.ModuleDict(pre)
        self.pre0 = ReLUConvBN(C_pp, C, 1, 1, 0, affine=False) if C_pp is not None else None
        self.dag = MixedCell(C, blocks, ops, num_inputs=2 if C_pp is not None else 1, fused=fused,
                             partial_channels=partial_channels)
        # alpha rows of this DAG's edges: without H^{l-2}, the rows of edges that leave input 0 are skipped
        rows = None if C_pp is not None else torch.tensor([row for row, (_, s) in enumerate(cell_edges(blocks)) if s])
        self.register_buffer("rows", rows, persistent=False)

    @staticmethod
    def direction(source: int, level: int) -> str:
        return {-1: "down", 0: "same", 1: "up"}[source - level]

    def forward(self, direction: str, h1: torch.Tensor, s0: torch.Tensor | None, weights: torch.Tensor,
                size: Sequence[int], edge_weights: tuple[torch.Tensor, torch.Tensor] | None = None,
                s0_terms: torch.Tensor | None = None) -> torch.Tensor:
        """One move into this node: ``H^{l-1}`` from the ``direction`` side, ``s0`` = preprocessed ``H^{l-2}``;
        ``edge_weights``: PC-DARTS's edge weights of a cell with and without ``H^{l-2}`` (None: no edge
        normalisation); ``s0_terms``: the DAG's edges leaving ``s0`` (``self.dag.edge_terms``), when the caller
        shares them."""
        if direction == "up":
            h1 = resize_to(h1, size)
        s1 = self.pre[direction](h1)
        if self.rows is None:
            states = self.dag([s0, s1], weights, None if s0_terms is None else {0: s0_terms},
                              edge_weights=None if edge_weights is None else edge_weights[0])
        else:
            states = self.dag([s1], weights.index_select(0, self.rows),
                              edge_weights=None if edge_weights is None else edge_weights[1])
        return torch.cat(states[-self.blocks:], dim=1)


class SearchASPP(nn.Module):
    """The search head of one level: 1x1, 3x3 at ``rate``, image pooling -> 1x1 -> classifier."""

    def __init__(self, C: int, rate: int, num_classes: int) -> None:
        super().__init__()
        self.conv1x1 = nn.Sequential(nn.Conv2d(C, C, 1, bias=False), nn.BatchNorm2d(C), nn.ReLU())
        self.conv3x3 = nn.Sequential(
            nn.Conv2d(C, C, 3, padding=rate, dilation=rate, bias=False), nn.BatchNorm2d(C), nn.ReLU()
        )
        # no BN on the 1x1 pooled branch: it would fail on a batch of one
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(C, C, 1), nn.ReLU())
        self.project = nn.Sequential(
            nn.Conv2d(3 * C, C, 1, bias=False), nn.BatchNorm2d(C), nn.ReLU(), nn.Conv2d(C, num_classes, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(x)
        pooled = self.pool(x).expand(-1, -1, *x.shape[-2:])
        return self.project(torch.cat([self.conv1x1(x), self.conv3x3(x), pooled], dim=1))


class AutoDeepLabSupernet(Supernet):
    """The Auto-DeepLab search network: arch parameters ``alpha [20, 8]`` and ``beta [L, 4, 3]``.

    ``checkpoint_cells=True`` recomputes every cell call in the backward pass
    (``torch.utils.checkpoint``, ``use_reentrant=False``): same outputs, gradients and BN running
    statistics, less memory; it also holds under ``torch.func.functional_call`` (second order).
    ``fused`` (default True) runs each cell's edges grouped by source state (:class:`nasplat.MixedCell`).
    ``partial_channels=K`` (PC-DARTS): 1/K of each cell's channels through its mixed ops (K divides ``F``);
    ``edge_normalization`` (default: on with partial channels) adds ``alpha_edges<block>``, the weights of each
    block's incoming edges.
    """

    def __init__(self, num_classes: int, F: int = 8, L: int = DEFAULT_LAYERS, B: int = DEFAULT_BLOCKS,
                 beta_norm: str = DEFAULT_BETA_NORM, checkpoint_cells: bool = False,
                 stem_channels: Sequence[int] = (64, 64, 128), fused: bool = True, partial_channels: int = 1,
                 edge_normalization: bool | None = None) -> None:
        super().__init__()
        if F < 1 or L < 1 or B < 1:
            raise ValueError(f"need F, L, B >= 1, got F={F}, L={L}, B={B}")
        check_pc_options(F, partial_channels, edge_normalization,
                         f"F={F}: the cells at stride 4 have F channels per block")
        self.F, self.L, self.B = F, L, B
        self.beta_norm = check_beta_norm(beta_norm)
        self.checkpoint_cells = checkpoint_cells
        self.ops = AUTODEEPLAB_OPS
        self.add_arch_parameter("alpha", 1e-3 * torch.randn(len(cell_edges(B)), len(AUTODEEPLAB_OPS)))
        self.add_arch_parameter("beta", 1e-3 * torch.randn(L, NUM_LEVELS, 3))
        if uses_edge_normalization(partial_channels, edge_normalization):
            self.add_edge_parameters("alpha", B)
        self.stem = Stem(stem_channels)

        def node_channels(layer: int) -> dict[int, int]:
            """Channels of the nodes of layer ``layer`` (-1: the stem's stride-4 output; below: none)."""
            if layer < 0:
                return {0: stem_channels[-1]} if layer == -1 else {}
            return {t: B * F * 2**t for t in range(min(layer + 1, NUM_LEVELS - 1) + 1)}

        self.cells = nn.ModuleList()
        for layer in range(L):
            prev = node_channels(layer - 1)
            nodes = nn.ModuleDict()
            for level in node_channels(layer):
                sources = {s: prev[s] for s in (level - 1, level, level + 1) if s in prev}
                C_pp = stem_channels[1 + layer] if layer < 2 else node_channels(layer - 2).get(level)
                nodes[str(level)] = SearchNode(level, sources, C_pp, F * 2**level, B, self.ops, fused, partial_channels)
            self.cells.append(nodes)
        self.heads = nn.ModuleDict({
            str(level): SearchASPP(C, 96 // STRIDES[level], num_classes)
            for level, C in node_channels(L - 1).items()
        })

    def _cell(self, node: SearchNode, direction: str, h1: torch.Tensor, s0: torch.Tensor | None,
              weights: torch.Tensor, size: Sequence[int], edge_weights: tuple[torch.Tensor, torch.Tensor] | None,
              s0_terms: torch.Tensor | None) -> torch.Tensor:
        if self.checkpoint_cells:
            return checkpointed_call(node, direction, h1, s0, weights, size, edge_weights)
        return node(direction, h1, s0, weights, size, edge_weights, s0_terms=s0_terms)

    def decode_options(self) -> dict[str, object]:
        return {"beta_norm": self.beta_norm}

    def decision_cells(self) -> dict[str, DecisionCell]:
        return {"alpha": DecisionCell(self.B, self.ops)}

    def arch_distributions(self) -> dict[str, torch.Tensor]:
        """Softmax over alpha's ops; beta as normalised (moves that do not exist are 0)."""
        return {
            **{name: torch.softmax(value.detach(), dim=-1) for name, value in self.arch.items() if name != "beta"},
            "beta": normalized_beta(self.arch["beta"].detach(), self.beta_norm),
        }

    def states(self, x: torch.Tensor) -> list[dict[int, torch.Tensor]]:
        """Per layer, level -> state (``B*F*2^level`` channels at ``level_sizes`` of the stem output)."""
        weights = torch.softmax(self.arch["alpha"], dim=-1)
        move_weights = normalized_beta(self.arch["beta"], self.beta_norm)
        with_s0 = cell_edge_weights(self.arch, "alpha", self.B)
        edge_weights = None if with_s0 is None else (with_s0, cell_edge_weights(self.arch, "alpha", self.B, 1))
        half, stem = self.stem(x)
        sizes = level_sizes(stem.shape[-2:])
        prev_prev: dict[int, torch.Tensor] = {}
        prev: dict[int, torch.Tensor] = {0: stem}
        layers: list[dict[int, torch.Tensor]] = []
        for layer, nodes in enumerate(self.cells):
            new: dict[int, torch.Tensor] = {}
            for key, node in nodes.items():
                level = int(key)
                s0 = None
                if node.pre0 is not None:  # H^{l-2}: a stem output for layers 0 and 1, resized (TF hnasnet)
                    s0 = node.pre0(resize_to((half, stem)[layer], sizes[level]) if layer < 2 else prev_prev[level])
                sources = [source for source in (level - 1, level, level + 1) if source in prev]
                s0_terms = None
                if s0 is not None and node.dag.fused and not self.checkpoint_cells:
                    # every move reads the same H^{l-2}: its edges run once, as the len(sources) runs would
                    s0_terms = node.dag.edge_terms(0, s0, weights, updates=len(sources))
                total = 0
                for source in sources:
                    out = self._cell(node, node.direction(source, level), prev[source], s0, weights, sizes[level],
                                     edge_weights, s0_terms)
                    total = total + move_weights[layer, source, level - source + 1] * out
                new[level] = total
            prev_prev, prev = prev, new
            layers.append(new)
        return layers

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        last = self.states(x)[-1]
        size = x.shape[-2:]
        return sum(resize_to(head(last[int(level)]), size) for level, head in self.heads.items())
