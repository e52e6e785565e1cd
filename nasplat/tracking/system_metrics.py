"""System metrics (CPU, memory, disk, network and, with ``nvidia-ml-py``, NVIDIA GPUs) on a trial's run.

MLflow's own monitors (``mlflow.system_metrics``, what ``log_system_metrics=True`` starts) take the samples;
this thread logs them through the run's queue (:mod:`nasplat.tracking.outbox`) instead of MLflow's direct
client, so an unreachable tracking server neither stops the monitoring nor the training. The metrics are
MLflow's names with its ``system/`` prefix (``system/cpu_utilization_percentage``,
``system/gpu_0_memory_usage_megabytes``), which the UI shows in the run's *System metrics* tab.

One sample every ``MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL`` seconds (MLflow's variable; default 10 s), logged
every ``MLFLOW_SYSTEM_METRICS_SAMPLES_BEFORE_LOGGING`` samples (default 1), and one last sample when the
training ends, so even a short trial has one point.
"""
from __future__ import annotations

import contextlib
import logging
import threading
from typing import Any, Iterator

from nasplat.tracking.logger import RunLogger

DEFAULT_INTERVAL_S = 10.0
PREFIX = "system/"


class SystemMetrics:
    """A daemon thread sampling the machine and logging ``system/...`` metrics to the logger's run."""

    def __init__(self, logger: RunLogger, interval: float = DEFAULT_INTERVAL_S) -> None:
        import psutil
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        self.logger = logger
        logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)  # no "Skip logging GPU metrics" per trial
        # builds MLflow's CPU, disk, network and (when a driver answers) GPU monitors; its own thread is not started
        self._monitor: Any = SystemMetricsMonitor(logger.run_id, sampling_interval=interval,
                                                  tracking_uri=logger.tracking_uri)
        self.interval = float(self._monitor.sampling_interval)
        self._per_log = max(1, int(self._monitor.samples_before_logging))
        psutil.cpu_percent()  # the first call only starts psutil's CPU-time window
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="nasplat-system-metrics", daemon=True)
        self.step = 0

    def start(self) -> SystemMetrics:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Take a last sample, log what is pending and end the thread."""
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        samples = 0
        while True:
            stopping = self._stop.wait(self.interval)
            try:
                self._monitor.collect_metrics()
                samples += 1
                if samples >= self._per_log or stopping:
                    self._publish()
                    samples = 0
            except Exception as err:  # noqa: BLE001 - a failing probe must never end a trial
                print(f"[nasplat] warning: system metrics stopped ({type(err).__name__}: {err})", flush=True)
                return
            if stopping:
                return

    def _publish(self) -> None:
        values = self._monitor.aggregate_metrics()
        for monitor in self._monitor.monitors:
            monitor.clear_metrics()
        self.logger.log_metrics({PREFIX + key: value for key, value in values.items()}, step=self.step)
        self.step += 1


@contextlib.contextmanager
def system_metrics(logger: RunLogger | None, interval: float = DEFAULT_INTERVAL_S) -> Iterator[SystemMetrics | None]:
    """System metrics on the logger's run while the block runs (nothing when ``logger`` is None: not rank 0).
    A machine where the monitors cannot start gets one warning and no system metrics."""
    monitor = None
    if logger is not None:
        try:
            monitor = SystemMetrics(logger, interval).start()
        except Exception as err:  # noqa: BLE001 - e.g. psutil missing: the training goes on without them
            print(f"[nasplat] warning: no system metrics ({type(err).__name__}: {err})", flush=True)
    try:
        yield monitor
    finally:
        if monitor is not None:
            monitor.stop()
