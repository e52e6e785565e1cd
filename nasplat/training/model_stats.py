"""Model statistics: parameter count, FLOPs and forward latency of any ``nn.Module``.

No Ray, no MLflow: the retrain, evaluate and benchmark code all report their figures from here.
"""
from __future__ import annotations

import statistics
import time
from typing import Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of scalar parameters of ``model`` (shared tensors counted once)."""
    seen: set[int] = set()
    total = 0
    for param in model.parameters():
        if id(param) in seen or (trainable_only and not param.requires_grad):
            continue
        seen.add(id(param))
        total += param.numel()
    return total


def _check_size(input_size: Sequence[int]) -> tuple[int, ...]:
    size = tuple(int(s) for s in input_size)
    if len(size) != 4 or min(size) < 1:
        raise ValueError(f"input_size must be (N, C, H, W) with positive entries, got {tuple(input_size)}")
    return size


def _device_of(model: nn.Module) -> torch.device:
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


def count_flops(model: nn.Module, input_size: Sequence[int] = (1, 3, 512, 1024)) -> int:
    """FLOPs of one forward pass of ``model`` in eval mode on a zero input of ``input_size``.

    Counted by ``torch.utils.flop_counter.FlopCounterMode``: one multiply-add is **2 FLOPs**, and
    only matrix products and convolutions are counted (normalisation, activations, pooling and
    interpolation are not). A Conv2d without bias on an output of HxW therefore counts
    ``2 * Cin/groups * Cout * k * k * H * W``; divide by 2 for the multiply-accumulates (MACs) that
    many papers quote as "FLOPs".
    """
    size = _check_size(input_size)
    was_training = model.training
    model.eval()
    try:
        counter = FlopCounterMode(display=False)
        with torch.inference_mode(), counter:
            model(torch.zeros(size, device=_device_of(model)))
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())


def measure_latency(
    model: nn.Module,
    input_size: Sequence[int] = (1, 3, 512, 1024),
    warmup: int = 2,
    repeats: int = 10,
) -> dict[str, float]:
    """Wall-clock time of one forward pass (eval mode, ``torch.inference_mode``), in milliseconds.

    Runs ``warmup`` untimed passes, then ``repeats`` timed ones on a random input on the model's
    device (synchronising CUDA around each). Returns ``median_ms``, ``mean_ms``, ``std_ms``
    (population standard deviation), ``min_ms``, ``max_ms``, ``iqr_ms`` (interquartile range; 0 for
    fewer than 2 repeats), ``repeats`` and ``throughput_per_s`` (images per second at the median,
    ``N / median``).
    """
    size = _check_size(input_size)
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got repeats={repeats}, warmup={warmup}")
    device = _device_of(model)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    was_training = model.training
    model.eval()
    times: list[float] = []
    try:
        with torch.inference_mode():
            x = torch.randn(size, device=device)
            for _ in range(warmup):
                model(x)
            for _ in range(repeats):
                sync()
                start = time.perf_counter()
                model(x)
                sync()
                times.append((time.perf_counter() - start) * 1000.0)
    finally:
        model.train(was_training)
    median = statistics.median(times)
    if len(times) >= 2:
        q1, _, q3 = statistics.quantiles(times, n=4, method="inclusive")
        iqr = q3 - q1
    else:
        iqr = 0.0
    return {
        "median_ms": median,
        "mean_ms": statistics.fmean(times),
        "std_ms": statistics.pstdev(times),
        "min_ms": min(times),
        "max_ms": max(times),
        "iqr_ms": iqr,
        "repeats": float(repeats),
        "throughput_per_s": size[0] * 1000.0 / median,
    }
