"""The bi-level optimiser against exact derivatives (double backpropagation, finite differences),
optimiser steps written out by hand, and BatchNorm statistics of a single plain forward pass."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.func import functional_call

import nasplat
from nasplat import BilevelOptimizer


@nasplat.register_op("test_conv3_tanh", override=True)
def _conv_tanh(C: int, stride: int, affine: bool) -> nn.Module:
    return nn.Sequential(nn.Conv2d(C, C, 3, stride, 1), nn.Tanh())


class SmoothSupernet(nasplat.Supernet):
    """Two mixed edges in a chain with smooth ops only: finite differences are then meaningful
    (ReLU and max-pool kinks make any finite-difference Hessian-vector product noisy)."""

    OPS = ("none", "test_conv3_tanh", "avg_pool_3x3", "skip_connect")

    def __init__(self, C: int = 4, num_classes: int = 3) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, C, 3, padding=1)
        self.edges = nn.ModuleList(nasplat.MixedOp(C, 1, self.OPS) for _ in range(2))
        self.head = nn.Conv2d(C, num_classes, 1)
        self.add_arch_parameter("alpha", torch.randn(2, len(self.OPS)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = torch.softmax(self.arch["alpha"], dim=-1)
        x = torch.tanh(self.stem(x))
        for edge, w in zip(self.edges, weights):
            x = edge(x, w)
        return self.head(x)


def _tiny_problem(seed: int = 0, model: nasplat.Supernet | None = None):
    torch.manual_seed(seed)
    model = (model or SmoothSupernet()).double()
    batch_a = (torch.randn(4, 3, 8, 8, dtype=torch.float64), torch.randint(0, 3, (4, 8, 8)))
    batch_b = (torch.randn(4, 3, 8, 8, dtype=torch.float64), torch.randint(0, 3, (4, 8, 8)))
    w_opt = torch.optim.SGD(model.weight_parameters(), lr=0.5, momentum=0.9, weight_decay=3e-4)
    a_opt = torch.optim.Adam(list(model.arch_parameters().values()), lr=3e-4)
    return model, w_opt, a_opt, batch_a, batch_b


def _exact_second_order(model, w_opt, loss_fn, batch_a, batch_b) -> list[torch.Tensor]:
    """d/d alpha of L_val(w - lr (mu buf + grad_w L_train(w, alpha) + wd w), alpha), by autograd."""
    names = [n for n, _ in model.named_weight_parameters()]
    weights = [p for _, p in model.named_weight_parameters()]
    arch_names = ["arch." + n for n in model.arch_parameters()]
    arch = list(model.arch_parameters().values())
    group = w_opt.param_groups[0]
    lr, mu, wd = group["lr"], group["momentum"], group["weight_decay"]

    def loss(ws, batch):
        params = dict(zip(names, ws)) | dict(zip(arch_names, arch))
        return loss_fn(functional_call(model, params, (batch[0],)), batch[1])

    grads = torch.autograd.grad(loss(weights, batch_a), weights, create_graph=True)
    unrolled = [
        w - lr * (mu * w_opt.state[w]["momentum_buffer"] + g + wd * w) for w, g in zip(weights, grads)
    ]
    return list(torch.autograd.grad(loss(unrolled, batch_b), arch))


def _relative_error(approx: list[torch.Tensor], exact: list[torch.Tensor]) -> float:
    a = torch.cat([t.detach().reshape(-1) for t in approx])
    e = torch.cat([t.detach().reshape(-1) for t in exact])
    return float((a - e).norm() / e.norm())


def test_second_order_gradient_matches_double_backprop():
    model, w_opt, a_opt, batch_a, batch_b = _tiny_problem()
    loss_fn = nn.CrossEntropyLoss(ignore_index=255)
    optimizer = BilevelOptimizer(model, w_opt, a_opt, loss_fn, order=2)
    optimizer.weight_step(batch_a)  # creates a non-zero momentum buffer, as mid-search
    approx, _ = optimizer.architecture_gradient(batch_a, batch_b)
    exact = _exact_second_order(model, w_opt, loss_fn, batch_a, batch_b)
    assert _relative_error(approx, exact) < 0.05

    first_order, _ = BilevelOptimizer(model, w_opt, a_opt, loss_fn, order=1).architecture_gradient(batch_a, batch_b)
    # the check is only meaningful if the second-order term changes the gradient noticeably
    assert _relative_error(first_order, exact) > 10 * _relative_error(approx, exact)


def _hand_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean over pixels of logsumexp(z) - z[label], written out."""
    z = logits.detach().permute(0, 2, 3, 1).reshape(-1, logits.shape[1])
    picked = z.gather(1, labels.reshape(-1, 1)).squeeze(1)
    return float((z.exp().sum(1).log() - picked).mean())


def _finite_difference_arch_gradient(model, loss_fn, batch, h: float = 1e-6) -> list[torch.Tensor]:
    """Central differences of the loss, one architecture entry at a time (float64)."""
    grads = []
    with torch.no_grad():
        for alpha in model.arch_parameters().values():
            grad = torch.zeros_like(alpha)
            for i in range(alpha.numel()):
                saved = alpha.view(-1)[i].item()
                alpha.view(-1)[i] = saved + h
                plus = float(loss_fn(model(batch[0]), batch[1]))
                alpha.view(-1)[i] = saved - h
                minus = float(loss_fn(model(batch[0]), batch[1]))
                alpha.view(-1)[i] = saved
                grad.view(-1)[i] = (plus - minus) / (2 * h)
            grads.append(grad)
    return grads


def test_first_order_gradient_is_grad_of_val_loss_at_current_weights():
    model, w_opt, a_opt, batch_a, batch_b = _tiny_problem(seed=1)
    loss_fn = nn.CrossEntropyLoss()
    grads, val_loss = BilevelOptimizer(model, w_opt, a_opt, loss_fn, order=1).architecture_gradient(batch_a, batch_b)
    with torch.no_grad():
        assert val_loss == pytest.approx(_hand_cross_entropy(model(batch_b[0]), batch_b[1]), rel=1e-12)
    reference = _finite_difference_arch_gradient(model, loss_fn, batch_b)
    assert _relative_error(grads, reference) < 1e-7
    on_a = _finite_difference_arch_gradient(model, loss_fn, batch_a)
    assert _relative_error(on_a, reference) > 0.1  # the batch matters: the gradient is the one of split B


def _adam_first_step(param: torch.Tensor, grad: torch.Tensor, lr: float, eps: float = 1e-8) -> torch.Tensor:
    """Adam's first update (bias-corrected m = g, v = g^2): p - lr * g / (|g| + eps)."""
    return param - lr * grad / (grad.abs() + eps)


def _sgd_first_step(weights, grads, lr: float, weight_decay: float, clip: float) -> list[torch.Tensor]:
    """Clip the global gradient norm to ``clip``, then SGD's first step (momentum buffer = d_p)."""
    norm = torch.sqrt(sum((g * g).sum() for g in grads if g is not None))
    scale = min(1.0, clip / (float(norm) + 1e-6))
    return [w.clone() if g is None else w - lr * (scale * g + weight_decay * w) for w, g in zip(weights, grads)]


def _expected_step(model, loss_fn, arch_batch, weight_batch, arch_first: bool):
    """The arch Adam step on ``arch_batch`` and the weight SGD step on ``weight_batch``, computed on a
    copy in the given order, with the optimiser arithmetic written out."""
    model = copy.deepcopy(model)
    arch = list(model.arch_parameters().values())
    weights = model.weight_parameters()

    def arch_step():
        grads = torch.autograd.grad(loss_fn(model(arch_batch[0]), arch_batch[1]), arch)
        with torch.no_grad():
            for a, g in zip(arch, grads):
                a.copy_(_adam_first_step(a, g, lr=3e-4))

    def weight_step():
        grads = torch.autograd.grad(loss_fn(model(weight_batch[0]), weight_batch[1]), weights, allow_unused=True)
        with torch.no_grad():
            for w, new in zip(weights, _sgd_first_step(weights, grads, lr=0.5, weight_decay=3e-4, clip=5.0)):
                w.copy_(new)

    for action in ((arch_step, weight_step) if arch_first else (weight_step, arch_step)):
        action()
    return [a.detach() for a in arch], [w.detach() for w in weights]


def test_step_updates_arch_on_b_then_weights_on_a():
    darts = nasplat.get_space("darts").supernet(num_classes=3, C=2, layers=2, reductions=1, stem_multiplier=1)
    model, w_opt, a_opt, batch_a, batch_b = _tiny_problem(seed=2, model=darts)
    loss_fn = nn.CrossEntropyLoss()
    right = _expected_step(model, loss_fn, batch_b, batch_a, arch_first=True)
    wrong = {
        "weights before arch": _expected_step(model, loss_fn, batch_b, batch_a, arch_first=False),
        "batches swapped": _expected_step(model, loss_fn, batch_a, batch_b, arch_first=True),
    }
    stats = BilevelOptimizer(model, w_opt, a_opt, loss_fn, order=1, grad_clip=5.0).step(batch_a, batch_b)
    assert set(stats) == {"arch_loss", "train_loss"}
    arch, weights = list(model.arch_parameters().values()), model.weight_parameters()
    assert _relative_error(arch, right[0]) < 1e-10
    assert _relative_error(weights, right[1]) < 1e-10
    for name, (other_arch, other_weights) in wrong.items():  # the check can tell these apart
        assert _relative_error(arch, other_arch) + _relative_error(weights, other_weights) > 1e-6, name


class _WithIdleWeight(SmoothSupernet):
    """SmoothSupernet plus a conv that forward never calls: its weights are outside every graph."""

    def __init__(self) -> None:
        super().__init__()
        self.idle = nn.Conv2d(4, 4, 3)


def test_weights_outside_the_graph_are_not_moved_by_decay_or_momentum():
    model, w_opt, a_opt, batch_a, batch_b = _tiny_problem(seed=4, model=_WithIdleWeight())
    idle = [p.detach().clone() for p in model.idle.parameters()]
    optimizer = BilevelOptimizer(model, w_opt, a_opt, nn.CrossEntropyLoss(), order=2)
    for _ in range(3):  # weight decay 3e-4, momentum 0.9: a zero-filled gradient would move them
        optimizer.step(batch_a, batch_b)
    assert all(torch.equal(before, p) for before, p in zip(idle, model.idle.parameters()))
    assert all(p not in w_opt.state or not w_opt.state[p] for p in model.idle.parameters())
    assert not torch.equal(model.stem.weight, _tiny_problem(seed=4, model=_WithIdleWeight())[0].stem.weight)


def test_second_order_step_leaves_running_stats_to_the_weight_forward():
    darts = nasplat.get_space("darts").supernet(num_classes=3, C=2, layers=2, reductions=1, stem_multiplier=1)
    model, w_opt, a_opt, batch_a, batch_b = _tiny_problem(seed=5, model=darts)
    model.train()
    optimizer = BilevelOptimizer(model, w_opt, a_opt, nn.CrossEntropyLoss(), order=2)
    optimizer.weight_step(batch_a)  # a momentum buffer, as mid-search
    reference = copy.deepcopy(model)
    optimizer.step(batch_a, batch_b)
    # the expected statistics: one plain train-mode forward of batch A at the weights before the
    # weight step and the architecture after the arch step, as the weight step's own forward
    with torch.no_grad():
        for name, alpha in model.arch_parameters().items():
            reference.arch_parameters()[name].copy_(alpha)
        reference(batch_a[0])
    buffers = dict(model.named_buffers())
    assert any("running_mean" in n for n in buffers)
    for name, expected in reference.named_buffers():
        torch.testing.assert_close(buffers[name], expected, rtol=0, atol=0, msg=name)


def test_warmup_step_leaves_arch_untouched():
    model, w_opt, a_opt, batch_a, batch_b = _tiny_problem(seed=3)
    arch_before = {k: v.detach().clone() for k, v in model.arch_parameters().items()}
    stats = BilevelOptimizer(model, w_opt, a_opt, nn.CrossEntropyLoss()).step(batch_a, batch_b, update_arch=False)
    assert "arch_loss" not in stats
    assert all(torch.equal(arch_before[k], v) for k, v in model.arch_parameters().items())


def test_order_must_be_one_or_two():
    model, w_opt, a_opt, _, _ = _tiny_problem()
    with pytest.raises(ValueError, match="order"):
        BilevelOptimizer(model, w_opt, a_opt, nn.CrossEntropyLoss(), order=3)
