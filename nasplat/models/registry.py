"""Registry of hand-designed segmentation models, so baselines and searched networks share one path.

``@register_model("name")`` on a factory ``(num_classes, **options) -> nn.Module`` whose module
maps [N,3,H,W] to logits [N,num_classes,H,W] (in eval mode; in train mode a model may return
extra auxiliary outputs, documented by the model). The built-in baselines register themselves when the
``nasplat.models`` package is imported, which any import of this module does first.
"""
from __future__ import annotations

from typing import Callable

from torch import nn

ModelFactory = Callable[..., nn.Module]
_MODELS: dict[str, ModelFactory] = {}


class UnknownModelError(KeyError):
    """No registered model has that name; the message lists those that exist."""

    def __str__(self) -> str:
        return str(self.args[0])


def register_model(name: str, *, override: bool = False) -> Callable[[ModelFactory], ModelFactory]:
    """Decorator registering a model factory under ``name``."""

    def decorate(factory: ModelFactory) -> ModelFactory:
        if name in _MODELS and _MODELS[name] is not factory and not override:
            raise ValueError(f"model {name!r} is already registered")
        _MODELS[name] = factory
        return factory

    return decorate


def available_models() -> tuple[str, ...]:
    return tuple(sorted(_MODELS))


def model_factory(name: str) -> ModelFactory:
    """The factory registered under ``name`` (UnknownModelError listing the others when there is none)."""
    if name not in _MODELS:
        raise UnknownModelError(f"unknown model {name!r}; registered models: {', '.join(sorted(_MODELS)) or 'none'}")
    return _MODELS[name]


def get_model(name: str, num_classes: int, **options) -> nn.Module:
    """Build a registered model: ``get_model("deeplabv3plus", num_classes=19, backbone="resnet101")``."""
    return model_factory(name)(num_classes=num_classes, **options)
