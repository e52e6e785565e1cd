"""ICNet: image cascade network for real-time semantic segmentation.

Paper: H. Zhao, X. Qi, X. Shen, J. Shi, J. Jia, "ICNet for Real-Time Semantic Segmentation on
High-Resolution Images", ECCV 2018 (arXiv:1704.08545).  Release: https://github.com/hszhao/ICNet
(Caffe prototxts ``evaluation/prototxt/icnet_cityscapes.prototxt`` and the training prototxt).
This is an independent PyTorch re-implementation of the *released* network, not a port of any
third-party code; see ``/work/shared/REFERENCES.md`` section 4 for the facts it follows.

Structure (``H x W`` input; "1/k" means ``(ceil(H/k), ceil(W/k))``, what every 3x3/stride-2 op
with padding 1, and every x2 shrink below, gives):

* **Trunk** = PSPNet50 at half width: deep stem 3x3 convs 32 (s2) / 32 / 64, 3x3 max pool s2,
  bottleneck stages conv2..conv5 with (mid, out) = (32, 128), (64, 256), (128, 512), (256, 1024)
  and 3, 4, 6, 3 blocks; the stride sits on the first 1x1 (Caffe ResNet), conv4 uses dilation 2
  and conv5 dilation 4 (no striding).  Every conv is bias-free and followed by BatchNorm.
* **1/2 branch**: the image shrunk x2 -> stem -> conv2 -> conv3_1 = ``F2`` (256 ch @ 1/16).
* **1/4 branch**: ``conv3_1``'s output shrunk x2 (the trunk is shared, no second image pass) ->
  conv3_2..conv5_3 -> pyramid pooling (adaptive average pooling with 1/2/3/6 bins, each map
  upsampled and *summed* with the input, no convs) -> 1x1 conv 1024->256 + BN + ReLU = ``F1``
  (256 ch @ 1/32).
* **Full-resolution branch**: three 3x3 stride-2 conv-BN-ReLU (32, 32, 64) = ``F3`` @ 1/8.
* **CFF** (cascade feature fusion, 128 ch): the low-resolution input upsampled x2 (bilinear) ->
  3x3 conv dilation 2 -> BN (no ReLU); the high-resolution input -> 1x1 conv -> BN; sum -> ReLU.
  ``CFF(F1, F2)`` @ 1/16, then ``CFF(that, F3)`` @ 1/8.
* **Head**: upsample x2 -> 1x1 classifier (with bias) at 1/4; in eval mode the logits are
  upsampled bilinearly to the input size, as the released test prototxt does.
* **CLG** (cascade label guidance, ``aux=True``): 1x1 classifiers (with bias) on each CFF's
  *upsampled* low-resolution input, giving auxiliary logits at 1/16 (from ``F1``) and 1/8 (from
  the first CFF's output).  They are training-only.  The loss is ``sum_t lambda_t * CE_t``; the
  paper weights the 1/16 and 1/8 terms with lambda_1 = lambda_2 = 0.4 and the 1/4 output with
  lambda_3 = 1, the default here (``CLG_WEIGHT_SETS["paper"]``).  ``"geometric"`` (1, 0.4, 0.16)
  is the choice of hellochick/ICNet-tensorflow and meetshah1995/pytorch-semseg.

All bilinear resizes use ``align_corners=True``, the geometry of Caffe's ``Interp`` layer used by
the release.  The pyramid pooling uses *adaptive* pooling (the release hard-codes kernels for a
33x65 map, i.e. a 1025x2049 input).

Outputs:

* eval mode: logits ``[N, num_classes, H, W]`` (input size).
* train mode: a ``dict`` with ``"out"`` = main logits at **1/4** (not upsampled; the release
  computes its main loss there against nearest-downsampled labels), plus, when ``aux=True``,
  ``"aux_1_8"`` (CLG logits at 1/8) and ``"aux_1_16"`` (CLG logits at 1/16).
  :func:`icnet_loss` consumes either form.

Parameter counts for 19 classes (checked by the tests; REFERENCES section 4):
6,699,987 for inference (``inference_parameter_count``) and 6,707,321 with the two CLG
classifiers (``aux=True``, all parameters).  Decomposition:

==================================  ==========
trunk stem (32/32/64, conv+BN)          28,768
conv2 / layer1 (3 blocks)               59,776
conv3 / layer2 (4 blocks)              306,688
conv4 / layer3 (6 blocks, dil. 2)    1,779,712
conv5 / layer4 (3 blocks, dil. 4)    3,746,816
  (trunk subtotal                    5,921,760)
PSP: 1x1 1024->256 + BN                262,656
full-resolution branch (32/32/64)       28,768
CFF(F1, F2): 3x3 256->128, 1x1 256     328,192
CFF(., F3): 3x3 128->128, 1x1 64       156,160
classifier 128->19 (+bias)               2,451
**inference total**                **6,699,987**
CLG 256->19 + 128->19 (+bias)            7,334
**total with CLG**                 **6,707,321**
==================================  ==========

Every conv except the three classifiers is bias-free and has a BatchNorm (2 parameters per
channel; running statistics are buffers, not parameters).
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from nasplat.models.losses import masked_cross_entropy, resize_labels
from nasplat.models.registry import register_model

__all__ = [
    "CLG_WEIGHT_SETS",
    "DEFAULT_CLG_WEIGHTS",
    "OUTPUT_KEYS",
    "CascadeFeatureFusion",
    "HalfPSPNet50Trunk",
    "ICNet",
    "PyramidPoolingSum",
    "icnet_loss",
    "inference_parameter_count",
    "resolve_clg_weights",
]

#: Named weight sets for the 1/4, 1/8 and 1/16 loss terms, in that order.
#: "paper": arXiv:1704.08545 (Zhao et al., ICNet), loss L = sum_t lambda_t L_t over the branches
#: t = 1 (1/16), 2 (1/8), 3 (1/4), with lambda_1 = lambda_2 = 0.4 and lambda_3 = 1; mmseg, gluon-cv
#: and liminn/ICNet-pytorch use the same.  "geometric": 0.4 ** k, the choice of
#: hellochick/ICNet-tensorflow and meetshah1995/pytorch-semseg.
CLG_WEIGHT_SETS: dict[str, tuple[float, float, float]] = {
    "paper": (1.0, 0.4, 0.4),
    "geometric": (1.0, 0.4, 0.16),
}
DEFAULT_CLG_WEIGHTS: tuple[float, float, float] = CLG_WEIGHT_SETS["paper"]

#: Keys of the train-mode output dict, in the order ``icnet_loss`` weights them.
OUTPUT_KEYS: tuple[str, str, str] = ("out", "aux_1_8", "aux_1_16")


def resolve_clg_weights(value: str | Sequence[float]) -> tuple[float, float, float]:
    """The (1/4, 1/8, 1/16) loss weights: a name from :data:`CLG_WEIGHT_SETS` or three numbers."""
    if isinstance(value, str):
        if value not in CLG_WEIGHT_SETS:
            raise ValueError(f"unknown clg_weights {value!r}; choose from {sorted(CLG_WEIGHT_SETS)} or give 3 numbers")
        return CLG_WEIGHT_SETS[value]
    if len(value) != 3:
        raise ValueError(f"clg_weights needs 3 values (1/4, 1/8, 1/16), got {value!r}")
    return tuple(float(w) for w in value)  # type: ignore[return-value]


def _half_size(size: Sequence[int]) -> tuple[int, int]:
    """Size after one x2 shrink: ``ceil(s / 2)``, same as a 3x3/s2/p1 conv and Caffe's Interp."""
    return tuple(math.ceil(s / 2) for s in size)  # type: ignore[return-value]


def _resize(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bilinear resize with Caffe ``Interp`` geometry (corners aligned)."""
    size = tuple(int(s) for s in size)
    if tuple(x.shape[-2:]) == size:
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


class ConvBN(nn.Sequential):
    """Bias-free conv + BatchNorm (+ ReLU), the unit of every released ICNet conv."""

    def __init__(self, cin: int, cout: int, kernel: int = 3, stride: int = 1, dilation: int = 1,
                 relu: bool = True):
        layers: list[nn.Module] = [
            nn.Conv2d(cin, cout, kernel, stride=stride, padding=dilation * (kernel // 2),
                      dilation=dilation, bias=False),
            nn.BatchNorm2d(cout),
        ]
        if relu:
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class Bottleneck(nn.Module):
    """Caffe-style ResNet bottleneck: stride on the 1x1 reduce, dilation on the 3x3."""

    def __init__(self, cin: int, mid: int, cout: int, stride: int = 1, dilation: int = 1):
        super().__init__()
        self.reduce = ConvBN(cin, mid, 1, stride=stride)
        self.conv = ConvBN(mid, mid, 3, dilation=dilation)
        self.increase = ConvBN(mid, cout, 1, relu=False)
        self.proj = ConvBN(cin, cout, 1, stride=stride, relu=False) if (stride != 1 or cin != cout) else None
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.proj is None else self.proj(x)
        return self.relu(self.increase(self.conv(self.reduce(x))) + shortcut)


def _stage(cin: int, mid: int, cout: int, blocks: int, stride: int, dilation: int) -> nn.Sequential:
    layers = [Bottleneck(cin, mid, cout, stride=stride, dilation=dilation)]
    layers += [Bottleneck(cout, mid, cout, dilation=dilation) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


class HalfPSPNet50Trunk(nn.Module):
    """The PSPNet50 trunk at half width (stem 32/32/64; stages 128/256/512/1024 channels).

    ``width=1.0`` gives the full-width PSPNet50 trunk (stem 64/64/128, stages up to 2048).
    Module names: ``stem`` (conv1_1..conv1_3), ``pool``, ``layer1`` (conv2), ``layer2`` (conv3),
    ``layer3`` (conv4, dilation 2), ``layer4`` (conv5, dilation 4).  ``layer2[0]`` is conv3_1.
    """

    def __init__(self, width: float = 0.5):
        super().__init__()
        c = lambda n: int(n * width)
        self.stem = nn.Sequential(
            ConvBN(3, c(64), 3, stride=2), ConvBN(c(64), c(64), 3), ConvBN(c(64), c(128), 3)
        )
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)
        self.layer1 = _stage(c(128), c(64), c(256), 3, stride=1, dilation=1)
        self.layer2 = _stage(c(256), c(128), c(512), 4, stride=2, dilation=1)
        self.layer3 = _stage(c(512), c(256), c(1024), 6, stride=1, dilation=2)
        self.layer4 = _stage(c(1024), c(512), c(2048), 3, stride=1, dilation=4)
        self.out_channels = c(2048)
        self.conv3_1_channels = c(512)

    def forward_sub2(self, x_half: torch.Tensor) -> torch.Tensor:
        """1/2-resolution image -> conv3_1 output (``F2``, stride 8 relative to its own input)."""
        return self.layer2[0](self.layer1(self.pool(self.stem(x_half))))

    def forward_sub4(self, conv3_1: torch.Tensor) -> torch.Tensor:
        """conv3_1 output shrunk x2 -> conv3_2 .. conv5_3."""
        x = _resize(conv3_1, _half_size(conv3_1.shape[-2:]))
        return self.layer4(self.layer3(self.layer2[1:](x)))


class PyramidPoolingSum(nn.Module):
    """ICNet's parameter-free pyramid pooling: ``x + sum_b up(adaptive_avg_pool(x, b))``.

    Each pooled map is upsampled bilinearly (corners aligned) back to ``x``'s size; no convs,
    no concatenation (unlike PSPNet's PPM).
    """

    def __init__(self, bins: Sequence[int] = (1, 2, 3, 6)):
        super().__init__()
        self.bins = tuple(int(b) for b in bins)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        for b in self.bins:
            out = out + _resize(F.adaptive_avg_pool2d(x, b), x.shape[-2:])
        return out


class CascadeFeatureFusion(nn.Module):
    """CFF: ``relu(BN(conv3x3_d2(up2(low))) + BN(conv1x1(high)))`` -- no ReLU before the sum.

    ``forward`` returns ``(fused, low_up)``; ``low_up`` (the upsampled low-resolution input) is
    what the CLG classifier reads.  The low input is upsampled to the high input's size.
    """

    def __init__(self, low_channels: int, high_channels: int, out_channels: int = 128):
        super().__init__()
        self.low = ConvBN(low_channels, out_channels, 3, dilation=2, relu=False)
        self.high = ConvBN(high_channels, out_channels, 1, relu=False)
        self.relu = nn.ReLU(inplace=False)

    def forward(self, low: torch.Tensor, high: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        low_up = _resize(low, high.shape[-2:])
        return self.relu(self.low(low_up) + self.high(high)), low_up


@register_model("icnet")
class ICNet(nn.Module):
    """The released ICNet (see module docstring for structure, outputs and counts).

    Args:
        num_classes: number of output classes.
        aux: build the CLG classifiers and return auxiliary logits in train mode.
        clg_weights: (1/4, 1/8, 1/16) loss weights used by :meth:`loss`, or the name of a set in
            :data:`CLG_WEIGHT_SETS` (default ``"paper"``: 1.0, 0.4, 0.4).
        backbone_weights: optional path to a local state dict for ``self.backbone``
            (a :class:`HalfPSPNet50Trunk`; a ``"backbone."`` key prefix or a ``"state_dict"``
            wrapper is accepted), loaded with ``torch.load(..., weights_only=True)``.
        bins: pyramid pooling bins.
    """

    def __init__(self, num_classes: int = 19, aux: bool = True,
                 clg_weights: str | Sequence[float] = "paper",
                 backbone_weights: str | Path | None = None,
                 bins: Sequence[int] = (1, 2, 3, 6)):
        super().__init__()
        self.num_classes = num_classes
        self.aux = aux
        self.clg_weights = resolve_clg_weights(clg_weights)

        self.backbone = HalfPSPNet50Trunk()
        c = lambda n: n // 2  # half of PSPNet's widths
        self.ppm = PyramidPoolingSum(bins)
        self.ppm_reduce = ConvBN(self.backbone.out_channels, c(512), 1)           # conv5_4_k1 -> F1
        self.sub1 = nn.Sequential(                                                 # full-res branch
            ConvBN(3, c(64), 3, stride=2), ConvBN(c(64), c(64), 3, stride=2), ConvBN(c(64), c(128), 3, stride=2)
        )
        self.cff_sub24 = CascadeFeatureFusion(c(512), self.backbone.conv3_1_channels, 128)
        self.cff_sub12 = CascadeFeatureFusion(128, c(128), 128)
        self.classifier = nn.Conv2d(128, num_classes, 1)
        self.clg = nn.ModuleDict({
            "aux_1_16": nn.Conv2d(c(512), num_classes, 1),   # on up2(F1), 1/16
            "aux_1_8": nn.Conv2d(128, num_classes, 1),       # on up2(CFF(F1, F2)), 1/8
        }) if aux else None

        self._init_weights()
        if backbone_weights is not None:
            self.load_backbone(backbone_weights)

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def load_backbone(self, path: str | Path) -> None:
        """Load a local trunk state dict (no downloads); strict, so mismatches raise."""
        state = torch.load(Path(path), map_location="cpu", weights_only=True)
        if isinstance(state, Mapping) and "state_dict" in state and isinstance(state["state_dict"], Mapping):
            state = state["state_dict"]
        state = {k.removeprefix("backbone."): v for k, v in state.items()}
        self.backbone.load_state_dict(state, strict=True)

    def forward(self, x: torch.Tensor):
        size = x.shape[-2:]
        x_half = _resize(x, _half_size(size))
        f2 = self.backbone.forward_sub2(x_half)                        # 1/16
        f1 = self.ppm_reduce(self.ppm(self.backbone.forward_sub4(f2)))  # 1/32
        f3 = self.sub1(x)                                               # 1/8
        f24, f1_up = self.cff_sub24(f1, f2)                             # 1/16
        f12, f24_up = self.cff_sub12(f24, f3)                           # 1/8
        quarter = tuple(math.ceil(s / 4) for s in size)
        logits = self.classifier(_resize(f12, quarter))                 # 1/4
        if not self.training:
            return _resize(logits, size)
        out = {"out": logits}
        if self.clg is not None:
            out["aux_1_8"] = self.clg["aux_1_8"](f24_up)
            out["aux_1_16"] = self.clg["aux_1_16"](f1_up)
        return out

    def loss(self, outputs, target: torch.Tensor, ignore_index: int = 255) -> torch.Tensor:
        """:func:`icnet_loss` with this model's ``clg_weights``."""
        return icnet_loss(outputs, target, weights=self.clg_weights, ignore_index=ignore_index)


def icnet_loss(outputs, target: torch.Tensor, weights: str | Sequence[float] = DEFAULT_CLG_WEIGHTS,
               ignore_index: int = 255) -> torch.Tensor:
    """ICNet training loss with cascade label guidance.

    ``outputs``: the train-mode dict of :class:`ICNet` (``"out"`` at 1/4, ``"aux_1_8"``,
    ``"aux_1_16"``; missing aux keys are skipped), or a bare logits tensor (main term only).
    ``target``: ``[N, H, W]`` integer labels at input resolution.  Labels are resized by nearest
    neighbour to each output's resolution -- the main term is computed **at 1/4 against
    nearest-downsampled labels**, as the release does -- and the cross-entropies (mean over pixels
    whose label is not ``ignore_index``) are summed with ``weights`` = (w_1/4, w_1/8, w_1/16),
    three numbers or a name from :data:`CLG_WEIGHT_SETS`; default the paper's 1.0/0.4/0.4.
    """
    weights = resolve_clg_weights(weights)
    if isinstance(outputs, torch.Tensor):
        outputs = {"out": outputs}
    total = None
    for key, w in zip(OUTPUT_KEYS, weights):
        if key not in outputs:
            continue
        logits = outputs[key]
        term = float(w) * masked_cross_entropy(logits, resize_labels(target, logits.shape[-2:]), ignore_index)
        total = term if total is None else total + term
    if total is None:
        raise KeyError(f"outputs has none of {OUTPUT_KEYS}")
    return total


def inference_parameter_count(model: nn.Module) -> int:
    """Parameters used at inference, i.e. all but the training-only CLG classifiers."""
    clg = getattr(model, "clg", None)
    skip = {id(p) for p in clg.parameters()} if clg is not None else set()
    return sum(p.numel() for p in model.parameters() if id(p) not in skip)
