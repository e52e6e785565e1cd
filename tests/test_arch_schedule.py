"""The architecture learning rate's cosine schedule (--arch-lr-min): its values per epoch, a resumed search
continuing it, a constant rate as the papers', and a bad value refused by name."""
from __future__ import annotations

import math

import pytest

from nasplat.searching.config import SearchConfig
from nasplat.searching.loop import SupernetSearch
from nasplat.training.config import ConfigError

TINY = dict(image_size=16, train_samples=8, val_samples=4, batch_size=2, workers=1, epochs=4, arch_lr=0.04,
            remedy=["none"], space_options={"C": 2, "layers": 2, "reductions": 1})


def _rates(search: SupernetSearch, epochs: int) -> list[float]:
    return [search.train_epoch()["arch_lr"] for _ in range(epochs)]


def test_cosine_to_the_minimum_over_the_epochs_and_resumed_where_it_stopped(tmp_path):
    # eta_min + (lr - eta_min) * (1 + cos(pi * epoch / epochs)) / 2, epoch 0-based: the rate each epoch trains with
    expected = [0.01 + 0.03 * (1 + math.cos(math.pi * e / 4)) / 2 for e in range(4)]
    assert _rates(SupernetSearch(SearchConfig(**TINY, arch_lr_min=0.01)), 4) == pytest.approx(expected)
    first = SupernetSearch(SearchConfig(**TINY, arch_lr_min=0.01))
    _rates(first, 2)
    first.save(tmp_path)
    resumed = SupernetSearch(SearchConfig(**TINY, arch_lr_min=0.01))
    resumed.restore(tmp_path)
    assert _rates(resumed, 2) == pytest.approx(expected[2:])


def test_minimum_equal_to_the_rate_keeps_it_constant_and_a_larger_one_is_refused():
    assert _rates(SupernetSearch(SearchConfig(**TINY, arch_lr_min=0.04)), 3) == pytest.approx([0.04] * 3)
    with pytest.raises(ConfigError, match=r"'arch_lr_min' \(0.05\) must not exceed 'arch_lr' \(0.04\)"):
        SearchConfig(**TINY, arch_lr_min=0.05)


def test_a_checkpoint_from_before_the_schedule_resumes_at_its_constant_rate(tmp_path):
    first = SupernetSearch(SearchConfig(**TINY, arch_lr_min=0.04))
    _rates(first, 1)
    state = first.state_dict()
    del state["arch_scheduler"]  # as nasplat wrote it before --arch-lr-min
    resumed = SupernetSearch(SearchConfig(**TINY, arch_lr_min=0.0))  # an old run's config: the new default
    resumed.load_state_dict(state)
    assert _rates(resumed, 3) == pytest.approx([0.04] * 3)
