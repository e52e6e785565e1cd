"""DeepLabV3+: ASPP encoder with a light decoder, on a ResNet-101 or MobileNetV2 backbone.

Paper: L.-C. Chen, Y. Zhu, G. Papandreou, F. Schroff, H. Adam, "Encoder-Decoder with Atrous
Separable Convolution for Semantic Image Segmentation", ECCV 2018, arXiv:1802.02611.
Release: tensorflow/models, ``research/deeplab`` (``core/feature_extractor.py``, ``model.py``).

This is the paper's decoder with plain (non-separable) convolutions, as in the ResNet-101 variants
of the TF release and jfzhang95/pytorch-deeplab-xception:

* **Encoder**: backbone at output stride 16 or 8, then ASPP = image pooling (global average pool,
  1x1 conv 256, BN, ReLU, upsample), a 1x1 branch and three 3x3 atrous branches at rates (6, 12, 18)
  for output stride 16 or (12, 24, 36) for 8, each 256 channels with BN-ReLU and no conv bias;
  concat (1280) -> 1x1 256 BN ReLU -> dropout (0.1 by default; TF uses keep-prob 0.9).
* **Decoder**: stride-4 low-level feature -> 1x1 48 BN ReLU; concat with the ASPP output upsampled
  bilinearly to stride 4 (304 channels); two 3x3 convs of 256 with BN-ReLU; 1x1 classifier (bias);
  bilinear upsample (``align_corners=False``) to the input size.

Backbones (torchvision, built with ``weights=None``; starting weights from torchvision's ImageNet weights
with ``pretrained=imagenet`` or from a local state-dict file with ``backbone_weights=PATH``, see
:mod:`nasplat.models.pretrained`):

* ``resnet101``: low-level = ``layer1`` output (256 ch, stride 4), high-level = ``layer4`` (2048 ch).
  Output stride 16 dilates ``layer4`` (rate 2), 8 dilates ``layer3`` and ``layer4`` (2, 4), via
  torchvision's ``replace_stride_with_dilation``.
* ``mobilenet_v2``: low-level = output of ``features[3]`` (24 ch, stride 4), high-level = output of
  ``features[17]`` (320 ch), i.e. *before* the final 1x1 conv to 1280 channels (this matches the
  reference count 5,816,053 for 21 classes). The later stride-2 depthwise convs are turned into
  stride 1 with dilation as in the TF release's ``output_stride`` handling: the converted conv keeps
  the current rate and the rate doubles for the blocks after it.

Parameter counts at output stride 16 (``REFERENCES.md`` section 4, asserted by the tests):
ResNet-101 59,344,309 (21 classes) / 59,343,795 (19); MobileNetV2 5,816,053 (21) / 5,815,539 (19).

Batch-1 training: the image-pooling branch sees one value per channel at batch 1, where
``BatchNorm2d`` in train mode raises. :class:`ASPPPooling` then normalises with the running
statistics (as in eval) and leaves them untouched; at batch >= 2 it uses batch statistics as usual.
:class:`ASPP` and :class:`ASPPPooling` live in :mod:`nasplat.models.layers` (the Auto-DeepLab
retrain network uses the same ASPP) and are re-exported here.
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn
from torchvision import models as tvm

from nasplat.models.layers import ASPP, ASPPPooling, conv_bn_relu
from nasplat.models.pretrained import initialise_backbone, load_backbone_weights
from nasplat.models.registry import register_model

__all__ = [
    "ASPP",
    "ASPPPooling",
    "DeepLabV3Plus",
    "DeepLabV3PlusDecoder",
    "aspp_rates",
    "load_backbone_weights",
]

_ASPP_RATES = {16: (6, 12, 18), 8: (12, 24, 36)}


def aspp_rates(output_stride: int) -> tuple[int, int, int]:
    """The paper's ASPP atrous rates: (6, 12, 18) at output stride 16, (12, 24, 36) at 8."""
    if output_stride not in _ASPP_RATES:
        raise ValueError(f"output_stride must be 16 or 8, got {output_stride!r}")
    return _ASPP_RATES[output_stride]


class DeepLabV3PlusDecoder(nn.Module):
    """Paper decoder: low-level 1x1 -> 48, concat with upsampled ASPP output, two 3x3 256, classifier."""

    def __init__(self, low_channels: int, num_classes: int, aspp_channels: int = 256, low_out: int = 48) -> None:
        super().__init__()
        self.low = conv_bn_relu(low_channels, low_out, 1)
        self.fuse = nn.Sequential(
            conv_bn_relu(aspp_channels + low_out, 256, 3),
            conv_bn_relu(256, 256, 3),
        )
        self.classifier = nn.Conv2d(256, num_classes, 1)

    def forward(self, high: torch.Tensor, low: torch.Tensor) -> torch.Tensor:
        low = self.low(low)
        high = F.interpolate(high, size=low.shape[-2:], mode="bilinear", align_corners=False)
        return self.classifier(self.fuse(torch.cat([high, low], dim=1)))


class _ResNetBackbone(nn.Module):
    """torchvision ResNet-101 trunk returning (stride-4 layer1 output, layer4 output)."""

    low_channels = 256
    high_channels = 2048

    def __init__(self, output_stride: int, backbone_weights: str | os.PathLike | None, pretrained: str | None) -> None:
        super().__init__()
        dilate = {16: [False, False, True], 8: [False, True, True]}[output_stride]
        net = tvm.resnet101(weights=None, replace_stride_with_dilation=dilate)
        initialise_backbone(net, "resnet101", pretrained, backbone_weights, ignore_prefixes=("fc.",))
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        low = self.layer1(self.stem(x))
        return low, self.layer4(self.layer3(self.layer2(low)))


def _dilate_mobilenet_v2(features: nn.Sequential, output_stride: int) -> None:
    """Turn the stride-2 depthwise convs past ``output_stride`` into stride 1 with dilation (in place).

    Follows the TF release (``slim/nets/mobilenet/mobilenet.py``): once the running stride reaches
    ``output_stride``, a stride-2 layer gets stride 1 and the current rate, and the rate is multiplied
    by 2 for the layers after it. MobileNetV2's stride-2 blocks change channels, so no residual
    connection is affected.
    """
    stride, rate = 1, 1
    for block in features:
        for conv in (m for m in block.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)):
            s = conv.stride[0]
            if s == 2 and stride >= output_stride:
                conv.stride = (1, 1)
                conv.dilation = (rate, rate)
                conv.padding = (rate, rate)
                rate *= 2
            else:
                conv.dilation = (rate, rate)
                conv.padding = (rate, rate)
                stride *= s


class _MobileNetV2Backbone(nn.Module):
    """torchvision MobileNetV2 features returning (features[3] output, features[17] output)."""

    low_channels = 24
    high_channels = 320

    def __init__(self, output_stride: int, backbone_weights: str | os.PathLike | None, pretrained: str | None) -> None:
        super().__init__()
        net = tvm.mobilenet_v2(weights=None)
        initialise_backbone(net, "mobilenet_v2", pretrained, backbone_weights, ignore_prefixes=("classifier.",))
        features = net.features[:-1]  # drop the final 1x1 conv to 1280 channels
        _dilate_mobilenet_v2(features, output_stride)
        self.low_level = features[:4]
        self.high_level = features[4:]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        low = self.low_level(x)
        return low, self.high_level(low)


_BACKBONES = {"resnet101": _ResNetBackbone, "mobilenet_v2": _MobileNetV2Backbone}


@register_model("deeplabv3plus")
class DeepLabV3Plus(nn.Module):
    """DeepLabV3+ (arXiv:1802.02611): backbone -> ASPP -> decoder -> logits at input size.

    ``forward`` maps [N,3,H,W] to logits [N,num_classes,H,W] in both train and eval mode.
    """

    def __init__(
        self,
        num_classes: int,
        backbone: str = "resnet101",
        output_stride: int = 16,
        dropout: float = 0.1,
        backbone_weights: str | os.PathLike | None = None,
        pretrained: str | None = None,
    ) -> None:
        super().__init__()
        if backbone not in _BACKBONES:
            raise ValueError(f"unknown backbone {backbone!r}; choose from {sorted(_BACKBONES)}")
        rates = aspp_rates(output_stride)
        self.num_classes = int(num_classes)
        self.output_stride = int(output_stride)
        self.backbone_name = backbone
        self.backbone = _BACKBONES[backbone](output_stride, backbone_weights, pretrained)
        self.aspp = ASPP(self.backbone.high_channels, rates, 256, dropout)
        self.decoder = DeepLabV3PlusDecoder(self.backbone.low_channels, num_classes)
        for module in (self.aspp, self.decoder):
            for m in module.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                    if m.bias is not None:
                        nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        low, high = self.backbone(x)
        logits = self.decoder(self.aspp(high), low)
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
