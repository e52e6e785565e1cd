"""Checks that run before Ray starts, so bad input stops in seconds with one line naming the option to change.

Each check raises :class:`~nasplat.training.config.ConfigError` (or ResourceError for a plan that cannot fit).
They cover what a config's own ``validate`` cannot see alone: the dataset on disk and its split sizes against
the batch and workers, options a space or model does not take, a crop smaller than a space's total stride,
Ray and MLflow addresses that do not answer, and the resource plan of a local Ray.
"""
from __future__ import annotations

import inspect
import os
import socket
import typing
import urllib.parse
from typing import Any, Callable, Mapping

import torch

from nasplat.data.sources import SearchData, search_data
from nasplat.runtime.resources import DRIVER_RESOURCE, ResourceError, ResourcePlan, plan_resources
from nasplat.tracking.reachability import check_answers
from nasplat.training.config import ConfigError, ExperimentConfig

CONNECT_TIMEOUT_S = 4.0
MIN_CPUS_PER_WORKER = 0.25
"""Below this share of a CPU a worker's start-up alone takes minutes; the plan is refused."""


def check_dataset(config: ExperimentConfig, per_worker_split: Callable[[SearchData], int]) -> SearchData:
    """Open the dataset (names a missing folder or file) and check that every worker gets at least one full batch
    of the split ``per_worker_split`` measures (a larger batch would run epochs of zero steps)."""
    if config.dataset in ("voc", "cityscapes") and not config.data_root:
        raise ConfigError(f"config field 'data_root' is needed for --dataset {config.dataset} (the folder holding "
                          "its official layout)")
    try:
        data = search_data(config.dataset, config.image_size, config.train_samples, config.val_samples,
                           config.seed, config.data_root)
    except (OSError, ValueError) as err:
        raise ConfigError(f"config field 'dataset' ({config.dataset}): {err}") from None
    share = per_worker_split(data) // config.workers
    if share < config.batch_size:
        raise ConfigError(
            f"config field 'batch_size' ({config.batch_size}) is larger than a worker's share of the training data "
            f"({share} samples with {config.workers} workers): lower --batch-size or --workers"
            + (", or raise --train-samples" if config.dataset == "synthetic" else ""))
    return data


def accepted_options(factory: Callable[..., Any]) -> set[str] | None:
    """Keyword options ``factory`` takes (following ``**options`` into the class its return annotation names);
    None when that cannot be known."""
    target: Any = factory
    for _ in range(2):
        parameters = inspect.signature(target).parameters.values()
        if not any(p.kind is p.VAR_KEYWORD for p in parameters):
            return {p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        try:
            returned = typing.get_type_hints(target).get("return")
        except Exception:  # an annotation that does not resolve: no check
            return None
        if not inspect.isclass(returned):
            return None
        target = returned
    return None


def check_options(field: str, factory: Callable[..., Any], options: Mapping[str, Any], what: str) -> None:
    """ConfigError naming ``field`` when ``options`` holds a key ``factory`` does not take."""
    accepted = accepted_options(factory)
    if accepted is None:
        return
    accepted -= {"self", "num_classes"}
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise ConfigError(f"config field '{field}': {what} takes no option {unknown[0]!r} "
                          f"(it takes: {', '.join(sorted(accepted)) or 'none'})")


def check_crop(image_size: int, minimum: int, what: str) -> None:
    if image_size < minimum:
        raise ConfigError(f"config field 'image_size' ({image_size}) is smaller than the total stride of {what} "
                          f"({minimum}): use --image-size {minimum} or more")


def check_ray_address(address: str | None) -> None:
    """A ``host:port`` (or ``ray://``, ``http://``) Ray address must accept a connection within a few seconds."""
    address = address or os.environ.get("RAY_ADDRESS")
    if not address or address == "auto":
        return
    parsed = urllib.parse.urlsplit(address if "://" in address else f"tcp://{address}")
    if parsed.hostname is None or parsed.port is None:
        raise ConfigError(f"config field 'address': {address!r} is not HOST:PORT or ray://HOST:PORT")
    _connect("address", address, parsed.hostname, parsed.port)


def check_tracking_uri(uri: str) -> None:
    """An http(s) tracking server must answer its health check within a few seconds."""
    try:
        check_answers(uri, timeout=CONNECT_TIMEOUT_S)
    except ConfigError as err:
        raise ConfigError(f"config field 'tracking_uri': {err}") from None


def _connect(field: str, address: str, host: str, port: int) -> None:
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S):
            return
    except OSError as err:
        raise ConfigError(f"config field '{field}': nothing answers at {address} ({err}); is the Ray cluster up?") \
            from None


def local_plan(config: ExperimentConfig, reserve_cpus: float = 0.0) -> ResourcePlan | None:
    """The resource plan of the local Ray nasplat would start (None when joining a cluster: planned after)."""
    if config.address or os.environ.get("RAY_ADDRESS"):
        return None
    cluster = {"CPU": float(os.cpu_count() or 1), "GPU": float(torch.cuda.device_count()),
               DRIVER_RESOURCE: float(config.trials)}
    plan = plan_resources(cluster, config.workers, config.trials, config.cpus_per_worker, config.gpus_per_worker,
                          reserve_cpus=reserve_cpus)
    check_worker_share(plan)
    return plan


def check_worker_share(plan: ResourcePlan) -> None:
    share = plan.per_worker.get("CPU", 0.0)
    if share < MIN_CPUS_PER_WORKER:
        raise ResourceError(
            f"{plan.workers} workers would get {share:g} CPU each; at least {MIN_CPUS_PER_WORKER:g} is needed for "
            f"a worker to start in reasonable time: lower --workers or add CPUs")
