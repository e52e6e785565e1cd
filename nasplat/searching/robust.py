"""RobustDARTS (Zela et al., ICLR 2020, arXiv:1909.09656): curvature-based early stopping.

Two parts, both plain PyTorch:

* :func:`dominant_hessian_eigenvalue` -- the dominant eigenvalue of the Hessian of the
  validation loss with respect to all architecture parameters, at the current weights, by power
  iteration on Hessian-vector products (double backpropagation; no dense Hessian is formed).
* :class:`EarlyStopper` -- the stopping rule, configured by :class:`EarlyStopConfig`, with the
  ``"paper"`` (DARTS-ES as written in the paper) and ``"reference"`` (the authors' released code,
  automl/RobustDARTS ``src/utils.py`` ``EVLocalAvg`` and ``src/search/args.py``) presets, and the
  DARTS-ES / DARTS-ADA remedies.

How a search loop uses it, once per epoch, after ``train_epoch()`` and ``evaluate()``::

    stopper = EarlyStopper(EarlyStopConfig.preset("paper"), weight_decay=config.w_weight_decay)
    ...
    epoch = search.epoch - 1                      # 0-based index of the epoch just trained
    eigenvalue = None
    if stopper.should_evaluate(epoch):
        search.model.train()                      # the authors compute it in train mode
        eigenvalue = dominant_hessian_eigenvalue(
            search.model, search.loss_fn, hessian_batches,   # fixed split-B batches, see below
            arch_weight_decay=config.arch_weight_decay)
    decision = stopper.update(epoch, eigenvalue, search.genotype().to_dict())
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
split-B batches, the same at every evaluation, gives a smoother series. Every worker passes its own
shard; the Hessian-vector products are averaged across workers, so all workers get the same value.
"""
from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from nasplat.training.collectives import average_

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Batch = tuple[torch.Tensor, torch.Tensor]

DEFAULT_PRESET = "paper"
MODES = ("stop", "ada", "simulate")
_CAP_RTOL = 1e-9

log = logging.getLogger(__name__)


# --- the dominant eigenvalue ---------------------------------------------------------------


def dominant_hessian_eigenvalue(
    model: nn.Module,
    loss_fn: LossFn,
    batches: Iterable[Batch],
    iterations: int = 20,
    tol: float = 1e-4,
    arch_weight_decay: float = 0.0,
    seed: int = 0,
    which: Literal["magnitude", "largest"] = "magnitude",
) -> float:
    """Signed eigenvalue of largest magnitude of ``H + arch_weight_decay * I``.

    ``H`` is the Hessian of the mean over ``batches`` (and over workers) of
    ``loss_fn(model(inputs), targets)`` with respect to every tensor of
    ``model.arch_parameters()`` taken together, at the current weights (no unrolling). Power
    iteration from a seeded random unit vector; each step is one Hessian-vector product by double
    backpropagation, averaged across workers with :func:`~nasplat.training.collectives.average_`. Stops
    when the Rayleigh quotient changes by less than ``tol`` (relative) or after ``iterations``.

    ``which="largest"`` returns the largest *algebraic* eigenvalue instead, as the authors' code
    (``max(eigvals(H))``): when the dominant one is negative, a second power iteration on
    ``H - lambda I`` finds it (up to twice the cost).

    The model's train/eval mode is left as the caller set it (the authors use train mode); its
    buffers (BatchNorm running statistics) and the ``.grad`` of its parameters are unchanged.
    Cost: with one batch, one forward and backward, then one double backward per iteration (the
    gradient graph is kept); with several, a forward, backward and double backward per batch per
    iteration (the memory of one batch).
    """
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    if which not in ("magnitude", "largest"):
        raise ValueError(f"which must be 'magnitude' or 'largest', got {which!r}")
    arch = list(model.arch_parameters().values())
    if not arch:
        raise ValueError("the model has no architecture parameters")
    batches = list(batches)
    if not batches:
        raise ValueError("dominant_hessian_eigenvalue needs at least one batch")
    buffers = {name: b.detach().clone() for name, b in model.named_buffers()}
    try:
        with torch.enable_grad():
            hvp = _HessianVectorProduct(model, arch, loss_fn, batches, arch_weight_decay)
            value, used, converged = _power_iteration(hvp, _start_vector(arch, seed), iterations, tol)
            if which == "largest" and value < 0:
                # the spectrum of H - value I is >= 0 and its dominant eigenvalue is lambda_max - value
                def shifted(v: list[torch.Tensor]) -> list[torch.Tensor]:
                    return [h - value * x for h, x in zip(hvp(v), v)]

                gap, used, converged = _power_iteration(shifted, _start_vector(arch, seed), iterations, tol)
                value = gap + value
    finally:
        _restore_buffers(model, buffers)
    if not converged:
        log.info("Hessian eigenvalue %.6g did not converge to tol %g in %d iterations", value, tol, used)
    return value


class _HessianVectorProduct:
    """v -> (H + wd I) v, H the Hessian of the batch-mean loss w.r.t. ``arch``, averaged across workers."""

    def __init__(
        self, model: nn.Module, arch: list[torch.Tensor], loss_fn: LossFn, batches: list[Batch], weight_decay: float
    ) -> None:
        self.model, self.arch, self.loss_fn, self.batches = model, arch, loss_fn, batches
        self.weight_decay = weight_decay
        # with a single batch the gradient graph is built once and reused by every product
        self._cached = self._gradient_graph(batches[0]) if len(batches) == 1 else None

    def _gradient_graph(self, batch: Batch) -> tuple[list[torch.Tensor], list[int]]:
        """(the gradients that depend on alpha, their indices in ``arch``), with create_graph."""
        inputs, targets = batch
        loss = self.loss_fn(self.model(inputs), targets)
        grads = torch.autograd.grad(loss, self.arch, create_graph=True, allow_unused=True)
        pairs = [(i, g) for i, g in enumerate(grads) if g is not None and g.requires_grad]
        return [g for _, g in pairs], [i for i, _ in pairs]

    def _product(
        self, graph: tuple[list[torch.Tensor], list[int]], vector: list[torch.Tensor], keep: bool
    ) -> list[torch.Tensor]:
        grads, index = graph
        out = [torch.zeros_like(a) for a in self.arch]
        if not grads:  # the loss is at most linear in alpha
            return out
        # grad of (grad_alpha L . v) w.r.t. alpha == H v (H is symmetric)
        products = torch.autograd.grad(
            grads, self.arch, grad_outputs=[vector[i] for i in index], retain_graph=keep, allow_unused=True
        )
        return [o if p is None else p.detach() for o, p in zip(out, products)]

    def __call__(self, vector: list[torch.Tensor]) -> list[torch.Tensor]:
        if self._cached is not None:
            total = self._product(self._cached, vector, keep=True)
        else:
            total = [torch.zeros_like(a) for a in self.arch]
            for batch in self.batches:
                part = self._product(self._gradient_graph(batch), vector, keep=False)
                total = [t + p for t, p in zip(total, part)]
            total = [t / len(self.batches) for t in total]
        average_(total)
        return [t + self.weight_decay * v for t, v in zip(total, vector)]


def _start_vector(arch: Sequence[torch.Tensor], seed: int) -> list[torch.Tensor]:
    """A unit vector drawn from a seeded CPU generator: the same on every worker and device."""
    generator = torch.Generator().manual_seed(seed)
    flat = torch.randn(sum(a.numel() for a in arch), generator=generator, dtype=torch.float64)
    flat /= flat.norm()
    pieces = flat.split([a.numel() for a in arch])
    return [p.view_as(a).to(device=a.device, dtype=a.dtype) for p, a in zip(pieces, arch)]


def _dot(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> float:
    return float(sum((x.double() * y.double()).sum() for x, y in zip(a, b)))


def _power_iteration(
    product: Callable[[list[torch.Tensor]], list[torch.Tensor]], vector: list[torch.Tensor], iterations: int, tol: float
) -> tuple[float, int, bool]:
    """(Rayleigh quotient, iterations used, converged). ``vector`` must have unit norm.

    Every worker holds the same vector and the same (all-reduced) products, so every worker takes
    the same number of iterations and the collectives inside ``product`` stay matched.
    """
    previous = math.nan
    for step in range(1, iterations + 1):
        hv = product(vector)
        value = _dot(vector, hv)
        norm = math.sqrt(_dot(hv, hv))
        if norm == 0.0:  # H v = 0: v is in the null space and the whole operator may be zero
            return value, step, True
        if abs(value - previous) <= tol * abs(value):
            return value, step, True
        previous = value
        vector = [h / norm for h in hv]
    return value, iterations, False


def _restore_buffers(model: nn.Module, saved: Mapping[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for name, buffer in model.named_buffers():
            if name in saved:
                buffer.copy_(saved[name])


# --- the stopping rule ---------------------------------------------------------------------


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
        "reference": {
            "eval_interval": 2, "window": 5, "centred": True, "lookback": 8, "threshold": 1 / 1.3, "min_chosen_epoch": 10,
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
    epochs that :meth:`should_evaluate` rejects or that were not measured) and the genotype as a
    JSON-able dict. Its state (:meth:`state_dict`) is plain JSON data.

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

    def update(self, epoch: int, eigenvalue: float | None, genotype_dict: Any) -> StopDecision | None:
        """Record this epoch; return a decision when the rule fires on it, else None."""
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
        if self.finished:
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
