"""The experiment config base: the fields, checks and help text that search and retrain share.

A config is a dataclass filled from defaults, a YAML file and command-line flags. Each field's help
text lives in its metadata (``option(default, "help")``), so the CLI, the docs and ``--help`` read
one source. Subclasses add their own fields and extend :meth:`ExperimentConfig.validate`.
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Mapping, TypeVar

import yaml

PLACEMENT_STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")
DATASETS = ("synthetic", "voc", "cityscapes")
"""Built-in dataset names; ``parquet:DIR`` names prepared shards."""

RESUME_FIELDS = ("resume", "resume_override")
"""How a run was (re)started, not what it is: left out of the settings a run folder records."""

_Config = TypeVar("_Config", bound="ConfigRecord")


class ConfigError(ValueError):
    """A configuration value or file is invalid; the message names the field (and file)."""


def option(default: Any, help: str, **metadata: Any) -> Any:
    """A dataclass field with ``help`` in its metadata; mutable defaults are copied per instance."""
    metadata = {"help": help, **metadata}
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def is_number(value: Any) -> bool:
    """A finite int or float that is not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def is_count(value: Any, minimum: int = 1) -> bool:
    """An int (not a bool) of at least ``minimum``."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


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
    def help_texts(cls) -> dict[str, str]:
        """Field name -> help text, in field order."""
        return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls)}

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

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def replace(self: _Config, **changes: Any) -> _Config:
        return self.from_dict({**self.to_dict(), **changes})

    def require_counts(self, *names: str, minimum: int = 1) -> None:
        for name in names:
            value = getattr(self, name)
            if not is_count(value, minimum):
                kind = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
                raise ConfigError(f"config field '{name}' must be {kind}, got {value!r}")

    def require_numbers(self, *names: str, minimum: float = 0.0, strict: bool = False) -> None:
        for name in names:
            value = getattr(self, name)
            if not is_number(value) or value < minimum or (strict and value == minimum):
                bound = f"> {minimum:g}" if strict else f">= {minimum:g}"
                raise ConfigError(f"config field '{name}' must be a number {bound}, got {value!r}")

    def require_choice(self, name: str, choices: tuple[Any, ...]) -> None:
        value = getattr(self, name)
        if isinstance(value, bool) or value not in choices:
            raise ConfigError(f"config field '{name}' must be one of {choices}, got {value!r}")

    def require_mapping(self, *names: str) -> None:
        for name in names:
            if not isinstance(getattr(self, name), dict):
                raise ConfigError(f"config field '{name}' must be a mapping, got {getattr(self, name)!r}")


@dataclasses.dataclass
class ExperimentConfig(ConfigRecord):
    """Fields every experiment (search, retrain) has: data, budget, workers, storage, tracking, cluster."""

    dataset: str = option("synthetic", "dataset: synthetic (built in), voc or cityscapes (official layout under "
                          "--data-root), or parquet:DIR (shards from `nasplat data prepare`)")
    data_root: str | None = option(None, "folder holding the official VOC (VOCdevkit) or Cityscapes "
                                   "(leftImg8bit, gtFine) layout")
    image_size: int = option(48, "square crop size in pixels for training and validation")
    train_samples: int = option(384, "synthetic data: number of training samples")
    val_samples: int = option(64, "synthetic data: number of validation samples")
    epochs: int = option(10, "training epochs")
    batch_size: int = option(8, "batch size per worker")
    workers: int = option(2, "Ray Train workers per trial")
    cpus_per_worker: float | None = option(None, "CPUs reserved per worker (default: up to 1, sized to the cluster)")
    gpus_per_worker: float = option(0.0, "GPUs per worker (0 = CPU only)")
    trials: int = option(1, "Tune trials")
    seed: int = option(0, "random seed (data, initialisation, sampling)")
    storage: str = option("nasplat_runs", "where run folders and checkpoints go: a local directory (made absolute; "
                          "on a multi-node cluster it must be shared, e.g. NFS) or a URI such as s3://bucket/prefix")
    tracking_uri: str | None = option(None, "MLflow tracking URI (default: MLFLOW_TRACKING_URI, else "
                                      "sqlite:///<cwd>/mlflow.db); http://host:port for a server")
    experiment: str = option("nasplat", "MLflow experiment name")
    name: str | None = option(None, "run name; re-running with the same name (or --resume NAME) resumes that run")
    address: str | None = option(None, "Ray cluster address (default: start a local Ray instance)")
    placement_strategy: str = option("PACK", choices=PLACEMENT_STRATEGIES, help="how a trial's Train workers are placed on the nodes: PACK (few nodes, "
                                     "best effort), SPREAD (across nodes, best effort), STRICT_PACK (one node) or "
                                     "STRICT_SPREAD (one worker per node)")
    max_failures: int = option(1, "worker-group restarts (from the last checkpoint) before a trial fails")
    resume: str | None = option(None, metavar="RUN", help="continue a stopped run: its name (under --storage), its "
                                "run folder, or its MLflow parent run id; it runs with its stored settings (other "
                                "options given are refused unless named by --resume-override)")
    resume_override: dict = option({}, "a stored setting a resumed run changes, as KEY=VALUE (repeatable), e.g. "
                                   "max_failures=3")

    def settings(self) -> dict[str, Any]:
        """The fields that define the run (every field but the ``resume`` ones): what its run folder records and
        what MLflow gets as params."""
        return {key: value for key, value in self.to_dict().items() if key not in RESUME_FIELDS}

    def validate(self) -> None:
        if not isinstance(self.dataset, str) or (self.dataset not in DATASETS and not self.dataset.startswith("parquet:")):
            raise ConfigError(f"config field 'dataset' must be one of {', '.join(DATASETS)} or parquet:DIR, "
                              f"got {self.dataset!r}")
        self.require_counts("image_size", "train_samples", "val_samples", "epochs", "batch_size", "workers", "trials")
        self.require_counts("seed", minimum=0)
        self.require_counts("max_failures", minimum=0)
        if self.cpus_per_worker is not None:
            self.require_numbers("cpus_per_worker", strict=True)
        self.require_numbers("gpus_per_worker")
        self.require_choice("placement_strategy", PLACEMENT_STRATEGIES)
        if self.resume is not None and (not isinstance(self.resume, str) or not self.resume.strip()):
            raise ConfigError(f"config field 'resume' must be a run name, run folder or MLflow run id, "
                              f"got {self.resume!r}")
        self.require_mapping("resume_override")
        if self.resume_override and not self.resume:
            raise ConfigError(f"config field 'resume_override' ({', '.join(sorted(self.resume_override))}) changes "
                              "a stopped run's settings: give --resume RUN with it, or set the options directly "
                              "for a new run")


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file into a mapping (validated later by the config's ``from_dict``)."""
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
