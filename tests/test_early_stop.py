"""The RobustDARTS stopping rule of both presets against eigenvalue series worked out by hand."""
from __future__ import annotations

import json
import math

import pytest

from nasplat.searching.early_stop import (
    DEFAULT_PRESET,
    EarlyStopConfig,
    EarlyStopper,
    StopDecision,
    next_weight_decay,
)


def _genotype(epoch: int) -> dict:
    return {"space": "toy", "epoch": epoch}


def _run(stopper: EarlyStopper, series: dict[int, float], epochs: range, last: int | None = None) -> list[StopDecision]:
    """Feed one epoch at a time; eigenvalues only on evaluation epochs, as the search loop does.
    ``last`` is the search's final epoch (None: the search goes on past ``epochs``)."""
    decisions = []
    for epoch in epochs:
        value = series[epoch] if stopper.should_evaluate(epoch) else None
        decision = stopper.update(epoch, value, _genotype(epoch), final=epoch == last)
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


def test_reference_preset_follows_the_authors_code_on_weight_decay_and_the_last_epoch():
    # src/search/analyze.py: H is the Hessian of the loss plus arch_weight_decay * |alpha|^2 / 2;
    # src/search/train_search.py: the rule runs only `if args.early_stop and epoch != (args.epochs - 1)`
    reference = EarlyStopConfig.preset("reference")
    assert (reference.hessian_weight_decay, reference.decide_on_final_epoch) == (True, False)
    paper = EarlyStopConfig.preset("paper")  # the paper says neither
    assert (paper.hessian_weight_decay, paper.decide_on_final_epoch) == (False, True)


@pytest.mark.parametrize("mode", ["stop", "simulate", "ada"])
def test_reference_preset_takes_no_decision_on_the_final_epoch(mode):
    # REFERENCE_SERIES fires at epoch 26 (see above); a search of 27 epochs ends there
    stopper = EarlyStopper(EarlyStopConfig.preset("reference", mode=mode), weight_decay=3e-4)
    assert _run(stopper, REFERENCE_SERIES, range(27), last=26) == []
    assert stopper.eigenvalues[26] == 2.0 and stopper.smoothed(26) == pytest.approx(1.4)  # still recorded
    assert stopper.decisions == [] and stopper.weight_decay == 3e-4
    # one epoch longer, the same rise is decided on at epoch 26
    longer = EarlyStopper(EarlyStopConfig.preset("reference", mode=mode), weight_decay=3e-4)
    assert [d.stop_epoch for d in _run(longer, REFERENCE_SERIES, range(28), last=27)] == [26]
    # the paper preset decides on the final epoch too; so does reference with the option turned on
    paper = EarlyStopper(EarlyStopConfig.preset("paper", mode=mode), weight_decay=3e-4)
    assert [d.stop_epoch for d in _run(paper, PAPER_SERIES, range(11), last=10)] == [10]
    allowed = EarlyStopper(EarlyStopConfig.preset("reference", mode=mode, decide_on_final_epoch=True), weight_decay=3e-4)
    assert [d.stop_epoch for d in _run(allowed, REFERENCE_SERIES, range(27), last=26)] == [26]


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
