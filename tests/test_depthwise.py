"""The fused path's depthwise convolution: PyTorch's values and gradients (also second order) for every stride,
dilation, padding and layout the spaces use, and nothing kept for a weight gradient nobody asks for."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.autograd import gradcheck, gradgradcheck

from nasplat.searching.buffers import frozen
from nasplat.spaces.depthwise import depthwise_conv2d, is_depthwise

# (kernel, dilation, padding): the DARTS sep/dil convs ("same" padding) and two paddings short of "same"
SHAPES = [(3, 1, 1), (5, 1, 2), (3, 2, 2), (5, 2, 4), (3, 1, 0), (3, 2, 1)]


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("kernel, dilation, padding", SHAPES)
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_values_and_gradients_are_pytorchs(stride, kernel, dilation, padding, layout):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 7, 6, dtype=torch.double).contiguous(memory_format=layout).requires_grad_(True)  # odd, even
    weight = torch.randn(3, 1, kernel, kernel, dtype=torch.double, requires_grad=True)
    assert is_depthwise(x, weight, (padding, padding), (dilation, dilation), groups=3)

    def conv(x, weight):
        return depthwise_conv2d(x, weight, (stride, stride), (padding, padding), (dilation, dilation))

    out, reference = conv(x, weight), F.conv2d(x, weight, None, stride, padding, dilation, 3)
    torch.testing.assert_close(out, reference)
    upstream = torch.randn_like(reference)
    torch.testing.assert_close(torch.autograd.grad(out, (x, weight), upstream),
                               torch.autograd.grad(reference, (x, weight), upstream))
    assert gradcheck(conv, (x, weight)) and gradgradcheck(conv, (x, weight))


def test_only_depthwise_convolutions_within_the_kernels_reach_qualify():
    x = torch.zeros(1, 4, 8, 8)
    assert not is_depthwise(x, torch.zeros(4, 2, 3, 3), (1, 1), (1, 1), groups=4)  # two inputs per group
    assert not is_depthwise(x, torch.zeros(8, 1, 3, 3), (1, 1), (1, 1), groups=4)  # two outputs per group
    assert not is_depthwise(x, torch.zeros(4, 1, 3, 3), (3, 3), (1, 1), groups=4)  # padding beyond the reach
    assert not is_depthwise(x, torch.zeros(4, 1, 3, 3), "same", (1, 1), groups=4)


def test_a_frozen_weight_keeps_the_input_out_of_the_graph():
    """The architecture step freezes the weights: the conv's input is then not kept for the backward pass."""
    x = torch.randn(2, 4, 8, 8, requires_grad=True)
    weight = torch.nn.Parameter(torch.randn(4, 1, 3, 3))
    saved: list[torch.Tensor] = []
    for freeze in (False, True):
        saved.clear()
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t), \
                frozen([weight] if freeze else []):
            out = depthwise_conv2d(x, weight, (1, 1), (1, 1), (1, 1))
        assert any(t is x for t in saved) is not freeze
        grad_x, = torch.autograd.grad(out.sum(), x)
        torch.testing.assert_close(grad_x, torch.autograd.grad(F.conv2d(x, weight, None, 1, 1, 1, 4).sum(), x)[0])
    assert weight.requires_grad  # the block gave it back


def _graph_names(output: torch.Tensor) -> set[str]:
    names, stack, seen = set(), [output.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        names.add(type(node).__name__)
        stack.extend(next_node for next_node, _ in node.next_functions)
    return names


def test_the_fused_darts_supernet_runs_its_dilated_convs_through_it_on_a_cpu():
    import nasplat

    for fused in (True, False):
        model = nasplat.get_space("darts").supernet(3, C=4, layers=2, reductions=1, fused=fused)
        names = _graph_names(model(torch.randn(2, 3, 16, 16)))
        assert ("_DepthwiseConvBackward" in names) is fused  # the per-edge path stays PyTorch's, the reference
