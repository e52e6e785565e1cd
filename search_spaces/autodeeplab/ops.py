"""The Auto-DeepLab op set: the DARTS order with full atrous convs in place of the dilated ones.

``atrous_conv_3x3`` / ``atrous_conv_5x5`` follow TF ``nas_cell.py`` (``atrous_kxk``, checked
against research/deeplab/core/nas_cell.py of tensorflow/models):

* stride 1: ReLU, full (not separable) kxk conv at rate 2, BN;
* stride 2: ReLU, bilinear resize to half size, the same kxk conv at **rate 1**, BN. TF resizes with
  ``deeplab.core.utils.resize_bilinear`` (``align_corners=True``) to ``scale_dimension(H, 0.5) =
  int((H - 1) / 2 + 1) = ceil(H/2)``. On odd sizes that grid falls on the even pixels, so the result
  equals a stride-2 conv at rate 2; on even sizes it interpolates.

Both strides have the same parameters (one ``C x C x k x k`` conv and a BN).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torch.nn import functional

from nasplat import (DARTS_OPS, GroupInput, group_batch_norm, register_group_forward, register_op, registered_ops,
                     stacked_conv)

AUTODEEPLAB_OPS: tuple[str, ...] = tuple(
    name.replace("dil_conv", "atrous_conv") for name in DARTS_OPS
)  # the DARTS order, with full atrous convs in place of the separable dilated ones
"""Candidate ops in alpha's column order (DARTS-like; the index breaks decode ties)."""


class AtrousConv(nn.Module):
    """TF ``atrous_kxk``: ReLU, (at stride 2: bilinear half resize,) full kxk conv, BN.

    The conv runs at rate 2 with padding ``k-1`` at stride 1 (``H`` kept) and at rate 1 with
    padding ``(k-1)/2`` after the resize at stride 2 (``ceil(H/2)``).
    """

    def __init__(self, C: int, kernel_size: int, stride: int, affine: bool = True) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"atrous conv supports stride 1 or 2, got {stride}")
        self.stride = stride
        rate = 2 if stride == 1 else 1
        self.relu = nn.ReLU(inplace=False)
        self.conv = nn.Conv2d(C, C, kernel_size, padding=rate * (kernel_size - 1) // 2, dilation=rate, bias=False)
        self.bn = nn.BatchNorm2d(C, affine=affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(x)
        if self.stride == 2:
            half = ((x.shape[-2] + 1) // 2, (x.shape[-1] + 1) // 2)
            x = functional.interpolate(x, size=half, mode="bilinear", align_corners=True)
        return self.bn(self.conv(x))


@register_group_forward(AtrousConv)
def _atrous_group(modules: Sequence[AtrousConv], group: GroupInput, scale: torch.Tensor) -> torch.Tensor:
    """The atrous convs of the edges leaving one state: one conv whose output channels stack the edges' filters."""
    x = group.relu
    first = modules[0]
    if first.stride == 2:
        half = ((x.shape[-2] + 1) // 2, (x.shape[-1] + 1) // 2)
        x = functional.interpolate(x, size=half, mode="bilinear", align_corners=True)
    out = stacked_conv(x, [module.conv for module in modules], shared_input=True)
    out = group_batch_norm(out, [module.bn for module in modules], scale, group.updates)
    return out.unflatten(1, (len(modules), -1))


def _atrous_factory(kernel_size: int):
    def factory(C: int, stride: int, affine: bool) -> nn.Module:
        return AtrousConv(C, kernel_size, stride, affine)

    factory.__name__ = f"atrous_conv_{kernel_size}x{kernel_size}"
    return factory


# The module may be imported twice in one process (by module name and by file path), and the
# registry refuses a second registration: register only what is missing.
for _k in (3, 5):
    if f"atrous_conv_{_k}x{_k}" not in registered_ops():
        register_op(f"atrous_conv_{_k}x{_k}")(_atrous_factory(_k))
