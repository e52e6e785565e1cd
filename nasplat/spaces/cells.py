"""Cell DAGs shared by cell-based spaces: edge order, the DARTS decode rule, mixed and discrete cells.

A cell has ``num_inputs`` input states (0 = the cell k-2 output, 1 = the cell k-1 output) and
``num_nodes`` intermediate nodes; node i sums one edge from every earlier state, so node i has
``num_inputs + i`` incoming edges. Edges are ordered node-major, then by source state, as in the
official DARTS code (rows 0, 2, 5, 9 start nodes 0..3 of a 4-node cell).
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from nasplat.spaces.fused import GroupInput, group_forward
from nasplat.spaces.ops import Identity, MixedOp, build_op

OpChoice = tuple[str, int]


def cell_edges(num_nodes: int, num_inputs: int = 2) -> list[tuple[int, int]]:
    """(node, source state) of every edge, in the official row order of the alpha matrix."""
    return [(node, source) for node in range(num_nodes) for source in range(num_inputs + node)]


def decode_cell(
    alpha: torch.Tensor,
    ops: Sequence[str],
    num_nodes: int,
    num_inputs: int = 2,
    keep: int = 2,
    excluded: Sequence[str] = ("none",),
    limits: Mapping[str, int | None] | None = None,
    edge_weights: torch.Tensor | None = None,
) -> list[OpChoice]:
    """The DARTS decode rule (quark0/darts ``Network.genotype``) on raw alpha logits.

    Row softmax; an edge's strength is its largest probability among ops not in ``excluded``;
    each node keeps its ``keep`` strongest incoming edges (stable: ties go to the lower source,
    the stronger edge is listed first), each with its strongest allowed op (ties: lower index).
    Returns ``keep`` (op, source) pairs per node, node-major.

    ``limits`` (op name -> n, None for no limit): at most n kept edges with that op, by the architecture
    refinement of P-DARTS (Chen et al. 2019, arXiv 1904.12760, which keeps M = 2 ``skip_connect``): while
    the cell has more, the kept edge whose probability of that op is lowest loses it (set to 0, the row not
    renormalised) and the cell is decoded again.

    ``edge_weights`` ([edges], PC-DARTS's normalised edge weights): every row's probabilities are multiplied by
    its edge's weight first, so a node keeps the edges of the largest ``weight * op probability`` (the op of an
    edge is the same either way).
    """
    probs = edge_probabilities(alpha, len(ops), num_nodes, num_inputs, edge_weights)
    allowed = [k for k, name in enumerate(ops) if name not in excluded]
    if not allowed:
        raise ValueError(f"every op is excluded from decoding: {list(ops)}")
    limits = {name: most for name, most in (limits or {}).items() if most is not None}
    for name, most in limits.items():
        if name not in ops or not isinstance(most, int) or most < 0:
            raise ValueError(f"decode limit {name}={most!r}: needs one of {list(ops)} and a count >= 0")
    choices = _decode_probs(probs, ops, allowed, num_nodes, num_inputs, keep)
    for name, most in limits.items():
        k = ops.index(name)
        while True:
            rows = [row for row, (op, _) in zip(_choice_rows(num_nodes, num_inputs, keep, choices), choices)
                    if op == name]
            if len(rows) <= most:
                break
            probs[min(rows, key=lambda row: probs[row, k].item()), k] = 0.0
            choices = _decode_probs(probs, ops, allowed, num_nodes, num_inputs, keep)
    return choices


def edge_probabilities(alpha: torch.Tensor, num_ops: int, num_nodes: int, num_inputs: int = 2,
                       edge_weights: torch.Tensor | None = None) -> torch.Tensor:
    """``softmax(alpha)`` per row in float64 on the CPU, times ``edge_weights`` per row when given; ValueError
    naming the expected shapes."""
    edges = len(cell_edges(num_nodes, num_inputs))
    if tuple(alpha.shape) != (edges, num_ops):
        raise ValueError(f"alpha has shape {tuple(alpha.shape)}, expected {(edges, num_ops)}")
    probs = torch.softmax(alpha.detach().double().cpu(), dim=-1)
    if edge_weights is None:
        return probs
    if tuple(edge_weights.shape) != (edges,):
        raise ValueError(f"edge_weights has shape {tuple(edge_weights.shape)}, expected {(edges,)}")
    return probs * edge_weights.detach().double().cpu()[:, None]


def _decode_probs(probs: torch.Tensor, ops: Sequence[str], allowed: Sequence[int], num_nodes: int, num_inputs: int,
                  keep: int) -> list[OpChoice]:
    choices: list[OpChoice] = []
    row = 0
    for node in range(num_nodes):
        fan_in = num_inputs + node
        node_probs = probs[row : row + fan_in][:, allowed]
        row += fan_in
        strengths = node_probs.max(dim=1).values.tolist()
        ranked = sorted(range(fan_in), key=lambda source: -strengths[source])
        for source in ranked[:keep]:
            row_probs = node_probs[source].tolist()
            best = max(range(len(allowed)), key=lambda k: (row_probs[k], -k))
            choices.append((ops[allowed[best]], source))
    return choices


def _choice_rows(num_nodes: int, num_inputs: int, keep: int, choices: Sequence[OpChoice]) -> list[int]:
    """The alpha row of each decoded (op, source) pair."""
    starts = [sum(num_inputs + n for n in range(node)) for node in range(num_nodes)]
    return [starts[i // keep] + source for i, (_, source) in enumerate(choices)]


class MixedCell(nn.Module):
    """The searchable DAG: every edge is a :class:`MixedOp` over ``ops``.

    Edges leaving the cell inputs use ``input_stride`` (2 in a reduction cell). ``fused=True`` (the
    default) runs the edges that leave one state together (:mod:`nasplat.spaces.fused`): the same
    parameters and results, fewer and larger kernels; ``fused=False`` runs edge by edge.
    ``partial_channels=K``: PC-DARTS's partial channel connections on every edge (:class:`MixedOp`).
    """

    def __init__(self, C: int, num_nodes: int, ops: Sequence[str], num_inputs: int = 2, input_stride: int = 1,
                 fused: bool = True, partial_channels: int = 1) -> None:
        super().__init__()
        self.num_nodes = num_nodes
        self.num_inputs = num_inputs
        self.fused = fused
        edges = cell_edges(num_nodes, num_inputs)
        self.edges = nn.ModuleList(
            MixedOp(C, input_stride if source < num_inputs else 1, ops, partial_channels=partial_channels)
            for _, source in edges
        )
        # per state: the edges that leave it, as (edge index, node), in node order
        self.outgoing = [[(e, node) for e, (node, s) in enumerate(edges) if s == state]
                         for state in range(num_inputs + num_nodes)]
        # the same edge indices, state after state, on the module's device (no host index per forward pass)
        self.register_buffer("edges_by_state", torch.tensor([e for group in self.outgoing for e, _ in group]),
                             persistent=False)
        ends = [sum(map(len, self.outgoing[: state + 1])) for state in range(len(self.outgoing))]
        self._state_rows = [slice(end - len(group), end) for end, group in zip(ends, self.outgoing)]

    def forward(self, inputs: Sequence[torch.Tensor], weights: torch.Tensor,
                input_terms: Mapping[int, torch.Tensor] | None = None,
                edge_weights: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Return every state (inputs first, then nodes); ``weights`` is [edges, ops], softmaxed.

        ``input_terms`` (fused only): input index -> its :meth:`edge_terms`, computed once by a caller that runs
        the cell several times on the same input. ``edge_weights`` ([edges], e.g. PC-DARTS's normalised edge
        weights, :func:`nasplat.spaces.partial.node_edge_weights`): each edge's output is multiplied by its weight.
        """
        if self.fused:
            return self._fused_forward(inputs, weights, input_terms or {}, edge_weights)
        states = list(inputs)
        edge = 0
        for _ in range(self.num_nodes):
            total = 0
            for source in range(len(states)):
                out = self.edges[edge](states[source], weights[edge])
                total = total + (out if edge_weights is None else edge_weights[edge] * out)
                edge += 1
            states.append(total)
        return states

    def edge_terms(self, state: int, x: torch.Tensor, weights: torch.Tensor, updates: int = 1) -> torch.Tensor | None:
        """``[N, E, C, H, W]``: the weighted mixed-op outputs of the ``E`` edges leaving ``state`` (value ``x``), in
        :attr:`outgoing` order; None when every op adds nothing. ``updates``: see :class:`GroupInput`."""
        edge_ids = [e for e, _ in self.outgoing[state]]
        edge_weights = weights.index_select(0, self.edges_by_state[self._state_rows[state]])
        group = GroupInput(self.edges[edge_ids[0]].op_input(x), len(edge_ids), updates)
        total = None
        for k in range(edge_weights.shape[1]):
            term = group_forward([self.edges[e].candidates[k] for e in edge_ids], group, edge_weights[:, k])
            if term is not None:
                total = term if total is None else total + term
        return total

    def _fused_forward(self, inputs: Sequence[torch.Tensor], weights: torch.Tensor,
                       input_terms: Mapping[int, torch.Tensor], edge_weights: torch.Tensor | None) -> list[torch.Tensor]:
        states = list(inputs)
        incoming: list[list[torch.Tensor]] = [[] for _ in range(self.num_nodes)]
        for state, outgoing in enumerate(self.outgoing):
            if state >= self.num_inputs:
                states.append(_sum(incoming[state - self.num_inputs]))
            if not outgoing:
                continue
            total = input_terms[state] if state in input_terms else self.edge_terms(state, states[state], weights)
            # the edges leaving one state share their stride, hence their partial channels' bypass
            bypass = None if total is None else self.edges[outgoing[0][0]].bypass(states[state])
            for j, (e, node) in enumerate(outgoing):  # every op added nothing: the per-edge zeros
                if total is None:
                    out = self.edges[e](states[state], weights[e])
                else:
                    out = self.edges[e].finish(total[:, j], states[state], bypass)
                incoming[node].append(out if edge_weights is None else edge_weights[e] * out)
        return states


def _sum(terms: list[torch.Tensor]) -> torch.Tensor:
    total = terms[0]
    for term in terms[1:]:
        total = total + term
    return total


class DiscreteCell(nn.Module):
    """The DAG a genotype describes: node k sums the ops of pairs 2k and 2k+1 (for ``keep=2``)."""

    def __init__(
        self,
        C: int,
        choices: Sequence[OpChoice],
        num_inputs: int = 2,
        input_stride: int = 1,
        keep: int = 2,
    ) -> None:
        super().__init__()
        if len(choices) % keep:
            raise ValueError(f"{len(choices)} op choices is not a multiple of {keep} per node")
        self.keep = keep
        self.sources = [source for _, source in choices]
        self.edges = nn.ModuleList(
            build_op(op, C, input_stride if source < num_inputs else 1)
            for op, source in choices
        )

    def forward(self, inputs: Sequence[torch.Tensor], drop_path: float = 0.0) -> list[torch.Tensor]:
        states = list(inputs)
        for first in range(0, len(self.edges), self.keep):
            total = 0
            for edge in range(first, first + self.keep):
                out = self.edges[edge](states[self.sources[edge]])
                if drop_path > 0.0 and self.training and not isinstance(self.edges[edge], (Identity, nn.Identity)):
                    out = _drop_path(out, drop_path)
                total = total + out
            states.append(total)
        return states


def _drop_path(x: torch.Tensor, rate: float) -> torch.Tensor:
    keep = 1.0 - rate
    mask = torch.empty(x.shape[0], 1, 1, 1, device=x.device, dtype=x.dtype).bernoulli_(keep)
    return x * mask / keep


def resize_to(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bilinear resize of logits/features to ``size`` (no-op when already that size)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)
