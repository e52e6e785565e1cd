"""Loss helpers shared by the baselines that compute their loss below input resolution."""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def resize_labels(target: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Nearest-neighbour label resize of ``target`` [N, H, W] to ``size`` (``F.interpolate(mode="nearest")``:
    output pixel i reads label floor(i * H / h))."""
    size = tuple(int(s) for s in size)
    if tuple(target.shape[-2:]) == size:
        return target
    return F.interpolate(target[:, None].float(), size=size, mode="nearest")[:, 0].long()


def masked_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """Mean CE over non-ignored pixels; 0 (with graph) when every pixel is ignored (as Caffe)."""
    total = F.cross_entropy(logits, labels, ignore_index=ignore_index, reduction="sum")
    valid = (labels != ignore_index).sum().clamp(min=1)
    return total / valid
