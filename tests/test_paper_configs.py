"""configs/autodeeplab_paper.yaml: loads into SearchConfig and carries the paper's search settings."""
from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from nasplat.searching.config import SearchConfig
from nasplat.training.config import load_config_file
from search_spaces.autodeeplab import AutoDeepLabSupernet

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "autodeeplab_paper.yaml"


def test_autodeeplab_paper_config_has_the_papers_search_settings():
    config = SearchConfig.from_dict(load_config_file(CONFIG), source=str(CONFIG))
    # Auto-DeepLab (arXiv 1901.02985) section 5.1, as REFERENCES.md section 2 "Search" lists it
    assert config.space == "autodeeplab"
    assert config.space_options == {"F": 8, "L": 12, "B": 5}
    assert (config.epochs, config.warmup_epochs, config.order) == (40, 20, 1)  # alpha/beta from epoch 20, first order
    assert (config.batch_size * config.workers, config.image_size) == (2, 321)
    assert (config.w_lr, config.w_lr_min, config.w_momentum, config.w_weight_decay) == pytest.approx(
        (0.025, 0.001, 0.9, 3e-4))
    assert (config.arch_lr, config.arch_weight_decay) == pytest.approx((3e-3, 1e-3))
    assert config.arch_lr_min == config.arch_lr  # a constant rate, as the paper (the default search anneals it)
    assert config.remedy == ["none"]  # the paper has no collapse remedy; the default search does
    # the option names are the supernet's: F filters, L layers, B blocks
    bound = inspect.signature(AutoDeepLabSupernet).bind(19, **config.space_options)
    assert (bound.arguments["F"], bound.arguments["L"], bound.arguments["B"]) == (8, 12, 5)


def test_darts_paper_config_has_the_papers_search_settings_and_decode():
    path = CONFIG.parent / "darts_paper.yaml"
    config = SearchConfig.from_dict(load_config_file(path), source=str(path))
    # DARTS (arXiv 1806.09055) appendix A.1.1: 8 cells of 16 initial channels, 50 epochs, batch 64, SGD 0.025
    # cosine to 0.001, momentum 0.9, weight decay 3e-4; Adam 3e-4, betas (0.5, 0.999), weight decay 1e-3
    assert (config.space, config.order, config.epochs, config.batch_size) == ("darts", 2, 50, 64)
    assert config.space_options == {"C": 16, "layers": 8, "reductions": 2, "max_skip_normal": None}
    assert (config.w_lr, config.w_lr_min, config.w_momentum, config.w_weight_decay) == pytest.approx(
        (0.025, 0.001, 0.9, 3e-4))
    assert (config.arch_lr, config.arch_beta1, config.arch_beta2, config.arch_weight_decay) == pytest.approx(
        (3e-4, 0.5, 0.999, 1e-3))
    assert config.arch_lr_min == config.arch_lr and config.remedy == ["none"]  # constant rate, no remedy, no cap
