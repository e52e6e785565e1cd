"""Datasets for nasplat."""

from nasplat.data.synthetic import SyntheticScenes, synthetic_splits

__all__ = ["SyntheticScenes", "synthetic_splits"]
