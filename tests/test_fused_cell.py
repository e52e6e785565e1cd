"""The fused supernet path against the per-edge path it replaces: same loss, weight gradients,
architecture gradients (first and second order) and BatchNorm statistics for the same weights and inputs."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import nasplat
from nasplat import BilevelOptimizer, MixedCell

SPACES = {
    "darts": dict(C=4, layers=3, reductions=2),  # a normal cell, then two reduction cells (FactorizedReduce inputs)
    "autodeeplab": dict(F=2, L=4, B=3, stem_channels=(4, 4, 8)),  # layer 2 at stride 16 has no H^{l-2}
    "darts-pc": dict(C=4, layers=3, reductions=2, partial_channels=2),  # PC-DARTS: half the channels, edge weights
    "autodeeplab-pc": dict(F=2, L=4, B=3, stem_channels=(4, 4, 8), partial_channels=2),
}
CROP = {"darts": 12, "autodeeplab": 33, "darts-pc": 13, "autodeeplab-pc": 33}  # odd: resizes and pools on odd sizes
CLASSES = 3


def _pair(space: str, seed: int = 0) -> tuple[nasplat.Supernet, nasplat.Supernet]:
    """The per-edge supernet and a fused, channels-last copy with the same weights and buffers (float64)."""
    torch.manual_seed(seed)
    per_edge = nasplat.get_space(space.split("-")[0]).supernet(CLASSES, fused=False, **SPACES[space]).double()
    with torch.no_grad():  # arch parameters away from uniform, so every op's weight matters
        for alpha in per_edge.arch_parameters().values():
            alpha.normal_()
    fused = nasplat.get_space(space.split("-")[0]).supernet(CLASSES, fused=True, **SPACES[space]).double()
    fused.load_state_dict(per_edge.state_dict())
    fused.to(memory_format=torch.channels_last)
    return per_edge, fused


def _batch(space: str, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    size = CROP[space]
    return (torch.randn(2, 3, size, size, generator=generator, dtype=torch.float64),
            torch.randint(0, CLASSES, (2, size, size), generator=generator))


def _loss_and_grads(model: nasplat.Supernet, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    loss = nn.functional.cross_entropy(model(batch[0]), batch[1])
    names, params = zip(*model.named_parameters())
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return loss.detach(), {n: g for n, g in zip(names, grads) if g is not None}


def _assert_same_state(a: nn.Module, b: nn.Module) -> None:
    state_b = b.state_dict()
    for name, value in a.state_dict().items():
        torch.testing.assert_close(state_b[name], value, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("space", sorted(SPACES))
def test_fused_forward_backward_matches_per_edge(space):
    per_edge, fused = _pair(space)
    batch = _batch(space, 1)
    loss_a, grads_a = _loss_and_grads(per_edge, batch)
    loss_b, grads_b = _loss_and_grads(fused, batch)
    torch.testing.assert_close(loss_b, loss_a)
    assert set(grads_b) == set(grads_a) and any(n.startswith("arch.") for n in grads_a)
    for name, grad in grads_a.items():
        torch.testing.assert_close(grads_b[name], grad, msg=lambda m: f"gradient of {name}: {m}")
    _assert_same_state(per_edge, fused)  # running statistics of every BN, one update each
    per_edge.eval(), fused.eval()  # inference reads the running statistics of every edge's BN
    with torch.no_grad():
        torch.testing.assert_close(fused(batch[0]), per_edge(batch[0]))


@pytest.mark.parametrize("order", [1, 2])
@pytest.mark.parametrize("space", sorted(SPACES))
def test_fused_bilevel_steps_match_per_edge(space, order):
    """Architecture gradient (second order: unrolled step and finite-difference Hessian-vector product) and the
    weight step's new weights are the same on both paths."""
    results = []
    for model in _pair(space):
        w_opt = torch.optim.SGD(model.weight_parameters(), lr=0.05, momentum=0.9, weight_decay=3e-4)
        a_opt = torch.optim.Adam(list(model.arch_parameters().values()), lr=3e-2)
        bilevel = BilevelOptimizer(model, w_opt, a_opt, nn.functional.cross_entropy, order=order)
        bilevel.weight_step(_batch(space, 2))  # a momentum buffer for the unrolled step
        grads, val_loss = bilevel.architecture_gradient(_batch(space, 3), _batch(space, 4))
        bilevel.weight_step(_batch(space, 5))
        results.append((grads, val_loss, model))
    (grads_a, loss_a, model_a), (grads_b, loss_b, model_b) = results
    assert loss_b == pytest.approx(loss_a, rel=1e-9)
    for grad_a, grad_b in zip(grads_a, grads_b):
        assert grad_a.abs().max() > 0
        torch.testing.assert_close(grad_b, grad_a, rtol=1e-6, atol=1e-9)
    _assert_same_state(model_a, model_b)


def test_fused_cell_runs_ops_without_a_group_forward_edge_by_edge():
    """A user op with no registered group forward, and an op set of only ``none``, give the per-edge result."""

    @nasplat.register_op("test_fused_tanh_conv", override=True)
    def _tanh_conv(C: int, stride: int, affine: bool) -> nn.Module:
        return nn.Sequential(nn.Conv2d(C, C, 3, stride, 1), nn.Tanh())

    for ops, stride in ((("none", "test_fused_tanh_conv", "skip_connect", "sep_conv_3x3"), 2), (("none",), 2)):
        torch.manual_seed(0)
        per_edge = MixedCell(4, 3, ops, input_stride=stride, fused=False)
        fused = MixedCell(4, 3, ops, input_stride=stride, fused=True)
        fused.load_state_dict(per_edge.state_dict())
        inputs = [torch.randn(2, 4, 7, 7), torch.randn(2, 4, 7, 7)]
        weights = torch.softmax(torch.randn(len(per_edge.edges), len(ops)), dim=-1)
        expected, got = per_edge(inputs, weights), fused(inputs, weights)
        assert len(got) == len(expected) == 5
        for a, b in zip(expected, got):
            torch.testing.assert_close(b, a)
        assert tuple(got[-1].shape) == (2, 4, 4, 4)  # stride 2 from the inputs: ceil(7 / 2)


def test_fused_cell_groups_the_edges_leaving_each_state():
    """Node i has an edge from every earlier state; the fused cell groups them by source, in node order."""
    cell = MixedCell(4, 4, ("skip_connect",), num_inputs=2)
    assert [[node for _, node in group] for group in cell.outgoing] == [
        [0, 1, 2, 3], [0, 1, 2, 3], [1, 2, 3], [2, 3], [3], []]


@pytest.mark.parametrize("order", [1, 2])
def test_darts_checkpoint_cells_matches_the_plain_supernet(order):
    """Cell checkpointing (a memory-saving option) recomputes each cell in the backward pass: the same architecture
    gradient (second order: under torch.func.functional_call) and one BN update per forward pass."""
    results = []
    for checkpoint_cells in (False, True):
        torch.manual_seed(0)
        model = nasplat.get_space("darts").supernet(CLASSES, checkpoint_cells=checkpoint_cells, **SPACES["darts"])
        model.double()
        w_opt = torch.optim.SGD(model.weight_parameters(), lr=0.05, momentum=0.9)
        a_opt = torch.optim.Adam(list(model.arch_parameters().values()), lr=3e-2)
        bilevel = BilevelOptimizer(model, w_opt, a_opt, nn.functional.cross_entropy, order=order)
        bilevel.weight_step(_batch("darts", 2))
        results.append((bilevel.architecture_gradient(_batch("darts", 3), _batch("darts", 4))[0], model))
    (grads_a, model_a), (grads_b, model_b) = results
    for grad_a, grad_b in zip(grads_a, grads_b):
        torch.testing.assert_close(grad_b, grad_a, rtol=1e-6, atol=1e-9)
    _assert_same_state(model_a, model_b)
