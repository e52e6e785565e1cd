"""RobustDARTS (Zela et al., ICLR 2020, arXiv:1909.09656): the early-stopping rule and remedies.

:class:`EarlyStopper` applies the rule configured by :class:`EarlyStopConfig` to the series of
dominant Hessian eigenvalues (:func:`nasplat.searching.hessian.dominant_hessian_eigenvalue`), with
the ``"paper"`` (DARTS-ES as written in the paper) and ``"reference"`` (the authors' released code,
automl/RobustDARTS ``src/utils.py`` ``EVLocalAvg``, ``src/search/args.py``,
``src/search/train_search.py`` and ``src/search/analyze.py``) presets, and the DARTS-ES / DARTS-ADA
remedies.

How a search loop uses it, once per epoch, after ``train_epoch()`` and ``evaluate()``::

    stopper = EarlyStopper(EarlyStopConfig.preset("paper"), weight_decay=config.w_weight_decay)
    ...
    epoch = search.epoch - 1                      # 0-based index of the epoch just trained
    eigenvalue = None
    if stopper.should_evaluate(epoch):
        search.model.train()                      # the authors compute it in train mode
        wd = config.arch_weight_decay if stopper.config.hessian_weight_decay else 0.0
        eigenvalue = dominant_hessian_eigenvalue(
            search.model, search.loss_fn, hessian_batches, arch_weight_decay=wd)   # fixed split-B batches
    decision = stopper.update(epoch, eigenvalue, search.genotype().to_dict(), final=epoch == epochs - 1)
    # log eigenvalue and stopper.smoothed(epoch); save the checkpoint with stopper.state_dict()
    if decision is not None:
        log(decision.reason)
        if decision.mode == "stop": final genotype = decision.genotype; end the search
        if decision.mode == "ada":  restore the checkpoint saved at the end of epoch
            decision.resume_epoch (model, both optimisers, scheduler, RNG -- NOT the stopper,
            which has already rolled itself back), THEN set every param group's weight_decay of
            the weight optimiser to decision.weight_decay (the restored optimiser state carries
            the old one), and continue with epoch resume_epoch + 1
        if decision.mode == "simulate": record decision.genotype and carry on

For DARTS-ADA the loop keeps the end-of-epoch checkpoints of the last
``config.decision_delay + config.extra_rollback`` epochs (5 for "paper", 12 for "reference").

``hessian_batches`` are batches of the split that drives the architecture step (split B, the
"validation" loss of the bi-level problem), on the model's device. The authors use one batch (the
last architecture batch of the epoch), which is noisy (automl/RobustDARTS#4); a fixed list of a few
split-B batches, the same at every evaluation, gives a smoother series.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar

DEFAULT_PRESET = "paper"
MODES = ("stop", "ada", "simulate")
_CAP_RTOL = 1e-9


@dataclasses.dataclass(frozen=True)
class EarlyStopConfig:
    """When to compute the eigenvalue, how to smooth it, when to stop and what to do then.

    Epochs are the 0-based indices of the epochs just trained (the authors' convention).

    Fields:
        eval_interval: the eigenvalue is computed on epochs with ``epoch % eval_interval == 0``.
        window: number of consecutive evaluations averaged into one smoothed value; the smoothed
            value computed at epoch ``e`` is the mean of the eigenvalues of epochs
            ``e, e - eval_interval, ..., e - (window - 1) * eval_interval`` (all must be present).
        centred: attribute the smoothed value computed at ``e`` to the centre of its window,
            ``e - eval_interval * (window // 2)`` (the authors' code), instead of to ``e`` itself
            (the paper). The chosen epoch is the epoch the earlier smoothed value is attributed to.
        lookback: epochs between the two compared smoothed values (a multiple of
            ``eval_interval``): the one computed now and the one computed ``lookback`` epochs ago.
        threshold: stop when ``previous / current < threshold`` (the smoothed eigenvalue rose by
            more than a factor ``1 / threshold``); only tested when ``current > 0``.
        min_chosen_epoch: no decision whose chosen epoch is earlier than this.
        mode: ``"stop"`` (DARTS-ES: end the search and return the chosen architecture),
            ``"ada"`` (DARTS-ADA: roll back to the chosen epoch and continue with a larger network
            weight decay) or ``"simulate"`` (report the first decision once and carry on).
        ada_factor: DARTS-ADA multiplies the network weight decay by this (authors: 3).
        ada_max_weight_decay: DARTS-ADA never goes above this weight decay and stops adapting
            once it is reached; the search then runs to its end (authors: 2.43e-2).
        extra_rollback: DARTS-ADA resumes from ``chosen_epoch - extra_rollback`` (the authors'
            ``extra_rollback_epochs``, default 0).
        hessian_weight_decay: compute the eigenvalue of ``H + arch_weight_decay * I`` instead of
            ``H``. The authors' ``analyze.py`` adds the architecture weight-decay term to the
            gradient before differentiating again, so their Hessian carries ``+1e-3 I``.
        decide_on_final_epoch: allow a decision on the search's last epoch. The authors' search
            loop calls the rule only when ``epoch != epochs - 1``; a stop there would change
            nothing anyway, but an ADA roll-back or a simulated stop would.
    """

    eval_interval: int = 1
    window: int = 5
    centred: bool = False
    lookback: int = 5
    threshold: float = 0.75
    min_chosen_epoch: int = 0
    mode: str = "stop"
    ada_factor: float = 3.0
    ada_max_weight_decay: float = 2.43e-2
    extra_rollback: int = 0
    hessian_weight_decay: bool = False
    decide_on_final_epoch: bool = True

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        # Zela et al. 2020, DARTS-ES: lambda_bar(i) = mean of lambda over epochs i-4..i (k = 5);
        # stop at epoch i when lambda_bar(i-5) / lambda_bar(i) < 0.75; return the architecture of i-5.
        # Only full windows count, so the first possible decision is at epoch 9 (windows 0..4, 5..9).
        "paper": {
            "eval_interval": 1, "window": 5, "centred": False, "lookback": 5, "threshold": 0.75, "min_chosen_epoch": 0,
        },
        # automl/RobustDARTS EVLocalAvg: eigenvalue every 2 epochs; LA = mean of the last 5
        # evaluations (epochs e-8..e) centred at e-4; stop when LA(e) / LA(e-8) > 1.3 (delta = 4
        # evaluations); only if the chosen epoch e-12 >= es_start_epoch = 10, i.e. e >= 22.
        # Readings and differences: "the last 5 evaluations (10 epochs)" is read as the 5
        # evaluations at e-8..e (each stands for 2 epochs); "LA(now) / LA(8 epochs before) > 1.3"
        # is tested as LA(e-8) / LA(e) < 1 / 1.3, identical while LA(e) > 0. The code also averages
        # the first 3 and 4 evaluations into early LAs and evaluates the last epoch off-schedule;
        # neither can take part in a decision under this preset (windows are full from e = 16 on,
        # decisions start at e = 22, and the code never decides on the last epoch), so both are
        # left out. The code's eigenvalue is the largest algebraic one (max of eigvals): compute it
        # with dominant_hessian_eigenvalue(..., which="largest") to match; the default, the signed
        # one of largest magnitude, is the same whenever the dominant curvature is positive.
        # analyze.py differentiates grad + arch_weight_decay * alpha, so H carries +wd I; and
        # train_search.py decides only when epoch != epochs - 1.
        "reference": {
            "eval_interval": 2, "window": 5, "centred": True, "lookback": 8, "threshold": 1 / 1.3, "min_chosen_epoch": 10,
            "hessian_weight_decay": True, "decide_on_final_epoch": False,
        },
    }

    def __post_init__(self) -> None:
        for name in ("eval_interval", "window", "lookback"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"EarlyStopConfig.{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.lookback % self.eval_interval:
            raise ValueError(f"lookback ({self.lookback}) must be a multiple of eval_interval ({self.eval_interval})")
        if not self.threshold > 0:
            raise ValueError(f"threshold must be > 0, got {self.threshold!r}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if not self.ada_factor >= 1 or not self.ada_max_weight_decay >= 0:
            raise ValueError("ada_factor must be >= 1 and ada_max_weight_decay >= 0")
        if not isinstance(self.extra_rollback, int) or self.extra_rollback < 0:
            raise ValueError(f"extra_rollback must be a non-negative integer, got {self.extra_rollback!r}")
        for name in ("centred", "hessian_weight_decay", "decide_on_final_epoch"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"EarlyStopConfig.{name} must be true or false, got {getattr(self, name)!r}")

    @classmethod
    def preset(cls, name: str = DEFAULT_PRESET, **overrides: Any) -> EarlyStopConfig:
        """A named preset (``"paper"``, the default, or ``"reference"``) with any fields overridden."""
        if name not in cls.PRESETS:
            raise ValueError(f"unknown early-stop preset {name!r}; choose from {sorted(cls.PRESETS)}")
        return cls(**{**cls.PRESETS[name], **overrides})

    @property
    def centre_offset(self) -> int:
        """Epochs from the epoch a smoothed value is computed at back to the epoch it is attributed to."""
        return self.eval_interval * (self.window // 2) if self.centred else 0

    @property
    def decision_delay(self) -> int:
        """stop epoch - chosen epoch (paper 5, reference 12)."""
        return self.lookback + self.centre_offset

    @property
    def earliest_stop_epoch(self) -> int:
        """First epoch at which a decision is possible, if evaluations start at epoch 0."""
        full_windows = self.lookback + (self.window - 1) * self.eval_interval
        by_min_chosen = self.min_chosen_epoch + self.decision_delay
        first = max(full_windows, by_min_chosen)
        return -(-first // self.eval_interval) * self.eval_interval  # round up to an evaluated epoch

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EarlyStopConfig:
        return cls(**data)


def next_weight_decay(current: float, config: EarlyStopConfig) -> float:
    """DARTS-ADA: ``current * ada_factor``, capped at ``ada_max_weight_decay``; never lowers it."""
    return max(current, min(current * config.ada_factor, config.ada_max_weight_decay))


def weight_decay_at_cap(current: float, config: EarlyStopConfig) -> bool:
    """True once DARTS-ADA may not raise the weight decay any further."""
    return current >= config.ada_max_weight_decay * (1 - _CAP_RTOL)


@dataclasses.dataclass(frozen=True)
class StopDecision:
    """What :meth:`EarlyStopper.update` decided, with the numbers behind it.

    ``genotype`` is the one recorded at ``chosen_epoch``. For ``mode == "ada"``, ``weight_decay``
    is the new network weight decay and ``resume_epoch`` the epoch whose end-of-epoch checkpoint the
    caller restores before continuing with epoch ``resume_epoch + 1``; both are None otherwise.
    """

    stop_epoch: int
    chosen_epoch: int
    genotype: Any
    reason: str
    mode: str
    current: float
    previous: float
    ratio: float
    weight_decay: float | None = None
    resume_epoch: int | None = None

    @property
    def ends_search(self) -> bool:
        return self.mode == "stop"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class EarlyStopper:
    """Tracks the eigenvalue series of one search and applies the stopping rule.

    Call :meth:`update` once per epoch, in increasing epoch order, with the eigenvalue (None on
    epochs that :meth:`should_evaluate` rejects or that were not measured), the genotype as a
    JSON-able dict and whether the epoch is the search's last. Its state (:meth:`state_dict`) is
    plain JSON data.

    ``weight_decay`` is the network weight decay the search starts with; DARTS-ADA needs it.
    ``display_offset`` is added to epoch numbers in the ``reason`` text only (1 for a search that
    numbers its epochs from 1); decisions keep the 0-based indices.
    """

    def __init__(
        self, config: EarlyStopConfig | None = None, weight_decay: float | None = None, display_offset: int = 0
    ) -> None:
        self.config = config or EarlyStopConfig.preset(DEFAULT_PRESET)
        self.display_offset = display_offset
        if self.config.mode == "ada" and weight_decay is None:
            raise ValueError("mode 'ada' needs the network's initial weight_decay")
        self.weight_decay = weight_decay
        self.eigenvalues: dict[int, float] = {}
        self.genotypes: dict[int, Any] = {}
        self.last_epoch: int | None = None
        self.finished = False  # a "stop" or "simulate" decision was made; no more decisions
        self.decisions: list[dict[str, Any]] = []

    def should_evaluate(self, epoch: int) -> bool:
        """Whether the eigenvalue is computed after this (0-based) epoch."""
        return epoch % self.config.eval_interval == 0

    def smoothed(self, epoch: int) -> float | None:
        """The smoothed eigenvalue computed at ``epoch``; None unless its whole window was evaluated."""
        step = self.config.eval_interval
        window = [self.eigenvalues.get(epoch - j * step) for j in range(self.config.window)]
        if any(v is None for v in window):
            return None
        return sum(window) / len(window)

    def update(
        self, epoch: int, eigenvalue: float | None, genotype_dict: Any, final: bool = False
    ) -> StopDecision | None:
        """Record this epoch; return a decision when the rule fires on it, else None.

        ``final`` marks the search's last epoch: it is recorded, but without
        ``decide_on_final_epoch`` no decision is taken on it.
        """
        if self.last_epoch is not None and epoch <= self.last_epoch:
            raise ValueError(f"epochs must increase: got {epoch} after {self.last_epoch}")
        if eigenvalue is not None and not self.should_evaluate(epoch):
            raise ValueError(
                f"epoch {epoch} is not an evaluation epoch (eval_interval={self.config.eval_interval})"
            )
        self.last_epoch = epoch
        self.genotypes[epoch] = genotype_dict
        if eigenvalue is None:
            return None
        self.eigenvalues[epoch] = float(eigenvalue)
        if self.finished or (final and not self.config.decide_on_final_epoch):
            return None
        decision = self._decide(epoch)
        if decision is not None:
            self._apply(decision)
        return decision

    def _decide(self, epoch: int) -> StopDecision | None:
        cfg = self.config
        chosen = epoch - cfg.decision_delay
        current, previous = self.smoothed(epoch), self.smoothed(epoch - cfg.lookback)
        if chosen < cfg.min_chosen_epoch or current is None or previous is None or not current > 0:
            return None
        ratio = previous / current
        if not ratio < cfg.threshold:
            return None
        if cfg.mode == "ada" and weight_decay_at_cap(self.weight_decay, cfg):
            return None  # as the authors: at the maximum weight decay the search runs to its end
        if chosen not in self.genotypes:
            raise KeyError(f"no genotype recorded for epoch {chosen}, the epoch the rule chose")
        weight_decay = next_weight_decay(self.weight_decay, cfg) if cfg.mode == "ada" else None
        resume = chosen - cfg.extra_rollback if cfg.mode == "ada" else None
        reason = self._reason(epoch, chosen, current, previous, ratio, weight_decay, resume)
        return StopDecision(
            stop_epoch=epoch, chosen_epoch=chosen, genotype=self.genotypes[chosen], reason=reason, mode=cfg.mode,
            current=current, previous=previous, ratio=ratio, weight_decay=weight_decay, resume_epoch=resume,
        )

    def _label(self, computed_at: int) -> str:
        shown = computed_at + self.display_offset
        if not self.config.centred:
            return f"epoch {shown}"
        return f"centred at epoch {shown - self.config.centre_offset}, computed at epoch {shown}"

    def _reason(
        self, epoch: int, chosen: int, current: float, previous: float, ratio: float,
        weight_decay: float | None, resume: int | None,
    ) -> str:
        cfg = self.config
        epoch, chosen = epoch + self.display_offset, chosen + self.display_offset
        resume = None if resume is None else resume + self.display_offset
        head = (
            f"smoothed eigenvalue rose from {previous:.4g} ({self._label(epoch - self.display_offset - cfg.lookback)}) "
            f"to {current:.4g} ({self._label(epoch - self.display_offset)}): ratio {ratio:.4g} < {cfg.threshold:.4g}"
        )
        if cfg.mode == "ada":
            return (
                f"{head}; rolling back to epoch {resume} (architecture of epoch {chosen}) and raising the network "
                f"weight decay from {self.weight_decay:g} to {weight_decay:g}"
            )
        if cfg.mode == "simulate":
            return f"{head}; would stop at epoch {epoch} and return the architecture of epoch {chosen} (simulated)"
        return f"{head}; stopping at epoch {epoch} and returning the architecture of epoch {chosen}"

    def _apply(self, decision: StopDecision) -> None:
        self.decisions.append(decision.to_dict())
        if decision.mode != "ada":
            self.finished = True
            return
        # DARTS-ADA: forget everything after the epoch the caller resumes from, as the authors'
        # code does by reloading the tracker from that epoch's checkpoint.
        self.rollback_to(decision.resume_epoch)
        self.weight_decay = decision.weight_decay

    def rollback_to(self, epoch: int) -> None:
        """Drop every record after ``epoch``; the next :meth:`update` is for ``epoch + 1`` or later."""
        self.eigenvalues = {e: v for e, v in self.eigenvalues.items() if e <= epoch}
        self.genotypes = {e: g for e, g in self.genotypes.items() if e <= epoch}
        self.last_epoch = epoch

    def state_dict(self) -> dict[str, Any]:
        """Plain JSON data (epoch keys become [epoch, value] pairs)."""
        return {
            "config": self.config.to_dict(),
            "weight_decay": self.weight_decay,
            "eigenvalues": [[e, v] for e, v in sorted(self.eigenvalues.items())],
            "genotypes": [[e, g] for e, g in sorted(self.genotypes.items())],
            "last_epoch": self.last_epoch,
            "finished": self.finished,
            "decisions": list(self.decisions),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a :meth:`state_dict`; the saved config must equal this stopper's config."""
        saved = EarlyStopConfig.from_dict(state["config"])
        if saved != self.config:
            diff = {k: (v, getattr(self.config, k)) for k, v in saved.to_dict().items() if getattr(self.config, k) != v}
            raise ValueError(f"early-stop config differs from the saved one (saved, current): {diff}")
        self.weight_decay = state["weight_decay"]
        self.eigenvalues = {int(e): float(v) for e, v in state["eigenvalues"]}
        self.genotypes = {int(e): g for e, g in state["genotypes"]}
        self.last_epoch = state["last_epoch"]
        self.finished = bool(state["finished"])
        self.decisions = list(state["decisions"])
