"""Initial backbone weights: torchvision's ImageNet weights (``pretrained=imagenet``) or a local file
(``backbone_weights=PATH``), for the ResNet-101 and MobileNetV2 trunks of DeepLabV3+ and DUC+HDC.

``pretrained=imagenet`` is ``IMAGENET1K_V1`` of torchvision's Weights API (``ResNet101_Weights``,
``MobileNet_V2_Weights``): the classic ImageNet recipe (77.4 % / 71.9 % top-1), the kind of classification
checkpoint the papers started from (DeepLabV3+: TF-slim's ResNet-101 and MobileNetV2; DUC+HDC: an MXNet
ResNet-101); ``IMAGENET1K_V2`` (torchvision's later, longer recipe) can be named instead. The file is
downloaded once into torch's hub cache (``torch.hub.get_dir()/checkpoints``); without internet the build fails
with a message naming the file, so that it can be fetched elsewhere and given as ``backbone_weights=PATH``.
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchvision import models as tvm

INITIAL_WEIGHT_OPTIONS = ("pretrained", "backbone_weights")
"""Model options that only set the starting weights: a model file rebuilt for its own weights leaves them out."""
WEIGHTS = {"resnet101": tvm.ResNet101_Weights, "mobilenet_v2": tvm.MobileNet_V2_Weights}
PAPER_WEIGHTS = "IMAGENET1K_V1"
NONE = ("none", "")


class PretrainedWeightsUnavailable(RuntimeError):
    """torchvision's weights file could not be fetched (offline, blocked, corrupt download)."""


def imagenet_weights(arch: str, pretrained: str) -> tvm.WeightsEnum:
    """The torchvision weights ``pretrained`` names for backbone ``arch``: ``imagenet`` (= ``IMAGENET1K_V1``)
    or one of the enum's own names."""
    if arch not in WEIGHTS:
        raise ValueError(f"no torchvision ImageNet weights for backbone {arch!r}; available for {', '.join(WEIGHTS)}")
    enum = WEIGHTS[arch]
    name = PAPER_WEIGHTS if str(pretrained).lower() == "imagenet" else str(pretrained)
    if name not in enum.__members__:
        raise ValueError(f"pretrained={pretrained!r}: choose imagenet (= {PAPER_WEIGHTS}), none, or one of "
                         f"{', '.join(enum.__members__)} ({enum.__name__})")
    return enum[name]


def imagenet_state_dict(arch: str, pretrained: str) -> dict[str, torch.Tensor]:
    """The state dict of :func:`imagenet_weights`, from torch's hub cache or downloaded into it."""
    weights = imagenet_weights(arch, pretrained)
    try:
        return weights.get_state_dict(progress=False, check_hash=True)
    except Exception as err:  # URLError, timeouts, HTTP errors, a hash mismatch: all mean "not available here"
        cache = Path(torch.hub.get_dir()) / "checkpoints"
        raise PretrainedWeightsUnavailable(
            f"pretrained={pretrained}: torchvision's {type(weights).__name__}.{weights.name} could not be loaded "
            f"from {weights.url} ({type(err).__name__}: {err}). Without internet here, download that file elsewhere "
            f"and pass it as --model-option backbone_weights=PATH (or put it into {cache})"
        ) from None


def match_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor], source: str,
                     ignore_prefixes: Sequence[str] = ()) -> None:
    """Load ``state`` into ``model``: keys starting with one of ``ignore_prefixes`` (the ImageNet classifier) are
    dropped from both sides, a ``module.`` prefix is removed, and every other key must match exactly, otherwise a
    ``RuntimeError`` naming ``source`` lists the differences."""
    ignore = tuple(ignore_prefixes)
    state = {k.removeprefix("module."): v for k, v in state.items() if not k.removeprefix("module.").startswith(ignore)}
    own = {k for k in model.state_dict() if not k.startswith(ignore)}
    missing = sorted(own - state.keys())
    unexpected = sorted(state.keys() - own)
    if missing or unexpected:
        raise RuntimeError(
            f"backbone weights {source} do not match: missing {missing[:8]}"
            f"{'...' if len(missing) > 8 else ''}, unexpected {unexpected[:8]}{'...' if len(unexpected) > 8 else ''}"
        )
    model.load_state_dict(state, strict=False)


def load_backbone_weights(model: nn.Module, path: str | os.PathLike, *, ignore_prefixes: Sequence[str] = ()) -> None:
    """Load a local torchvision-style state dict (``torch.load(..., weights_only=True)``; a ``{"state_dict": ...}``
    wrapper is unwrapped) into ``model`` with :func:`match_state_dict`; never downloads."""
    state = torch.load(os.fspath(path), map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    match_state_dict(model, state, repr(os.fspath(path)), ignore_prefixes)


def initialise_backbone(net: nn.Module, arch: str, pretrained: str | None, backbone_weights: str | os.PathLike | None,
                        ignore_prefixes: Sequence[str]) -> None:
    """Starting weights of a torchvision trunk built with ``weights=None``: from ``backbone_weights`` or
    ``pretrained`` (at most one), else left as initialised."""
    wanted = pretrained is not None and str(pretrained).lower() not in NONE
    if wanted and backbone_weights is not None:
        raise ValueError("give pretrained=... or backbone_weights=PATH, not both")
    if backbone_weights is not None:
        load_backbone_weights(net, backbone_weights, ignore_prefixes=ignore_prefixes)
    elif wanted:
        weights = imagenet_weights(arch, str(pretrained))
        match_state_dict(net, imagenet_state_dict(arch, str(pretrained)), f"{type(weights).__name__}.{weights.name}",
                         ignore_prefixes)


def resolve_initial_weights(options: Mapping[str, Any]) -> dict[str, Any]:
    """Model ``options`` ready for workers on any machine: ``backbone_weights`` as an absolute path of an
    existing file, and the ImageNet weights of ``pretrained`` fetched into torch's hub cache now, so a
    missing file or an offline machine fails before training starts. The backbone is ``options["backbone"]``
    (default ``resnet101``, DUC+HDC's only one)."""
    options = dict(options)
    path = options.get("backbone_weights")
    if path is not None:
        resolved = Path(str(path)).expanduser().resolve()
        if not resolved.is_file():
            raise FileNotFoundError(f"model option backbone_weights: no such file {resolved}")
        options["backbone_weights"] = str(resolved)
    pretrained = options.get("pretrained")
    if pretrained is not None and str(pretrained).lower() not in NONE:
        imagenet_state_dict(str(options.get("backbone", "resnet101")), str(pretrained))
    return options
