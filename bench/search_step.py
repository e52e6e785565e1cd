"""Time and peak memory of one supernet search step: the fast path beside the straightforward per-edge path.

For each configuration (the DARTS and Auto-DeepLab sizes of issue 13, the papers' search sizes where
memory allows), each path and each step kind, a fresh process (this script with ``--child``) builds the
supernet, the search optimisers (SGD momentum 0.9 on the weights, Adam on the architecture) and a
:class:`nasplat.BilevelOptimizer`, runs ``--warmup`` steps, then times ``--steps`` steps:

* ``weight``: :meth:`BilevelOptimizer.weight_step` (forward, backward, clip, SGD step) on split A;
* ``arch1``: the first-order architecture step (forward and backward on split B, Adam step);
* ``arch2``: the second-order architecture step (unrolled weights, finite-difference Hessian-vector product).

Peak memory is the process's resident-set high-water mark (``ru_maxrss``) minus its RSS right after
``import torch`` and the spaces, so each (configuration, path, step) needs its own process; with
``--device cuda`` it is the GPU memory allocated at most during the timed steps.

Paths (``--paths``): ``per-edge`` is the straightforward implementation (``fused=False``: every candidate
of every edge its own kernels, NCHW tensors), ``fast`` the default (``fused=True`` and channels-last
tensors, as ``nasplat search`` runs). ``fused`` and ``channels-last`` are the two levers alone;
``fast-checkpoint`` adds cell checkpointing (``--space-option checkpoint_cells=true``), a memory-saving mode;
``fast-pc2`` and ``fast-pc4`` add PC-DARTS's partial channels with K = 2 or 4 and edge normalisation
(``--space-option partial_channels=K``), the other memory-saving mode: a different supernet (fewer weights,
same decode), so compare its memory, not its losses, with the others.

    python bench/search_step.py                       # the issue's configurations, 10 steps each
    python bench/search_step.py --interleave --configs darts-c8   # times only, the paths taking turns in one process
    python bench/search_step.py --configs darts-c8 --kinds weight --steps 5
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

MARKER = "RESULT "
CONFIGS: dict[str, dict] = {
    # name: space, supernet options, batch, crop, classes
    "darts-c8": dict(space="darts", options=dict(C=8, layers=5), batch=16, crop=32, classes=10),
    "darts-c16": dict(space="darts", options=dict(C=16, layers=8), batch=16, crop=32, classes=10),
    "adl-f4-64": dict(space="autodeeplab", options=dict(F=4, L=6, B=5), batch=2, crop=64, classes=19),
    "adl-f4-128": dict(space="autodeeplab", options=dict(F=4, L=6, B=5), batch=2, crop=128, classes=19),
    "adl-f8-64": dict(space="autodeeplab", options=dict(F=8, L=12, B=5), batch=2, crop=64, classes=19),
    "adl-f8-128": dict(space="autodeeplab", options=dict(F=8, L=12, B=5), batch=2, crop=128, classes=19),
    "adl-f8-321": dict(space="autodeeplab", options=dict(F=8, L=12, B=5), batch=2, crop=321, classes=19),
}
DEFAULT_CONFIGS = ("darts-c8", "darts-c16", "adl-f4-64", "adl-f4-128", "adl-f8-64", "adl-f8-128")
PATHS = {  # name: channels-last, supernet options
    "per-edge": (False, dict(fused=False)), "fused": (False, dict(fused=True)), "channels-last": (True, dict(fused=False)),
    "fast": (True, dict(fused=True)), "fast-checkpoint": (True, dict(fused=True, checkpoint_cells=True)),
    "fast-pc2": (True, dict(fused=True, partial_channels=2)), "fast-pc4": (True, dict(fused=True, partial_channels=4)),
}
KINDS = ("weight", "arch1", "arch2")


def _rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


def _stepper(config_name: str, path: str, kind: str, device: str) -> Callable[[], None]:
    """Build one path's supernet, optimisers and batches for one configuration; return its step of ``kind``."""
    import torch

    import nasplat

    torch.manual_seed(0)
    config = CONFIGS[config_name]
    channels_last, options = PATHS[path]
    model = nasplat.get_space(config["space"]).supernet(config["classes"], **options, **config["options"]).to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    w_opt = torch.optim.SGD(model.weight_parameters(), lr=0.025, momentum=0.9, weight_decay=3e-4)
    a_opt = torch.optim.Adam(list(model.arch_parameters().values()), lr=3e-4, betas=(0.5, 0.999), weight_decay=1e-3)
    order = 2 if kind == "arch2" else 1
    bilevel = nasplat.BilevelOptimizer(model, w_opt, a_opt, torch.nn.functional.cross_entropy, order=order)
    generator = torch.Generator().manual_seed(1)

    def batch():
        size = (config["batch"], 3, config["crop"], config["crop"])
        labels = torch.randint(0, config["classes"], (config["batch"], config["crop"], config["crop"]), generator=generator)
        return torch.randn(size, generator=generator).to(device), labels.to(device)

    batch_a, batch_b = batch(), batch()
    bilevel.weight_step(batch_a)  # momentum buffers exist, as in a running search
    cuda = device.startswith("cuda")

    def step() -> None:
        if kind == "weight":
            bilevel.weight_step(batch_a)
        else:
            bilevel.arch_step(batch_a, batch_b)
        if cuda:
            torch.cuda.synchronize()

    return step


def child(config_name: str, path: str, kind: str, steps: int, warmup: int, threads: int, device: str) -> dict:
    """Build, warm up and time one step kind of one path; return the figures (peak: GPU memory on CUDA)."""
    import torch

    import nasplat

    nasplat.get_space("darts"), nasplat.get_space("autodeeplab")  # the spaces' imports count as the base too
    base_kib = _rss_kib()
    torch.set_num_threads(threads)
    step = _stepper(config_name, path, kind, device)
    cuda = device.startswith("cuda")
    times = []
    for index in range(warmup + steps):
        if cuda and index == warmup:
            torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        step()
        if index >= warmup:
            times.append(time.perf_counter() - started)
    peak_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base_kib) / 1024
    if cuda:
        peak_mib = torch.cuda.max_memory_allocated() / 2**20
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times), "peak_mib": peak_mib}


def interleaved(config_name: str, paths: list[str], kind: str, steps: int, warmup: int, device: str
                ) -> dict[str, list[float]]:
    """Step times of every path built in this process, the paths taking turns step by step, so that a change of
    the machine's speed during the run (other tenants, clock) tilts no ratio. No memory figures: one process."""
    steppers = {path: _stepper(config_name, path, kind, device) for path in paths}
    times: dict[str, list[float]] = {path: [] for path in paths}
    for index in range(warmup + steps):
        for path, step in steppers.items():
            started = time.perf_counter()
            step()
            if index >= warmup:
                times[path].append(time.perf_counter() - started)
    return times


def run_child(config: str, path: str, kind: str, args: argparse.Namespace) -> dict:
    command = [sys.executable, __file__, "--child", config, path, kind, "--steps", str(args.steps),
               "--warmup", str(args.warmup), "--threads", str(args.threads), "--device", args.device]
    done = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout)
    for line in done.stdout.splitlines():
        if line.startswith(MARKER):
            return json.loads(line[len(MARKER):])
    reason = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
    return {"error": f"exit {done.returncode}: {reason[:120]}"}


def _cell(result: dict, key: str, fmt: str) -> str:
    return "failed" if "error" in result else format(result[key], fmt)


def print_interleaved(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    print(f"# search step, paths taking turns in one process, torch {torch.__version__}, {args.device}, "
          f"{args.threads} threads, median of {args.steps} steps after {args.warmup} warm-up; ratio = path / "
          f"{args.paths[0]}; {time.strftime('%Y-%m-%d %H:%M')}")
    print("| config | step | path | median s | min-max s | ratio |")
    print("|---|---|---|---:|---:|---:|")
    records = []
    for config in args.configs:
        for kind in args.kinds:
            times = interleaved(config, args.paths, kind, args.steps, args.warmup, args.device)
            base = statistics.median(times[args.paths[0]])
            for path, values in times.items():
                median = statistics.median(values)
                records.append({"config": config, "step": kind, "path": path, "median_s": median,
                                "min_s": min(values), "max_s": max(values), "interleaved": True})
                print(f"| {config} | {kind} | {path} | {median:.3f} | {min(values):.2f}-{max(values):.2f} | "
                      f"{median / base:.2f} |", flush=True)
    if args.json:
        args.json.write_text(json.dumps(records, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", nargs="+", default=list(DEFAULT_CONFIGS), choices=sorted(CONFIGS))
    parser.add_argument("--paths", nargs="+", default=["per-edge", "fast"], choices=list(PATHS))
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per measurement (after the warm-up)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N] (peak memory: GPU memory allocated)")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds before a child is given up")
    parser.add_argument("--json", type=Path, help="also write every result to this file")
    parser.add_argument("--interleave", action="store_true",
                        help="time only: build every path in this one process and let them take turns step by step "
                             "(ratios robust to the machine's speed drifting during the run; no memory figures)")
    parser.add_argument("--child", nargs=3, metavar=("CONFIG", "PATH", "KIND"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(MARKER + json.dumps(child(*args.child, args.steps, args.warmup, args.threads, args.device)), flush=True)
        return
    if args.interleave:
        print_interleaved(args)
        return

    import torch  # only for the header

    device = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else f"CPU, {args.threads} threads"
    print(f"# search step, torch {torch.__version__}, {device}, median of {args.steps} steps after {args.warmup} "
          f"warm-up; ratio = path / {args.paths[0]}; {time.strftime('%Y-%m-%d')}")
    print("| config | step | path | median s | min-max s | ratio | peak MiB | ratio |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    records = []
    for config in args.configs:
        for kind in args.kinds:
            base = None
            for path in args.paths:
                result = run_child(config, path, kind, args)
                records.append({"config": config, "step": kind, "path": path, **result})
                base = base or result
                ok = "error" not in result and "error" not in base
                time_ratio = f"{result['median_s'] / base['median_s']:.2f}" if ok else "-"
                mem_ratio = f"{result['peak_mib'] / base['peak_mib']:.2f}" if ok else "-"
                spread = "failed" if "error" in result else f"{result['min_s']:.2f}-{result['max_s']:.2f}"
                print(f"| {config} | {kind} | {path} | {_cell(result, 'median_s', '.3f')} | {spread} | {time_ratio} "
                      f"| {_cell(result, 'peak_mib', '.0f')} | {mem_ratio} |", flush=True)
                if "error" in result:
                    print(f"<!-- {config} {kind} {path}: {result['error']} -->", flush=True)
    if args.json:
        args.json.write_text(json.dumps(records, indent=1))


if __name__ == "__main__":
    main()
