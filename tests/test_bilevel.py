"""The bi-level optimiser against exact derivatives computed by double backpropagation."""
from __future__ import annotations

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
    a = torch.cat([t.reshape(-1) for t in approx])
    e = torch.cat([t.reshape(-1) for t in exact])
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


def test_first_order_gradient_is_grad_of_val_loss_at_current_weights():
    model, w_opt, a_opt, batch_a, batch_b = _tiny_problem(seed=1)
    loss_fn = nn.CrossEntropyLoss()
    grads, val_loss = BilevelOptimizer(model, w_opt, a_opt, loss_fn, order=1).architecture_gradient(batch_a, batch_b)
    reference_loss = loss_fn(model(batch_b[0]), batch_b[1])
    reference = torch.autograd.grad(reference_loss, list(model.arch_parameters().values()))
    assert val_loss == pytest.approx(float(reference_loss.detach()))
    assert _relative_error(grads, list(reference)) < 1e-10


def test_step_updates_arch_on_b_then_weights_on_a():
    darts = nasplat.get_space("darts").supernet(num_classes=3, C=2, layers=2, reductions=1, stem_multiplier=1)
    model, w_opt, a_opt, batch_a, batch_b = _tiny_problem(seed=2, model=darts)
    arch_before = {k: v.detach().clone() for k, v in model.arch_parameters().items()}
    weights_before = [p.detach().clone() for p in model.weight_parameters()]
    stats = BilevelOptimizer(model, w_opt, a_opt, nn.CrossEntropyLoss(), order=1).step(batch_a, batch_b)
    assert set(stats) == {"arch_loss", "train_loss"}
    assert all(not torch.equal(arch_before[k], v) for k, v in model.arch_parameters().items())
    assert any(not torch.equal(b, p) for b, p in zip(weights_before, model.weight_parameters()))


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
