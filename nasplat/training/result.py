"""What a finished search or retrain returns to its caller (the Python API and the CLI alike)."""
from __future__ import annotations

import dataclasses
from typing import Any

from nasplat.spaces.genotype import Genotype


@dataclasses.dataclass
class ExperimentResult:
    """The outcome of ``nasplat.search`` or ``nasplat.retrain``.

    ``genotype`` is the searched (or retrained) genotype, or for a baseline retrain its model name;
    ``metrics`` holds at least ``best_val_miou``; ``run_id`` is the MLflow parent run.
    """

    genotype: Genotype | str
    run_id: str
    metrics: dict[str, Any]
    best_run_id: str
    tracking_uri: str
    run_dir: str
    checkpoint: str | None = None
    """Retrain: local path or storage URI of the best model file."""
    model_uri: str | None = None
    """Retrain: the MLflow URI of the logged best model."""
    registered_version: str | None = None
    model_label: str | None = None
    failed_trials: int = 0
    """Trials that ended in an error (divergence, a crash); the best of the others is reported."""
