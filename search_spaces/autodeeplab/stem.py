"""The Auto-DeepLab stem, shared by the supernet and the retrain network (TF ``_nas_stem``)."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


class Stem(nn.Module):
    """3x3 convs with strides 2/1/2 (BN, ReLU between); returns the stride-2 and stride-4 features.

    Outputs are taken after BN and before ReLU (TF ``_nas_stem``): every consumer starts with a ReLU.
    """

    def __init__(self, channels: Sequence[int] = (64, 64, 128)) -> None:
        super().__init__()
        c0, c1, c2 = channels
        self.conv0 = nn.Sequential(nn.Conv2d(3, c0, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(c0), nn.ReLU())
        self.conv1 = nn.Sequential(nn.Conv2d(c0, c1, 3, padding=1, bias=False), nn.BatchNorm2d(c1))
        self.conv2 = nn.Sequential(nn.ReLU(), nn.Conv2d(c1, c2, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(c2))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        half = self.conv1(self.conv0(x))
        return half, self.conv2(half)
