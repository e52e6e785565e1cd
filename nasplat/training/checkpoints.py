"""Checkpoint files: written atomically (a crash leaves the old file or the new one, never half of one) and
read back with ``weights_only=True`` on the CPU."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch


def atomic_save(payload: Any, path: str | Path) -> Path:
    """``torch.save`` to a temporary file beside ``path``, then rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(payload, tmp)
    tmp.replace(path)
    return path


def load_state(path: str | Path) -> Any:
    """Load a training-state file on the CPU: ``load_state_dict`` moves weights and optimiser state to their
    parameters' device, and RNG states must stay CPU tensors."""
    return torch.load(Path(path), map_location="cpu", weights_only=True)
