"""The Python entry points: ``nasplat.search`` and ``nasplat.retrain`` (the CLI calls the same functions)."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Mapping, TypeVar

from nasplat.retraining.config import RetrainConfig
from nasplat.searching.config import SearchConfig
from nasplat.training.config import ConfigError, ExperimentConfig, load_config_file
from nasplat.training.result import ExperimentResult

_Config = TypeVar("_Config", bound=ExperimentConfig)


def build_config(config_type: type[_Config], config: _Config | Mapping[str, Any] | str | Path | None,
                 options: Mapping[str, Any]) -> _Config:
    """A config from an instance, a mapping or a YAML file (or the defaults), with ``options`` on top.

    With ``resume`` among them, the run's stored settings instead (``resume_override`` changes some); what else is
    given must agree with them. Of an instance, the fields that differ from the defaults count as given."""
    if config is None:
        base: dict[str, Any] = {}
        source = "options"
    elif isinstance(config, config_type):
        base, source = config.to_dict(), "options"
    elif isinstance(config, Mapping):
        base, source = dict(config), "config"
    elif isinstance(config, (str, Path)):
        base, source = load_config_file(config), str(config)
    else:
        raise ConfigError(f"config must be a {config_type.__name__}, a mapping or a YAML file path, "
                          f"got {type(config).__name__}")
    if {**base, **options}.get("resume"):
        from nasplat.runtime.run_folder import resumed_config

        if isinstance(config, config_type):
            defaults = config_type().to_dict()
            base = {key: value for key, value in base.items() if value != defaults[key]}
        return resumed_config(config_type, {**base, **options})
    return config_type.from_dict({**base, **options}, source=source)


def search(config: SearchConfig | Mapping[str, Any] | str | Path | None = None, **options: Any) -> ExperimentResult:
    """Run an architecture search; keyword options are the CLI options with underscores (the YAML keys), e.g.
    ``resume="my-run"`` continues a stopped one.

    Returns the best trial's genotype, the MLflow parent run id and ``metrics["best_val_miou"]``.
    """
    from nasplat.runtime.search_driver import run_search

    return run_search(build_config(SearchConfig, config, options), argv=_argv())


def retrain(config: RetrainConfig | Mapping[str, Any] | str | Path | None = None, **options: Any) -> ExperimentResult:
    """Retrain a genotype (file, search run, or the latest search) or a baseline; options as for :func:`search`.

    Returns the model's genotype (or baseline name), the MLflow parent run id, ``metrics["best_val_miou"]`` and
    the best model file (``checkpoint``).
    """
    from nasplat.runtime.retrain_driver import run_retrain

    return run_retrain(build_config(RetrainConfig, config, options), argv=_argv())


def _argv() -> list[str]:
    """The command line recorded on the parent run: ``nasplat ...`` when the CLI runs (as the ``nasplat`` script or
    ``python -m pipelines.cli``), else the calling script and its arguments."""
    program = Path(sys.argv[0]).name if sys.argv else ""
    if program in ("nasplat", "cli.py", "__main__.py"):
        return ["nasplat", *sys.argv[1:]]
    return list(sys.argv)
