"""The DARTS bi-level optimiser (Liu et al. 2019, eqs. 5-8), for any :class:`Supernet`.

Each step first updates the architecture on a batch of split B, then the weights on a batch of
split A, as the official ``architect.py`` does. The second-order architecture gradient unrolls one
SGD step (with the optimiser's momentum and weight decay) and replaces the Hessian-vector product
by a central finite difference with epsilon = 0.01 / ||grad_w' L_val(w', alpha)||.

Weights that take no part in the loss (no gradient on any worker) are left out of the weight
step, as ``optimizer.step()`` skips parameters whose ``.grad`` is None in the reference: weight
decay and momentum do not move them. The extra forward passes of the second-order gradient (at
w, at the unrolled w' and at the two perturbed weights) leave the BatchNorm running statistics
as they were; only the weight step's own forward pass updates them.
The first-order gradient runs with the weights frozen (``requires_grad`` off), so nothing is kept
or computed for their gradients; the perturbed weights of the second-order gradient need no
gradient either.

An ``arch_penalty`` (a differentiable function of the arch parameters alone, the same on every worker, e.g. the
expected cost of :mod:`nasplat.searching.cost_search`) adds its gradient to the averaged architecture gradient.
Collapse ``remedies`` (:mod:`nasplat.searching.remedies`) add their penalty's gradient the same way and may
perturb the arch parameters during the weight step.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Literal

import torch
from torch import nn
from torch.func import functional_call

from nasplat.searching.buffers import frozen, preserved_buffers
from nasplat.searching.remedies import Remedies
from nasplat.spaces.space import ARCH_PREFIX, Supernet
from nasplat.training.collectives import average_

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Batch = tuple[torch.Tensor, torch.Tensor]
FD_SCALE = 0.01


class BilevelOptimizer:
    """Alternates architecture and weight steps; ``order`` is 1 (first order) or 2 (unrolled)."""

    def __init__(
        self,
        model: Supernet,
        weight_optimizer: torch.optim.SGD,
        arch_optimizer: torch.optim.Optimizer,
        loss_fn: LossFn,
        order: Literal[1, 2] = 1,
        grad_clip: float | None = 5.0,
        arch_penalty: Callable[[], torch.Tensor] | None = None,
        remedies: Remedies | None = None,
    ) -> None:
        if order not in (1, 2):
            raise ValueError(f"order must be 1 or 2, got {order!r}")
        self.model = model
        self.weight_optimizer = weight_optimizer
        self.arch_optimizer = arch_optimizer
        self.loss_fn = loss_fn
        self.order = order
        self.grad_clip = grad_clip
        self.arch_penalty = arch_penalty
        self.remedies = remedies
        self.weight_names = [n for n, _ in model.named_weight_parameters()]
        self.weights = [p for _, p in model.named_weight_parameters()]
        self.arch_names = [ARCH_PREFIX + n for n in model.arch_parameters()]
        self.arch = list(model.arch_parameters().values())

    def step(self, batch_a: Batch, batch_b: Batch, update_arch: bool = True) -> dict[str, float]:
        """One search iteration: arch step on ``batch_b`` (if ``update_arch``), weight step on ``batch_a``."""
        stats: dict[str, float] = {}
        if update_arch:
            stats["arch_loss"] = self.arch_step(batch_a, batch_b)
        stats["train_loss"] = self.weight_step(batch_a)
        return stats

    def arch_step(self, batch_a: Batch, batch_b: Batch) -> float:
        grads, val_loss = self.architecture_gradient(batch_a, batch_b)
        penalty = self.penalty()
        if penalty is not None:
            extra = torch.autograd.grad(penalty, self.arch, allow_unused=True)
            grads = [g if e is None else g + e.to(g.dtype) for g, e in zip(grads, extra)]
        for param, grad in zip(self.arch, grads):
            param.grad = grad
        self.arch_optimizer.step()
        self.arch_optimizer.zero_grad(set_to_none=True)
        if self.remedies is not None:
            self.remedies.after_arch_step()
        return val_loss

    def penalty(self) -> torch.Tensor | None:
        """The terms of the arch parameters alone added to the architecture loss: ``arch_penalty`` and this epoch's
        remedy penalty (None when there is neither)."""
        terms = [self.arch_penalty()] if self.arch_penalty is not None else []
        remedy = self.remedies.penalty(self.arch) if self.remedies is not None else None
        if remedy is not None:
            terms.append(remedy)
        return sum(terms) if terms else None

    def weight_step(self, batch_a: Batch) -> float:
        with self.remedies.perturbed(self.arch) if self.remedies is not None else contextlib.nullcontext():
            loss = self.loss_fn(self.model(batch_a[0]), batch_a[1])
            grads, used = _averaged_gradients(loss, self.weights)
        for param, grad, in_graph in zip(self.weights, grads, used):
            param.grad = grad if in_graph else None  # SGD skips it: no decay, no momentum
        if self.grad_clip is not None:
            nn.utils.clip_grad_norm_(self.weights, self.grad_clip)
        self.weight_optimizer.step()
        self.weight_optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    def architecture_gradient(self, batch_a: Batch, batch_b: Batch) -> tuple[list[torch.Tensor], float]:
        """Gradient of the validation loss w.r.t. every arch parameter, averaged over workers."""
        if self.order == 1:
            with frozen(self.weights):
                loss = self.loss_fn(self.model(batch_b[0]), batch_b[1])
                grads = list(torch.autograd.grad(loss, self.arch))
            average_(grads)
            return grads, float(loss.detach())
        return self._second_order_gradient(batch_a, batch_b)

    # --- second order -------------------------------------------------------------------
    def _loss_at(self, weights: list[torch.Tensor], batch: Batch) -> torch.Tensor:
        params = dict(zip(self.weight_names, weights))
        params.update(zip(self.arch_names, self.arch))
        return self.loss_fn(functional_call(self.model, params, (batch[0],)), batch[1])

    def _unrolled_weights(self, batch_a: Batch) -> tuple[list[torch.Tensor], float]:
        """w' = w - xi * (momentum * buf + grad_w L_train + wd * w), xi the current weight lr.

        A weight outside the graph stays at w, as the real SGD step leaves it.
        """
        group = self.weight_optimizer.param_groups[0]
        lr, momentum, decay = group["lr"], group.get("momentum", 0.0), group.get("weight_decay", 0.0)
        grads, used = _averaged_gradients(self._loss_at(self.weights, batch_a), self.weights)
        unrolled = []
        with torch.no_grad():
            for w, g, in_graph in zip(self.weights, grads, used):
                buf = self.weight_optimizer.state.get(w, {}).get("momentum_buffer")
                direction = g + decay * w + (momentum * buf if buf is not None else 0.0)
                unrolled.append((w - lr * direction if in_graph else w.clone()).requires_grad_(True))
        return unrolled, lr

    def _second_order_gradient(self, batch_a: Batch, batch_b: Batch) -> tuple[list[torch.Tensor], float]:
        with preserved_buffers(self.model):  # these passes must not move the running statistics
            return self._unrolled_gradient(batch_a, batch_b)

    def _unrolled_gradient(self, batch_a: Batch, batch_b: Batch) -> tuple[list[torch.Tensor], float]:
        unrolled, lr = self._unrolled_weights(batch_a)
        val_loss = self._loss_at(unrolled, batch_b)
        grads = torch.autograd.grad(val_loss, self.arch + unrolled, allow_unused=True)
        grads = [torch.zeros_like(t) if g is None else g for t, g in zip(self.arch + unrolled, grads)]
        average_(grads)
        arch_grads, vector = grads[: len(self.arch)], grads[len(self.arch) :]
        hessian_vector = self._finite_difference_hvp(vector, batch_a)
        return [g - lr * h for g, h in zip(arch_grads, hessian_vector)], float(val_loss.detach())

    def _finite_difference_hvp(self, vector: list[torch.Tensor], batch_a: Batch) -> list[torch.Tensor]:
        """(grad_a L_train(w+) - grad_a L_train(w-)) / (2 eps), w+- = w +- eps * vector (w, not w')."""
        norm = torch.sqrt(sum((v * v).sum() for v in vector))
        eps = FD_SCALE / norm.clamp_min(1e-12)
        sides = []
        for sign in (1.0, -1.0):
            with torch.no_grad():
                shifted = [w + sign * eps * v for w, v in zip(self.weights, vector)]
            loss = self._loss_at(shifted, batch_a)
            grads = list(torch.autograd.grad(loss, self.arch))
            average_(grads)
            sides.append(grads)
        return [(plus - minus) / (2 * eps) for plus, minus in zip(*sides)]


def _averaged_gradients(loss: torch.Tensor, params: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[bool]]:
    """(gradients of ``loss`` averaged across workers, zeros where unused; whether any worker used each).

    The zeros keep the all-reduce the same on every worker; a parameter counts as used when its
    gradient exists on at least one worker, so every worker skips the same ones.
    """
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    present = torch.tensor([g is not None for g in grads], dtype=loss.dtype, device=loss.device)
    grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]
    average_(grads + [present])
    return grads, (present > 0).tolist()
