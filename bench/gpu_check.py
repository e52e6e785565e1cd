"""The CUDA path without Ray: NCCL, a search epoch and a retrain epoch on one GPU, with times and peak memory.

Run on a machine with a GPU (no Ray or MLflow needed): ``python bench/gpu_check.py --out gpu_check.json``.
Each check runs in this process under a one-rank NCCL process group, so the code paths that hand CUDA
tensors to torch.distributed (confusion matrices, loss sums, averaged gradients) are the ones exercised.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from typing import Any, Callable

import torch
import torch.distributed as dist


DEVICE = "cuda"


def _timed(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    cuda = DEVICE == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    result = fn()
    if cuda:
        torch.cuda.synchronize()
    return result, time.perf_counter() - started, torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")


def check_nccl() -> dict[str, Any]:
    tensor = torch.arange(4, dtype=torch.float32, device=DEVICE)
    dist.all_reduce(tensor)
    return {"backend": dist.get_backend(), "all_reduce_ok": bool(torch.equal(tensor.cpu(), torch.arange(4.0)))}


def check_search(space: str, options: dict[str, Any], image_size: int, order: int, batch_size: int = 4,
                 samples: int = 32) -> dict[str, Any]:
    from nasplat.searching.config import SearchConfig
    from nasplat.searching.loop import SupernetSearch

    config = SearchConfig(space=space, image_size=image_size, train_samples=samples, val_samples=8, batch_size=batch_size,
                          workers=1, epochs=2, order=order, space_options=options,
                          gpus_per_worker=1 if DEVICE == "cuda" else 0)
    search = SupernetSearch(config, device=DEVICE)
    search.train_epoch()  # warm-up: cuDNN autotuning, allocator
    train, train_s, train_gib = _timed(search.train_epoch)
    evaluation, eval_s, _ = _timed(search.evaluate)
    genotype = search.genotype()
    finite = all(torch.isfinite(p).all().item() for p in search.model.arch_parameters().values())
    steps = samples // 2 // batch_size
    return {"space": space, "order": order, "image_size": image_size, "batch_size": batch_size, "options": options,
            "step_s": train_s / max(steps, 1),
            "train_epoch_s": train_s, "train_peak_gib": train_gib, "eval_s": eval_s,
            "train_loss": train["train_loss"], "val_miou": evaluation["val_miou"], "arch_finite": finite,
            "genotype": genotype.short_hash()}


def check_retrain() -> dict[str, Any]:
    from nasplat.retraining.config import RetrainConfig
    from nasplat.retraining.loop import Retrainer
    from search_spaces.darts import DARTS_V2

    rows = {}
    precisions = ("off", "fp16", "bf16") if DEVICE == "cuda" else ("off", "bf16")
    for label, source in (("darts_v2", {"genotype": DARTS_V2.to_dict()}),
                          ("deeplabv3plus_mobilenet_v2", {"baseline": "deeplabv3plus",
                                                          "options": {"backbone": "mobilenet_v2"}})):
        for amp in precisions:  # --amp: the retrain's mixed precision modes
            config = RetrainConfig(image_size=128, train_samples=64, val_samples=16, batch_size=8, workers=1,
                                   epochs=2, gpus_per_worker=1 if DEVICE == "cuda" else 0, amp=amp)
            trainer = Retrainer(config, source, device=DEVICE)
            trainer.train_epoch()
            train, seconds, gib = _timed(trainer.train_epoch)
            evaluation = trainer.evaluate()
            rows[f"{label}/amp={amp}"] = {"train_epoch_s": seconds, "peak_gib": gib,
                                          "samples_per_s": train["samples_per_s"],
                                          "train_loss": train["train_loss"], "val_miou": evaluation["val_miou"]}
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="gpu_check.json")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="cpu: a smoke run of this script")
    parser.add_argument("--paper-sizes", action="store_true", help="also time the papers' search sizes")
    args = parser.parse_args()
    global DEVICE
    DEVICE = args.device
    import search_spaces.autodeeplab  # noqa: F401  (registered on import: no installed entry points needed)
    import search_spaces.darts  # noqa: F401

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29533")
    if DEVICE == "cuda":
        dist.init_process_group("nccl", rank=0, world_size=1, device_id=torch.device("cuda", 0))
    else:
        dist.init_process_group("gloo", rank=0, world_size=1)
    gpu = torch.cuda.get_device_name(0) if DEVICE == "cuda" else "none (cpu smoke run)"
    report: dict[str, Any] = {"date": time.strftime("%Y-%m-%d"), "gpu": gpu,
                              "torch": torch.__version__, "python": platform.python_version()}
    try:
        report["nccl"] = check_nccl()
        report["search"] = [
            check_search("darts", {"C": 8, "layers": 5}, 32, order=1),
            check_search("darts", {"C": 8, "layers": 5}, 32, order=2),
            check_search("autodeeplab", {"F": 4, "L": 6}, 64, order=1),
        ]
        if args.paper_sizes:  # the papers' search sizes: DARTS (CIFAR cells) and Auto-DeepLab at 321x321
            report["search"] += [
                check_search("darts", {"C": 16, "layers": 8}, 32, order=1, batch_size=64, samples=512),
                check_search("darts", {"C": 16, "layers": 8}, 32, order=2, batch_size=64, samples=512),
                check_search("autodeeplab", {"F": 8, "L": 12}, 321, order=1, batch_size=2, samples=16),
            ]
        report["retrain"] = check_retrain()
    finally:
        dist.destroy_process_group()
    text = json.dumps(report, indent=2)
    print(text)
    with open(args.out, "w") as handle:
        handle.write(text + "\n")


if __name__ == "__main__":
    main()
