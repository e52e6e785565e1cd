"""Evaluation shared by search and retrain: every validation sample exactly once across workers, mIoU from
confusion matrices summed over workers, loss per labelled pixel; optionally multi-scale and flipped."""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from nasplat.training.collectives import rank, world_size
from nasplat.training.metrics import IGNORE_INDEX, ConfusionMatrix


def exact_shard(dataset: Dataset) -> Subset:
    """This worker's samples ``rank, rank + world, ...``: together the workers hold every sample exactly once
    (``DistributedSampler`` would pad with repeated samples when the split does not divide by the workers)."""
    return Subset(dataset, range(rank(), len(dataset), world_size()))


def validation_loader(dataset: Dataset, batch_size: int) -> DataLoader:
    """Batches of this worker's :func:`exact_shard`, in order."""
    return DataLoader(exact_shard(dataset), batch_size=batch_size)


def predict_probabilities(
    model: nn.Module, images: torch.Tensor, size: Sequence[int], scales: Sequence[float] = (1.0,), flip: bool = False
) -> torch.Tensor:
    """Class probabilities [N,C,*size]: the softmax averaged over ``scales`` (the image resized
    bilinearly by each factor) and, with ``flip``, over horizontally flipped copies (flipped back),
    each resized bilinearly to ``size`` before averaging. The model must be in eval mode."""
    height, width = images.shape[-2:]
    total, count = None, 0
    for scale in scales:
        scaled = images
        if scale != 1.0:
            target = (max(1, round(height * scale)), max(1, round(width * scale)))
            scaled = F.interpolate(images, size=target, mode="bilinear", align_corners=False)
        views = [(scaled, False), (scaled.flip(-1), True)] if flip else [(scaled, False)]
        for view, flipped in views:
            probs = torch.softmax(model(view).float(), dim=1)
            if flipped:
                probs = probs.flip(-1)
            if tuple(probs.shape[-2:]) != tuple(size):
                probs = F.interpolate(probs, size=tuple(size), mode="bilinear", align_corners=False)
            total = probs if total is None else total + probs
            count += 1
    return total / count


@torch.no_grad()
def evaluate_model(
    model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], class_names: Sequence[str],
    scales: Sequence[float] = (1.0,), flip: bool = False, device: torch.device | str = "cpu",
) -> dict[str, Any]:
    """Loss, mIoU, pixel accuracy, per-class IoU and confusion matrix over ``batches`` (summed
    across workers when torch.distributed is initialised). ``val_loss`` is the mean negative log of
    the averaged probability of the true class (cross-entropy for one scale without flip)."""
    model.eval()
    device = torch.device(device)
    matrix = ConfusionMatrix(len(class_names))
    sums = torch.zeros(2, dtype=torch.float64, device=device)  # loss sum, labelled pixels
    for images, masks in batches:
        images, masks = images.to(device), masks.to(device)
        probs = predict_probabilities(model, images, masks.shape[-2:], scales, flip)
        log_probs = probs.clamp_min(1e-12).log()
        sums[0] += F.nll_loss(log_probs, masks, ignore_index=IGNORE_INDEX, reduction="sum").double()
        sums[1] += (masks != IGNORE_INDEX).sum()
        matrix.update(probs.argmax(1), masks)
    matrix.all_reduce()
    if world_size() > 1:
        torch.distributed.all_reduce(sums)
    iou = matrix.iou()
    return {
        "val_loss": float(sums[0] / sums[1].clamp_min(1)),
        "val_miou": matrix.miou(),
        "val_pixel_acc": matrix.pixel_accuracy(),
        "val_iou": {name: float(v) for name, v in zip(class_names, iou)},
        "confusion_matrix": matrix.matrix.cpu().tolist(),
    }
