"""Benchmark worker processes end with the benchmark: killing a bench must not leave its workers computing."""
from __future__ import annotations

import ctypes
import signal
import sys

PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent() -> None:
    """Ask the kernel to send this process SIGTERM when its parent exits (Linux; elsewhere nothing happens).
    Call it first thing in a worker process."""
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass
