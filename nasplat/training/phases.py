"""Where an epoch's wall time goes: seconds spent in named phases, recorded as ``time_<phase>_s`` metrics.

``bench/overhead.py`` reads these metrics to split a search's wall time into training, validation and the rest
(checkpoints, MLflow records, pictures, Ray's report).
"""
from __future__ import annotations

import contextlib
import time
from typing import Callable, Iterator


class PhaseClock:
    """Sums the wall seconds of each named phase since the last :meth:`metrics` call.

    Phases may nest: an outer phase counts only the time its inner phases do not, so the phases of a block add
    up to its wall time."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self._clock = clock
        self._seconds: dict[str, float] = {}
        self._inner: list[float] = []
        """For each open phase, outermost first: the seconds its inner phases took so far."""

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time the ``with`` block as (part of) phase ``name``, less the phases opened inside it."""
        started = self._clock()
        self._inner.append(0.0)
        try:
            yield
        finally:
            elapsed = self._clock() - started
            inner = self._inner.pop()
            self._seconds[name] = self._seconds.get(name, 0.0) + elapsed - inner
            if self._inner:
                self._inner[-1] += elapsed

    def metrics(self) -> dict[str, float]:
        """``{"time_<phase>_s": seconds}`` of the phases timed so far, then start afresh."""
        seconds, self._seconds = self._seconds, {}
        return {f"time_{name}_s": value for name, value in seconds.items()}
