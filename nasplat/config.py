"""Search configuration: one dataclass, filled from defaults, a YAML file and command-line flags."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Mapping, TypeVar

import yaml


EARLY_STOP_PRESETS = ("off", "paper", "reference")
EARLY_STOP_MODES = ("stop", "ada", "simulate")
PLACEMENT_STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")


_Config = TypeVar("_Config", bound="ConfigRecord")


class ConfigError(ValueError):
    """A configuration value or file is invalid; the message names the field (and file)."""


class ConfigRecord:
    """Dict, YAML and copy round trips shared by the config dataclasses; ``__post_init__`` validates."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        raise NotImplementedError

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_dict(cls: type[_Config], data: Mapping[str, Any], source: str = "config") -> _Config:
        """Build and validate; an unknown or invalid field raises ConfigError naming ``source`` and the field."""
        unknown = sorted(set(data) - set(cls.field_names()))
        if unknown:
            raise ConfigError(f"{source}: unknown field '{unknown[0]}' (known fields: {', '.join(cls.field_names())})")
        try:
            return cls(**dict(data))
        except ConfigError as err:
            raise ConfigError(f"{source}: {err}") from None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self: _Config, **changes: Any) -> _Config:
        return self.from_dict({**self.to_dict(), **changes})


@dataclasses.dataclass
class SearchConfig(ConfigRecord):
    """Everything a search needs. Field names are the YAML keys; ``--flag-name`` sets ``flag_name``."""

    space: str = "darts"
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
    trials: int = 1
    order: int = 1
    seed: int = 0
    warmup_epochs: int = 0
    w_lr: float = 0.025
    w_lr_min: float = 0.001
    w_momentum: float = 0.9
    w_weight_decay: float = 3e-4
    grad_clip: float = 5.0
    arch_lr: float = 3e-3
    arch_weight_decay: float = 1e-3
    arch_beta1: float = 0.5
    arch_beta2: float = 0.999
    space_options: dict = dataclasses.field(default_factory=dict)
    early_stop: str = "off"
    early_stop_mode: str = "stop"
    early_stop_options: dict = dataclasses.field(default_factory=dict)
    hessian_batches: int = 2
    hessian_iterations: int = 20
    hessian_arch_weight_decay: bool = False
    picture_interval: int = 5
    storage: str = "nasplat_runs"
    tracking_uri: str | None = None
    experiment: str = "nasplat-search"
    name: str | None = None
    address: str | None = None
    placement_strategy: str = "PACK"
    max_failures: int = 1

    def validate(self) -> None:
        positive = ("image_size", "train_samples", "val_samples", "epochs", "batch_size", "workers", "trials")
        for name in positive:
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ConfigError(f"config field '{name}' must be a positive integer, got {getattr(self, name)!r}")
        if self.order not in (1, 2):
            raise ConfigError(f"config field 'order' must be 1 (first order) or 2 (second order), got {self.order!r}")
        if not 0 <= self.warmup_epochs <= self.epochs:
            raise ConfigError(f"config field 'warmup_epochs' must be in 0..epochs ({self.epochs}), got {self.warmup_epochs}")
        if self.train_samples < 2 * self.workers:
            raise ConfigError(
                f"config field 'train_samples' ({self.train_samples}) must give each of the {self.workers} "
                "workers at least one sample in each of the two search splits"
            )
        if self.cpus_per_worker is not None and self.cpus_per_worker <= 0:
            raise ConfigError(f"config field 'cpus_per_worker' must be > 0, got {self.cpus_per_worker}")
        if self.gpus_per_worker < 0:
            raise ConfigError(f"config field 'gpus_per_worker' must be >= 0, got {self.gpus_per_worker}")
        if self.early_stop not in EARLY_STOP_PRESETS:
            raise ConfigError(f"config field 'early_stop' must be one of {EARLY_STOP_PRESETS}, got {self.early_stop!r}")
        if self.early_stop_mode not in EARLY_STOP_MODES:
            raise ConfigError(f"config field 'early_stop_mode' must be one of {EARLY_STOP_MODES}, got {self.early_stop_mode!r}")
        if not isinstance(self.early_stop_options, dict):
            raise ConfigError(f"config field 'early_stop_options' must be a mapping, got {self.early_stop_options!r}")
        for name in ("hessian_batches", "hessian_iterations"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ConfigError(f"config field '{name}' must be a positive integer, got {getattr(self, name)!r}")
        if not isinstance(self.space_options, dict):
            raise ConfigError(f"config field 'space_options' must be a mapping, got {self.space_options!r}")
        if type(self.picture_interval) is not int or self.picture_interval < 0:
            raise ConfigError(
                f"config field 'picture_interval' must be an integer >= 0 (0 = pictures only at the end), "
                f"got {self.picture_interval!r}"
            )
        if self.placement_strategy not in PLACEMENT_STRATEGIES:
            raise ConfigError(
                f"config field 'placement_strategy' must be one of {PLACEMENT_STRATEGIES}, got {self.placement_strategy!r}"
            )


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file into a mapping (validated later by ``SearchConfig.from_dict``)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of field: value, got {type(data).__name__}")
    return data
