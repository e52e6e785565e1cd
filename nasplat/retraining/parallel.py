"""How retrain workers keep their replicas in step, and in which precision they train.

Two ways to average gradients over the workers (``--ddp``):

- DistributedDataParallel (torch's DDP, what Ray Train's ``prepare_model`` applies), with ``SyncBatchNorm`` on
  GPUs: gradients are all-reduced in buckets while the backward pass runs, BatchNorm statistics are computed over
  the global batch. The default on GPUs (``auto``), where it pays.
- The explicit all-reduce of :mod:`nasplat.training.collectives` after the backward pass, BatchNorm per worker
  (buffers averaged before evaluation): the default on CPUs (``auto``), the path the bi-level search needs too.

Both give the same weights for the same data (``tests/test_retrain_parallel.py``). Mixed precision (``--amp``):
``fp16`` autocast with a gradient scaler on GPUs, ``bf16`` autocast (no scaler needed) on GPUs or CPUs.
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from nasplat.retraining.config import AMP_MODES
from nasplat.training.collectives import average_, world_size


def uses_ddp(mode: str, device: torch.device) -> bool:
    """Whether to wrap the network in DDP: ``on``, or ``auto`` on a GPU; never for a single worker."""
    return world_size() > 1 and (mode == "on" or (mode == "auto" and device.type == "cuda"))


def replicate(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` (already on ``device``) wrapped in DDP, its BatchNorm layers made SyncBatchNorm on a GPU (torch's
    SyncBatchNorm runs on accelerators only). The wrapper shares the network's parameters."""
    if device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return DistributedDataParallel(model, device_ids=[device.index])
    return DistributedDataParallel(model)


def unwrap(model: nn.Module) -> nn.Module:
    """The network inside a DDP wrapper (or ``model`` itself)."""
    return model.module if isinstance(model, DistributedDataParallel) else model


class Precision:
    """Autocast and the backward/step of one training iteration for an ``--amp`` mode on ``device``."""

    def __init__(self, mode: str, device: torch.device) -> None:
        if mode not in AMP_MODES:
            raise ValueError(f"amp must be one of {', '.join(AMP_MODES)}, got {mode!r}")
        if mode == "fp16" and device.type != "cuda":
            raise ValueError("amp fp16 needs a GPU (its gradient scaler is for CUDA); use bf16 or off on a CPU")
        self.mode = mode
        self.device = device
        self.scaler = torch.amp.GradScaler(device.type) if mode == "fp16" else None

    @contextlib.contextmanager
    def autocast(self) -> Iterator[None]:
        if self.mode == "off":
            yield
            return
        dtype = torch.float16 if self.mode == "fp16" else torch.bfloat16
        with torch.autocast(device_type=self.device.type, dtype=dtype):
            yield

    def step(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer, params: list[nn.Parameter],
             all_reduce: bool) -> None:
        """Backward, average the gradients over the workers unless DDP did (``all_reduce``), optimizer step."""
        optimizer.zero_grad(set_to_none=False)
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
        if all_reduce:
            average_([p.grad for p in params])  # the same averaged gradients on every rank: the same skip decision
        if self.scaler is not None:
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            optimizer.step()

    def state_dict(self) -> dict[str, Any]:
        return self.scaler.state_dict() if self.scaler is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)
