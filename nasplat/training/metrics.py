"""Confusion-matrix mIoU with the cityscapesScripts conventions.

Pixels labelled ``ignore_index`` (255) are dropped; a class whose IoU denominator is zero (absent
from both prediction and ground truth) is left out of the mean. Matrices add across batches and,
through :meth:`ConfusionMatrix.all_reduce`, across distributed workers.
"""
from __future__ import annotations

import torch

IGNORE_INDEX = 255


class ConfusionMatrix:
    """Accumulates a [num_classes, num_classes] matrix: rows = ground truth, columns = prediction."""

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def update(self, prediction: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch: ``prediction`` holds class ids (or logits [N,C,H,W]), ``target`` class ids."""
        if prediction.dim() == target.dim() + 1:
            prediction = prediction.argmax(dim=1)
        if prediction.shape != target.shape:
            raise ValueError(f"prediction shape {tuple(prediction.shape)} != target shape {tuple(target.shape)}")
        # counted on the batch's device (no per-batch copy to the host; NCCL reduces device tensors)
        target = target.reshape(-1).to(torch.int64)
        prediction = prediction.reshape(-1).to(target.device, torch.int64)
        if self.matrix.device != target.device:
            self.matrix = self.matrix.to(target.device)
        keep = target != self.ignore_index
        target, prediction = target[keep], prediction[keep]
        bad = (target < 0) | (target >= self.num_classes)
        if bool(bad.any()):
            raise ValueError(
                f"target holds label {int(target[bad][0])} outside 0..{self.num_classes - 1} "
                f"and not the ignore label {self.ignore_index}"
            )
        if bool(((prediction < 0) | (prediction >= self.num_classes)).any()):
            raise ValueError(f"prediction holds ids outside 0..{self.num_classes - 1}")
        flat = target * self.num_classes + prediction
        self.matrix += torch.bincount(flat, minlength=self.num_classes**2).reshape(self.num_classes, -1)

    def all_reduce(self) -> None:
        """Sum the matrix over every worker of the default process group (no-op if none)."""
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(self.matrix, op=dist.ReduceOp.SUM)

    def reset(self) -> None:
        self.matrix.zero_()

    def iou(self) -> torch.Tensor:
        """Per-class IoU = TP / (TP + FP + FN) on the CPU; NaN where the denominator is 0."""
        m = self.matrix.double().cpu()
        tp = m.diag()
        denominator = m.sum(0) + m.sum(1) - tp
        out = torch.full_like(tp, float("nan"))
        present = denominator > 0
        out[present] = tp[present] / denominator[present]
        return out

    def miou(self) -> float:
        """Mean IoU over classes with a non-zero denominator (NaN if there are none)."""
        return float(torch.nanmean(self.iou()))

    def pixel_accuracy(self) -> float:
        total = int(self.matrix.sum())
        return float(self.matrix.diag().sum()) / total if total else float("nan")
