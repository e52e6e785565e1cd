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
