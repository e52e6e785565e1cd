"""Resuming a run by name with other settings is refused, listing what changed."""
from __future__ import annotations

import json

import pytest

from nasplat.runtime.driver import CONFIG_FILE, keep_settings
from nasplat.searching.config import SearchConfig
from nasplat.training.config import ConfigError


def test_a_run_keeps_its_settings(tmp_path):
    run_dir = str(tmp_path / "run1")
    first = SearchConfig(name="run1", epochs=4, storage=str(tmp_path))
    keep_settings(first, run_dir)
    assert json.loads((tmp_path / "run1" / CONFIG_FILE).read_text())["epochs"] == 4
    keep_settings(first, run_dir)  # the same settings resume
    with pytest.raises(ConfigError, match=r"epochs: 4 -> 6; w_lr: 0.025 -> 0.1"):
        keep_settings(first.replace(epochs=6, w_lr=0.1), run_dir)
