"""RobustDARTS inside the search loop: scripted eigenvalues drive stop, ADA roll-back and resume;
the real eigenvalue against the spectrum of the dense Hessian; the reference preset's last epoch."""
from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn
from torch.func import functional_call

import nasplat
import nasplat.searching.loop as search_loop
from nasplat.searching.config import SearchConfig
from nasplat.searching.loop import SupernetSearch
from test_bilevel import SmoothSupernet  # a sibling test module: two smooth mixed edges, 8 arch numbers

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


@pytest.mark.parametrize("remedy, warned", [(["skip_dropout", "entropy", "sgas"], True),
                                             (["skip_dropout", "entropy"], False)])
def test_early_stop_beside_sgas_is_warned_before_the_search(tmp_path, monkeypatch, capsys, remedy, warned):
    """sgas flattens the Hessian as it decides edges, so the rise rule would wait in vain: said before Ray starts."""
    from nasplat.runtime.search_driver import prepare_search

    monkeypatch.chdir(tmp_path)
    prepare_search(SearchConfig(**TINY, epochs=2, early_stop="paper", remedy=remedy, storage=str(tmp_path / "runs")))
    out = capsys.readouterr().out
    assert ("[nasplat] warning: --early-stop with the sgas remedy" in out) is warned
    assert ("--remedy skip_dropout entropy" in out) is warned


@dataclasses.dataclass(frozen=True)
class _ChainGenotype(nasplat.Genotype):
    space = "test_smooth_chain"
    ops: tuple = ()


@nasplat.register_space
class _ChainSpace(nasplat.SearchSpace):
    """A search-only space around test_bilevel's two-edge smooth supernet: 8 architecture numbers,
    so the dense Hessian is cheap."""

    name = "test_smooth_chain"
    ops = SmoothSupernet.OPS
    genotype_type = _ChainGenotype

    def supernet(self, num_classes: int, **options) -> SmoothSupernet:
        return SmoothSupernet(num_classes=num_classes, **options)

    def decode(self, arch, **options) -> _ChainGenotype:
        return _ChainGenotype(ops=tuple(self.ops[int(i)] for i in arch["alpha"].argmax(-1)))

    def build(self, genotype, num_classes: int, **options) -> nn.Module:
        raise NotImplementedError("search-only test space")


CHAIN = {**TINY, "space": "test_smooth_chain", "space_options": {}}


def _dense_hessian_spectrum(search: SupernetSearch) -> torch.Tensor:
    """Eigenvalues (ascending) of the dense Hessian of the mean loss over the search's Hessian
    batches w.r.t. all arch parameters, in train mode without the skip dropout of the default remedies (the
    search takes it so, a deterministic function), formed entry by entry by autograd."""
    model = search.model.train()
    names = ["arch." + n for n in model.arch_parameters()]
    arch = list(model.arch_parameters().values())
    sizes = [a.numel() for a in arch]

    def mean_loss(flat: torch.Tensor) -> torch.Tensor:
        params = {n: p.view_as(a) for n, p, a in zip(names, flat.split(sizes), arch)}
        batches = search.hessian_batches
        return sum(search.loss_fn(functional_call(model, params, (x,)), y) for x, y in batches) / len(batches)

    saved = {n: b.clone() for n, b in model.named_buffers()}
    with search.bilevel.remedies.without_dropout():
        hessian = torch.autograd.functional.hessian(mean_loss, torch.cat([a.detach().reshape(-1) for a in arch]))
    with torch.no_grad():
        for n, b in model.named_buffers():
            b.copy_(saved[n])
    return torch.linalg.eigvalsh((hessian + hessian.T) / 2)


@pytest.mark.parametrize("preset", ["paper", "reference"])
def test_real_eigenvalue_matches_the_dense_hessian(preset):
    config = SearchConfig(**CHAIN, epochs=3, early_stop=preset, early_stop_mode="simulate", hessian_iterations=300)
    search = SupernetSearch(config)
    search.train_epoch()
    spectrum = _dense_hessian_spectrum(search)
    eigenvalue, decision = search.check_early_stop()
    assert decision is None
    if preset == "paper":  # the dominant eigenvalue of H
        expected = float(spectrum[spectrum.abs().argmax()])
    else:  # the authors': max(eigvals(H + 1e-3 I)), without --hessian-arch-weight-decay
        expected = float(spectrum.max()) + 1e-3
    assert eigenvalue == pytest.approx(expected, rel=1e-3, abs=1e-6)


def test_reference_preset_takes_no_decision_on_the_last_epoch(monkeypatch):
    # the fast rule fires at epoch 3 (0-based) on this series (see the first test)
    rule = {**FAST_RULE, "eval_interval": 1, "centred": False, "threshold": 0.75, "min_chosen_epoch": 0}
    _scripted(monkeypatch, [1.0, 1.0, 1.0, 3.0, 9.0])
    last = SupernetSearch(SearchConfig(**CHAIN, epochs=4, early_stop="reference", early_stop_options=rule))
    assert _run(last, 4) == [] and last.stopper.eigenvalues[3] == 3.0
    _scripted(monkeypatch, [1.0, 1.0, 1.0, 3.0, 9.0])
    longer = SupernetSearch(SearchConfig(**CHAIN, epochs=5, early_stop="reference", early_stop_options=rule))
    assert [(d.stop_epoch, d.chosen_epoch) for d in _run(longer, 5)] == [(3, 1)]


@pytest.mark.parametrize(("preset", "with_wd", "which", "weight_decay"),
                         [("paper", False, "magnitude", 0.0), ("paper", True, "magnitude", 1e-3),
                          ("reference", False, "largest", 1e-3), ("reference", True, "largest", 1e-3)])
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
    # the authors' H includes the architecture weight decay (+1e-3 I) and takes the largest
    # eigenvalue: the reference preset does both without --hessian-arch-weight-decay
    assert seen == {"iterations": 7, "arch_weight_decay": weight_decay, "which": which}
