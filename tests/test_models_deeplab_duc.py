"""DUC+HDC and DeepLabV3+ baselines: exact parameter counts, rates, strides, shapes, registration.

Big models are built once per module (fixtures); parameter counts use the ``meta`` device (no
memory, no init cost); forward passes use tiny inputs and few classes.
"""
from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nasplat.models import deeplabv3plus as dl
from nasplat.models import duc_hdc as duc
from nasplat.models.registry import _MODELS
from nasplat.retraining.loop import segmentation_loss


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def meta_count(factory, *args, **kwargs) -> int:
    with torch.device("meta"):
        return n_params(factory(*args, **kwargs))


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def duc_model() -> duc.DUCHDC:
    torch.manual_seed(0)
    return duc.DUCHDC(num_classes=3).eval()


@pytest.fixture(scope="module")
def dl_resnet() -> dl.DeepLabV3Plus:
    torch.manual_seed(0)
    return dl.DeepLabV3Plus(num_classes=3, backbone="resnet101", output_stride=16).eval()


@pytest.fixture(scope="module")
def dl_mobilenet() -> dl.DeepLabV3Plus:
    torch.manual_seed(0)
    return dl.DeepLabV3Plus(num_classes=3, backbone="mobilenet_v2", output_stride=16).eval()


@pytest.fixture(scope="module")
def dl_mobilenet_os8() -> dl.DeepLabV3Plus:
    torch.manual_seed(0)
    return dl.DeepLabV3Plus(num_classes=3, backbone="mobilenet_v2", output_stride=8).eval()


# --------------------------------------------------------------------------- parameter counts


def test_duc_hdc_param_count_19_classes_exact():
    assert meta_count(duc.DUCHDC, 19) == 64_914_688
    # split: torchvision R101 without fc + DUC head (4 x (2048*9*304 + 304))
    with torch.device("meta"):
        m = duc.DUCHDC(19)
    assert n_params(m.backbone) == 42_500_160
    assert n_params(m.head) == 22_414_528
    assert not hasattr(m.backbone, "fc") and not hasattr(m.backbone, "avgpool")


def test_duc_hdc_param_count_r8():
    # torchvision stem: 42,500,160 + 4 x (2048*9*1216 + 1216). REFERENCES' 132,282,048 is the
    # deep-stem replica's count (+123,776, the same stem difference as 65,038,464 - 64,914,688).
    assert meta_count(duc.DUCHDC, 19, r=8) == 42_500_160 + 4 * (2048 * 9 * 64 * 19 + 64 * 19) == 132_158_272


@pytest.mark.parametrize(
    ("backbone", "num_classes", "expected"),
    [
        ("resnet101", 21, 59_344_309),
        ("resnet101", 19, 59_343_795),
        ("mobilenet_v2", 21, 5_816_053),
        ("mobilenet_v2", 19, 5_815_539),
    ],
)
def test_deeplabv3plus_param_counts_os16(backbone, num_classes, expected):
    assert meta_count(dl.DeepLabV3Plus, num_classes, backbone=backbone, output_stride=16) == expected


def test_deeplabv3plus_resnet_param_split():
    with torch.device("meta"):
        m = dl.DeepLabV3Plus(21, backbone="resnet101")
    assert n_params(m.backbone) == 42_500_160
    assert n_params(m.aspp) == 15_535_104
    assert n_params(m.decoder) == 1_309_045


def test_output_stride_does_not_change_param_count():
    assert meta_count(dl.DeepLabV3Plus, 21, backbone="mobilenet_v2", output_stride=8) == 5_816_053
    assert meta_count(dl.DeepLabV3Plus, 21, backbone="resnet101", output_stride=8) == 59_344_309


# --------------------------------------------------------------------------- DUC+HDC structure


# TuSimple-DUC networks/resnet.py (REFERENCES section 4): res4 [1,2,5,9][i mod 4] except block 0 = 2;
# res5 5, 9, 17. Written out:
RELEASE_RES4_RATES = [2, 2, 5, 9, 1, 2, 5, 9, 1, 2, 5, 9, 1, 2, 5, 9, 1, 2, 5, 9, 1, 2, 5]
RELEASE_RES5_RATES = [5, 9, 17]


def test_hdc_per_block_rates_and_strides(duc_model):
    bb = duc_model.backbone
    layer3 = [b.conv2.dilation[0] for b in bb.layer3]
    layer4 = [b.conv2.dilation[0] for b in bb.layer4]
    assert len(RELEASE_RES4_RATES) == 23
    assert layer3 == RELEASE_RES4_RATES
    assert layer4 == RELEASE_RES5_RATES
    for block in list(bb.layer3) + list(bb.layer4):
        assert block.conv2.padding == block.conv2.dilation  # same-size 3x3
        assert block.conv2.dilation[0] == block.conv2.dilation[1]
        assert block.conv2.stride == (1, 1)
        if block.downsample is not None:
            assert block.downsample[0].stride == (1, 1)
    # layers 1-2 untouched: dilation 1, layer2 still strided
    assert all(b.conv2.dilation == (1, 1) for b in list(bb.layer1) + list(bb.layer2))
    assert bb.layer2[0].conv2.stride == (2, 2)


def test_hdc_backbone_output_stride_8(duc_model):
    with torch.no_grad():
        feat = duc_model.backbone(torch.randn(1, 3, 64, 64))
    assert feat.shape == (1, 2048, 8, 8)


def test_duc_head_is_pixelshuffle_of_summed_branches():
    torch.manual_seed(0)
    head = duc.DUCHead(in_channels=8, num_classes=2, r=4)
    assert [c.dilation[0] for c in head.branches] == [6, 12, 18, 24]
    assert all(c.bias is not None and c.out_channels == 32 and c.kernel_size == (3, 3) for c in head.branches)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in head.modules())
    for c in head.branches:
        nn.init.normal_(c.bias)  # non-zero biases so they count in the check
    x = torch.randn(2, 8, 5, 7)
    with torch.no_grad():
        summed = sum(F.conv2d(x, c.weight, c.bias, padding=c.dilation, dilation=c.dilation) for c in head.branches)
        out = head(x)
    assert out.shape == (2, 2, 20, 28)
    torch.testing.assert_close(out, F.pixel_shuffle(summed, 4))
    # channel c*r*r + i*r + j at (y, x) -> pixel (c, y*r + i, x*r + j)
    c, i, j, y, xx = 1, 2, 3, 4, 5
    torch.testing.assert_close(out[:, c, y * 4 + i, xx * 4 + j], summed[:, c * 16 + i * 4 + j, y, xx])


@pytest.mark.parametrize(("h", "w"), [(64, 64), (65, 97)])
def test_duc_hdc_output_at_input_size(duc_model, h, w):
    x = torch.randn(1, 3, h, w)
    with torch.no_grad():
        scores = duc_model.scores(x)
        out = duc_model(x)
    h8, w8 = (h + 7) // 8, (w + 7) // 8  # torchvision R101 stride-8 map size (ceil)
    assert scores.shape == (1, 3, 4 * h8, 4 * w8)  # r = 4: half resolution
    assert out.shape == (1, 3, h, w)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, F.interpolate(scores, size=(h, w), mode="bilinear", align_corners=False))


def test_duc_hdc_loss_is_taken_on_the_duc_output(duc_model):
    # 2 classes; DUC output 4x4 for 8x8 labels: nearest neighbour reads labels at rows/cols 0, 2, 4, 6
    target = torch.ones(1, 8, 8, dtype=torch.long)
    target[0, ::2, ::2] = 0                        # every sampled label is 0 ...
    target[0, 2, 4] = 1                            # ... but one,
    target[0, 0, 0] = 255                          # and one is ignored
    scores = torch.zeros(1, 2, 4, 4)
    scores[0, 0] = 2.0                             # logits (2, 0) everywhere
    # by hand: 14 pixels of class 0, 1 of class 1, 1 ignored
    ce0, ce1 = math.log(math.exp(2) + 1) - 2, math.log(math.exp(2) + 1)
    expected = (14 * ce0 + ce1) / 15
    model = duc_model
    assert model.loss(scores, target).item() == pytest.approx(expected, rel=1e-6)
    direct = F.cross_entropy(scores, target[:, ::2, ::2], ignore_index=255)
    assert model.loss(scores, target).item() == pytest.approx(direct.item(), rel=1e-6)
    # the unsampled pixels (all 1) do not count; a bilinear upsampling to 8x8 would count them
    upsampled = F.interpolate(scores, size=(8, 8), mode="bilinear", align_corners=False)
    assert F.cross_entropy(upsampled, target, ignore_index=255).item() > 2 * expected
    t7 = target.clone()
    t7[t7 == 255] = 7
    assert model.loss(scores, t7, ignore_index=7).item() == pytest.approx(expected, rel=1e-6)


def test_duc_hdc_trains_on_the_half_resolution_scores(duc_model):
    model = copy.deepcopy(duc_model).train()
    x = torch.randn(2, 3, 64, 64)
    target = torch.randint(0, 3, (2, 64, 64))
    target[:, :8] = 255
    with torch.no_grad():
        out = model(x)
        scores = model.scores(x)
    assert out.shape == (2, 3, 32, 32)  # r = 4: the DUC output at 1/2 resolution, not resized
    torch.testing.assert_close(out, scores)
    expected = F.cross_entropy(scores, target[:, ::2, ::2], ignore_index=255)
    # the retrain loop hands the train-mode output to the model's own loss
    assert segmentation_loss(model, out, target).item() == pytest.approx(expected.item(), rel=1e-6)
    assert model.eval()(x).shape == (2, 3, 64, 64)


def test_duc_hdc_loads_local_backbone_weights(duc_model, tmp_path):
    path = tmp_path / "r101.pth"
    state = {k: v.clone() for k, v in duc_model.backbone.state_dict().items()}
    state["fc.weight"] = torch.zeros(1000, 2048)  # an ImageNet classifier in the file is ignored
    state["fc.bias"] = torch.zeros(1000)
    torch.save(state, path)
    m = duc.DUCHDC(num_classes=3, backbone_weights=str(path))
    torch.testing.assert_close(m.backbone.layer4[2].conv3.weight, duc_model.backbone.layer4[2].conv3.weight)
    torch.testing.assert_close(m.backbone.bn1.running_var, duc_model.backbone.bn1.running_var)
    # the HDC rates survive loading
    assert [b.conv2.dilation[0] for b in m.backbone.layer4] == [5, 9, 17]


# --------------------------------------------------------------------------- DeepLabV3+ structure


def _aspp_rates(model: dl.DeepLabV3Plus) -> list[int]:
    return [m.dilation[0] for m in model.aspp.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]


def test_aspp_rates_os16_and_os8(dl_resnet, dl_mobilenet, dl_mobilenet_os8):
    assert _aspp_rates(dl_resnet) == [6, 12, 18]
    assert _aspp_rates(dl_mobilenet) == [6, 12, 18]
    assert _aspp_rates(dl_mobilenet_os8) == [12, 24, 36]
    with torch.device("meta"):
        r8 = dl.DeepLabV3Plus(3, backbone="resnet101", output_stride=8)
    assert _aspp_rates(r8) == [12, 24, 36]
    for m in (dl_resnet, dl_mobilenet_os8):
        for conv in m.aspp.modules():
            if isinstance(conv, nn.Conv2d):
                assert conv.bias is None and conv.out_channels == 256
                if conv.kernel_size == (3, 3):
                    assert conv.padding == conv.dilation
    with pytest.raises(ValueError):
        dl.aspp_rates(32)


def test_aspp_and_decoder_layout(dl_resnet):
    aspp = dl_resnet.aspp
    assert isinstance(aspp.branches[-1], dl.ASPPPooling)
    assert aspp.project[0].in_channels == 1280 and aspp.project[0].out_channels == 256
    assert aspp.dropout.p == pytest.approx(0.1)
    dec = dl_resnet.decoder
    assert (dec.low[0].in_channels, dec.low[0].out_channels) == (256, 48)
    convs3 = [m for m in dec.fuse.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs3] == [(304, 256, (3, 3)), (256, 256, (3, 3))]
    assert dec.classifier.bias is not None and dec.classifier.out_channels == 3
    with torch.device("meta"):
        m = dl.DeepLabV3Plus(3, backbone="mobilenet_v2", dropout=0.5)
    assert m.aspp.dropout.p == pytest.approx(0.5)
    assert m.decoder.low[0].in_channels == 24


def test_resnet_backbone_dilation_and_strides(dl_resnet):
    bb = dl_resnet.backbone
    assert [b.conv2.dilation[0] for b in bb.layer4] == [1, 2, 2]  # torchvision fill at OS16
    assert bb.layer4[0].conv2.stride == (1, 1) and bb.layer3[0].conv2.stride == (2, 2)
    with torch.no_grad():
        low, high = bb(torch.randn(1, 3, 64, 64))
    assert low.shape == (1, 256, 16, 16)
    assert high.shape == (1, 2048, 4, 4)
    with torch.device("meta"):
        bb8 = dl.DeepLabV3Plus(3, backbone="resnet101", output_stride=8).backbone
    assert [b.conv2.dilation[0] for b in bb8.layer3][:3] == [1, 2, 2]
    assert [b.conv2.dilation[0] for b in bb8.layer4] == [2, 4, 4]
    assert bb8.layer3[0].conv2.stride == (1, 1)


@pytest.mark.parametrize(("fixture", "hw"), [("dl_mobilenet", 4), ("dl_mobilenet_os8", 8)])
def test_mobilenet_backbone_strides(request, fixture, hw):
    bb = request.getfixturevalue(fixture).backbone
    with torch.no_grad():
        low, high = bb(torch.randn(1, 3, 64, 64))
    assert low.shape == (1, 24, 16, 16)
    assert high.shape == (1, 320, hw, hw)
    assert not any(isinstance(m, nn.Conv2d) and m.out_channels == 1280 for m in bb.modules())
    for m in bb.modules():
        if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3):
            assert m.padding == m.dilation


def test_mobilenet_dilation_schedule(dl_mobilenet, dl_mobilenet_os8):
    def schedule(model):
        feats = list(model.backbone.low_level) + list(model.backbone.high_level)
        out = []
        for block in feats:
            dw = [m for m in block.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
            out.append((dw[0].stride[0], dw[0].dilation[0]))
        return out

    os16 = schedule(dl_mobilenet)
    assert [s for s, _ in os16].count(2) == 4  # stem, blocks 2, 4, 7 keep stride 2
    assert os16[14] == (1, 1) and [d for _, d in os16[15:]] == [2, 2, 2]
    os8 = schedule(dl_mobilenet_os8)
    assert [s for s, _ in os8].count(2) == 3  # stem, blocks 2, 4
    assert os8[7] == (1, 1) and [d for _, d in os8[8:14]] == [2] * 6
    assert os8[14] == (1, 2) and [d for _, d in os8[15:]] == [4, 4, 4]


@pytest.mark.parametrize("fixture", ["dl_resnet", "dl_mobilenet", "dl_mobilenet_os8"])
@pytest.mark.parametrize(("h", "w"), [(65, 65), (64, 97)])
def test_deeplabv3plus_output_at_input_size_eval_batch1(request, fixture, h, w):
    model = request.getfixturevalue(fixture)
    assert not model.training
    with torch.no_grad():
        out = model(torch.randn(1, 3, h, w))
    assert out.shape == (1, 3, h, w)
    assert torch.isfinite(out).all()


def test_deeplabv3plus_train_mode_batch1_and_batch2():
    torch.manual_seed(0)
    model = dl.DeepLabV3Plus(num_classes=2, backbone="mobilenet_v2", output_stride=16).train()
    pool_bn = model.aspp.branches[-1].bn
    before = pool_bn.running_mean.clone()
    out = model(torch.randn(1, 3, 65, 65))  # plain BatchNorm2d would raise here
    assert out.shape == (1, 2, 65, 65)
    out.sum().backward()
    assert model.aspp.branches[-1].conv.weight.grad is not None
    torch.testing.assert_close(pool_bn.running_mean, before)  # batch-1 pooled stats not used
    out2 = model(torch.randn(2, 3, 33, 49))
    assert out2.shape == (2, 2, 33, 49)
    assert not torch.equal(pool_bn.running_mean, before)  # batch >= 2 uses batch statistics
    # plain BN would fail at batch 1: confirm the pitfall is real
    with pytest.raises(ValueError):
        nn.BatchNorm2d(4).train()(torch.randn(1, 4, 1, 1))


def test_deeplabv3plus_rejects_bad_options():
    with pytest.raises(ValueError):
        dl.DeepLabV3Plus(3, backbone="xception")
    with pytest.raises(ValueError):
        dl.DeepLabV3Plus(3, backbone="mobilenet_v2", output_stride=32)


def test_deeplabv3plus_loads_local_backbone_weights(dl_mobilenet, tmp_path):
    from torchvision.models import mobilenet_v2

    torch.manual_seed(1)
    ref = mobilenet_v2(weights=None)
    path = tmp_path / "mnv2.pth"
    torch.save(ref.state_dict(), path)
    m = dl.DeepLabV3Plus(3, backbone="mobilenet_v2", backbone_weights=path)
    torch.testing.assert_close(m.backbone.high_level[-1].conv[0][0].weight, ref.features[17].conv[0][0].weight)
    torch.testing.assert_close(m.backbone.low_level[0][0].weight, ref.features[0][0].weight)
    bad = tmp_path / "bad.pth"
    torch.save({"conv.weight": torch.zeros(1)}, bad)
    with pytest.raises(RuntimeError, match="do not match"):
        dl.DeepLabV3Plus(3, backbone="mobilenet_v2", backbone_weights=bad)


# --------------------------------------------------------------------------- registration


def test_models_registered_after_import():
    assert _MODELS["duc_hdc"] is duc.DUCHDC
    assert _MODELS["deeplabv3plus"] is dl.DeepLabV3Plus
    m = _MODELS["deeplabv3plus"](num_classes=5, backbone="mobilenet_v2", output_stride=8, dropout=0.2)
    assert isinstance(m, dl.DeepLabV3Plus)
    assert m.output_stride == 8 and m.decoder.classifier.out_channels == 5 and m.aspp.dropout.p == pytest.approx(0.2)
    with torch.device("meta"):
        d = _MODELS["duc_hdc"](num_classes=7, r=8)
    assert isinstance(d, duc.DUCHDC) and d.head.r == 8 and d.head.branches[0].out_channels == 64 * 7
