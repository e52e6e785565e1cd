"""Self-describing model files: a :class:`ModelSpec` (genotype or baseline, options, classes) with the weights,
so :func:`load_model_checkpoint` rebuilds the network from the file alone (``weights_only=True``)."""
from __future__ import annotations

import dataclasses
import pickle
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nasplat.data.sources import SearchData, search_data
from nasplat.models import get_model
from nasplat.models.pretrained import INITIAL_WEIGHT_OPTIONS
from nasplat.retraining.config import GENOTYPE_DEFAULT_OPTIONS
from nasplat.spaces.registry import genotype_from_dict, get_space
from nasplat.training.checkpoints import atomic_save
from nasplat.training.config import ConfigError

CHECKPOINT_FORMAT = "nasplat-model"
CHECKPOINT_VERSION = 1
BEST_MODEL_FILE = "best_model.pt"
DATA_FIELDS = ("dataset", "data_root", "image_size", "train_samples", "val_samples", "seed")
"""Config fields that fix the data; checkpoints record them so ``evaluate`` sees the same split."""


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """How to build a network: a genotype (dict form) or a registered baseline name, plus options."""

    num_classes: int
    class_names: tuple[str, ...]
    genotype: dict | None = None
    baseline: str | None = None
    options: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if (self.genotype is None) == (self.baseline is None):
            raise ConfigError("a model spec needs exactly one of 'genotype' and 'baseline'")
        if len(self.class_names) != self.num_classes:
            raise ConfigError(f"model spec: {len(self.class_names)} class names for {self.num_classes} classes")

    @classmethod
    def from_source(cls, source: Mapping[str, Any], num_classes: int, class_names: Sequence[str]) -> ModelSpec:
        """``source`` = {"genotype": dict} or {"baseline": name}, with optional "options"; a genotype's
        options start from :data:`GENOTYPE_DEFAULT_OPTIONS` of its space."""
        genotype, baseline = source.get("genotype"), source.get("baseline")
        options = dict(source.get("options") or {})
        if genotype is not None:
            options = {**GENOTYPE_DEFAULT_OPTIONS.get(str(genotype.get("space")), {}), **options}
        return cls(int(num_classes), tuple(class_names), genotype=genotype, baseline=baseline, options=options)

    def build(self, initial_weights: bool = True) -> nn.Module:
        """The network; a baseline from the model registry, a genotype through its space's ``build``. Without
        ``initial_weights`` the options that only set starting weights (``pretrained``, ``backbone_weights``) are
        left out: for a network whose trained weights are loaded next, on a machine that may have neither."""
        options = self.options if initial_weights else {
            k: v for k, v in self.options.items() if k not in INITIAL_WEIGHT_OPTIONS}
        try:
            if self.baseline is not None:
                return get_model(self.baseline, num_classes=self.num_classes, **options)
            genotype = genotype_from_dict(self.genotype)
            return get_space(genotype.space).build(genotype, self.num_classes, **options)
        except TypeError as err:
            raise ConfigError(f"config field 'model_options' {self.options!r} does not fit {self.label()}: {err}") from None

    def label(self) -> str:
        """A short human name: ``darts:<genotype hash>`` or ``deeplabv3plus(backbone=mobilenet_v2)``."""
        if self.baseline is not None:
            options = ",".join(f"{k}={v}" for k, v in sorted(self.options.items()))
            return self.baseline + (f"({options})" if options else "")
        genotype = genotype_from_dict(self.genotype)
        return f"{genotype.space}:{genotype.short_hash()}"

    def to_dict(self) -> dict[str, Any]:
        return {"num_classes": self.num_classes, "class_names": list(self.class_names), "genotype": self.genotype,
                "baseline": self.baseline, "options": dict(self.options)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelSpec:
        return cls(int(data["num_classes"]), tuple(data["class_names"]), genotype=data.get("genotype"),
                   baseline=data.get("baseline"), options=dict(data.get("options") or {}))


def save_model_checkpoint(path: str | Path, spec: ModelSpec, state_dict: Mapping[str, torch.Tensor],
                          **extra: Any) -> Path:
    """Write a self-describing model file: format tag, model spec, state_dict and ``extra`` (plain values)."""
    payload = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "spec": spec.to_dict(),
               "state_dict": {k: v.detach().cpu() for k, v in state_dict.items()}, **extra}
    return atomic_save(payload, path)


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a model file (``weights_only=True``) and check it is one; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as err:
        raise ConfigError(f"{path}: not a readable checkpoint ({err})") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ConfigError(f"{path}: not a nasplat model checkpoint (no format '{CHECKPOINT_FORMAT}')")
    if payload.get("version") != CHECKPOINT_VERSION:
        raise ConfigError(f"{path}: unsupported checkpoint version {payload.get('version')!r} (expected {CHECKPOINT_VERSION})")
    return payload


def load_model_checkpoint(path: str | Path, device: torch.device | str = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the network of a model file with its weights, in eval mode; also return the payload."""
    payload = read_checkpoint(path)
    model = ModelSpec.from_dict(payload["spec"]).build(initial_weights=False)
    model.load_state_dict(payload["state_dict"])
    return model.to(device).eval(), payload


def recorded_data(data: Mapping[str, Any]) -> SearchData:
    """The splits (validation, class names and count, description) of a checkpoint's ``data`` record."""
    return search_data(data["dataset"], int(data["image_size"]), int(data["train_samples"]),
                       int(data["val_samples"]), int(data["seed"]), data.get("data_root"))
