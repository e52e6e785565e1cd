"""Starting or joining Ray for a pipeline's driver process (search, retrain, baselines)."""
from __future__ import annotations

import os

import ray

from nasplat.runtime.resources import DRIVER_RESOURCE

HEALTH_CHECK_ENV = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2"}
"""Ray Train waits this long between worker health checks, and each ``ray.train.report`` waits for one."""


def start_ray(address: str | None, driver_slots: int) -> bool:
    """Join ``address`` (or ``RAY_ADDRESS``, which a Ray Job's entrypoint gets) or start a local Ray sized to
    this machine with ``driver_slots`` of the trial-driver resource; True if this call connected."""
    if ray.is_initialized():
        return False
    runtime_env = {"env_vars": dict(HEALTH_CHECK_ENV)}
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=True)
        return True
    os.environ.update(HEALTH_CHECK_ENV)
    ray.init(
        num_cpus=os.cpu_count() or 1,
        resources={DRIVER_RESOURCE: max(1, driver_slots)},
        include_dashboard=True,  # without it Ray Train's placement-group cleaner logs errors
        dashboard_host="127.0.0.1",
        runtime_env=runtime_env,
        log_to_driver=True,
        configure_logging=True,
        logging_level="WARNING",
    )
    return True
