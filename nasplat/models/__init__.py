"""Hand-designed segmentation baselines and their registry."""

from nasplat.models.registry import UnknownModelError, available_models, get_model, register_model

__all__ = ["UnknownModelError", "available_models", "get_model", "register_model"]
