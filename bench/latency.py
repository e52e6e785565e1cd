"""Forward latency, throughput, parameters and FLOPs of the baselines and a DARTS network, on this CPU.

For every model and input size: one forward pass under ``FlopCounterMode``
(:func:`nasplat.training.model_stats.count_flops`, 1 multiply-add = 2 FLOPs, convolutions and matrix
products only), which doubles as the warm-up, then ``--warmup`` more untimed passes and
``--repeats`` timed ones (:func:`nasplat.training.model_stats.measure_latency`: batch 1, eval mode,
``torch.inference_mode``, random input, ``torch.set_num_threads`` = all CPUs this process may use).
Timed passes are interleaved: round r times every model once, so a change of machine load during
the run slows all models alike instead of whichever ran then. Prints a markdown table per size
with the median latency, its range, images per second, the speed-up over
DeepLabV3+ ResNet-101 at output stride 16 (its latency / the model's latency) and params and
GFLOPs as ratios to that model. Weights are random (``weights=None`` backbones): latency does
not depend on them. The 1-minute load average before and after each size is printed, because a
shared machine slows every figure.

Models (``--models``, comma-separated keys):

* ``deeplabv3plus_r101_os16`` (reference), ``deeplabv3plus_r101_os8``, ``deeplabv3plus_mnv2_os16``;
* ``duc_hdc`` (ResNet-101, output stride 8);
* ``icnet`` (inference build, without the cascade-label-guidance classifiers);
* ``darts_v2``: the published DARTS_V2 cells built with the retrain defaults for DARTS genotypes
  (``nasplat.retraining.config.GENOTYPE_DEFAULT_OPTIONS["darts"]``).

    python bench/latency.py [--sizes 512x1024,1024x2048] [--models ...] [--repeats 3] [--warmup 0]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nasplat import get_model, get_space
from nasplat.training.model_stats import count_flops, count_parameters, measure_latency

NUM_CLASSES = 19  # Cityscapes, whose images are 1024x2048
REFERENCE = "deeplabv3plus_r101_os16"


def _darts_v2() -> nn.Module:
    from nasplat.retraining.config import GENOTYPE_DEFAULT_OPTIONS
    from search_spaces.darts import DARTS_V2

    return get_space("darts").build(DARTS_V2, NUM_CLASSES, **GENOTYPE_DEFAULT_OPTIONS["darts"])


MODELS: dict[str, tuple[str, Callable[[], nn.Module]]] = {
    "deeplabv3plus_r101_os16": ("DeepLabV3+ ResNet-101 OS16",
                                lambda: get_model("deeplabv3plus", NUM_CLASSES, backbone="resnet101", output_stride=16)),
    "deeplabv3plus_r101_os8": ("DeepLabV3+ ResNet-101 OS8",
                               lambda: get_model("deeplabv3plus", NUM_CLASSES, backbone="resnet101", output_stride=8)),
    "deeplabv3plus_mnv2_os16": ("DeepLabV3+ MobileNetV2 OS16",
                                lambda: get_model("deeplabv3plus", NUM_CLASSES, backbone="mobilenet_v2",
                                                  output_stride=16)),
    "duc_hdc": ("DUC+HDC ResNet-101", lambda: get_model("duc_hdc", NUM_CLASSES)),
    "icnet": ("ICNet", lambda: get_model("icnet", NUM_CLASSES, aux=False)),
    "darts_v2": ("DARTS_V2 (retrain defaults)", _darts_v2),
}


def parse_sizes(text: str) -> list[tuple[int, int]]:
    sizes = []
    for item in text.split(","):
        try:
            h, w = (int(v) for v in item.lower().split("x"))
        except ValueError:
            raise SystemExit(f"--sizes: expected HxW[,HxW...], got {item!r}") from None
        sizes.append((h, w))
    return sizes


def cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def measure(models: dict[str, nn.Module], size: tuple[int, int], warmup: int, repeats: int) -> dict[str, dict]:
    """Per model: FLOPs (the first, warm-up pass), ``warmup`` more passes, then ``repeats`` timed passes
    interleaved across models (round r times every model once), so a change of load hits all alike."""
    input_size = (1, 3, *size)
    rows: dict[str, dict] = {}
    for key, model in models.items():
        start = time.perf_counter()
        flops = count_flops(model, input_size)
        rows[key] = {"params": count_parameters(model), "gflops": flops / 1e9,
                     "first_s": time.perf_counter() - start, "times": []}
        if warmup:
            measure_latency(model, input_size, warmup=warmup - 1, repeats=1)
        print(f"  {key} {size[0]}x{size[1]}: first pass {rows[key]['first_s']:.1f} s", file=sys.stderr, flush=True)
    for round_ in range(repeats):
        for key, model in models.items():
            rows[key]["times"].append(measure_latency(model, input_size, warmup=0, repeats=1)["median_ms"])
        print(f"  round {round_ + 1}/{repeats}: " + ", ".join(f"{k} {r['times'][-1]:.0f} ms" for k, r in rows.items()),
              file=sys.stderr, flush=True)
    for row in rows.values():
        times = row.pop("times")
        row["median_ms"] = statistics.median(times)
        row["min_ms"] = min(times)
        row["max_ms"] = max(times)
        row["throughput_per_s"] = 1000.0 / row["median_ms"]
    return rows


def table(rows: dict[str, dict[str, float]], size: tuple[int, int]) -> str:
    ref = rows.get(REFERENCE)
    lines = [
        f"Input 1x3x{size[0]}x{size[1]}, batch 1:",
        "",
        "| model | latency ms (median) | min-max ms | images/s | speed-up vs R101 OS16 | params (M) | params ratio "
        "| GFLOPs | GFLOPs ratio |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for key, row in rows.items():
        def ratio(value: float, ref_value: float | None, inverse: bool = False) -> str:
            if ref_value is None:
                return "n/a"
            return f"{(ref_value / value) if inverse else (value / ref_value):.3g}x"

        lines.append(
            f"| {MODELS[key][0]} | {row['median_ms']:.0f} | {row['min_ms']:.0f}-{row['max_ms']:.0f} | {row['throughput_per_s']:.2f} "
            f"| {ratio(row['median_ms'], ref and ref['median_ms'], inverse=True)} | {row['params'] / 1e6:.2f} "
            f"| {ratio(row['params'], ref and ref['params'])} | {row['gflops']:.1f} "
            f"| {ratio(row['gflops'], ref and ref['gflops'])} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="512x1024,1024x2048", help="comma-separated HxW (default 512x1024,1024x2048)")
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated keys from {', '.join(MODELS)}")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per model and size (default 3)")
    parser.add_argument("--warmup", type=int, default=0,
                        help="untimed passes after the FLOP-counting pass, which already warms up (default 0)")
    parser.add_argument("--threads", type=int, default=cpu_count(), help="torch threads (default: all usable CPUs)")
    args = parser.parse_args(argv)

    keys = [k.strip() for k in args.models.split(",") if k.strip()]
    unknown = [k for k in keys if k not in MODELS]
    if unknown:
        raise SystemExit(f"--models: unknown {unknown}; choose from {list(MODELS)}")
    sizes = parse_sizes(args.sizes)
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {cpu_count()} CPUs usable, "
          f"repeats {args.repeats}, warm-up 1 (FLOP count) + {args.warmup}")
    models = {}
    for key in keys:
        torch.manual_seed(0)
        models[key] = MODELS[key][1]().eval()
    for size in sizes:
        load_before = os.getloadavg()[0]
        rows = measure(models, size, args.warmup, args.repeats)
        print(f"\n{table(rows, size)}\n\n1-min load average: {load_before:.2f} before, {os.getloadavg()[0]:.2f} after "
              f"({cpu_count()} CPUs)\n", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
