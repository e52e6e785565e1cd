"""The dominant eigenvalue of the architecture Hessian, for RobustDARTS (Zela et al., ICLR 2020).

:func:`dominant_hessian_eigenvalue` takes the Hessian of the validation loss with respect to all
architecture parameters of a supernet together, at the current weights (no unrolling), and finds
its dominant eigenvalue by power iteration on Hessian-vector products (double backpropagation; no
dense Hessian is formed). The products are averaged across workers, so every worker gets the same
number. The stopping rule that consumes the series is in :mod:`nasplat.searching.early_stop`.

The authors' ``src/search/analyze.py`` forms the dense Hessian of the loss *plus* the
architecture weight-decay term, i.e. ``H + arch_weight_decay * I`` (1e-3 in their runs), and takes
``max(eigvals)``; ``arch_weight_decay=`` and ``which="largest"`` reproduce both.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Sequence
from typing import Literal

import torch
from torch import nn

from nasplat.searching.buffers import frozen, preserved_buffers
from nasplat.spaces.space import Supernet
from nasplat.training.collectives import average_

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Batch = tuple[torch.Tensor, torch.Tensor]

log = logging.getLogger(__name__)


def dominant_hessian_eigenvalue(
    model: Supernet,
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
    with preserved_buffers(model), frozen(model.weight_parameters()), torch.enable_grad():
        hvp = _HessianVectorProduct(model, arch, loss_fn, batches, arch_weight_decay)
        value, used, converged = _power_iteration(hvp, _start_vector(arch, seed), iterations, tol)
        if which == "largest" and value < 0:
            # the spectrum of H - value I is >= 0 and its dominant eigenvalue is lambda_max - value
            def shifted(v: list[torch.Tensor]) -> list[torch.Tensor]:
                return [h - value * x for h, x in zip(hvp(v), v)]

            gap, used, converged = _power_iteration(shifted, _start_vector(arch, seed), iterations, tol)
            value = gap + value
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
