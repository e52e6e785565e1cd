"""Starting or joining Ray for a pipeline's driver process (search, retrain, baselines)."""
from __future__ import annotations

import os
from typing import Any

import ray

from nasplat.runtime.resources import DRIVER_RESOURCE
from nasplat.tracking.schema import QUIET_DOWNLOADS

HEALTH_CHECK_ENV = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2"}
"""Ray Train waits this long between worker health checks, and each ``ray.train.report`` waits for one."""


def start_ray(address: str | None, driver_slots: int) -> bool:
    """Join ``address`` (or ``RAY_ADDRESS``, which a Ray Job's entrypoint gets) or start a local Ray sized to
    this machine with ``driver_slots`` of the trial-driver resource; True if this call connected."""
    if ray.is_initialized():
        return False
    runtime_env = {"env_vars": {**HEALTH_CHECK_ENV, QUIET_DOWNLOADS[0]: QUIET_DOWNLOADS[1]}}
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        context = ray.init(address=address, runtime_env=runtime_env, log_to_driver=True)
        _say_dashboard(context)
        return True
    os.environ.update(HEALTH_CHECK_ENV)
    context = ray.init(
        num_cpus=os.cpu_count() or 1,
        resources={DRIVER_RESOURCE: max(1, driver_slots)},
        include_dashboard=True,  # without it Ray Train's placement-group cleaner logs errors
        dashboard_host="127.0.0.1",
        runtime_env=runtime_env,
        log_to_driver=True,
        configure_logging=True,
        logging_level="WARNING",
    )
    _say_dashboard(context)
    return True


def _say_dashboard(context: Any) -> None:
    """Print where Ray's dashboard answers (trials, workers, logs), when it runs."""
    url = getattr(context, "dashboard_url", None)
    if url:
        print(f"[nasplat] Ray dashboard: {url if '://' in url else 'http://' + url}", flush=True)
