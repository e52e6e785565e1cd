"""Up-front resource planning: what one trial needs, and how many trials fit the cluster.

A trial is a Tune trial driver plus ``workers`` Ray Train workers. If the cluster cannot hold one
trial the search fails at once with the arithmetic, instead of waiting forever for resources.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Mapping

DRIVER_RESOURCE = "nasplat_driver"
"""Custom resource that holds a trial driver without taking a CPU from the workers."""


class ResourceError(RuntimeError):
    """The requested search does not fit the Ray cluster."""


@dataclasses.dataclass(frozen=True)
class ResourcePlan:
    driver: dict[str, float]
    per_worker: dict[str, float]
    workers: int
    max_concurrent_trials: int
    reserved_cpus: float = 0.0

    def per_trial(self) -> dict[str, float]:
        total = dict(self.driver)
        for key, value in self.per_worker.items():
            total[key] = total.get(key, 0.0) + value * self.workers
        return total

    def describe(self) -> str:
        worker = ", ".join(f"{v:g} {k}" for k, v in self.per_worker.items())
        driver = ", ".join(f"{v:g} {k}" for k, v in self.driver.items())
        reading = f" + {self.reserved_cpus:g} CPU left for Ray Data" if self.reserved_cpus else ""
        return (
            f"{self.workers} workers x ({worker}) + trial driver ({driver}){reading}; "
            f"up to {self.max_concurrent_trials} trial(s) at once"
        )


def plan_resources(
    cluster: Mapping[str, float], workers: int, trials: int,
    cpus_per_worker: float | None = None, gpus_per_worker: float = 0.0, reserve_cpus: float = 0.0,
) -> ResourcePlan:
    """Size workers and concurrency from ``ray.cluster_resources()``; raise ResourceError if nothing fits.

    ``reserve_cpus`` per trial stay free for Ray Data's read and decode tasks.
    """
    total_cpu = float(cluster.get("CPU", 0.0))
    total_gpu = float(cluster.get("GPU", 0.0))
    driver_slots = float(cluster.get(DRIVER_RESOURCE, 0.0))
    driver = {DRIVER_RESOURCE: 1.0} if driver_slots >= 1 else {"CPU": 1.0}
    driver_cpu = driver.get("CPU", 0.0)
    if cpus_per_worker is None:
        spare = total_cpu - driver_cpu - reserve_cpus
        cpus_per_worker = min(1.0, math.floor(100 * spare / workers) / 100) if spare > 0 else 0.0
        if cpus_per_worker <= 0:
            raise ResourceError(
                f"the cluster has {total_cpu:g} CPUs: nothing is left for {workers} workers after "
                f"{driver_cpu:g} CPU for the trial driver and {reserve_cpus:g} for reading data. Add CPUs "
                f"or start Ray with a '{DRIVER_RESOURCE}' custom resource."
            )
    per_worker = {"CPU": float(cpus_per_worker)}
    if gpus_per_worker > 0:
        per_worker["GPU"] = float(gpus_per_worker)
    need_cpu = driver_cpu + workers * cpus_per_worker + reserve_cpus
    fits = [trials, math.floor(total_cpu / need_cpu + 1e-9) if need_cpu > 0 else trials]
    if DRIVER_RESOURCE in driver:
        fits.append(math.floor(driver_slots))
    if gpus_per_worker > 0:
        fits.append(math.floor(total_gpu / (workers * gpus_per_worker) + 1e-9))
    concurrent = min(fits)
    if concurrent < 1:
        gpu_part = (
            f" and {workers} x {gpus_per_worker:g} = {workers * gpus_per_worker:g} GPUs (cluster has {total_gpu:g})"
            if gpus_per_worker > 0 else ""
        )
        raise ResourceError(
            f"one trial needs {need_cpu:g} CPUs ({driver_cpu:g} for the trial driver + {workers} workers x "
            f"{cpus_per_worker:g}" + (f" + {reserve_cpus:g} for reading data" if reserve_cpus else "")
            + f"){gpu_part}, but the cluster has {total_cpu:g} CPUs. "
            "Lower --workers or --cpus-per-worker, or add nodes."
        )
    return ResourcePlan(driver=driver, per_worker=per_worker, workers=workers, max_concurrent_trials=concurrent,
                        reserved_cpus=reserve_cpus)
