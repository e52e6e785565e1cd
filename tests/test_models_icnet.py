"""ICNet (Zhao et al., ECCV 2018; hszhao/ICNet): counts, shapes, PSP sum, CFF, CLG loss."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import nasplat.models.icnet as icnet_mod
from nasplat.models.icnet import (
    CascadeFeatureFusion,
    ICNet,
    PyramidPoolingSum,
    icnet_loss,
    inference_parameter_count,
)
from nasplat.models.registry import _MODELS


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(scope="module")
def model19() -> ICNet:
    torch.manual_seed(0)
    return ICNet(num_classes=19, aux=True)


@pytest.fixture(scope="module")
def small_model() -> ICNet:
    torch.manual_seed(0)
    return ICNet(num_classes=3, aux=True)


def test_registered():
    assert _MODELS["icnet"] is icnet_mod.ICNet
    m = _MODELS["icnet"](num_classes=5, aux=False)
    assert isinstance(m, ICNet) and m.clg is None and m.classifier.out_channels == 5


def test_parameter_counts_exact(model19):
    assert _count(model19) == 6_707_321                      # with the CLG classifiers
    assert inference_parameter_count(model19) == 6_699_987   # inference network
    assert _count(model19.clg) == 7_334
    assert _count(ICNet(num_classes=19, aux=False)) == 6_699_987


def test_parameter_decomposition(model19):
    b = model19.backbone
    parts = {
        "stem": _count(b.stem), "layer1": _count(b.layer1), "layer2": _count(b.layer2),
        "layer3": _count(b.layer3), "layer4": _count(b.layer4), "ppm_reduce": _count(model19.ppm_reduce),
        "sub1": _count(model19.sub1), "cff_sub24": _count(model19.cff_sub24),
        "cff_sub12": _count(model19.cff_sub12), "classifier": _count(model19.classifier),
    }
    three_convs_32_32_64 = 3 * 9 * 32 + 32 * 9 * 32 + 32 * 9 * 64 + 2 * (32 + 32 + 64)  # convs + BN
    assert parts["stem"] == parts["sub1"] == three_convs_32_32_64
    assert parts["classifier"] == 128 * 19 + 19
    assert sum(parts.values()) == 6_699_987  # the published inference count (REFERENCES section 4)
    assert parts == {  # the per-part split of that total, as built (a snapshot)
        "stem": 28_768, "layer1": 59_776, "layer2": 306_688, "layer3": 1_779_712, "layer4": 3_746_816,
        "ppm_reduce": 262_656, "sub1": 28_768, "cff_sub24": 328_192, "cff_sub12": 156_160, "classifier": 2_451,
    }
    assert _count(model19.ppm) == 0
    # Half-width channels and dilations of the released trunk.
    assert [m.out_channels for m in b.stem.modules() if isinstance(m, nn.Conv2d)] == [32, 32, 64]
    assert [m.out_channels for m in model19.sub1.modules() if isinstance(m, nn.Conv2d)] == [32, 32, 64]
    assert [blk.increase[0].out_channels for blk in (b.layer1[0], b.layer2[0], b.layer3[0], b.layer4[0])] == [
        128, 256, 512, 1024]
    assert b.layer3[0].conv[0].dilation == (2, 2) and b.layer4[0].conv[0].dilation == (4, 4)
    assert b.layer2[0].reduce[0].stride == (2, 2) and b.layer3[0].reduce[0].stride == (1, 1)


@pytest.mark.parametrize("size", [(97, 129), (96, 128), (33, 47)])
def test_eval_output_at_input_size(small_model, size):
    small_model.eval()
    with torch.no_grad():
        out = small_model(torch.randn(1, 3, *size))
    assert isinstance(out, torch.Tensor) and out.shape == (1, 3, *size)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("size,expected", [
    ((97, 129), {"out": (25, 33), "aux_1_8": (13, 17), "aux_1_16": (7, 9)}),
    ((96, 128), {"out": (24, 32), "aux_1_8": (12, 16), "aux_1_16": (6, 8)}),
])
def test_train_outputs_resolutions(small_model, size, expected):
    small_model.train()
    with torch.no_grad():
        out = small_model(torch.randn(2, 3, *size))
    assert isinstance(out, dict) and set(out) == set(expected)
    for key, hw in expected.items():     # ceil(H/4), ceil(H/8), ceil(H/16)
        assert out[key].shape == (2, 3, *hw), key
    small_model.eval()


def test_train_without_aux_returns_main_only():
    m = ICNet(num_classes=2, aux=False).train()
    with torch.no_grad():
        out = m(torch.randn(2, 3, 40, 56))
    assert set(out) == {"out"} and out["out"].shape == (2, 2, 10, 14)


def test_pyramid_pooling_is_parameter_free_sum():
    ppm = PyramidPoolingSum()
    assert ppm.bins == (1, 2, 3, 6) and not list(ppm.parameters())
    # A constant map: every pooled map equals it, so the output is 5x the input.
    assert torch.allclose(ppm(torch.full((1, 2, 5, 7), 3.0)), torch.full((1, 2, 5, 7), 15.0))
    # Hand case, 2x2 map, bin 1 only: x + mean.
    x = torch.tensor([[[[1.0, 2.0], [3.0, 6.0]]]])
    assert torch.allclose(PyramidPoolingSum((1,))(x), x + 3.0)
    # 6x6 map, bin 6: pooling is the identity, so x + x.
    y = torch.randn(1, 1, 6, 6)
    assert torch.allclose(PyramidPoolingSum((6,))(y), 2 * y, atol=1e-6)
    # 4x4 map, bin 2: 2x2 block means, upsampled bilinearly with corners aligned (Caffe Interp).
    z = torch.arange(16.0).reshape(1, 1, 4, 4)
    m = torch.tensor([[2.5, 4.5], [10.5, 12.5]])          # block means
    t = torch.tensor([0.0, 1 / 3, 2 / 3, 1.0])
    up = ((1 - t)[:, None] * (1 - t)[None] * m[0, 0] + (1 - t)[:, None] * t[None] * m[0, 1]
          + t[:, None] * (1 - t)[None] * m[1, 0] + t[:, None] * t[None] * m[1, 1])
    assert torch.allclose(PyramidPoolingSum((2,))(z)[0, 0], z[0, 0] + up, atol=1e-5)
    # Default bins on an arbitrary map: input + sum of adaptive pools upsampled (odd size, 6 > side).
    w = torch.randn(2, 3, 4, 5)
    expected = w + sum(F.interpolate(F.adaptive_avg_pool2d(w, b), size=(4, 5), mode="bilinear",
                                     align_corners=True) for b in (1, 2, 3, 6))
    assert torch.allclose(ppm(w), expected, atol=1e-6)


def _identity_cff() -> CascadeFeatureFusion:
    cff = CascadeFeatureFusion(1, 1, 1).eval()
    with torch.no_grad():
        for p in cff.parameters():
            p.zero_()
        cff.low[0].weight[0, 0, 1, 1] = 1.0       # dilated 3x3, centre tap only
        cff.high[0].weight.fill_(1.0)
        for bn in (cff.low[1], cff.high[1]):
            bn.weight.fill_(1.0)
    return cff


def test_cff_structure_no_relu_before_sum():
    cff = CascadeFeatureFusion(256, 256, 128)
    assert [type(m) for m in cff.low] == [nn.Conv2d, nn.BatchNorm2d]
    assert [type(m) for m in cff.high] == [nn.Conv2d, nn.BatchNorm2d]
    assert cff.low[0].kernel_size == (3, 3) and cff.low[0].dilation == (2, 2) and cff.low[0].padding == (2, 2)
    assert cff.high[0].kernel_size == (1, 1)
    assert cff.low[0].bias is None and cff.high[0].bias is None


def test_cff_sum_then_relu_functional():
    cff = _identity_cff()
    low = torch.full((1, 1, 3, 4), -1.0)
    high = torch.full((1, 1, 6, 8), 2.0)
    fused, low_up = cff(low, high)
    assert low_up.shape == (1, 1, 6, 8) and torch.allclose(low_up, torch.full_like(low_up, -1.0))
    # ReLU after the sum only: relu(-1 + 2) = 1 (a ReLU on the low branch would give 2).
    assert torch.allclose(fused, torch.ones_like(fused), atol=1e-4)
    fused, _ = cff(torch.full((1, 1, 3, 4), -3.0), high)
    assert torch.allclose(fused, torch.zeros_like(fused))


def _ce2(logit0: float, logit1: float, label: int) -> float:
    """Two-class cross-entropy by hand."""
    z = [logit0, logit1]
    return math.log(math.exp(z[0]) + math.exp(z[1])) - z[label]


def _loss_case():
    # 16x16 labels. Nearest downsampling to 4x4 reads rows/cols 0,4,8,12; to 2x2 reads 0,8; to 1x1 reads 0.
    target = torch.full((1, 16, 16), 1, dtype=torch.long)   # 1 everywhere that is not sampled...
    target[0, ::4, ::4] = 0                                  # ...0 at the 1/4 samples
    target[0, 0, 4] = 255                                    # one ignored 1/4 sample
    target[0, 8, 8] = 1                                      # one 1/4 sample (also a 1/8 one) of class 1
    out = torch.zeros(1, 2, 4, 4)
    out[0, 0] = 2.0                                          # logits (2, 0) everywhere at 1/4
    aux8 = torch.tensor([[[[0.0, 1.0], [0.5, 0.0]], [[0.0, 0.0], [0.0, 3.0]]]])
    aux16 = torch.tensor([[[[1.0]], [[-1.0]]]])
    outputs = {"out": out, "aux_1_8": aux8, "aux_1_16": aux16}
    # By hand. 1/4: 16 samples, 1 ignored, 1 of class 1, 14 of class 0.
    l4 = (14 * _ce2(2, 0, 0) + _ce2(2, 0, 1)) / 15
    # 1/8 samples (rows/cols 0,8): (0,0)->0, (0,8)->0, (8,0)->0, (8,8)->1.
    l8 = (_ce2(0, 0, 0) + _ce2(1, 0, 0) + _ce2(0.5, 0, 0) + _ce2(0, 3, 1)) / 4
    l16 = _ce2(1, -1, 0)
    return outputs, target, (l4, l8, l16)


# The paper's loss (arXiv 1704.08545): L = sum_t lambda_t L_t, t = 1 (1/16), 2 (1/8), 3 (1/4),
# with lambda_1 = 0.4, lambda_2 = 0.4, lambda_3 = 1. In (1/4, 1/8, 1/16) order:
PAPER_LAMBDAS = (1.0, 0.4, 0.4)
# hellochick/ICNet-tensorflow and pytorch-semseg: 0.4 ** k
GEOMETRIC_LAMBDAS = (1.0, 0.4, 0.16)


def test_icnet_loss_hand_computed_default_weights_are_the_papers():
    outputs, target, (l4, l8, l16) = _loss_case()
    got = icnet_loss(outputs, target)
    assert got.item() == pytest.approx(1.0 * l4 + 0.4 * l8 + 0.4 * l16, rel=1e-6)
    # Same with F.cross_entropy on explicitly downsampled labels.
    ref = (F.cross_entropy(outputs["out"], target[:, ::4, ::4], ignore_index=255)
           + 0.4 * F.cross_entropy(outputs["aux_1_8"], target[:, ::8, ::8], ignore_index=255)
           + 0.4 * F.cross_entropy(outputs["aux_1_16"], target[:, :1, :1], ignore_index=255))
    assert got.item() == pytest.approx(ref.item(), rel=1e-6)
    assert got.item() != pytest.approx(1.0 * l4 + 0.4 * l8 + 0.16 * l16, rel=1e-3)  # not the geometric set


def test_model_weights_default_to_the_paper_and_name_the_other_set():
    assert ICNet(num_classes=3).clg_weights == PAPER_LAMBDAS
    assert ICNet(num_classes=3, clg_weights="paper").clg_weights == PAPER_LAMBDAS
    assert ICNet(num_classes=3, clg_weights="geometric").clg_weights == GEOMETRIC_LAMBDAS
    outputs, target, (l4, l8, l16) = _loss_case()
    assert icnet_loss(outputs, target, weights="geometric").item() == pytest.approx(
        1.0 * l4 + 0.4 * l8 + 0.16 * l16, rel=1e-6)
    with pytest.raises(ValueError, match="clg_weights.*geometric"):
        ICNet(num_classes=3, clg_weights="hellochick")
    with pytest.raises(ValueError, match="3 values"):
        ICNet(num_classes=3, clg_weights=(1.0, 0.4))


@pytest.mark.parametrize("weights", [PAPER_LAMBDAS, (0.5, 0.0, 2.0)])
def test_icnet_loss_custom_weights(weights):
    outputs, target, terms = _loss_case()
    expected = sum(w * t for w, t in zip(weights, terms))
    assert icnet_loss(outputs, target, weights=weights).item() == pytest.approx(expected, rel=1e-6)


def test_icnet_loss_ignore_label():
    outputs, target, (l4, _, _) = _loss_case()
    # Ignoring the single 1/16 sample zeroes that term (no NaN), the others are unchanged.
    t2 = target.clone()
    t2[0, 0, 0] = 255
    l4b = (13 * _ce2(2, 0, 0) + _ce2(2, 0, 1)) / 14       # (0,0) was a 1/4 sample of class 0
    l8b = (_ce2(1, 0, 0) + _ce2(0.5, 0, 0) + _ce2(0, 3, 1)) / 3
    assert icnet_loss(outputs, t2).item() == pytest.approx(l4b + 0.4 * l8b + 0.4 * 0.0, rel=1e-6)
    # Changing ignored or non-sampled pixels changes nothing.
    t3 = target.clone()
    t3[0, 1:4, 1:4] = 0
    assert icnet_loss(outputs, t3).item() == pytest.approx(icnet_loss(outputs, target).item(), rel=1e-7)
    # A custom ignore index.
    t4 = target.clone()
    t4[t4 == 255] = 7
    assert icnet_loss(outputs, t4, ignore_index=7).item() == pytest.approx(icnet_loss(outputs, target).item())
    # A bare tensor (eval output / main term only).
    assert icnet_loss(outputs["out"], target).item() == pytest.approx(l4, rel=1e-6)


def test_model_loss_backward_reaches_clg(small_model):
    m = ICNet(num_classes=3, aux=True, clg_weights=GEOMETRIC_LAMBDAS).train()
    x = torch.randn(2, 3, 49, 65)
    target = torch.randint(0, 3, (2, 49, 65))
    target[:, :5] = 255
    outputs = m(x)
    loss = m.loss(outputs, target)
    assert loss.item() == pytest.approx(icnet_loss(outputs, target, weights=GEOMETRIC_LAMBDAS).item())
    loss.backward()
    assert all(p.grad is not None for p in m.clg.parameters())
    assert m.backbone.stem[0][0].weight.grad is not None


def test_backbone_weights_from_local_file(tmp_path, small_model):
    path = tmp_path / "trunk.pt"
    torch.save({"state_dict": {f"backbone.{k}": v for k, v in small_model.backbone.state_dict().items()}}, path)
    m = ICNet(num_classes=3, backbone_weights=path)
    for (k, a), (_, b) in zip(small_model.backbone.state_dict().items(), m.backbone.state_dict().items()):
        assert torch.equal(a, b), k
    bad = tmp_path / "bad.pt"
    torch.save({"nope": torch.zeros(1)}, bad)
    with pytest.raises(RuntimeError):
        ICNet(num_classes=3, backbone_weights=bad)


def test_every_builtin_baseline_through_get_model():
    import nasplat

    assert set(nasplat.available_models()) >= {"duc_hdc", "deeplabv3plus", "icnet"}
    model = nasplat.get_model("icnet", num_classes=4).eval()
    with torch.no_grad():
        assert tuple(model(torch.randn(1, 3, 33, 47)).shape) == (1, 4, 33, 47)
    with pytest.raises(KeyError, match="registered models: deeplabv3plus, duc_hdc, icnet"):
        nasplat.get_model("unet", num_classes=4)
