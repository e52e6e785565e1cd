"""Activation checkpointing of a supernet's cells that also holds under ``torch.func.functional_call``."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.func import functional_call
from torch.utils.checkpoint import checkpoint

__all__ = ["checkpointed_call"]


def checkpointed_call(module: nn.Module, *args: Any) -> Any:
    """``module(*args)``, its activations recomputed in the backward pass instead of kept (when grad is enabled).

    Same outputs, gradients and BatchNorm running statistics as the plain call. The recomputation runs in the
    backward pass, after a ``torch.func.functional_call`` (the second-order architecture step evaluates the net
    at substituted weights) has put the module's own parameters back, so it reruns with the tensors the forward
    pass used; and on throwaway copies of the buffers, so running statistics are updated once.
    """
    if not torch.is_grad_enabled():
        return module(*args)
    params = dict(module.named_parameters())
    calls = []

    def run(*inputs: Any) -> Any:
        tensors = params
        if calls:
            tensors = {**params, **{name: buffer.clone() for name, buffer in module.named_buffers()}}
        calls.append(None)
        return functional_call(module, tensors, inputs)

    return checkpoint(run, *args, use_reentrant=False)
