"""Hand-designed segmentation baselines and their registry; importing this package registers the built-in ones."""

from nasplat.models import deeplabv3plus, duc_hdc, icnet  # noqa: F401  (each registers itself)
from nasplat.models.registry import UnknownModelError, available_models, get_model, model_factory, register_model

__all__ = ["UnknownModelError", "available_models", "get_model", "model_factory", "register_model"]
