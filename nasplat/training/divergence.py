"""Divergence: a non-finite loss or architecture parameter ends a trial at once, and is never retried."""
from __future__ import annotations

import math
from typing import Mapping

import torch

from nasplat.training.collectives import average_


class TrainingDiverged(RuntimeError):
    """The training loss or an architecture parameter became NaN or infinite: deterministic, so never retried."""


def global_mean(total: float | torch.Tensor, count: int, device: torch.device | str = "cpu") -> float:
    """``total / count`` averaged over the workers, so every rank sees (and acts on) the same value."""
    value = torch.as_tensor(total, dtype=torch.float64, device=device).reshape(1) / max(count, 1)
    average_([value])
    return float(value)


def require_finite(epoch: int, hint: str, loss: float | None = None,
                   tensors: Mapping[str, torch.Tensor] | None = None) -> None:
    """Raise TrainingDiverged naming what went non-finite in ``epoch`` (1-based) and ``hint`` (what to change)."""
    if loss is not None and not math.isfinite(loss):
        raise TrainingDiverged(f"training diverged in epoch {epoch}: the mean training loss is {loss} ({hint})")
    for name, tensor in (tensors or {}).items():
        if not torch.isfinite(tensor.detach()).all():
            raise TrainingDiverged(f"training diverged in epoch {epoch}: architecture parameter {name!r} holds "
                                   f"non-finite values ({hint})")
