"""Shared test set-up."""
from __future__ import annotations

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


@pytest.fixture(autouse=True)
def _no_inherited_tracking_uri(monkeypatch):
    """Every test starts without MLFLOW_TRACKING_URI, and none leaks out: ``mlflow.set_tracking_uri`` sets it
    in this process, and every nasplat subprocess would then record to the previous test's store."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
