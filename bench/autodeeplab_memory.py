"""Memory and time of one Auto-DeepLab search step, with and without cell checkpointing.

Builds the Auto-DeepLab supernet at the paper's search size (F=8, L=12, B=5), the optimisers of a
search (SGD with momentum 0.9 on the weights, Adam on alpha/beta) and a ``BilevelOptimizer``, then
runs one warm-up bilevel step and ``--steps`` timed ones on a random batch of 2 RGB 128x128 crops
(the paper's search batch) on the CPU with 2 threads. For ``checkpoint_cells`` False and True it
reports:

* weight parameters (millions);
* RSS after build: ``VmRSS`` from ``/proc/self/status`` once model and optimisers exist, i.e. the
  memory the model itself needs before any activation is stored;
* peak RSS: ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` (KiB on Linux), the high-water mark of
  the process's resident memory, kept by the kernel. Activations saved for backward live only
  inside a step and are freed before Python regains control, so sampling RSS from Python would
  miss the peak; the kernel's maximum does not. It is monotone and per process, hence each
  configuration runs in a fresh subprocess (this script with ``--child``);
* peak - build: what the steps (activations, gradients, optimiser state) add on top;
* seconds per bilevel step (one arch step + one weight step; ``--order 2`` for the unrolled one).

A child that fails or is killed (e.g. by the OOM killer) is reported in the table, not raised.

    python bench/autodeeplab_memory.py [--steps 2] [--order 1|2]
"""
from __future__ import annotations

import argparse
import json
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

GIB_KIB = 1024**2  # KiB per GiB
BATCH, CROP, CLASSES = 2, 128, 6
F, L, B = 8, 12, 5
MARKER = "RESULT "


def vm_rss_kib() -> int:
    """Current resident set size of this process (KiB), from /proc/self/status."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


def child(checkpoint: bool, steps: int, order: int) -> dict[str, float]:
    """Build, warm up, time ``steps`` bilevel steps; return the measurements."""
    import torch

    import nasplat

    torch.set_num_threads(2)
    torch.manual_seed(0)
    model = nasplat.get_space("autodeeplab").supernet(
        num_classes=CLASSES, F=F, L=L, B=B, checkpoint_cells=checkpoint
    )
    w_opt = torch.optim.SGD(model.weight_parameters(), lr=0.025, momentum=0.9, weight_decay=3e-4)
    a_opt = torch.optim.Adam(list(model.arch_parameters().values()), lr=3e-3, weight_decay=1e-3)
    bilevel = nasplat.BilevelOptimizer(
        model, w_opt, a_opt, torch.nn.CrossEntropyLoss(ignore_index=255), order=order
    )
    build_kib = vm_rss_kib()

    def batch() -> tuple[torch.Tensor, torch.Tensor]:
        return torch.randn(BATCH, 3, CROP, CROP), torch.randint(0, CLASSES, (BATCH, CROP, CROP))

    batch_a, batch_b = batch(), batch()
    bilevel.step(batch_a, batch_b)  # warm-up
    start = time.perf_counter()
    for _ in range(steps):
        bilevel.step(batch_a, batch_b)
    seconds = (time.perf_counter() - start) / steps
    return {
        "params_m": sum(p.numel() for p in model.weight_parameters()) / 1e6,
        "build_gib": build_kib / GIB_KIB,
        "peak_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / GIB_KIB,
        "s_per_step": seconds,
    }


def run_child(checkpoint: bool, steps: int, order: int) -> dict[str, float] | str:
    """Run one configuration in a fresh interpreter; measurements, or why there are none."""
    cmd = [sys.executable, __file__, "--child", "--steps", str(steps), "--order", str(order)]
    if checkpoint:
        cmd.append("--checkpoint")
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    for line in proc.stdout.splitlines():
        if proc.returncode == 0 and line.startswith(MARKER):
            return json.loads(line[len(MARKER):])
    if proc.returncode < 0:
        name = signal.Signals(-proc.returncode).name
        return f"killed by {name}" + (" (out of memory?)" if name == "SIGKILL" else "")
    last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    return f"failed (exit {proc.returncode}): {last[:80]}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2, help="timed bilevel steps after the warm-up")
    parser.add_argument("--order", type=int, choices=(1, 2), default=1)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.steps < 1:
        parser.error("--steps must be >= 1")
    if args.child:
        print(MARKER + json.dumps(child(args.checkpoint, args.steps, args.order)), flush=True)
        return

    print(f"Auto-DeepLab F={F} L={L} B={B}, batch {BATCH}x3x{CROP}x{CROP}, CPU 2 threads, "
          f"order {args.order}, {args.steps} timed steps after 1 warm-up\n")
    print("| config | weight params (M) | RSS after build (GiB) | peak RSS (GiB) | peak - build (GiB) | s/step |")
    print("|---|---|---|---|---|---|")
    extra: dict[bool, float] = {}
    for checkpoint in (False, True):
        name = f"checkpoint_cells={checkpoint}"
        r = run_child(checkpoint, args.steps, args.order)
        if isinstance(r, str):
            print(f"| {name} | {r} | | | | |", flush=True)
            continue
        extra[checkpoint] = r["peak_gib"] - r["build_gib"]
        print(f"| {name} | {r['params_m']:.2f} | {r['build_gib']:.2f} | {r['peak_gib']:.2f} "
              f"| {extra[checkpoint]:.2f} | {r['s_per_step']:.1f} |", flush=True)
    if len(extra) == 2 and extra[False] > 0:
        print(f"\npeak - build, checkpointed / plain: {extra[True] / extra[False]:.3f}")
    else:
        print("\npeak - build ratio: n/a (a configuration failed)")


if __name__ == "__main__":
    main()
