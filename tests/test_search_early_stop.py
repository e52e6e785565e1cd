"""RobustDARTS inside the search loop: scripted eigenvalues drive stop, ADA roll-back and resume."""
from __future__ import annotations

import pytest
import torch

import nasplat.searching.loop as search_loop
from nasplat.searching.config import SearchConfig
from nasplat.searching.loop import SupernetSearch

TINY = dict(image_size=16, train_samples=8, val_samples=4, batch_size=2, workers=1,
            space_options={"C": 2, "layers": 2, "reductions": 1})
# window 2, lookback 2: smoothed(e) = mean(lambda_e, lambda_{e-1}); decide at e when
# smoothed(e-2) / smoothed(e) < threshold, choosing epoch e-2 (0-based).
FAST_RULE = {"window": 2, "lookback": 2}


def _scripted(monkeypatch, series: list[float]) -> list[int]:
    calls: list[int] = []

    def fake_eigenvalue(model, loss_fn, batches, **kwargs):
        assert batches, "the eigenvalue needs split-B batches"
        calls.append(len(calls))
        return series[len(calls) - 1]

    monkeypatch.setattr(search_loop, "dominant_hessian_eigenvalue", fake_eigenvalue)
    return calls


def _run(search: SupernetSearch, epochs: int):
    decisions = []
    for _ in range(epochs):
        search.train_epoch()
        _, decision = search.check_early_stop()
        if decision is not None:
            decisions.append(decision)
            if decision.ends_search:
                break
    return decisions


def test_stop_mode_returns_the_architecture_of_the_chosen_epoch(monkeypatch):
    # epochs 0..3: lambda 1, 1, 1, 3 -> smoothed(1)=1, smoothed(3)=2; 1/2 = 0.5 < 0.75 at epoch 3
    _scripted(monkeypatch, [1.0, 1.0, 1.0, 3.0, 9.0])
    search = SupernetSearch(SearchConfig(**TINY, epochs=6, early_stop="paper", early_stop_options=FAST_RULE, arch_lr=0.05))
    genotypes = []
    original = search.genotype
    search.genotype = lambda: genotypes.append(original()) or genotypes[-1]
    decisions = _run(search, 6)
    assert len(decisions) == 1 and decisions[0].ends_search
    assert (decisions[0].stop_epoch, decisions[0].chosen_epoch) == (3, 1)
    assert decisions[0].genotype == genotypes[1].to_dict()
    assert "epoch 4" in decisions[0].reason and "epoch 2" in decisions[0].reason  # shown 1-based
    assert search.epoch == 4


def test_ada_rolls_back_to_the_chosen_epoch_and_raises_weight_decay(monkeypatch):
    _scripted(monkeypatch, [1.0, 1.0, 1.0, 3.0] + [1.0] * 10)
    config = SearchConfig(**TINY, epochs=5, early_stop="paper", early_stop_mode="ada", early_stop_options=FAST_RULE)
    search = SupernetSearch(config)
    states = {}
    for _ in range(3):
        search.train_epoch()
        search.check_early_stop()
        states[search.epoch - 1] = {k: v.clone() for k, v in search.model.state_dict().items()}
    search.train_epoch()
    _, decision = search.check_early_stop()
    assert decision is not None and decision.mode == "ada" and decision.resume_epoch == 1
    assert search.epoch == 2  # continues with epoch index 2 again
    assert search.epochs_trained == 4  # the metric step keeps counting
    for key, value in states[1].items():
        assert torch.equal(search.model.state_dict()[key], value), key
    assert [g["weight_decay"] for g in search.weight_optimizer.param_groups] == [pytest.approx(3 * 3e-4)]


def test_early_stop_record_survives_a_checkpoint(monkeypatch, tmp_path):
    _scripted(monkeypatch, [1.0, 1.0, 1.0, 3.0])
    config = SearchConfig(**TINY, epochs=6, early_stop="paper", early_stop_options=FAST_RULE)
    first = SupernetSearch(config)
    _run(first, 2)
    first.save(tmp_path)
    resumed = SupernetSearch(config)
    resumed.restore(tmp_path)
    assert resumed.epoch == 2 and resumed.stopper.eigenvalues == {0: 1.0, 1: 1.0}
    decisions = _run(resumed, 4)
    assert [(d.stop_epoch, d.chosen_epoch) for d in decisions] == [(3, 1)]


def test_bad_early_stop_option_names_the_field():
    with pytest.raises(ValueError, match="early_stop_options"):
        SupernetSearch(SearchConfig(**TINY, epochs=2, early_stop="paper", early_stop_options={"windw": 3}))


def test_real_eigenvalue_is_finite_and_same_as_direct_call():
    search = SupernetSearch(SearchConfig(**TINY, epochs=2, early_stop="paper", early_stop_mode="simulate"))
    search.train_epoch()
    eigenvalue, decision = search.check_early_stop()
    assert decision is None and eigenvalue is not None and torch.isfinite(torch.tensor(eigenvalue))
    again = search_loop.dominant_hessian_eigenvalue(search.model, search.loss_fn, search.hessian_batches)
    assert eigenvalue == pytest.approx(again, rel=1e-6)


@pytest.mark.parametrize(("preset", "with_wd", "which", "weight_decay"),
                         [("paper", False, "magnitude", 0.0), ("reference", True, "largest", 1e-3)])
def test_eigenvalue_options_reach_the_computation(monkeypatch, preset, with_wd, which, weight_decay):
    seen = {}

    def fake_eigenvalue(model, loss_fn, batches, **kwargs):
        seen.update(kwargs)
        return 1.0

    monkeypatch.setattr(search_loop, "dominant_hessian_eigenvalue", fake_eigenvalue)
    search = SupernetSearch(SearchConfig(**TINY, epochs=2, early_stop=preset, hessian_arch_weight_decay=with_wd,
                                         hessian_iterations=7, arch_weight_decay=1e-3))
    search.train_epoch()
    search.check_early_stop()
    # the authors' H includes the architecture weight decay (+1e-3 I) and takes the largest eigenvalue
    assert seen == {"iterations": 7, "arch_weight_decay": weight_decay, "which": which}
