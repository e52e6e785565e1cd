"""How the search step scales: images/s with 1 and 2 Ray Train workers here, and a cost model for other sizes.

    python bench/scaling.py [--steps 5] [--skip-ray] [--skip-cpu-fit] [--gpu-tflops 5] [--gpu-call-us 10] ...

Three parts, each printed as a table:

1. **Measured, Ray Train on this machine.** The default search's step (DARTS C=8, 5 layers, 48 px, batch 8 per
   worker, first order: an architecture step on split B, then a weight step on split A) timed inside
   ``TorchTrainer`` workers after a barrier, with 1 worker of 1 and of 2 threads and with 2 workers of 1 thread;
   and the gradient all-reduce alone (one flat tensor of the supernet's weights, as ``average_`` sends it).
2. **Measured, one process, 1 thread.** The same step at several sizes of both spaces, beside its counted work:
   ATen calls of a forward and backward pass, the bytes they write and 3 x the FLOPs of its forward pass (counted
   on the meta device, so no size is too large to count). A least-squares fit of
   ``step = 2 (calls x t_call + FLOPs / R + bytes / B)`` gives this CPU's cost per call, FLOP rate and write rate;
   the table shows how well it predicts each measured step.
3. **Model.** ``T(N) = 2 (calls x t_call + FLOPs(b) / R + bytes(b) / B) + allreduce(N)`` with a ring all-reduce of
   the weight gradients (``2 (N-1)/N x bytes / bandwidth``; the implementation does not overlap it with the
   backward pass): how the counted work grows with channels, layers and crop, and the paper-size searches (DARTS
   C=16, 8 layers; Auto-DeepLab F=8, L=12 at 321x321, batch 2, 40 epochs) on N GPUs. The GPU figures rest on
   **assumed** inputs, printed with them: ``--gpu-tflops`` (effective FP32 rate on this op mix), ``--gpu-call-us``
   (host time per ATen call, eager mode), ``--gpu-memory-gbs``, ``--nvlink-gbs`` and ``--network-gbs``.
   No GPU run has been timed.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from nasplat.spaces.registry import get_space

FLOAT_BYTES = 4
BACKWARD_FACTOR = 3
"""FLOPs of a forward and backward pass / FLOPs of the forward pass."""
COUNT_BATCH = 2
DEFAULT = {"space": "darts", "options": {"C": 8, "layers": 5, "reductions": 2}, "image_size": 48, "batch": 8}
"""The default search's supernet and batch per worker (configs/quick.yaml)."""
CPU_CONFIGS = [  # (label, space, options, crop, batch): sizes that run in seconds per step on one CPU thread; the
    # spaces' default (fused) path unless "per edge" (fused=False)
    ("DARTS C=8 L=5 8px b1", "darts", {"C": 8, "layers": 5, "reductions": 2}, 8, 1),
    ("DARTS C=8 L=5 48px b8", "darts", {"C": 8, "layers": 5, "reductions": 2}, 48, 8),
    ("DARTS C=8 L=5 48px b8, per edge", "darts", {"C": 8, "layers": 5, "reductions": 2, "fused": False}, 48, 8),
    ("DARTS C=8 L=5 64px b8", "darts", {"C": 8, "layers": 5, "reductions": 2}, 64, 8),
    ("DARTS C=16 L=8 32px b16", "darts", {"C": 16, "layers": 8}, 32, 16),
    ("Auto-DeepLab F=2 L=4 32px b2", "autodeeplab", {"F": 2, "L": 4}, 32, 2),
    ("Auto-DeepLab F=4 L=6 64px b2", "autodeeplab", {"F": 4, "L": 6}, 64, 2),
]
GROWTH = [  # how the counted work grows with F, layers and crop (Auto-DeepLab) and C, layers (DARTS)
    ("darts", {"C": 16, "layers": 8}, 32, 64),
    ("darts", {"C": 32, "layers": 8}, 32, 64),
    ("darts", {"C": 16, "layers": 16}, 32, 64),
    ("autodeeplab", {"F": 8, "L": 12}, 161, 2),
    ("autodeeplab", {"F": 8, "L": 12}, 321, 2),
    ("autodeeplab", {"F": 8, "L": 12, "fused": False}, 321, 2),
    ("autodeeplab", {"F": 16, "L": 12}, 321, 2),
    ("autodeeplab", {"F": 8, "L": 6}, 321, 2),
]
PAPER = [  # REFERENCES.md: DARTS App. A (CIFAR-10 halves of 25,000, batch 64, 50 epochs), Auto-DeepLab sec. 5.1
    {"name": "DARTS C=16, 8 layers, 32x32", "space": "darts", "options": {"C": 16, "layers": 8}, "crop": 32,
     "batch": 64, "samples": 25_000, "epochs": 50, "arch_from": 0},
    {"name": "Auto-DeepLab F=8, L=12, 321x321", "space": "autodeeplab", "options": {"F": 8, "L": 12}, "crop": 321,
     "batch": 2, "samples": 1_487, "epochs": 40, "arch_from": 20},
]
"""``samples``: split A (Cityscapes' 2,975 training images halved); ``arch_from``: epochs before the architecture
updates start (Auto-DeepLab: weights only for the first 20)."""


class CallCounter(TorchDispatchMode):
    """Counts ATen calls (every op the dispatcher runs, views included) and the bytes of the tensors they write
    (views write nothing): the memory traffic of the elementwise ops, which no FLOP count sees."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0
        self.bytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.calls += 1
        out = func(*args, **(kwargs or {}))
        if not func.is_view:
            self.bytes += sum(t.numel() * t.element_size() for t in torch.utils._pytree.tree_leaves(out)
                              if isinstance(t, torch.Tensor))
        return out


@dataclasses.dataclass(frozen=True)
class Work:
    """The counted work of one forward and backward pass of a supernet's loss at one batch (FLOPs: 3 x the
    forward's matrix products and convolutions)."""

    calls: int
    flops: float
    bytes: float
    """written by the ATen calls of the pass"""
    weights: int
    weight_tensors: int
    arch: int

    @property
    def allreduce_bytes(self) -> int:
        """Bytes one first-order step all-reduces: weight gradients (and a used-flag per tensor), arch gradients."""
        return FLOAT_BYTES * (self.weights + self.weight_tensors + self.arch)


def count_work(space: str, options: dict[str, Any], crop: int, batch: int) -> Work:
    """Calls and FLOPs of ``loss.backward()`` at ``batch``: counted once per configuration at batch 2 (BatchNorm in
    training mode needs two values per channel) on the meta device (exact, nothing allocated); the calls do not
    depend on the batch, the FLOPs grow with it linearly."""
    work = _count_work(space, json.dumps(options, sort_keys=True), crop)
    return dataclasses.replace(work, flops=work.flops * batch / COUNT_BATCH, bytes=work.bytes * batch / COUNT_BATCH)


@functools.lru_cache(maxsize=None)
def _count_work(space: str, options_json: str, crop: int) -> Work:
    with torch.device("meta"):
        model = get_space(space).supernet(num_classes=19, **json.loads(options_json))
        images = torch.zeros(COUNT_BATCH, 3, crop, crop)
        masks = torch.zeros(COUNT_BATCH, crop, crop, dtype=torch.long)
    weights = list(model.weight_parameters())
    counter, flops = CallCounter(), FlopCounterMode(display=False)
    with counter:
        with flops:
            loss = torch.nn.functional.cross_entropy(model(images), masks)
        loss.backward()
    # the backward pass costs about twice the forward (input and weight gradients); torch's counter is not used for
    # it because it counts the backward of grouped (depthwise) convs as if they were dense
    return Work(counter.calls, BACKWARD_FACTOR * float(flops.get_total_flops()), float(counter.bytes),
                sum(p.numel() for p in weights), len(weights),
                sum(p.numel() for p in model.arch_parameters().values()))


# --- part 1: Ray Train workers -------------------------------------------------------------------------------------

def _ray_worker(loop_config: dict[str, Any]) -> None:
    """One Train worker: the default search step timed after a barrier, then the gradient all-reduce alone."""
    import ray.train
    import torch.distributed as dist

    from nasplat.searching.config import SearchConfig
    from nasplat.searching.loop import SupernetSearch
    from nasplat.training.collectives import average_, world_size

    torch.set_num_threads(loop_config["threads"])
    config = SearchConfig.from_dict(loop_config["config"])
    search = SupernetSearch(config)
    batch_a = next(iter(search.loaders["train_a"]))
    batch_b = next(iter(search.loaders["train_b"]))
    barrier = dist.barrier if world_size() > 1 else (lambda: None)
    steps = []
    for index in range(loop_config["warmup"] + loop_config["steps"]):
        barrier()
        started = time.perf_counter()
        search.bilevel.step(batch_a, batch_b, update_arch=True)
        if index >= loop_config["warmup"]:
            steps.append(time.perf_counter() - started)
    grads = [torch.zeros_like(p) for p in search.model.weight_parameters()]
    reduces = []
    for _ in range(loop_config["steps"]):
        barrier()
        started = time.perf_counter()
        average_(grads)
        reduces.append(time.perf_counter() - started)
    if ray.train.get_context().get_world_rank() == 0:  # Ray Train v2 keeps no metrics without a checkpoint
        Path(loop_config["out"]).write_text(json.dumps({"steps": steps, "allreduce": reduces}))


def measure_ray(steps: int) -> list[dict[str, Any]]:
    """The default step with 1 worker (1 and 2 threads) and 2 workers (1 thread each) under Ray Train."""
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from nasplat.runtime.ray_session import start_ray
    from nasplat.searching.config import SearchConfig

    config = SearchConfig(space=DEFAULT["space"], space_options=DEFAULT["options"], image_size=DEFAULT["image_size"],
                          batch_size=DEFAULT["batch"], train_samples=4 * DEFAULT["batch"], val_samples=8)
    started_ray = start_ray(None, 1)
    out = Path(tempfile.mkdtemp(prefix="nasplat-scaling-")) / "steps.json"
    rows = []
    try:
        for workers, threads in ((1, 1), (1, 2), (2, 1)):
            trainer = TorchTrainer(
                _ray_worker, torch_config=TorchConfig(backend="gloo"),
                train_loop_config={"config": config.to_dict(), "threads": threads, "warmup": 2, "steps": steps,
                                   "out": str(out)},
                scaling_config=ScalingConfig(num_workers=workers, resources_per_worker={"CPU": threads}),
                run_config=RunConfig(name=f"scaling-{workers}x{threads}", storage_path=str(out.parent)),
            )
            out.unlink(missing_ok=True)
            trainer.fit()
            measured = json.loads(out.read_text())
            step = statistics.median(measured["steps"])
            reduce = statistics.median(measured["allreduce"])
            rows.append({"workers": workers, "threads": threads, "step_s": step, "allreduce_s": reduce,
                         "images_per_s": workers * DEFAULT["batch"] / step})
            print(f"  {workers} worker(s) x {threads} thread(s): step {step:.3f} s, all-reduce {reduce * 1e3:.1f} ms",
                  flush=True)
    finally:
        if started_ray:
            ray.shutdown()
    return rows


# --- part 2: this CPU's cost per call and per FLOP ----------------------------------------------------------------

def time_step(space: str, options: dict[str, Any], crop: int, batch: int, steps: int) -> float:
    """Median seconds of a first-order bi-level step (arch on one batch, weights on another), 1 process."""
    from nasplat.searching.bilevel import BilevelOptimizer

    torch.manual_seed(0)
    model = get_space(space).supernet(num_classes=19, **options)
    optimizer = BilevelOptimizer(model, torch.optim.SGD(model.weight_parameters(), lr=0.025, momentum=0.9),
                                 torch.optim.Adam(list(model.arch_parameters().values()), lr=3e-4),
                                 torch.nn.CrossEntropyLoss())
    batches = [(torch.randn(batch, 3, crop, crop), torch.randint(0, 19, (batch, crop, crop))) for _ in range(2)]
    times = []
    for index in range(1 + steps):
        started = time.perf_counter()
        optimizer.step(batches[0], batches[1])
        if index:
            times.append(time.perf_counter() - started)
    return statistics.median(times)


def fit_cpu(steps: int) -> tuple[float, float, float, list[dict[str, Any]]]:
    """(seconds per call, FLOP/s, bytes/s, rows) from the step times of CPU_CONFIGS at 1 thread."""
    torch.set_num_threads(1)
    rows = []
    for label, space, options, crop, batch in CPU_CONFIGS:
        work = count_work(space, options, crop, batch)
        seconds = time_step(space, options, crop, batch, steps)
        rows.append({"label": label, "work": work, "measured_s": seconds})
        print(f"  {label}: {seconds:.3f} s per step, {2 * work.calls} calls, {2 * work.flops / 1e9:.2f} GFLOP, "
              f"{2 * work.bytes / 1e9:.2f} GB written", flush=True)
    # least squares (no intercept) of step = 2 (calls * t + flops / R + bytes / B), relative errors
    a = torch.tensor([[2 * getattr(r["work"], key) / r["measured_s"] for key in ("calls", "flops", "bytes")]
                      for r in rows], dtype=torch.float64)
    per_call, per_flop, per_byte = torch.linalg.lstsq(
        a, torch.ones(len(rows), 1, dtype=torch.float64)).solution.flatten().tolist()
    if min(per_call, per_flop, per_byte) <= 0:
        raise SystemExit(f"the fit gave a non-positive cost (per call {per_call:g} s, per FLOP {per_flop:g} s, per "
                         f"byte {per_byte:g} s): the machine was too noisy; run again")
    for row in rows:
        work = row["work"]
        row["predicted_s"] = 2 * (work.calls * per_call + work.flops * per_flop + work.bytes * per_byte)
    return per_call, 1 / per_flop, 1 / per_byte, rows


# --- part 3: the model -----------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Device:
    """What one worker's step costs: host time per ATen call, FLOP rate, memory bandwidth for the bytes the calls
    write, link bandwidths (B/s) and latency."""

    name: str
    per_call_s: float
    flops_per_s: float
    memory_bytes_s: float
    intra_bytes_s: float
    inter_bytes_s: float
    latency_s: float
    per_node: int

    def allreduce_s(self, nbytes: float, workers: int) -> float:
        """Ring all-reduce: every worker sends and receives 2 (N-1)/N of the buffer; across nodes each node's
        one link in the ring carries that much, so the slower link sets the pace."""
        if workers <= 1:
            return 0.0
        bandwidth = self.intra_bytes_s if workers <= self.per_node else min(self.intra_bytes_s, self.inter_bytes_s)
        return 2 * (workers - 1) / workers * nbytes / bandwidth + 2 * (workers - 1) * self.latency_s

    def step_s(self, work: Work, workers: int, passes: int = 2) -> float:
        """A first-order step (``passes`` forward+backward passes: arch and weights) at the counted batch, plus
        its all-reduce; the all-reduce is not overlapped with the backward pass."""
        compute = passes * (work.calls * self.per_call_s + work.flops / self.flops_per_s
                            + work.bytes / self.memory_bytes_s)
        return compute + self.allreduce_s(work.allreduce_bytes, workers)


def paper_search_hours(device: Device, run: dict[str, Any], workers: int, per_worker_batch: int) -> dict[str, Any]:
    """Wall hours of the paper's search with ``workers`` workers of ``per_worker_batch`` images each."""
    work = count_work(run["space"], run["options"], run["crop"], per_worker_batch)
    steps_per_epoch = math.ceil(run["samples"] / (per_worker_batch * workers))
    arch_epochs = run["epochs"] - run["arch_from"]
    seconds = steps_per_epoch * (run["arch_from"] * device.step_s(work, workers, passes=1)
                                 + arch_epochs * device.step_s(work, workers, passes=2))
    return {"workers": workers, "batch": per_worker_batch, "global_batch": per_worker_batch * workers,
            "step_s": device.step_s(work, workers), "comm_s": device.allreduce_s(work.allreduce_bytes, workers),
            "hours": seconds / 3600, "gpu_hours": seconds * workers / 3600}


def print_table(header: list[str], rows: list[list[str]]) -> None:
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---:" if i else "---" for i in range(len(header))) + "|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5, help="timed steps per configuration (median)")
    parser.add_argument("--skip-ray", action="store_true", help="leave out part 1 (Ray Train workers)")
    parser.add_argument("--skip-cpu-fit", action="store_true", help="leave out part 2; part 3 then has no CPU rows")
    parser.add_argument("--gpu-tflops", type=float, default=5.0,
                        help="ASSUMED effective FP32 TFLOP/s of one GPU on this op mix (depthwise convs run far below "
                        "peak; default 5)")
    parser.add_argument("--gpu-call-us", type=float, default=10.0,
                        help="ASSUMED host microseconds per ATen call in eager mode on a GPU server (default 10)")
    parser.add_argument("--gpu-memory-gbs", type=float, default=500.0,
                        help="ASSUMED GB/s at which a GPU's elementwise kernels write their outputs (each also reads; "
                        "default 500, a third of an A100's or H100's HBM bandwidth)")
    parser.add_argument("--nvlink-gbs", type=float, default=100.0, help="ASSUMED GB/s between GPUs of a node")
    parser.add_argument("--network-gbs", type=float, default=12.5, help="ASSUMED GB/s between nodes (100 Gb/s)")
    parser.add_argument("--gpus-per-node", type=int, default=8)
    args = parser.parse_args()
    print(f"{os.cpu_count()} CPUs, torch {torch.__version__}, load average "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}", flush=True)

    default_work = count_work(DEFAULT["space"], DEFAULT["options"], DEFAULT["image_size"], DEFAULT["batch"])
    print(f"Default supernet: {default_work.weights:,} weights in {default_work.weight_tensors} tensors, "
          f"{default_work.arch} arch parameters: {default_work.allreduce_bytes / 1e6:.2f} MB all-reduced per step.\n")
    if not args.skip_ray:
        print("Part 1: the default step under Ray Train (median of the timed steps)", flush=True)
        ray_rows = measure_ray(args.steps)
        base = ray_rows[0]["images_per_s"]
        print_table(["workers x threads", "step (s)", "all-reduce alone (ms)", "images/s", "vs 1x1"],
                    [[f"{r['workers']} x {r['threads']}", f"{r['step_s']:.3f}", f"{r['allreduce_s'] * 1e3:.1f}",
                      f"{r['images_per_s']:.1f}", f"{r['images_per_s'] / base:.2f}x"] for r in ray_rows])
        two = ray_rows[-1]
        print(f"Measured all-reduce bandwidth over gloo here: "
              f"{default_work.allreduce_bytes / max(two['allreduce_s'], 1e-9) / 1e9:.2f} GB/s of buffer per second.\n")

    devices = []
    if not args.skip_cpu_fit:
        print("Part 2: one process, 1 thread: measured step against counted work", flush=True)
        per_call, rate, memory, rows = fit_cpu(args.steps)
        print_table(["configuration", "ATen calls / step", "GFLOP / step", "GB written / step", "measured (s)",
                     "model (s)", "model error"],
                    [[r["label"], f"{2 * r['work'].calls:,}", f"{2 * r['work'].flops / 1e9:.2f}",
                      f"{2 * r['work'].bytes / 1e9:.2f}", f"{r['measured_s']:.3f}", f"{r['predicted_s']:.3f}",
                      f"{r['predicted_s'] / r['measured_s'] - 1:+.0%}"] for r in rows])
        print(f"Fitted on this CPU (1 thread): {per_call * 1e6:.1f} us per ATen call, {rate / 1e9:.2f} GFLOP/s, "
              f"{memory / 1e9:.2f} GB/s written.\n")
        # links: the gloo all-reduce measured here in part 1 (1.61 MB in about 10 ms)
        devices.append(Device("this CPU, 1 thread per worker (fitted)", per_call, rate, memory, 0.17e9, 0.17e9, 50e-6,
                              2))
    devices.append(Device(f"GPU (assumed: {args.gpu_tflops:g} TFLOP/s, {args.gpu_call_us:g} us/call, "
                          f"{args.gpu_memory_gbs:g} GB/s written, links {args.nvlink_gbs:g} / "
                          f"{args.network_gbs:g} GB/s)",
                          args.gpu_call_us * 1e-6, args.gpu_tflops * 1e12, args.gpu_memory_gbs * 1e9,
                          args.nvlink_gbs * 1e9, args.network_gbs * 1e9, 20e-6, args.gpus_per_node))
    gpu = devices[-1]

    print("Part 3a: counted work per forward+backward pass, and the model's first-order step on one worker", flush=True)
    growth = []
    for space, options, crop, batch in GROWTH:
        work = count_work(space, options, crop, batch)
        growth.append([f"{space} {options} {crop}px b{batch}", f"{work.calls:,}", f"{work.flops / 1e9:,.1f}",
                       f"{work.bytes / 1e9:,.1f}",
                       f"{work.weights / 1e6:.2f}", f"{work.allreduce_bytes / 1e6:.0f}",
                       *(f"{d.step_s(work, 1):.2f}" for d in devices)])
    print_table(["configuration", "ATen calls", "GFLOP", "GB written", "weights (M)", "all-reduce (MB)",
                 *(f"step (s), {d.name}" for d in devices)], growth)

    print(f"Part 3b: the paper's searches on N GPUs ({gpu.name}; {args.gpus_per_node} GPUs per node)", flush=True)
    for run in PAPER:
        table = []
        for workers in (1, 2, 4, 8, 16, 32):
            batch = max(1, run["batch"] // workers)
            result = paper_search_hours(gpu, run, workers, batch)
            note = "" if result["global_batch"] == run["batch"] else f" (global batch {result['global_batch']})"
            table.append([f"{workers}", f"{batch}{note}", f"{result['step_s']:.3f}", f"{result['comm_s'] * 1e3:.1f}",
                          f"{result['hours']:.1f}", f"{result['gpu_hours']:.0f}"])
        print(f"{run['name']}: {run['samples']:,} images in split A, global batch {run['batch']}, {run['epochs']} "
              f"epochs (architecture from epoch {run['arch_from'] + 1})")
        print_table(["GPUs", "batch per GPU", "step (s)", "all-reduce (ms)", "wall hours", "GPU-hours"], table)


if __name__ == "__main__":
    main()
