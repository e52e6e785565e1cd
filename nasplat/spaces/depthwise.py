"""Depthwise convolutions whose input gradient runs as a forward convolution.

The gradient of a depthwise convolution with respect to its input is the stride-1 depthwise convolution, with the
kernel flipped in both spatial axes and padding ``dilation * (k - 1) - padding``, of the output gradient placed
every ``stride`` pixels (zeros between). oneDNN's backward kernel for dilated depthwise convolutions is many times
slower than its forward kernel on CPUs (3-8x on the DARTS supernet's shapes, bench/depthwise_grad.py), and an
architecture step needs only input gradients, so the fused supernet path computes them this way where it pays
(:func:`pays_off`). The weight gradient, when needed, is PyTorch's own. Both stay differentiable (the RobustDARTS
Hessian differentiates them again). Only what a gradient will need is kept for the backward pass: with frozen
weights (the architecture step) the input is not kept.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

__all__ = ["depthwise_conv2d", "is_channels_last", "is_depthwise", "pays_off"]


def is_depthwise(x: torch.Tensor, weight: torch.Tensor, padding: object, dilation: Sequence[int], groups: int
                 ) -> bool:
    """Whether :func:`depthwise_conv2d` computes ``F.conv2d(x, weight, None, stride, padding, dilation, groups)``:
    one input and one output channel per group, and padding within the kernel's reach."""
    return (isinstance(padding, (tuple, list)) and groups == x.shape[1] and weight.shape[0] == groups
            and weight.shape[1] == 1 and all(0 <= p <= d * (k - 1) for p, d, k in zip(padding, dilation, weight.shape[2:])))


def pays_off(x: torch.Tensor, dilation: Sequence[int]) -> bool:
    """Whether the forward-conv input gradient beats PyTorch's, as measured on a CPU (bench/depthwise_grad.py and
    whole search steps): for dilated kernels (3-8x); without dilation PyTorch's kernel is about as fast and this
    function's Python overhead tips the balance. Not timed on GPUs: there PyTorch's kernels run."""
    return x.device.type == "cpu" and min(dilation) > 1


def depthwise_conv2d(x: torch.Tensor, weight: torch.Tensor, stride: Sequence[int], padding: Sequence[int],
                     dilation: Sequence[int]) -> torch.Tensor:
    """``F.conv2d(x, weight, None, stride, padding, dilation, groups=channels)`` with the input gradient of the
    module doc; ``weight`` is ``[channels, 1, kh, kw]`` (see :func:`is_depthwise`)."""
    return _DepthwiseConv.apply(x, weight, tuple(stride), tuple(padding), tuple(dilation))


class _DepthwiseConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, stride: tuple[int, int], padding: tuple[int, int],
                dilation: tuple[int, int]) -> torch.Tensor:
        ctx.save_for_backward(x if ctx.needs_input_grad[1] else None, weight)
        ctx.stride, ctx.padding, ctx.dilation, ctx.size = stride, padding, dilation, x.shape[2:]
        return F.conv2d(x, weight, None, stride, padding, dilation, weight.shape[0])

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, None, None, None]:
        x, weight = ctx.saved_tensors
        groups, reach = weight.shape[0], [d * (k - 1) for d, k in zip(ctx.dilation, weight.shape[2:])]
        grad_x = grad_weight = None
        if ctx.needs_input_grad[0]:
            grad_x = F.conv2d(_spread(grad, ctx.stride, [n + 2 * p - r for n, p, r in zip(ctx.size, ctx.padding, reach)]),
                              weight.flip(-2, -1), None, 1, [r - p for r, p in zip(reach, ctx.padding)], ctx.dilation,
                              groups)
        if ctx.needs_input_grad[1]:
            grad_weight = torch.ops.aten.convolution_backward(
                grad, x, weight, None, list(ctx.stride), list(ctx.padding), list(ctx.dilation), False, [0, 0], groups,
                [False, True, False])[1]
        return grad_x, grad_weight, None, None, None


def _spread(grad: torch.Tensor, stride: tuple[int, int], size: Sequence[int]) -> torch.Tensor:
    """``grad`` of a strided output placed every ``stride`` pixels of the stride-1 output's ``size``, zeros between."""
    if stride == (1, 1):
        return grad
    layout = torch.channels_last if is_channels_last(grad) else torch.contiguous_format
    spread = grad.new_zeros((*grad.shape[:2], *size)).contiguous(memory_format=layout)
    spread[:, :, ::stride[0], ::stride[1]] = grad
    return spread


def is_channels_last(x: torch.Tensor) -> bool:
    """Whether ``x`` is laid out channels-last (and not also plain contiguous, as a tensor with 1x1 sides is)."""
    return x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
