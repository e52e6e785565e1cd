"""Public building blocks shared by the baselines and the search spaces' retrain networks.

* :func:`conv_bn_relu`: conv (no bias, "same" padding at any rate), BN, ReLU.
* :class:`ASPP`: DeepLabV3's atrous spatial pyramid pooling (arXiv:1706.05587), as the DeepLabV3+
  encoder head (arXiv:1802.02611) and the Auto-DeepLab retrain head: a 1x1 branch, one 3x3 atrous
  branch per rate and image pooling (:class:`ASPPPooling`), each ``out_channels`` wide with BN-ReLU,
  concatenated, projected by a 1x1 conv-BN-ReLU, then dropout. Parameters:
  ``(1 + 9 * len(rates) + 1) * C_in * C + (len(rates) + 2) * C * C + 2 * C * (len(rates) + 3)``.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ASPP", "ASPPPooling", "conv_bn_relu"]


def conv_bn_relu(cin: int, cout: int, kernel_size: int = 1, dilation: int = 1) -> nn.Sequential:
    """``kernel_size`` conv at ``dilation`` (no bias, size-preserving padding for odd kernels), BN, ReLU."""
    padding = dilation * (kernel_size - 1) // 2
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel_size, padding=padding, dilation=dilation, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class ASPPPooling(nn.Module):
    """Image-level branch: global average pool, 1x1 conv, BN, ReLU, upsample to the feature size.

    With one value per channel (batch 1) in train mode the BN uses its running statistics and does
    not update them, since batch statistics of a single value are undefined.
    """

    def __init__(self, in_channels: int, out_channels: int = 256) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.conv = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        y = self.conv(self.pool(x))
        if self.training and y.shape[0] == 1:
            bn = self.bn
            y = F.batch_norm(y, bn.running_mean, bn.running_var, bn.weight, bn.bias, training=False, eps=bn.eps)
        else:
            y = self.bn(y)
        y = self.relu(y)
        return F.interpolate(y, size=size, mode="bilinear", align_corners=False)


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: 1x1, a 3x3 per atrous rate, image pooling; concat, 1x1, dropout."""

    def __init__(
        self, in_channels: int, rates: Sequence[int] = (6, 12, 18), out_channels: int = 256, dropout: float = 0.1
    ) -> None:
        super().__init__()
        self.rates = tuple(int(r) for r in rates)
        branches: list[nn.Module] = [conv_bn_relu(in_channels, out_channels, 1)]
        branches += [conv_bn_relu(in_channels, out_channels, 3, dilation=r) for r in self.rates]
        branches.append(ASPPPooling(in_channels, out_channels))
        self.branches = nn.ModuleList(branches)
        self.project = conv_bn_relu(len(branches) * out_channels, out_channels, 1)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.project(torch.cat([b(x) for b in self.branches], dim=1)))
