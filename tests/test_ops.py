import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nasplat.spaces import ops
from nasplat.spaces.ops import (
    DARTS_OPS,
    DilConv,
    FactorizedReduce,
    Identity,
    MixedOp,
    SepConv,
    UnknownOpError,
    Zero,
    build_op,
    get_op,
    register_op,
    registered_ops,
)

C = 4


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def clean_registry():
    """Restore the registry after a test that registers custom ops."""
    saved = dict(ops._REGISTRY)
    yield
    ops._REGISTRY.clear()
    ops._REGISTRY.update(saved)


def test_darts_ops_order_and_registration():
    assert DARTS_OPS == (
        "none", "max_pool_3x3", "avg_pool_3x3", "skip_connect",
        "sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5",
    )
    assert set(DARTS_OPS) <= set(registered_ops())
    assert list(registered_ops()) == sorted(registered_ops())


@pytest.mark.parametrize("name", DARTS_OPS)
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("hw", [(8, 8), (9, 7), (33, 17), (1, 1)])
def test_output_shape(name, stride, hw):
    H, W = hw
    op = build_op(name, C, stride)
    y = op(torch.rand(2, C, H, W))
    expected = (H, W) if stride == 1 else (math.ceil(H / 2), math.ceil(W / 2))
    assert tuple(y.shape) == (2, C, *expected)


@pytest.mark.parametrize("name", DARTS_OPS)
def test_stride2_shape_on_crop_321(name):
    op = build_op(name, 2, 2)
    assert tuple(op(torch.rand(1, 2, 321, 321)).shape) == (1, 2, 161, 161)


def test_factorized_reduce_matches_reference_on_even_sizes():
    fr = FactorizedReduce(C, 6).eval()
    fr.bn.running_mean.uniform_(-1, 1)
    fr.bn.running_var.uniform_(0.5, 2)
    fr.bn.weight.data.uniform_(0.5, 2)
    fr.bn.bias.data.uniform_(-1, 1)
    x = torch.randn(2, C, 10, 8)
    r = F.relu(x)
    ref = torch.cat(
        [F.conv2d(r, fr.conv_1.weight, stride=2), F.conv2d(r[:, :, 1:, 1:], fr.conv_2.weight, stride=2)], dim=1
    )
    ref = F.batch_norm(ref, fr.bn.running_mean, fr.bn.running_var, fr.bn.weight, fr.bn.bias, False, 0.0, fr.bn.eps)
    torch.testing.assert_close(fr(x), ref)


def test_factorized_reduce_odd_size_uses_zero_padding():
    fr = FactorizedReduce(C, C).eval()
    x = torch.randn(1, C, 5, 3)
    out = fr(x)
    assert tuple(out.shape) == (1, C, 3, 2)
    # the shifted branch's last row/column read the zero padding
    shifted = F.conv2d(F.pad(F.relu(x), (0, 1, 0, 1))[:, :, 1:, 1:], fr.conv_2.weight, stride=2)
    torch.testing.assert_close(shifted[:, :, -1, :], torch.zeros_like(shifted[:, :, -1, :]))
    half = F.batch_norm(
        shifted, fr.bn.running_mean[C // 2 :], fr.bn.running_var[C // 2 :],
        fr.bn.weight[C // 2 :], fr.bn.bias[C // 2 :], False, 0.0, fr.bn.eps,
    )
    torch.testing.assert_close(out[:, C // 2 :], half)


def test_factorized_reduce_rejects_odd_channels():
    with pytest.raises(ValueError, match="even"):
        FactorizedReduce(4, 5)
    with pytest.raises(ValueError, match="even"):
        build_op("skip_connect", 3, 2)


def test_none_returns_zeros():
    x = torch.randn(2, C, 9, 7)
    y1 = build_op("none", C, 1)(x)
    y2 = build_op("none", C, 2)(x)
    assert isinstance(build_op("none", C, 2), Zero)
    assert tuple(y1.shape) == (2, C, 9, 7) and not y1.any()
    assert tuple(y2.shape) == (2, C, 5, 4) and not y2.any()


def test_skip_connect():
    x = torch.randn(2, C, 8, 8)
    op1 = build_op("skip_connect", C, 1)
    assert isinstance(op1, Identity)
    assert op1(x) is x
    op2 = build_op("skip_connect", C, 2, affine=False)
    assert isinstance(op2, FactorizedReduce)
    assert not op2.bn.affine


def test_pools_are_plain_in_discrete_net():
    mp = build_op("max_pool_3x3", C, 2)
    ap = build_op("avg_pool_3x3", C, 1)
    assert isinstance(mp, nn.MaxPool2d) and isinstance(ap, nn.AvgPool2d)
    # count_include_pad=False: border averages of a constant image stay constant
    torch.testing.assert_close(ap(torch.ones(1, C, 5, 5)), torch.ones(1, C, 5, 5))


def _convs(module):
    return [m for m in module.modules() if isinstance(m, nn.Conv2d)]


def test_sep_conv_structure_and_params():
    op = build_op("sep_conv_3x3", 16, 2)
    assert isinstance(op, SepConv)
    convs = _convs(op)
    depthwise = [c for c in convs if c.groups == 16]
    assert len(depthwise) == 2
    assert [c.stride for c in depthwise] == [(2, 2), (1, 1)]
    assert all(c.dilation == (1, 1) and c.kernel_size == (3, 3) for c in depthwise)
    assert len([c for c in convs if c.kernel_size == (1, 1)]) == 2
    assert all(c.bias is None for c in convs)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in op.modules()) == 2
    assert sum(p.numel() for p in op.parameters()) == 864  # 2*(16*9 + 16*16) + 2*2*16
    assert [c.padding for c in _convs(build_op("sep_conv_5x5", 16, 1)) if c.groups == 16] == [(2, 2), (2, 2)]


def test_dil_conv_structure_and_params():
    op = build_op("dil_conv_3x3", 16, 1)
    assert isinstance(op, DilConv)
    convs = _convs(op)
    depthwise = [c for c in convs if c.groups == 16]
    assert len(depthwise) == 1 and depthwise[0].dilation == (2, 2) and depthwise[0].padding == (2, 2)
    assert len(convs) == 2 and all(c.bias is None for c in convs)
    assert sum(p.numel() for p in op.parameters()) == 432  # 16*9 + 16*16 + 2*16
    dw5 = [c for c in _convs(build_op("dil_conv_5x5", 16, 1)) if c.groups == 16]
    assert len(dw5) == 1 and dw5[0].dilation == (2, 2) and dw5[0].padding == (4, 4)


def test_affine_false_has_no_bn_params():
    for name in ("sep_conv_3x3", "dil_conv_5x5"):
        bns = [m for m in build_op(name, C, 1, affine=False).modules() if isinstance(m, nn.BatchNorm2d)]
        assert bns and not any(bn.affine for bn in bns)


@pytest.mark.parametrize("name,radius", [("dil_conv_3x3", 2), ("dil_conv_5x5", 4), ("sep_conv_3x3", 2)])
def test_receptive_field(name, radius):
    op = build_op(name, C, 1).eval()  # eval: BN is a per-pixel affine map
    size, c = 13, 6
    x = (torch.rand(1, C, size, size) + 0.5).requires_grad_()  # positive: first ReLU is identity
    op(x)[0, 0, c, c].backward()
    reach = x.grad.abs().sum(dim=(0, 1))
    d = torch.arange(size) - c
    dist = torch.maximum(d.abs()[:, None], d.abs()[None, :])
    assert reach[dist > radius].eq(0).all()
    assert reach[dist == radius].gt(0).any()
    if name.startswith("dil"):
        # dilation 2 only samples even offsets
        odd = (d.abs()[:, None] % 2 == 1) | (d.abs()[None, :] % 2 == 1)
        assert reach[odd].eq(0).all()
        assert reach[(~odd) & (dist <= radius)].gt(0).all()


def test_unknown_op_error_lists_registered_names():
    with pytest.raises(KeyError) as info:
        get_op("foo")
    assert isinstance(info.value, UnknownOpError)
    msg = str(info.value)
    assert msg == f"unknown op 'foo'; registered ops: {', '.join(registered_ops())}"
    assert "avg_pool_3x3, dil_conv_3x3" in msg
    with pytest.raises(UnknownOpError):
        MixedOp(C, 1, ["sep_conv_3x3", "foo"])


class _Scale(nn.Module):
    def __init__(self, factor: float):
        super().__init__()
        self.factor = factor

    def forward(self, x):
        return x * self.factor


def test_register_custom_op_and_use_in_mixed_op(clean_registry):
    @register_op("test_triple")
    def _triple(C, stride, affine):
        return _Scale(3.0)

    assert "test_triple" in registered_ops()
    assert get_op("test_triple") is _triple
    m = MixedOp(C, 1, ["skip_connect", "test_triple"])
    x = torch.randn(2, C, 5, 5)
    torch.testing.assert_close(m(x, torch.tensor([0.25, 0.75])), x * (0.25 + 0.75 * 3.0))

    with pytest.raises(ValueError, match="already registered"):
        register_op("test_triple")(lambda C, stride, affine: _Scale(1.0))
    with pytest.raises(ValueError, match="already registered"):
        register_op("sep_conv_3x3")(lambda C, stride, affine: _Scale(1.0))
    assert get_op("test_triple") is _triple

    register_op("test_triple", override=True)(lambda C, stride, affine: _Scale(5.0))
    torch.testing.assert_close(build_op("test_triple", C, 1)(x), x * 5.0)


def _darts_primitives(stride: int) -> dict[str, nn.Module]:
    """The 8 DARTS primitives built one by one from their definitions, non-affine as in the
    supernet, pools followed by a non-affine BatchNorm (DARTS ``model_search.py`` MixedOp)."""
    pool_bn = lambda pool: nn.Sequential(pool, nn.BatchNorm2d(C, affine=False))  # noqa: E731
    return {
        "none": Zero(stride),
        "max_pool_3x3": pool_bn(nn.MaxPool2d(3, stride=stride, padding=1)),
        "avg_pool_3x3": pool_bn(nn.AvgPool2d(3, stride=stride, padding=1, count_include_pad=False)),
        "skip_connect": Identity() if stride == 1 else FactorizedReduce(C, C, affine=False),
        "sep_conv_3x3": SepConv(C, C, 3, stride, 1, affine=False),
        "sep_conv_5x5": SepConv(C, C, 5, stride, 2, affine=False),
        "dil_conv_3x3": DilConv(C, C, 3, stride, 2, 2, affine=False),
        "dil_conv_5x5": DilConv(C, C, 5, stride, 4, 2, affine=False),
    }


@pytest.mark.parametrize("stride", [1, 2])
def test_mixed_op_is_weighted_sum(stride):
    m = MixedOp(C, stride, DARTS_OPS)
    assert m.ops == DARTS_OPS and len(m.candidates) == len(DARTS_OPS)
    # separately built ops carrying the same weights as the mixed op's candidates
    separate = _darts_primitives(stride)
    for name, candidate in zip(DARTS_OPS, m.candidates):
        separate[name].load_state_dict(candidate.state_dict())
    x = torch.randn(2, C, 9, 7)
    w = torch.softmax(torch.randn(len(DARTS_OPS)), dim=0)
    out = m(x, w)
    # by hand: w[0] * none(x) + w[1] * max_pool(x) + ... in the DARTS PRIMITIVES order
    order = ["none", "max_pool_3x3", "avg_pool_3x3", "skip_connect",
             "sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5"]
    expected = torch.zeros(2, C, *((9, 7) if stride == 1 else (5, 4)))
    for k, name in enumerate(order):
        expected = expected + w[k] * separate[name](x)
    torch.testing.assert_close(out, expected)
    assert tuple(out.shape) == ((2, C, 9, 7) if stride == 1 else (2, C, 5, 4))
    # one-hot weights select a single op
    onehot = torch.zeros(len(DARTS_OPS))
    onehot[order.index("dil_conv_3x3")] = 1.0
    torch.testing.assert_close(m(x, onehot), separate["dil_conv_3x3"](x))


def test_mixed_op_default_not_affine():
    m = MixedOp(C, 1, ["sep_conv_3x3", "dil_conv_3x3"])
    assert all(not bn.affine for bn in m.modules() if isinstance(bn, nn.BatchNorm2d))


def test_mixed_op_wraps_pools_with_bn():
    m = MixedOp(C, 2, DARTS_OPS)
    for name, cand in zip(m.ops, m.candidates):
        if "pool" in name:
            assert isinstance(cand, nn.Sequential) and len(cand) == 2
            assert isinstance(cand[0], (nn.MaxPool2d, nn.AvgPool2d))
            assert isinstance(cand[1], nn.BatchNorm2d)
            assert not cand[1].affine and cand[1].num_features == C
        else:
            assert not isinstance(cand, nn.Sequential)


def test_mixed_op_rejects_bad_weights():
    m = MixedOp(C, 1, DARTS_OPS)
    x = torch.randn(1, C, 4, 4)
    with pytest.raises(ValueError, match="length 8"):
        m(x, torch.ones(7) / 7)
    with pytest.raises(ValueError, match="1-D"):
        m(x, torch.ones(1, 8) / 8)
    with pytest.raises(ValueError):
        MixedOp(C, 1, [])
