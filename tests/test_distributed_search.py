"""Two gloo workers search on different shards and must end with identical architecture parameters."""
from __future__ import annotations

import os

import torch
from conftest import spawn_gloo

from nasplat.searching.config import SearchConfig
from nasplat.training.collectives import average_, broadcast_module_
from nasplat.searching.loop import SupernetSearch

TINY = dict(image_size=16, train_samples=16, val_samples=4, epochs=2, batch_size=2, workers=2,
            arch_lr=3e-2, space_options={"C": 2, "layers": 2, "reductions": 1})


def _worker(rank: int, out_dir: str) -> None:
    search = SupernetSearch(SearchConfig(**TINY))
    torch.manual_seed(1000 + rank)  # different RNG streams per worker must not matter
    initial = {k: v.detach().clone() for k, v in search.model.arch_parameters().items()}
    first_batch = next(iter(search.loaders["train_a"]))[1]
    search.train_epoch()
    search.train_epoch()
    evaluation = search.evaluate()
    torch.save(
        {"initial": initial, "final": {k: v.detach().clone() for k, v in search.model.arch_parameters().items()},
         "first_batch": first_batch, "miou": evaluation["val_miou"]},
        os.path.join(out_dir, f"rank{rank}.pt"),
    )


def test_workers_hold_identical_alpha_after_search_epochs(tmp_path):
    spawn_gloo(_worker, tmp_path)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    # the workers saw different data ...
    assert not torch.equal(r0["first_batch"], r1["first_batch"])
    for name in ("normal", "reduce"):
        # ... the architecture moved ...
        assert not torch.allclose(r0["initial"][name], r0["final"][name])
        # ... and stayed bit-identical across workers
        assert torch.equal(r0["final"][name], r1["final"][name])
    assert r0["miou"] == r1["miou"]


def _average_worker(rank: int, out_dir: str) -> None:
    tensors = [torch.full((2, 3), float(rank + 1)), torch.arange(4, dtype=torch.float64) * (rank + 1)]
    average_(tensors)
    torch.save(tensors, os.path.join(out_dir, f"avg{rank}.pt"))


def test_average_gives_the_mean_of_every_worker(tmp_path):
    spawn_gloo(_average_worker, tmp_path)
    for rank in (0, 1):
        first, second = torch.load(tmp_path / f"avg{rank}.pt", weights_only=True)
        assert torch.equal(first, torch.full((2, 3), 1.5))
        assert torch.equal(second, torch.arange(4, dtype=torch.float64) * 1.5)


def _broadcast_worker(rank: int, out_dir: str) -> None:
    torch.manual_seed(rank)  # different weights and buffers on every worker
    module = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    module[1].running_mean.normal_()
    module[1].num_batches_tracked += rank + 1
    if rank == 1:  # a channels-last copy on one side: values, not memory layouts, are sent
        module.to(memory_format=torch.channels_last)
    before = {k: v.clone() for k, v in module.state_dict().items()}
    broadcast_module_(module)
    torch.save({"before": before, "after": module.state_dict()}, os.path.join(out_dir, f"bcast{rank}.pt"))


def test_broadcast_module_copies_rank_0s_parameters_and_buffers(tmp_path):
    spawn_gloo(_broadcast_worker, tmp_path)
    r0, r1 = (torch.load(tmp_path / f"bcast{r}.pt", weights_only=True) for r in (0, 1))
    assert not torch.equal(r0["before"]["0.weight"], r1["before"]["0.weight"])
    for name, value in r0["before"].items():
        assert torch.equal(r0["after"][name], value), name
        assert torch.equal(r1["after"][name], value), name
