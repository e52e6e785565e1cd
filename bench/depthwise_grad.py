"""The input gradient of a depthwise convolution: PyTorch's backward kernel beside the forward convolution that
:mod:`nasplat.spaces.depthwise` runs instead (the output gradient spread by the stride, the kernel flipped).

Shapes are those of the fused DARTS supernet at C=8 (batch 16, 32x32): the ``E=4`` edges leaving a cell input
stacked along channels, at the three resolutions of a 5-cell network, for each separable/dilated kernel, at
stride 1 and (the reduction cells' first unit) stride 2. Channels-last tensors, as the search runs. Each row
times both ways alternately in one process, median of ``--repeats``.

    python bench/depthwise_grad.py [--threads 2] [--repeats 30]
"""
from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import torch

from nasplat.spaces.depthwise import depthwise_conv2d

BATCH, EDGES = 16, 4
# (channels per edge, input side) of the cells at C=8: 32x32 (C=8), 16x16 (C=16), 8x8 (C=32)
LEVELS = ((8, 32), (16, 16), (32, 8))
KERNELS = ((3, 1), (5, 1), (3, 2), (5, 2))  # (kernel, dilation): sep_conv_3x3/5x5, dil_conv_3x3/5x5


def _median_ms(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    times: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values():
        fn()
    for _ in range(repeats):
        for name, fn in fns.items():
            started = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - started)
    return {name: 1e3 * statistics.median(values) for name, values in times.items()}


def row(channels: int, side: int, kernel: int, dilation: int, stride: int, repeats: int) -> dict[str, float]:
    groups = EDGES * channels
    padding = dilation * (kernel - 1) // 2
    x = torch.randn(BATCH, groups, side, side).contiguous(memory_format=torch.channels_last).requires_grad_(True)
    weight = torch.randn(groups, 1, kernel, kernel)
    out_side = (side + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1
    grad = torch.randn(BATCH, groups, out_side, out_side).contiguous(memory_format=torch.channels_last)
    native_out = torch.nn.functional.conv2d(x, weight, None, stride, padding, dilation, groups)
    ours_out = depthwise_conv2d(x, weight, (stride, stride), (padding, padding), (dilation, dilation))
    native = lambda: torch.autograd.grad(native_out, x, grad, retain_graph=True)  # noqa: E731
    ours = lambda: torch.autograd.grad(ours_out, x, grad, retain_graph=True)  # noqa: E731
    torch.testing.assert_close(ours()[0], native()[0], rtol=1e-4, atol=1e-4)
    return _median_ms({"native": native, "forward conv": ours}, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {args.threads} thread(s), batch {BATCH}, {EDGES} edges stacked, channels-last, "
          f"median of {args.repeats}; input gradient only (ms)\n")
    print("| channels x side | kernel, dilation | stride | native (ms) | forward conv (ms) | ratio |")
    print("|---|---|---:|---:|---:|---:|")
    for channels, side in LEVELS:
        for kernel, dilation in KERNELS:
            for stride in (1, 2):
                times = row(channels, side, kernel, dilation, stride, args.repeats)
                print(f"| {EDGES * channels} x {side}x{side} | {kernel}x{kernel}, {dilation} | {stride} | "
                      f"{times['native']:.3f} | {times['forward conv']:.3f} | "
                      f"{times['forward conv'] / times['native']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
