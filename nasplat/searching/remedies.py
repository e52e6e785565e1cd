"""Remedies for the collapse of differentiable search, for any search space.

They act on the architecture tensors (each tensor's last dimension = one choice, as ``softmax(alpha, -1)``) or on
the public building blocks a supernet is made of, never on a space's internals, in three places:

- **the weight step** of the bi-level step (:class:`nasplat.BilevelOptimizer`): ``sdarts`` (SDARTS-RS, Chen &
  Hsieh 2020, arXiv 2002.05283, Algorithm 1: the weights descend ``L_train(w, A + delta)`` with
  ``delta ~ U[-eps, eps]`` drawn anew at every step) adds that noise to the architecture while the weights'
  gradient is taken, then restores it exactly, so the weights are trained for a neighbourhood of the
  architecture and the arch step never sees the noise. ``eps`` rises linearly with the epoch
  (0-based), ``eps_min + (eps_max - eps_min) * epoch / epochs``, as the authors' code (0.03 to 0.3). The paper
  perturbs the softmaxed weights inside the DARTS cell; a space here normalises its own tensors, so the noise goes
  on the tensors themselves (for a row near uniform, logit noise ``eps`` moves each weight by about ``eps`` of
  itself, a milder perturbation than the paper's).
- **the architecture loss**, a penalty added to the validation loss:
  ``beta_decay`` (beta-DARTS, Ye et al. 2022, arXiv 2203.01665): the paper's regulariser
  ``L_beta = log sum_k exp(alpha_k)`` of each edge's arch parameters, averaged over edges (rows) as the authors'
  code, whose gradient is the row's softmax, weighted by ``beta_weight * epoch / epochs``: the linearly increasing
  weight of the authors' code, ``50 * epoch / 100``, as a fraction of the search (the same for a 100-epoch search;
  their 50-epoch DARTS search ends at 24.5). ``entropy``: the mean entropy of the rows' softmax, weighted by a
  weight that is 0 until the fraction ``entropy_start`` of the search and then rises linearly to
  ``entropy_weight`` at its last epoch, which drives each row to a decision as the temperature annealing of SNAS
  (Xie et al. 2019, arXiv 1812.09926) and the entropy loss of DA2S (Tian et al. 2020, arXiv 2007.03154) do.

- **the supernet**: ``darts_minus`` (DARTS-, Chu et al. 2021, arXiv 2009.01027): every stride-1
  :class:`nasplat.MixedOp` edge adds ``beta * x``, an auxiliary skip connection beside the searched ops, so a
  searched ``skip_connect`` no longer has the advantage of a residual path that only it offers; ``beta`` decays
  linearly from ``aux_skip_weight`` at the first epoch to 0 at the last (the paper: from 1 to 0), so the supernet
  the search ends with has no auxiliary path. The paper puts a FactorizedReduce on stride-2 edges as well; here
  reduction edges get none (the parameter-free identity cannot halve the size), the collapse it fights is that of
  the normal cell. In a space without MixedOp edges it does nothing (the search prints a warning).
  ``skip_dropout`` (P-DARTS, Chen et al. 2019, arXiv 1904.12760, section 3.3): dropout with rate ``p`` on the
  output of every stride-1 ``skip_connect`` candidate while training, so the parameter-free path is less reliable
  than it looks to the architecture; ``p`` decays linearly from ``skip_dropout_rate`` at the first epoch to 0 at
  the last (the authors' code: ``p0 * (epochs - epoch - 1) / epochs``; their CIFAR-10 rates per stage 0.1, 0.4, 0.7).

- **the cells' decisions**: ``sgas`` (SGAS, Li et al. 2020, arXiv 1912.00195): from ``sgas_start`` of the search
  on, each cell decides its edges one by one at the ends of epochs and keeps each decision, so the search ends
  decided (:mod:`nasplat.searching.greedy`); it acts on the cells the supernet declares
  (:meth:`nasplat.Supernet.decision_cells`) and does nothing in a space that declares none.

Every tensor counts each of its rows (all but the last dimension) once; rows of one choice are skipped.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Mapping, Sequence

import torch

from nasplat.searching.greedy import SequentialDecisions
from nasplat.searching.remedy_options import resolve_remedies
from nasplat.spaces.ops import Identity, MixedOp
from nasplat.spaces.space import Supernet


def _rows(arch: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    return [t.reshape(-1, t.shape[-1]) for t in arch if t.dim() >= 1 and t.shape[-1] > 1]


def beta_decay_loss(arch: Sequence[torch.Tensor]) -> torch.Tensor:
    """Mean over all rows of ``logsumexp(row)`` (the beta-DARTS regulariser, before its weight)."""
    return torch.cat([torch.logsumexp(rows, dim=-1) for rows in _rows(arch)]).mean()


def mean_entropy(arch: Sequence[torch.Tensor]) -> torch.Tensor:
    """Mean over all rows of the entropy (nats) of ``softmax(row)``; differentiable."""
    values = [-(torch.softmax(rows, -1) * torch.log_softmax(rows, -1)).sum(-1) for rows in _rows(arch)]
    return torch.cat(values).mean()


def ramp(progress: float, start: float = 0.0) -> float:
    """0 until ``progress`` reaches ``start``, then linear to 1 at ``progress`` 1."""
    return max(0.0, (progress - start) / (1.0 - start))


class Remedies:
    """The remedies chosen for one search, with their schedules; ``set_epoch`` before each epoch."""

    def __init__(self, options: Mapping[str, Mapping[str, float]]) -> None:
        self.options = {name: dict(values) for name, values in options.items()}
        self.edges: list[MixedOp] = []
        self.skips: list[Identity] = []
        self.decisions: SequentialDecisions | None = None
        self.set_epoch(0, 1)

    def attach(self, supernet: Supernet) -> list[str]:
        """Give the remedies that act on the supernet (``darts_minus``, ``skip_dropout``) its stride-1
        :class:`nasplat.MixedOp` edges (and their ``skip_connect`` candidates), and ``sgas`` its decision cells
        and arch parameters. Returns a line for each chosen
        one that finds nothing to act on in ``supernet`` (it then does nothing; the search prints the line)."""
        edges = [m for m in supernet.modules() if isinstance(m, MixedOp) and m.stride == 1]
        skips = [op for edge in edges for name, op in zip(edge.ops, edge.candidates)
                 if name == "skip_connect" and isinstance(op, Identity)]
        self.edges = edges if "darts_minus" in self.options else []
        self.skips = skips if "skip_dropout" in self.options else []
        cells = supernet.decision_cells() if "sgas" in self.options else {}
        if cells:
            sgas = self.options["sgas"]
            self.decisions = SequentialDecisions(cells, supernet.arch_parameters(), sgas["sgas_start"],
                                                 sgas["sgas_post"])
        self._apply_to_supernet()
        idle = [("darts_minus", edges, "stride-1 nasplat.MixedOp edges"),
                ("skip_dropout", skips, "stride-1 'skip_connect' candidates in nasplat.MixedOp edges"),
                ("sgas", cells, "cells to decide (Supernet.decision_cells)")]
        return [f"remedy {remedy!r} does nothing here: {type(supernet).__name__} has no {what}"
                for remedy, found, what in idle if remedy in self.options and not found]

    def set_epoch(self, epoch: int, epochs: int) -> None:
        """The 0-based epoch about to be trained, of ``epochs``; fixes the epoch's schedule (once, not per step)."""
        self.epoch, self.epochs = epoch, epochs
        self._schedule = self._epoch_schedule()
        self._apply_to_supernet()

    def _apply_to_supernet(self) -> None:
        beta, rate = self._schedule.get("remedy_aux_skip", 0.0), self._schedule.get("remedy_skip_dropout", 0.0)
        for edge in self.edges:
            edge.auxiliary_skip = beta
        for skip in self.skips:
            skip.dropout = rate

    def end_epoch(self, warmup_epochs: int = 0) -> str | None:
        """After the epoch set by :meth:`set_epoch` was trained: the cells' decisions due now (``sgas``) and a line
        that says them (None when there were none)."""
        if self.decisions is None:
            return None
        return self.decisions.end_epoch(self.epoch + 1, self.epochs, warmup_epochs)

    def decision_metrics(self) -> dict[str, float]:
        """``remedy_sgas_decided``: the share of the cells' edges ``sgas`` has decided so far (absent without it)."""
        return {"remedy_sgas_decided": self.decisions.decided_share()} if self.decisions is not None else {}

    def after_arch_step(self) -> None:
        """Re-fix the decided edges after the architecture optimiser (or a roll-back) moved them."""
        if self.decisions is not None:
            self.decisions.impose()

    def state_dict(self) -> dict[str, object]:
        """What a checkpoint must keep: the decisions made so far (the schedules follow from the epoch)."""
        return {"sgas": self.decisions.state_dict()} if self.decisions is not None else {}

    def load_state_dict(self, state: Mapping[str, object]) -> None:
        if self.decisions is not None:
            self.decisions.load_state_dict(state.get("sgas", {}))

    @contextlib.contextmanager
    def without_dropout(self) -> Iterator[None]:
        """Inside, the ``skip_dropout`` rate is 0 (a deterministic supernet, e.g. for the Hessian); restored on exit."""
        for skip in self.skips:
            skip.dropout = 0.0
        try:
            yield
        finally:
            self._apply_to_supernet()

    @property
    def progress(self) -> float:
        return self.epoch / self.epochs

    def schedule(self) -> dict[str, float]:
        """This epoch's noise bound and penalty weights, by metric name (``remedy_*``)."""
        return dict(self._schedule)

    def _epoch_schedule(self) -> dict[str, float]:
        values = {}
        fraction = self.epoch / (self.epochs - 1) if self.epochs > 1 else 1.0  # 0 at the first epoch, 1 at the last
        if "sdarts" in self.options:
            low, high = self.options["sdarts"]["epsilon_min"], self.options["sdarts"]["epsilon_max"]
            values["remedy_epsilon"] = low + (high - low) * self.progress
        if "beta_decay" in self.options:
            values["remedy_beta_weight"] = self.options["beta_decay"]["beta_weight"] * self.progress
        if "entropy" in self.options:  # full weight at the last epoch
            entropy = self.options["entropy"]
            values["remedy_entropy_weight"] = entropy["entropy_weight"] * ramp(fraction, entropy["entropy_start"])
        if "darts_minus" in self.options:
            values["remedy_aux_skip"] = self.options["darts_minus"]["aux_skip_weight"] * (1.0 - fraction)
        if "skip_dropout" in self.options:
            values["remedy_skip_dropout"] = self.options["skip_dropout"]["skip_dropout_rate"] * (1.0 - fraction)
        return values

    def penalty(self, arch: Sequence[torch.Tensor]) -> torch.Tensor | None:
        """The weighted penalty of this epoch added to the architecture loss (None without one)."""
        weights = self._schedule
        terms = []
        if weights.get("remedy_beta_weight"):
            terms.append(weights["remedy_beta_weight"] * beta_decay_loss(arch))
        if weights.get("remedy_entropy_weight"):
            terms.append(weights["remedy_entropy_weight"] * mean_entropy(arch))
        return sum(terms) if terms else None

    @contextlib.contextmanager
    def perturbed(self, arch: Sequence[torch.Tensor]) -> Iterator[None]:
        """Inside, ``arch`` holds SDARTS noise ``U(-eps, eps)`` (if chosen); on exit its values are restored exactly."""
        epsilon = self._schedule.get("remedy_epsilon", 0.0)
        if epsilon <= 0:
            yield
            return
        saved = [t.detach().clone() for t in arch]
        with torch.no_grad():
            for t in arch:
                noise = torch.rand(t.shape, dtype=t.dtype, device=t.device)
                t.add_(noise.mul_(2 * epsilon).sub_(epsilon))
        try:
            yield
        finally:
            with torch.no_grad():
                for t, value in zip(arch, saved):
                    t.copy_(value)


def build_remedies(names: Sequence[str], options: Mapping[str, object]) -> Remedies | None:
    """The :class:`Remedies` of a search config's ``remedy`` and ``remedy_options`` (None for no remedy)."""
    chosen = resolve_remedies(names, options)
    return Remedies(chosen) if chosen else None
