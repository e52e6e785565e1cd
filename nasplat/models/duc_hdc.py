"""DUC+HDC: dense upsampling convolution head on a hybrid-dilated ResNet-101.

Paper: P. Wang, P. Chen, Y. Yuan, D. Liu, Z. Huang, X. Hou, G. Cottrell, "Understanding Convolution
for Semantic Segmentation", WACV 2018, arXiv:1702.08502.
Release: TuSimple/TuSimple-DUC (MXNet; ``networks/resnet.py`` for the rates,
``networks/network_duc_hdc.py`` for the head, ``train_cityscapes.cfg``).

Structure (``REFERENCES.md`` section 4):

* **Backbone**: torchvision ResNet-101 (built with ``weights=None``; ImageNet weights with
  ``pretrained=imagenet`` or a local state-dict file with ``backbone_weights=PATH``, see
  :mod:`nasplat.models.pretrained`) without ``avgpool``/``fc``, at output stride
  8: the stride-2 convs of ``layer3`` and ``layer4`` (3x3 ``conv2`` and the ``downsample`` 1x1) get
  stride 1, exactly as torchvision's ``replace_stride_with_dilation`` does. The dilation of each
  block's 3x3 conv is then set **per block** to the released HDC rates (padding = dilation):
  ``layer3`` (res4, 23 blocks) ``[1, 2, 5, 9][i % 4]`` except block 0 = 2; ``layer4`` (res5)
  5, 9, 17. torchvision's own dilation fill (1, 2, 2, ... / 2, 4, 4) is *not* HDC.
  Differences from the release: torchvision's stem (one 7x7 conv instead of the deep 3x3 stem),
  stride on the 3x3 instead of the 1x1, and trainable BN (the release freezes BN); see
  REFERENCES for the replica's count (65,038,464).
* **DUC head**: four parallel 3x3 convs 2048 -> r*r*num_classes with dilations 6, 12, 18, 24, with
  bias and no BN, **summed**, then ``PixelShuffle(r)``: channel ``c*r*r + i*r + j`` at ``(y, x)``
  becomes pixel ``(c, y*r + i, x*r + j)``. With r = ds_rate / cell_width = 8 / 2 = 4 (the release's
  Cityscapes setting) the scores are at 1/2 input resolution; r = 8 gives full resolution.
* **Outputs**: in eval mode ``forward`` resizes the scores bilinearly (``align_corners=False``)
  to the input size, as the release does at test time: [N, num_classes, H, W]. In train mode it
  returns the DUC output itself, :meth:`DUCHDC.scores` (1/2 resolution at r = 4), and
  :meth:`DUCHDC.loss` takes the cross-entropy there against labels downsampled to that size by
  nearest neighbour, as the release trains: the upsampling is what DUC learns, so the loss must
  not be taken after a fixed bilinear one.

Parameters, 19 classes, r = 4: 64,914,688 = backbone 42,500,160 + head 22,414,528.
"""
from __future__ import annotations

import os
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision import models as tvm

from nasplat.models.pretrained import initialise_backbone
from nasplat.models.losses import masked_cross_entropy, resize_labels
from nasplat.models.registry import register_model

__all__ = ["DUCHDC", "HDC_LAYER3_RATES", "HDC_LAYER4_RATES", "DUCHead", "hdc_resnet101"]

#: Released HDC rates for res4 (torchvision ``layer3``, 23 blocks) and res5 (``layer4``, 3 blocks).
HDC_LAYER3_RATES: tuple[int, ...] = tuple(2 if i == 0 else (1, 2, 5, 9)[i % 4] for i in range(23))
HDC_LAYER4_RATES: tuple[int, ...] = (5, 9, 17)


def _set_block_rates(layer: nn.Sequential, rates: Sequence[int]) -> None:
    if len(layer) != len(rates):
        raise ValueError(f"{len(layer)} blocks but {len(rates)} rates")
    for block, rate in zip(layer, rates):
        block.conv2.dilation = (rate, rate)
        block.conv2.padding = (rate, rate)


class _HDCResNet101(nn.Module):
    """ResNet-101 trunk at output stride 8 with the released per-block HDC rates (no avgpool/fc)."""

    out_channels = 2048

    def __init__(self, backbone_weights: str | os.PathLike | None = None, pretrained: str | None = None) -> None:
        super().__init__()
        # replace_stride_with_dilation only serves to remove the strides of layer3/layer4
        # (3x3 conv2 and downsample); its dilation fill is overwritten below with the HDC rates.
        net = tvm.resnet101(weights=None, replace_stride_with_dilation=[False, True, True])
        initialise_backbone(net, "resnet101", pretrained, backbone_weights, ignore_prefixes=("fc.",))
        _set_block_rates(net.layer3, HDC_LAYER3_RATES)
        _set_block_rates(net.layer4, HDC_LAYER4_RATES)
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


def hdc_resnet101(backbone_weights: str | os.PathLike | None = None, pretrained: str | None = None) -> nn.Module:
    """The DUC+HDC trunk: [N,3,H,W] -> [N,2048,~H/8,~W/8]."""
    return _HDCResNet101(backbone_weights, pretrained)


class DUCHead(nn.Module):
    """Dense upsampling convolution: summed dilated 3x3 convs to r*r*num_classes, then PixelShuffle(r)."""

    def __init__(
        self, in_channels: int, num_classes: int, r: int = 4, dilations: Sequence[int] = (6, 12, 18, 24)
    ) -> None:
        super().__init__()
        self.r = int(r)
        self.num_classes = int(num_classes)
        out = self.r * self.r * self.num_classes
        self.branches = nn.ModuleList(
            nn.Conv2d(in_channels, out, 3, padding=d, dilation=d, bias=True) for d in dilations
        )
        self.shuffle = nn.PixelShuffle(self.r)
        for conv in self.branches:
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.branches[0](x)
        for conv in self.branches[1:]:
            y = y + conv(x)
        return self.shuffle(y)


@register_model("duc_hdc")
class DUCHDC(nn.Module):
    """DUC+HDC (arXiv:1702.08502): HDC ResNet-101 at output stride 8 + DUC head.

    Eval mode: logits at input size. Train mode: the DUC scores (r x the stride-8 map), for :meth:`loss`.
    """

    def __init__(self, num_classes: int, r: int = 4, backbone_weights: str | os.PathLike | None = None,
                 pretrained: str | None = None) -> None:
        super().__init__()
        self.num_classes = int(num_classes)
        self.backbone = _HDCResNet101(backbone_weights, pretrained)
        self.head = DUCHead(self.backbone.out_channels, num_classes, r)

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        """Head output before resizing: [N, C, r*h8, r*w8] for a stride-8 map h8 x w8 (1/2 resolution at r=4)."""
        return self.head(self.backbone(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scores = self.scores(x)
        if self.training:
            return scores
        return F.interpolate(scores, size=x.shape[-2:], mode="bilinear", align_corners=False)

    def loss(self, outputs: torch.Tensor, target: torch.Tensor, ignore_index: int = 255) -> torch.Tensor:
        """Cross-entropy of the train-mode output (the DUC scores) against ``target`` [N, H, W]
        downsampled to their size by nearest neighbour; mean over the pixels not ``ignore_index``."""
        return masked_cross_entropy(outputs, resize_labels(target, outputs.shape[-2:]), ignore_index)
