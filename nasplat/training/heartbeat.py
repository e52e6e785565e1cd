"""A progress line within a long epoch: rank 0 says how far the epoch is every ``interval_s`` of wall time."""
from __future__ import annotations

import time
from typing import Callable

HEARTBEAT_S = 30.0
"""Seconds of wall time between two lines within one epoch."""


def format_duration(seconds: float) -> str:
    """``42s``, ``3m07s`` or ``2h05m``."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class EpochHeartbeat:
    """Call :meth:`beat` after each step; it prints (and returns) a line when ``interval_s`` passed since the epoch
    started or since the last line, else returns None. Silent when not ``enabled`` (ranks other than 0)."""

    def __init__(self, label: str, total_steps: int | None, enabled: bool = True, interval_s: float = HEARTBEAT_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.label = label
        self.total_steps = total_steps
        self.enabled = enabled
        self.interval_s = interval_s
        self.clock = clock
        self.started = self.last = clock()

    def beat(self, steps_done: int) -> str | None:
        if not self.enabled:
            return None
        now = self.clock()
        if now - self.last < self.interval_s:
            return None
        self.last = now
        elapsed = now - self.started
        if self.total_steps:
            left = elapsed / steps_done * (self.total_steps - steps_done)
            line = (f"[nasplat] {self.label}: step {steps_done}/{self.total_steps} after {format_duration(elapsed)}, "
                    f"about {format_duration(left)} left in this epoch")
        else:
            line = f"[nasplat] {self.label}: step {steps_done} after {format_duration(elapsed)}"
        print(line, flush=True)
        return line
