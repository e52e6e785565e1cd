"""Shared test set-up."""
from __future__ import annotations

import os

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_torch_thread_and_seed():
    """Seeded RNG; one thread (tiny tensors run fastest so, more threads spin on a loaded 2-core machine)."""
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True, scope="module")
def _no_tracking_uri_across_modules():
    """Module fixtures run before the per-test clean-up below: a module whose fixture calls
    ``mlflow.set_tracking_uri`` (it sets MLFLOW_TRACKING_URI too) must not hand its store to the next module's."""
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    yield
    os.environ.pop("MLFLOW_TRACKING_URI", None)


@pytest.fixture(autouse=True)
def _no_inherited_tracking_uri(monkeypatch):
    """Every test starts without MLFLOW_TRACKING_URI, and none leaks out: ``mlflow.set_tracking_uri`` sets it
    in this process, and every nasplat subprocess would then record to the previous test's store."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def _gloo_entry(rank: int, fn, port: int, out_dir: str, world: int) -> None:
    import os

    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    try:
        fn(rank, out_dir)
        dist.barrier()  # no rank tears gloo down while another is still communicating
    finally:
        dist.destroy_process_group()


def spawn_gloo(fn, out_dir, world: int = 2) -> None:
    """Run ``fn(rank, out_dir)`` in ``world`` processes joined by a gloo process group on 127.0.0.1."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_gloo_entry, args=(fn, port, str(out_dir), world), nprocs=world, join=True)
