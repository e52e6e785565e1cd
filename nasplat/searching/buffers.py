"""Forward passes that leave no trace in a module's buffers (BatchNorm running statistics)."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

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
