"""The cost term of a cost-aware search (``--cost``): the space's cost model under a table, as a penalty and metrics.

The architecture loss becomes ``L_val + W * E[cost] / E_0[cost]`` without a target (``E_0``: the expected cost of
the uniform architecture, all arch parameters 0, so ``W`` has no unit) and ``L_val + W * max(0, E[cost] / T - 1)``
with a target ``T`` (nothing below the target; ProxylessNAS and FBNet scale the loss by a power or log of the cost
instead, docs/cost_aware_search.md says why a hinge). The cost's gradient is the same on every worker (same arch
parameters, same table), so it is added after the loss gradient is averaged.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch

from nasplat.searching.config import SearchConfig
from nasplat.searching.cost import CostModel, OpShape
from nasplat.searching.cost_table import METRICS, counted_costs, load_table
from nasplat.spaces.genotype import Genotype
from nasplat.spaces.space import SearchSpace
from nasplat.training.config import ConfigError
from nasplat.training.model_stats import count_flops, count_parameters, measure_latency


def cost_model_of(config: SearchConfig, space: SearchSpace) -> CostModel:
    """The space's cost model for this search; ConfigError when the space has none."""
    try:
        model = space.cost_model(config.image_size, **config.space_options)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"config field 'space_options': {err}") from None
    if model is None:
        raise ConfigError(f"config field 'cost': the {space.name!r} space has no cost model (SearchSpace.cost_model); "
                          "search it with cost off")
    return model


def resolve_costs(config: SearchConfig, space: SearchSpace, model: CostModel) -> dict[OpShape, float]:
    """One cost per op shape the model needs: from ``cost_table`` (checked against the space and the shapes) or
    counted (FLOPs, parameters)."""
    metric = METRICS[config.cost]
    needed = model.op_shapes()
    if config.cost_table is None:
        return {shape: counted_costs(shape, (metric,))[metric] for shape in needed}
    table = load_table(config.cost_table)
    if table.meta.get("space") not in (None, space.name):
        raise ConfigError(f"config field 'cost_table': {table.path} was measured for space {table.meta['space']!r}, "
                          f"not {space.name!r}")
    costs = table.costs(metric)
    missing = [shape.key for shape in needed if shape not in costs]
    if missing:
        raise ConfigError(
            f"config field 'cost_table': {table.path} (image size {table.meta.get('image_size')}, space options "
            f"{table.meta.get('space_options')}) lacks {len(missing)} op shape(s) this search needs at image size "
            f"{config.image_size} with {config.space_options}, e.g. {missing[0]}: profile with the same settings")
    return costs


class CostObjective:
    """The expected cost of the arch parameters, the penalty added to the architecture loss, and the cost metrics."""

    def __init__(self, config: SearchConfig, space: SearchSpace, arch: Mapping[str, torch.Tensor]) -> None:
        self.metric = METRICS[config.cost]
        self.model = cost_model_of(config, space)
        self.costs = resolve_costs(config, space, self.model)
        self.weight, self.target = float(config.cost_weight), config.cost_target
        uniform = {name: torch.zeros_like(value.detach()) for name, value in arch.items()}
        self.reference = float(self.model.expected(uniform, self.costs))
        if not self.reference > 0:
            raise ConfigError(f"config field 'cost': every candidate op of this search costs 0 {self.metric}; "
                              "choose another cost")

    def expected(self, arch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self.model.expected(arch, self.costs)

    def penalty(self, arch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """``W * E / E_0``, or ``W * max(0, E / T - 1)`` with a target ``T``; differentiable."""
        expected = self.expected(arch)
        if self.target is None:
            return self.weight * expected / self.reference
        return self.weight * torch.relu(expected / self.target - 1.0)

    def genotype_cost(self, genotype: Genotype) -> float:
        """The cost of ``genotype``'s searched ops under this search's table."""
        return self.model.genotype_cost(genotype, self.costs)

    def metrics(self, arch: Mapping[str, torch.Tensor], genotype: Genotype) -> dict[str, float]:
        """An epoch's ``expected_cost``, ``cost_penalty`` and ``genotype_cost`` (the decoded genotype's ops)."""
        with torch.no_grad():
            return {"expected_cost": float(self.expected(arch)), "cost_penalty": float(self.penalty(arch)),
                    "genotype_cost": self.genotype_cost(genotype)}


def network_costs(space: SearchSpace, genotype: Genotype, model: CostModel, num_classes: int, image_size: int,
                  device: torch.device | str = "cpu", repeats: int = 10) -> dict[str, float]:
    """The built network of ``genotype`` (``model.build_options``), measured: ``genotype_latency_ms`` (median of
    ``repeats`` forward passes, batch 1, on ``device``), ``genotype_gflops`` and ``genotype_params``."""
    network = space.build(genotype, num_classes, **model.build_options).to(device)
    size = (1, 3, image_size, image_size)
    return {"genotype_latency_ms": measure_latency(network, size, warmup=2, repeats=repeats)["median_ms"],
            "genotype_gflops": count_flops(network, size) / 1e9, "genotype_params": float(count_parameters(network))}


def cost_objective(config: SearchConfig, space: SearchSpace, arch: Mapping[str, Any]) -> CostObjective | None:
    """The search's cost term, or None with cost off."""
    return None if config.cost == "off" else CostObjective(config, space, arch)


def check_cost(config: SearchConfig, space: SearchSpace) -> SearchConfig:
    """Before Ray starts: the space has a cost model and a given table covers it; returns the config with the table's
    path made absolute (workers run in other folders)."""
    if config.cost == "off":
        return config
    model = cost_model_of(config, space)
    if config.cost_table is not None:
        config = config.replace(cost_table=str(Path(config.cost_table).expanduser().resolve()))
        resolve_costs(config, space, model)
    return config
