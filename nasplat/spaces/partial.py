"""Partial channel connections and edge normalisation (PC-DARTS, Xu et al., ICLR 2020, arXiv 1907.05737).

**Partial channels** (paper sec. 3.2): a mixed edge sends only ``1/K`` of its input channels through its
candidate ops and passes the rest by, so the ops' activations, the memory the search is bounded by, shrink
``K``-fold; the bypass goes through a 2x2 max pool on a stride-2 edge. The two parts are concatenated and the
channels shuffled in ``K`` groups, so the next edge processes other channels. Ops are built for ``C/K`` channels.

**Edge normalisation** (sec. 3.3): one weight per incoming edge of each node, ``beta``, softmaxed over the node's
edges; the node sums its edges' outputs times these weights. It steadies the choice of edges, which partial
channels make noisy, and the decode ranks a node's edges by ``beta`` times the edge's strongest op probability.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch
import torch.nn.functional as F


def check_partial_channels(C: int, partial_channels: int) -> None:
    """ValueError unless ``partial_channels`` is a positive integer dividing ``C``."""
    if isinstance(partial_channels, bool) or not isinstance(partial_channels, int) or partial_channels < 1:
        raise ValueError(f"partial_channels must be a positive integer, got {partial_channels!r}")
    if C % partial_channels:
        raise ValueError(f"partial_channels={partial_channels} must divide the {C} channels of every mixed edge")


def check_pc_options(channels: int, partial_channels: object, edge_normalization: object, where: str) -> None:
    """ValueError naming the PC-DARTS space option a supernet cannot take: ``partial_channels`` must divide
    ``channels`` (the fewest channels of any mixed edge; ``where`` says which option sets them, e.g. ``"C=8"``),
    ``edge_normalization`` must be true, false or None."""
    if edge_normalization not in (None, True, False):
        raise ValueError(f"space option edge_normalization must be true, false or null, got {edge_normalization!r}")
    try:
        check_partial_channels(channels, partial_channels)
    except ValueError as err:
        raise ValueError(f"space option {err} ({where})") from None


def uses_edge_normalization(partial_channels: int, edge_normalization: bool | None) -> bool:
    """Whether a supernet weighs its edges: as asked, or by default exactly when it has partial channels (PC-DARTS)."""
    return partial_channels > 1 if edge_normalization is None else edge_normalization


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """ShuffleNet's shuffle: channel ``g * (C/groups) + i`` moves to ``i * groups + g``."""
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


def partial_bypass(x: torch.Tensor, partial_channels: int, stride: int) -> torch.Tensor:
    """The channels of ``x`` that pass the ops by (all but the first ``C/K``), max-pooled 2x2 on a stride-2 edge
    (rounding up, sized as the strided ops). The same for every edge that leaves one state: compute it once."""
    bypass = x[:, x.shape[1] // partial_channels:]
    return F.max_pool2d(bypass, 2, 2, ceil_mode=True) if stride != 1 else bypass


def merge_partial(processed: torch.Tensor, bypass: torch.Tensor, partial_channels: int) -> torch.Tensor:
    """The edge output: ``processed`` (the ops' weighted sum over the first ``C/K`` channels) joined with the
    :func:`partial_bypass`, shuffled in ``K`` groups."""
    return channel_shuffle(torch.cat([processed, bypass], dim=1), partial_channels)


def node_edge_weights(betas: Sequence[torch.Tensor]) -> torch.Tensor:
    """``[E]``: each node's ``beta`` softmaxed over its incoming edges, nodes in order (the cells' edge order)."""
    return torch.cat([torch.softmax(beta, dim=-1) for beta in betas])


def edge_parameter_names(prefix: str, num_nodes: int) -> list[str]:
    """The arch parameters of one cell's edge normalisation: ``<prefix>_edges<node>``, one per node."""
    return [f"{prefix}_edges{node}" for node in range(num_nodes)]


def cell_edge_weights(arch: Mapping[str, torch.Tensor], prefix: str, num_nodes: int,
                      missing_inputs: int = 0) -> torch.Tensor | None:
    """``[edges]``: the normalised edge weights of the cell whose parameters ``Supernet.add_edge_parameters`` added under
    ``prefix``, or None when ``arch`` has none (no edge normalisation). ``missing_inputs``: for a cell built without
    its first inputs, each node's weights over the edges that exist (the first logits are left out)."""
    names = edge_parameter_names(prefix, num_nodes)
    if names[0] not in arch:
        return None
    return node_edge_weights([arch[name][missing_inputs:] for name in names])
