"""Retrain configuration: one dataclass, filled from defaults, a YAML file and command-line flags.

The model comes from exactly one source: a genotype file (``genotype``), an MLflow run of a search
(``from_run``: the search's parent run or one of its trial runs) or a registered baseline
(``baseline``). With none given, the retrain pipeline takes the latest finished search.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

from nasplat.config import PLACEMENT_STRATEGIES, ConfigError, ConfigRecord

SOURCE_FIELDS = ("genotype", "from_run", "baseline")

GENOTYPE_DEFAULT_OPTIONS: dict[str, dict[str, Any]] = {
    "darts": {"C": 8, "layers": 5, "reductions": 2, "head_channels": 64},
}
"""Network options used for a searched genotype of that space unless ``model_options`` overrides them:
sized so the default retrain finishes in minutes on 2 CPU cores (the paper's networks are larger)."""


@dataclasses.dataclass
class RetrainConfig(ConfigRecord):
    """Everything a retrain needs. Field names are the YAML keys; ``--flag-name`` sets ``flag_name``."""

    genotype: str | None = None
    from_run: str | None = None
    baseline: str | None = None
    model_options: dict = dataclasses.field(default_factory=dict)
    dataset: str = "synthetic"
    data_root: str | None = None
    image_size: int = 48
    train_samples: int = 384
    val_samples: int = 64
    epochs: int = 10
    batch_size: int = 8
    workers: int = 2
    cpus_per_worker: float | None = None
    gpus_per_worker: float = 0.0
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 3e-4
    poly_power: float = 0.9
    aux_weight: float = 0.4
    eval_scales: list = dataclasses.field(default_factory=lambda: [1.0])
    eval_flip: bool = False
    trials: int = 1
    lr_range: list = dataclasses.field(default_factory=lambda: [0.01, 0.1])
    weight_decay_range: list = dataclasses.field(default_factory=lambda: [1e-5, 1e-3])
    batch_sizes: list = dataclasses.field(default_factory=lambda: [4, 8])
    seed: int = 0
    storage: str = "nasplat_runs"
    tracking_uri: str | None = None
    experiment: str = "nasplat-retrain"
    search_experiment: str = "nasplat-search"
    name: str | None = None
    address: str | None = None
    placement_strategy: str = "PACK"
    register_model: str | None = None
    max_failures: int = 1

    def validate(self) -> None:
        for name in ("image_size", "train_samples", "val_samples", "epochs", "batch_size", "workers", "trials"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"config field '{name}' must be a positive integer, got {value!r}")
        given = [name for name in SOURCE_FIELDS if getattr(self, name)]
        if len(given) > 1:
            raise ConfigError(
                f"config fields {', '.join(repr(n) for n in given)}: give exactly one model source "
                "(genotype file, from_run or baseline), not several"
            )
        if not isinstance(self.model_options, dict):
            raise ConfigError(f"config field 'model_options' must be a mapping, got {self.model_options!r}")
        for name in ("lr", "poly_power"):
            if not _number(getattr(self, name)) or getattr(self, name) <= 0:
                raise ConfigError(f"config field '{name}' must be a number > 0, got {getattr(self, name)!r}")
        for name in ("momentum", "weight_decay", "aux_weight", "gpus_per_worker"):
            if not _number(getattr(self, name)) or getattr(self, name) < 0:
                raise ConfigError(f"config field '{name}' must be a number >= 0, got {getattr(self, name)!r}")
        if self.cpus_per_worker is not None and (not _number(self.cpus_per_worker) or self.cpus_per_worker <= 0):
            raise ConfigError(f"config field 'cpus_per_worker' must be > 0, got {self.cpus_per_worker!r}")
        if (not isinstance(self.eval_scales, (list, tuple)) or not self.eval_scales
                or not all(_number(s) and s > 0 for s in self.eval_scales)):
            raise ConfigError(f"config field 'eval_scales' must be a non-empty list of numbers > 0, got {self.eval_scales!r}")
        if not isinstance(self.eval_flip, bool):
            raise ConfigError(f"config field 'eval_flip' must be true or false, got {self.eval_flip!r}")
        for name in ("lr_range", "weight_decay_range"):
            bounds = getattr(self, name)
            if (not isinstance(bounds, (list, tuple)) or len(bounds) != 2 or not all(_number(b) and b > 0 for b in bounds)
                    or bounds[0] > bounds[1]):
                raise ConfigError(f"config field '{name}' must be [low, high] with 0 < low <= high (log-uniform), got {bounds!r}")
        if (not isinstance(self.batch_sizes, (list, tuple)) or not self.batch_sizes
                or not all(isinstance(b, int) and not isinstance(b, bool) and b > 0 for b in self.batch_sizes)):
            raise ConfigError(f"config field 'batch_sizes' must be a non-empty list of positive integers, got {self.batch_sizes!r}")
        largest = max([self.batch_size, *self.batch_sizes]) if self.trials > 1 else self.batch_size
        if self.dataset == "synthetic" and self.train_samples < self.workers * largest:
            raise ConfigError(
                f"config field 'train_samples' ({self.train_samples}) must give each of the {self.workers} workers "
                f"at least one full batch (batch size up to {largest})"
            )
        if self.placement_strategy not in PLACEMENT_STRATEGIES:
            raise ConfigError(
                f"config field 'placement_strategy' must be one of {PLACEMENT_STRATEGIES}, got {self.placement_strategy!r}"
            )
        if not isinstance(self.max_failures, int) or self.max_failures < 0:
            raise ConfigError(f"config field 'max_failures' must be an integer >= 0, got {self.max_failures!r}")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
