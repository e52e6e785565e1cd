"""RobustDARTS: the dominant Hessian eigenvalue against exact eigendecompositions, and the stopping
rule of both presets against eigenvalue series worked out by hand."""
from __future__ import annotations

import json
import math
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.func import functional_call

import nasplat
from nasplat.searching.robust import (
    DEFAULT_PRESET,
    EarlyStopConfig,
    EarlyStopper,
    StopDecision,
    dominant_hessian_eigenvalue,
    next_weight_decay,
)


# --- models ----------------------------------------------------------------------------------


@nasplat.register_op("test_robust_conv3_tanh", override=True)
def _conv_tanh(C: int, stride: int, affine: bool) -> nn.Module:
    return nn.Sequential(nn.Conv2d(C, C, 3, stride, 1), nn.Tanh())


class SmoothSupernet(nasplat.Supernet):
    """Two mixed edges in a chain, smooth ops only, and two arch tensors of different shapes, so
    the eigenvalue must cover every arch tensor and the cross-derivatives between them."""

    OPS = ("none", "test_robust_conv3_tanh", "avg_pool_3x3", "skip_connect")

    def __init__(self, C: int = 4, num_classes: int = 3) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, C, 3, padding=1)
        self.edges = nn.ModuleList(nasplat.MixedOp(C, 1, self.OPS) for _ in range(2))
        self.head = nn.Conv2d(C, num_classes, 1)
        self.add_arch_parameter("first", torch.randn(len(self.OPS)))
        self.add_arch_parameter("second", torch.randn(1, len(self.OPS)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.tanh(self.stem(x))
        x = self.edges[0](x, torch.softmax(self.arch["first"], -1))
        x = self.edges[1](x, torch.softmax(self.arch["second"][0], -1))
        return self.head(x)


class QuadraticSupernet(nasplat.Supernet):
    """Returns its arch parameters z = (a, b); with ``_quadratic_loss`` the Hessian is sym(A)."""

    def __init__(self) -> None:
        super().__init__()
        self.add_arch_parameter("a", torch.randn(2, dtype=torch.float64))
        self.add_arch_parameter("b", torch.randn(1, 2, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.arch["a"], self.arch["b"].reshape(-1)])


def _quadratic_loss(z: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    return 0.5 * z @ matrix @ z


def _smooth_problem(seed: int = 1, batches: int = 1):
    torch.manual_seed(seed)
    model = SmoothSupernet().double()
    data = [(torch.randn(4, 3, 8, 8, dtype=torch.float64), torch.randint(0, 3, (4, 8, 8))) for _ in range(batches)]
    return model, nn.CrossEntropyLoss(), data


def _exact_spectrum(model: nasplat.Supernet, loss_fn, batches, weight_decay: float = 0.0) -> list[float]:
    """Eigenvalues of the full Hessian (+ wd I) over the flattened arch params, largest magnitude first."""
    names = ["arch." + n for n in model.arch_parameters()]
    arch = list(model.arch_parameters().values())
    sizes = [a.numel() for a in arch]

    def mean_loss(flat: torch.Tensor) -> torch.Tensor:
        params = {n: p.view_as(a) for n, p, a in zip(names, flat.split(sizes), arch)}
        return sum(loss_fn(functional_call(model, params, (x,)), y) for x, y in batches) / len(batches)

    hessian = torch.autograd.functional.hessian(mean_loss, torch.cat([a.detach().reshape(-1) for a in arch]))
    assert torch.allclose(hessian, hessian.T, atol=1e-10)
    hessian = (hessian + hessian.T) / 2 + weight_decay * torch.eye(hessian.shape[0], dtype=hessian.dtype)
    return sorted(torch.linalg.eigh(hessian).eigenvalues.tolist(), key=abs, reverse=True)


# --- the eigenvalue ---------------------------------------------------------------------------


def test_eigenvalue_matches_exact_hessian_of_a_supernet():
    model, loss_fn, batches = _smooth_problem()
    spectrum = _exact_spectrum(model, loss_fn, batches)
    assert len(spectrum) == 8  # both arch tensors: 4 + 1x4
    assert abs(spectrum[1]) < 0.7 * abs(spectrum[0])  # a clear gap, so 20 iterations are meaningful
    value = dominant_hessian_eigenvalue(model, loss_fn, batches)
    assert abs(value - spectrum[0]) / abs(spectrum[0]) < 0.02


def test_eigenvalue_is_signed_and_covers_every_arch_tensor():
    model = QuadraticSupernet()
    # eigenvalues -3 (dominant), 2, 1, 0.5 in a rotated basis that mixes a and b
    basis, _ = torch.linalg.qr(torch.randn(4, 4, dtype=torch.float64))
    matrix = basis @ torch.diag(torch.tensor([-3.0, 2.0, 1.0, 0.5], dtype=torch.float64)) @ basis.T
    batches = [(torch.zeros(1), matrix)]
    value = dominant_hessian_eigenvalue(model, _quadratic_loss, batches, iterations=200, tol=1e-12)
    assert value == pytest.approx(-3.0, rel=1e-6)
    # the authors' max(eigvals): the largest algebraic eigenvalue, 2, by a shifted second run
    largest = dominant_hessian_eigenvalue(model, _quadratic_loss, batches, iterations=200, tol=1e-12, which="largest")
    assert largest == pytest.approx(2.0, rel=1e-6)
    # with a positive dominant eigenvalue both agree
    assert dominant_hessian_eigenvalue(model, _quadratic_loss, [(torch.zeros(1), -matrix)], iterations=200, tol=1e-12,
                                       which="largest") == pytest.approx(3.0, rel=1e-6)


def test_arch_weight_decay_shifts_the_eigenvalue_by_exactly_wd():
    model, loss_fn, batches = _smooth_problem()
    exact = _exact_spectrum(model, loss_fn, batches)
    assert exact[0] > 0  # then the shift keeps it dominant and adds exactly wd
    wd = 1e-3
    kwargs = {"iterations": 300, "tol": 1e-12}
    plain = dominant_hessian_eigenvalue(model, loss_fn, batches, **kwargs)
    shifted = dominant_hessian_eigenvalue(model, loss_fn, batches, arch_weight_decay=wd, **kwargs)
    assert shifted - plain == pytest.approx(wd, rel=1e-4)
    assert shifted == pytest.approx(_exact_spectrum(model, loss_fn, batches, weight_decay=wd)[0], rel=1e-6)


def test_several_batches_give_the_eigenvalue_of_the_mean_loss():
    model, loss_fn, batches = _smooth_problem(seed=3, batches=2)
    exact_mean = _exact_spectrum(model, loss_fn, batches)
    exact_first = _exact_spectrum(model, loss_fn, batches[:1])
    value = dominant_hessian_eigenvalue(model, loss_fn, batches, iterations=300, tol=1e-12)
    assert value == pytest.approx(exact_mean[0], rel=1e-6)
    assert abs(exact_first[0] - exact_mean[0]) > 1e-3 * abs(exact_mean[0])  # the second batch matters


@pytest.mark.parametrize("training", [True, False])
def test_eigenvalue_leaves_grads_buffers_and_mode_alone(training):
    model, loss_fn, batches = _smooth_problem(batches=2)
    model.train(training)
    weights = model.weight_parameters()
    weights[0].grad = torch.full_like(weights[0], 7.0)
    model.arch["first"].grad = torch.full_like(model.arch["first"], -2.0)
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    assert buffers  # the pool ops carry BatchNorm running statistics
    state = {n: p.detach().clone() for n, p in model.named_parameters()}

    dominant_hessian_eigenvalue(model, loss_fn, batches)

    assert model.training is training
    assert torch.equal(weights[0].grad, torch.full_like(weights[0], 7.0))
    assert torch.equal(model.arch["first"].grad, torch.full_like(model.arch["first"], -2.0))
    assert all(p.grad is None for p in weights[1:]) and model.arch["second"].grad is None
    assert all(torch.equal(b, buffers[n]) for n, b in model.named_buffers())
    assert all(torch.equal(p, state[n]) for n, p in model.named_parameters())


def test_eigenvalue_is_deterministic_under_no_grad():
    model, loss_fn, batches = _smooth_problem()
    first = dominant_hessian_eigenvalue(model, loss_fn, batches, iterations=5)
    with torch.no_grad():  # e.g. called next to an @torch.no_grad evaluate()
        second = dominant_hessian_eigenvalue(model, loss_fn, batches, iterations=5)
    assert first == second
    assert second == pytest.approx(_exact_spectrum(model, loss_fn, batches)[0], rel=0.02)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _eigen_worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.set_num_threads(1)
    try:
        model, loss_fn, batches = _smooth_problem(seed=3, batches=2)
        value = dominant_hessian_eigenvalue(model, loss_fn, batches[rank : rank + 1], iterations=300, tol=1e-12)
        with open(os.path.join(out_dir, f"eig{rank}.json"), "w") as f:
            json.dump(value, f)
        dist.barrier()  # no rank tears gloo down while the other still communicates
    finally:
        dist.destroy_process_group()


def test_workers_agree_on_the_eigenvalue_of_the_global_batch(tmp_path):
    mp.spawn(_eigen_worker, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)
    values = [json.loads((tmp_path / f"eig{r}.json").read_text()) for r in (0, 1)]
    assert values[0] == values[1]
    model, loss_fn, batches = _smooth_problem(seed=3, batches=2)
    assert values[0] == pytest.approx(_exact_spectrum(model, loss_fn, batches)[0], rel=1e-6)


# --- the stopping rule ------------------------------------------------------------------------


def _genotype(epoch: int) -> dict:
    return {"space": "toy", "epoch": epoch}


def _run(stopper: EarlyStopper, series: dict[int, float], epochs: range) -> list[StopDecision]:
    """Feed one epoch at a time; eigenvalues only on evaluation epochs, as the search loop does."""
    decisions = []
    for epoch in epochs:
        value = series[epoch] if stopper.should_evaluate(epoch) else None
        decision = stopper.update(epoch, value, _genotype(epoch))
        if decision is not None:
            decisions.append(decision)
            if decision.mode != "simulate":  # stop: the search ends; ada: the caller rolls back
                break
    return decisions


# paper: every epoch; lambda_bar(i) = mean(lambda(i-4..i)); stop when lambda_bar(i-5)/lambda_bar(i) < 0.75
#   epochs 0-5: 10;  6: 12;  7: 14;  8: 16;  9: 14;  10: 24
#   i = 9:  lambda_bar(4) = mean(0..4) = 10;  lambda_bar(9)  = (10+12+14+16+14)/5 = 66/5 = 13.2
#           ratio 10/13.2 = 0.7576 >= 0.75 -> continue
#   i = 10: lambda_bar(5) = mean(1..5) = 10;  lambda_bar(10) = (12+14+16+14+24)/5 = 80/5 = 16
#           ratio 10/16 = 0.625 < 0.75 -> stop at 10, architecture of epoch 10 - 5 = 5
PAPER_SERIES = {**{e: 10.0 for e in range(6)}, 6: 12.0, 7: 14.0, 8: 16.0, 9: 14.0, 10: 24.0}


def test_default_preset_is_the_paper():
    assert DEFAULT_PRESET == "paper"
    assert EarlyStopper().config == EarlyStopConfig.preset("paper") == EarlyStopConfig()


def test_paper_preset_stops_on_a_hand_computed_series():
    stopper = EarlyStopper(EarlyStopConfig.preset("paper"))
    assert stopper.config.earliest_stop_epoch == 9  # windows 0..4 and 5..9
    decisions = _run(stopper, PAPER_SERIES, range(11))
    assert stopper.smoothed(9) == pytest.approx(13.2) and stopper.smoothed(10) == pytest.approx(16.0)
    assert len(decisions) == 1
    d = decisions[0]
    assert (d.stop_epoch, d.chosen_epoch, d.genotype) == (10, 5, _genotype(5))
    assert d.ratio == pytest.approx(0.625) and d.current == pytest.approx(16.0) and d.previous == pytest.approx(10.0)
    assert d.ends_search and d.weight_decay is None and d.resume_epoch is None
    assert "from 10 (epoch 5) to 16 (epoch 10)" in d.reason
    assert "0.625 < 0.75" in d.reason and "architecture of epoch 5" in d.reason


# reference: evaluate at even epochs; LA(e) = mean(lambda at e-8, e-6, e-4, e-2, e), centred at e-4;
# stop when LA(e)/LA(e-8) > 1.3 (LA(e-8)/LA(e) < 1/1.3 = 0.769) and the chosen epoch e-12 >= 10.
#   lambda = 1 at even epochs 0..20 and 24; 2 at 22 and 26
#   e = 22: LA(22) = (1+1+1+1+2)/5 = 1.2, LA(14) = 1 -> 1.2 <= 1.3, continue
#   e = 24: LA(24) = (1+1+1+2+1)/5 = 1.2, LA(16) = 1 -> continue
#   e = 26: LA(26) = (1+1+2+1+2)/5 = 1.4, LA(18) = 1 -> 1.4 > 1.3: stop at 26, epoch 26 - 12 = 14
REFERENCE_SERIES = {e: (2.0 if e in (22, 26) else 1.0) for e in range(0, 60, 2)}


def test_reference_preset_stops_on_a_hand_computed_series():
    stopper = EarlyStopper(EarlyStopConfig.preset("reference"))
    decisions = _run(stopper, REFERENCE_SERIES, range(30))
    assert [stopper.smoothed(e) for e in (22, 24, 26)] == pytest.approx([1.2, 1.2, 1.4])
    assert len(decisions) == 1
    d = decisions[0]
    assert (d.stop_epoch, d.chosen_epoch, d.genotype) == (26, 14, _genotype(14))
    assert d.ratio == pytest.approx(1 / 1.4)
    assert "centred at epoch 14, computed at epoch 18" in d.reason
    assert "centred at epoch 22, computed at epoch 26" in d.reason


def test_reference_preset_waits_for_its_first_eligible_epoch():
    # lambda = 1 at epochs 0..8, 3 from epoch 10 on
    #   e = 16: LA(16) = (1+3+3+3+3)/5 = 2.6, LA(8)  = 1         -> 2.6 > 1.3 but chosen epoch 4 < 10
    #   e = 18: LA(18) = 3,                   LA(10) = 7/5 = 1.4 -> 2.14 > 1.3 but chosen epoch 6 < 10
    #   e = 20: LA(20) = 3,                   LA(12) = 9/5 = 1.8 -> 1.67 > 1.3 but chosen epoch 8 < 10
    #   e = 22: LA(22) = 3,                   LA(14) = 11/5 = 2.2 -> 1.36 > 1.3, chosen epoch 10: stop
    series = {e: (1.0 if e <= 8 else 3.0) for e in range(0, 40, 2)}
    config = EarlyStopConfig.preset("reference")
    assert config.earliest_stop_epoch == 22
    stopper = EarlyStopper(config)
    decisions = _run(stopper, series, range(40))
    for epoch, previous in ((16, 1.0), (18, 1.4), (20, 1.8)):
        assert stopper.smoothed(epoch - 8) == pytest.approx(previous)
        assert stopper.smoothed(epoch - 8) / stopper.smoothed(epoch) < config.threshold  # the ratio held
    assert [(d.stop_epoch, d.chosen_epoch) for d in decisions] == [(22, 10)]
    assert decisions[0].ratio == pytest.approx(2.2 / 3)


@pytest.mark.parametrize("preset", ["paper", "reference"])
def test_flat_noisy_or_slowly_rising_series_never_stop(preset):
    epochs = range(100)
    # alternating 1.0 / 1.5: any window of 5 evaluations averages 1.2 or 1.3, so the ratio of two
    # smoothed values is >= 1.2/1.3 = 0.92, above both thresholds (0.75 and 0.769)
    noisy = {e: 1.0 + 0.5 * (e % 4 == 2 if preset == "reference" else e % 2) for e in epochs}
    # rising 2 % per evaluation: ratio 1.02^-5 = 0.906 (paper) or 1.02^-4 = 0.924 (reference)
    interval = EarlyStopConfig.preset(preset).eval_interval
    rising = {e: 1.02 ** (e / interval) for e in epochs}
    falling = {e: 5.0 * 0.9 ** (e / interval) for e in epochs}
    for series in (noisy, rising, falling):
        stopper = EarlyStopper(EarlyStopConfig.preset(preset))
        assert _run(stopper, series, epochs) == []
        assert stopper.smoothed(98) is not None  # the rule was really evaluated


def test_evaluation_interval():
    reference = EarlyStopper(EarlyStopConfig.preset("reference"))
    assert [e for e in range(10) if reference.should_evaluate(e)] == [0, 2, 4, 6, 8]
    paper = EarlyStopper(EarlyStopConfig.preset("paper"))
    assert all(paper.should_evaluate(e) for e in range(10))
    with pytest.raises(ValueError, match="not an evaluation epoch"):
        reference.update(1, 0.5, _genotype(1))
    reference.update(0, 0.5, _genotype(0))
    with pytest.raises(ValueError, match="increase"):
        reference.update(0, 0.5, _genotype(0))
    with pytest.raises(ValueError, match="multiple of eval_interval"):
        EarlyStopConfig.preset("reference", lookback=5)


def test_a_missing_evaluation_postpones_the_decision():
    # the paper series with epoch 7 not measured: every window that contains 7 is incomplete,
    # so epoch 10 (window 6..10), which fired before, cannot decide
    series = dict(PAPER_SERIES)
    stopper = EarlyStopper(EarlyStopConfig.preset("paper"))
    for epoch in range(11):
        assert stopper.update(epoch, None if epoch == 7 else series[epoch], _genotype(epoch)) is None
    assert stopper.smoothed(10) is None


@pytest.mark.parametrize("preset, series, stop_at", [("paper", PAPER_SERIES, 10), ("reference", REFERENCE_SERIES, 26)])
def test_state_dict_round_trip_mid_series(preset, series, stop_at):
    straight = _run(EarlyStopper(EarlyStopConfig.preset(preset)), series, range(stop_at + 1))

    first = EarlyStopper(EarlyStopConfig.preset(preset))
    assert _run(first, series, range(stop_at - 3)) == []
    state = json.loads(json.dumps(first.state_dict()))  # plain JSON
    resumed = EarlyStopper(EarlyStopConfig.preset(preset))
    resumed.load_state_dict(state)
    assert resumed.state_dict() == first.state_dict()
    assert _run(resumed, series, range(stop_at - 3, stop_at + 1)) == straight
    assert len(straight) == 1 and straight[0].stop_epoch == stop_at

    other = EarlyStopper(EarlyStopConfig.preset(preset, threshold=0.5))
    with pytest.raises(ValueError, match="threshold"):
        other.load_state_dict(state)


def test_stop_and_simulate_decide_only_once():
    for mode in ("stop", "simulate"):
        stopper = EarlyStopper(EarlyStopConfig.preset("paper", mode=mode))
        decisions = [stopper.update(e, PAPER_SERIES[e], _genotype(e)) for e in range(11)]
        decisions += [stopper.update(e, 100.0, _genotype(e)) for e in range(11, 20)]  # would fire again
        fired = [d for d in decisions if d is not None]
        assert [(d.stop_epoch, d.chosen_epoch, d.mode) for d in fired] == [(10, 5, mode)]
        assert fired[0].ends_search is (mode == "stop")


def test_ada_weight_decay_is_multiplied_and_capped():
    default = EarlyStopConfig.preset("reference", mode="ada")
    assert (default.ada_factor, default.ada_max_weight_decay) == (3.0, 2.43e-2)
    chain = [3e-4]
    for _ in range(5):
        chain.append(next_weight_decay(chain[-1], default))
    # 3e-4 * 3 = 9e-4 -> 2.7e-3 -> 8.1e-3 -> 2.43e-2 (= the cap) -> stays at 2.43e-2
    assert chain == pytest.approx([3e-4, 9e-4, 2.7e-3, 8.1e-3, 2.43e-2, 2.43e-2])
    assert next_weight_decay(1e-2, default) == pytest.approx(2.43e-2)  # 3e-2 capped
    script = EarlyStopConfig.preset("reference", mode="ada", ada_factor=10, ada_max_weight_decay=0.03)
    assert next_weight_decay(3e-4, script) == pytest.approx(3e-3)
    assert next_weight_decay(3e-3, script) == pytest.approx(0.03)  # 10 * 3e-3 = 0.03, exactly the cap
    assert next_weight_decay(0.05, script) == 0.05  # never lowered


def test_ada_rolls_back_raises_weight_decay_and_stops_adapting_at_the_cap():
    config = EarlyStopConfig.preset("reference", mode="ada", ada_factor=10, ada_max_weight_decay=0.03)
    with pytest.raises(ValueError, match="weight_decay"):
        EarlyStopper(config)
    stopper = EarlyStopper(config, weight_decay=3e-4)
    first = _run(stopper, REFERENCE_SERIES, range(30))
    assert len(first) == 1
    d = first[0]
    assert (d.stop_epoch, d.chosen_epoch, d.resume_epoch, d.genotype) == (26, 14, 14, _genotype(14))
    assert d.weight_decay == pytest.approx(3e-3) and not d.ends_search
    assert "rolling back to epoch 14" in d.reason and "from 0.0003 to 0.003" in d.reason
    # the stopper rolled itself back: it continues with epoch 15 and the new weight decay
    assert stopper.last_epoch == 14 and max(stopper.eigenvalues) == 14
    assert stopper.weight_decay == pytest.approx(3e-3)
    # the same curvature rise after the roll-back fires again: 3e-3 -> 0.03 (the cap)
    second = _run(stopper, REFERENCE_SERIES, range(15, 30))
    assert [(d.stop_epoch, d.resume_epoch) for d in second] == [(26, 14)]
    assert second[0].weight_decay == pytest.approx(0.03)
    # at the cap the rule no longer fires and the search runs to its end
    assert _run(stopper, REFERENCE_SERIES, range(15, 50)) == []
    assert len(stopper.decisions) == 2

    extra = EarlyStopper(EarlyStopConfig.preset("reference", mode="ada", extra_rollback=2), weight_decay=3e-4)
    (d,) = _run(extra, REFERENCE_SERIES, range(30))
    assert (d.chosen_epoch, d.resume_epoch) == (14, 12) and extra.last_epoch == 12


def test_non_positive_current_value_never_stops():
    # a rise from -1 to 0 or to negative values is not sharpening: only current > 0 is tested
    stopper = EarlyStopper(EarlyStopConfig.preset("paper"))
    series = {e: (-1.0 if e < 5 else -0.1) for e in range(20)}
    assert _run(stopper, series, range(20)) == []
    assert math.isclose(stopper.smoothed(19), -0.1)
