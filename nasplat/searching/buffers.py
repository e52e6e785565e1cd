"""Passes that leave no trace in a module's state: its buffers (BatchNorm running statistics), its parameters'
``requires_grad``."""
from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

import torch
from torch import nn


@contextlib.contextmanager
def preserved_buffers(model: nn.Module) -> Iterator[None]:
    """On exit, put every buffer of ``model`` back to its value on entry.

    Train-mode forward passes inside the block (a Hessian-vector product, an unrolled or perturbed
    copy of the weights) still normalise with their batch statistics, but the running statistics,
    and ``num_batches_tracked``, end up as if those passes had never run.
    """
    saved = {name: buffer.detach().clone() for name, buffer in model.named_buffers()}
    try:
        yield
    finally:
        with torch.no_grad():
            for name, buffer in model.named_buffers():
                if name in saved:
                    buffer.copy_(saved[name])


@contextlib.contextmanager
def frozen(params: Iterable[torch.Tensor]) -> Iterator[None]:
    """Inside the block ``params`` require no gradient, so a pass that differentiates with respect to the
    architecture alone keeps no tensor and computes no product for the weights' gradients (operations whose
    backward computes every input gradient at once, like custom autograd functions, would otherwise do both)."""
    changed = [param for param in params if param.requires_grad]
    for param in changed:
        param.requires_grad_(False)
    try:
        yield
    finally:
        for param in changed:
            param.requires_grad_(True)
