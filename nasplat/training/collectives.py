"""Collectives over torch.distributed used by the search loop (no-ops in a single process).

The bi-level step calls :func:`average_` on every gradient it computes, so each worker applies
the gradient of the global batch and all workers keep identical weights and arch parameters.
"""
from __future__ import annotations

from typing import Callable, Iterable, Sequence

import torch
import torch.distributed as dist
from torch import nn


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def average_(tensors: Sequence[torch.Tensor | None]) -> None:
    """Average tensors across workers in place, with one flat all-reduce per dtype."""
    size = world_size()
    present = [t for t in tensors if t is not None]
    if size == 1 or not present:
        return

    def all_reduce_mean(flat: torch.Tensor) -> None:
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat /= size

    _flat_collective_(present, all_reduce_mean)


def _flat_collective_(tensors: Sequence[torch.Tensor], collective: Callable[[torch.Tensor], None]) -> None:
    """Run ``collective`` in place on one flat tensor per dtype of ``tensors``, then copy the result back."""
    for dtype in sorted({t.dtype for t in tensors}, key=str):  # same order on every worker
        group = [t for t in tensors if t.dtype == dtype]
        flat = torch.cat([t.reshape(-1) for t in group])
        collective(flat)
        offset = 0
        for t in group:
            t.copy_(flat[offset : offset + t.numel()].view_as(t))
            offset += t.numel()


def broadcast_module_(module: nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s parameters and buffers to every worker, with one flat broadcast per dtype."""
    if world_size() == 1:
        return
    with torch.no_grad():
        _flat_collective_([t.data for t in [*module.parameters(), *module.buffers()]],
                          lambda flat: dist.broadcast(flat, src=src))


def average_buffers_(module: nn.Module) -> None:
    """Average floating-point buffers (BatchNorm running statistics) across workers."""
    floats: Iterable[torch.Tensor] = [b for b in module.buffers() if b.is_floating_point()]
    with torch.no_grad():
        average_(list(floats))


def max_abs_difference(tensor: torch.Tensor) -> float:
    """Largest |x_rank - x_0| across workers; 0 means every worker holds the same tensor."""
    if world_size() == 1:
        return 0.0
    reference = tensor.detach().clone()
    dist.broadcast(reference, src=0)
    diff = (tensor.detach() - reference).abs().max()
    dist.all_reduce(diff, op=dist.ReduceOp.MAX)
    return float(diff)
