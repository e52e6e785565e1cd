"""The dominant Hessian eigenvalue (RobustDARTS) against exact eigendecompositions of the Hessian."""
from __future__ import annotations

import json
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.func import functional_call

import nasplat
from nasplat.searching.hessian import dominant_hessian_eigenvalue


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
