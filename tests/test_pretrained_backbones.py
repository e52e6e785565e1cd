"""Starting weights of the torchvision backbones: ``pretrained=imagenet`` through torchvision's Weights API (from
torch's hub cache here, never the network), ``backbone_weights=PATH``, and the message an offline machine gets."""
from __future__ import annotations

import urllib.error
from pathlib import Path

import pytest
import torch
from torchvision import models as tvm

from nasplat.models import deeplabv3plus as dl
from nasplat.models.pretrained import (
    PretrainedWeightsUnavailable,
    imagenet_weights,
    resolve_initial_weights,
)
from nasplat.retraining.model_file import ModelSpec


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """An empty torch hub cache whose downloads fail as they do without internet."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def no_network(url, *args, **kwargs):
        raise urllib.error.URLError(f"[Errno -3] Temporary failure in name resolution: {url}")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    return Path(torch.hub.get_dir()) / "checkpoints"


def _random_mobilenet(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return tvm.mobilenet_v2(weights=None)


def test_imagenet_means_the_classic_recipe_weights_of_each_backbone():
    assert imagenet_weights("resnet101", "imagenet") is tvm.ResNet101_Weights.IMAGENET1K_V1
    assert imagenet_weights("mobilenet_v2", "imagenet") is tvm.MobileNet_V2_Weights.IMAGENET1K_V1
    assert imagenet_weights("resnet101", "IMAGENET1K_V2") is tvm.ResNet101_Weights.IMAGENET1K_V2
    with pytest.raises(ValueError, match="choose imagenet"):
        imagenet_weights("resnet101", "coco")


def test_pretrained_imagenet_loads_torchvision_weights_into_the_backbone(offline_hub):
    # the file torchvision would download, already in the hub cache: loaded without touching the network
    reference = _random_mobilenet(7)
    offline_hub.mkdir(parents=True)
    torch.save(reference.state_dict(), offline_hub / Path(tvm.MobileNet_V2_Weights.IMAGENET1K_V1.url).name)
    model = dl.DeepLabV3Plus(3, backbone="mobilenet_v2", pretrained="imagenet")
    torch.testing.assert_close(model.backbone.low_level[0][0].weight, reference.features[0][0].weight)
    torch.testing.assert_close(model.backbone.high_level[-1].conv[2].weight, reference.features[17].conv[2].weight)
    torch.testing.assert_close(model.backbone.high_level[-1].conv[3].running_mean,
                               reference.features[17].conv[3].running_mean)
    fresh = dl.DeepLabV3Plus(3, backbone="mobilenet_v2")
    assert not torch.equal(fresh.backbone.low_level[0][0].weight, reference.features[0][0].weight)


def test_backbone_weights_file_lands_in_the_backbone(tmp_path):
    reference = _random_mobilenet(11)
    path = tmp_path / "mobilenet_v2.pth"
    torch.save({"state_dict": reference.state_dict()}, path)  # a training script's wrapper is unwrapped
    model = dl.DeepLabV3Plus(3, backbone="mobilenet_v2", backbone_weights=path)
    features = reference.features.state_dict()  # the trunk's parts keep torchvision's feature indices as keys
    loaded = {**model.backbone.low_level.state_dict(), **model.backbone.high_level.state_dict()}
    assert len(loaded) == len(features) - 6  # all but features[18], the 1x1 conv to 1280 channels the model drops
    for key, value in loaded.items():
        torch.testing.assert_close(value, features[key])
    with pytest.raises(ValueError, match="not both"):
        dl.DeepLabV3Plus(3, backbone="mobilenet_v2", backbone_weights=path, pretrained="imagenet")


def test_offline_pretrained_names_backbone_weights_as_the_way_out(offline_hub):
    with pytest.raises(PretrainedWeightsUnavailable) as caught:
        dl.DeepLabV3Plus(3, backbone="mobilenet_v2", pretrained="imagenet")
    message = str(caught.value)
    assert "backbone_weights=PATH" in message and "MobileNet_V2_Weights.IMAGENET1K_V1" in message
    assert tvm.MobileNet_V2_Weights.IMAGENET1K_V1.url in message and str(offline_hub) in message
    with pytest.raises(PretrainedWeightsUnavailable, match="ResNet101_Weights.IMAGENET1K_V1"):
        resolve_initial_weights({"pretrained": "imagenet"})  # DUC+HDC and the default DeepLabV3+ backbone


def test_offline_retrain_stops_before_ray_with_that_message(offline_hub, tmp_path, capsys):
    from pipelines.cli import main

    status = main(["retrain", "--baseline", "deeplabv3plus", "--model-option", "backbone=mobilenet_v2",
                   "--model-option", "pretrained=imagenet", "--image-size", "16", "--train-samples", "8",
                   "--val-samples", "4", "--batch-size", "2", "--workers", "1",
                   "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", "--storage", str(tmp_path / "runs")])
    err = capsys.readouterr().err
    assert status == 2 and "config field 'model_options'" in err and "backbone_weights=PATH" in err
    import ray

    assert not ray.is_initialized()


def test_initial_weight_options_are_resolved_for_workers_and_skipped_when_a_file_is_rebuilt(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="backbone_weights: no such file"):
        resolve_initial_weights({"backbone_weights": str(tmp_path / "missing.pth")})
    torch.save(_random_mobilenet(0).state_dict(), tmp_path / "w.pth")
    monkeypatch.chdir(tmp_path)
    resolved = resolve_initial_weights({"backbone_weights": "w.pth", "backbone": "mobilenet_v2"})
    assert resolved == {"backbone_weights": str(tmp_path.resolve() / "w.pth"), "backbone": "mobilenet_v2"}
    spec = ModelSpec(2, ("a", "b"), baseline="deeplabv3plus",
                     options={"backbone": "mobilenet_v2", "backbone_weights": str(tmp_path / "gone.pth")})
    assert isinstance(spec.build(initial_weights=False), dl.DeepLabV3Plus)  # the file is not needed to load weights
