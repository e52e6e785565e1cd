"""Retrain loop without Ray or MLflow: schedule, loss, evaluation averaging, checkpoints, config errors."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from nasplat.training.config import ConfigError
from nasplat.retraining.config import RetrainConfig
from nasplat.retraining.loop import Retrainer, poly_scheduler, segmentation_loss
from nasplat.training.divergence import TrainingDiverged
from nasplat.retraining.model_file import ModelSpec, load_model_checkpoint, read_checkpoint
from nasplat.training.evaluation import evaluate_model, predict_probabilities
from search_spaces.darts import DARTS_V2

TINY = {"image_size": 16, "train_samples": 16, "val_samples": 4, "batch_size": 4, "workers": 1}
DARTS_SOURCE = {"genotype": DARTS_V2.to_dict(), "options": {"C": 4, "layers": 3, "head_channels": 8}}


def test_poly_schedule_matches_the_deeplab_formula():
    param = nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=0.1)
    scheduler = poly_scheduler(optimizer, total_iters=10, power=0.9)
    for t in range(1, 11):
        optimizer.step()
        scheduler.step()
        assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * (1 - t / 10) ** 0.9, rel=1e-9, abs=1e-15)


def test_retrainer_steps_the_schedule_once_per_iteration():
    trainer = Retrainer(RetrainConfig(**TINY, epochs=4, lr=0.2), DARTS_SOURCE)
    steps = len(trainer.train_loader)
    assert steps == 4  # 16 samples, batch 4, one worker
    first = trainer.train_epoch()
    assert first["lr"] == pytest.approx(0.2)  # lr at the start of the epoch
    assert math.isfinite(first["train_loss"]) and first["samples_per_s"] > 0
    # after one of four epochs, t/T = 1/4
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(0.2 * (1 - 1 / 4) ** 0.9, rel=1e-9)


class _Ramp(nn.Module):
    """Class-0 logit rises from -2 (left) to +2 (right) whatever the image; class-1 logit is 0."""

    def forward(self, x):
        n, _, h, w = x.shape
        ramp = torch.linspace(-2.0, 2.0, w).expand(n, h, w)
        return torch.stack([ramp, torch.zeros_like(ramp)], dim=1)


class _SizeDependent(nn.Module):
    """Class-0 logit = input height / 10 everywhere; class-1 logit 0."""

    def forward(self, x):
        n, _, h, w = x.shape
        return torch.stack([torch.full((n, h, w), h / 10.0), torch.zeros(n, h, w)], dim=1)


def test_flip_averaging_flips_the_prediction_back():
    images = torch.zeros(1, 3, 4, 6)
    plain = predict_probabilities(_Ramp(), images, (4, 6))
    assert plain[0, 0, 0, 0] == pytest.approx(1 / (1 + math.exp(2.0)))  # sigmoid(-2) on the left
    both = predict_probabilities(_Ramp(), images, (4, 6), flip=True)
    # sigmoid(r) and, flipped back, sigmoid(-r) at each column: their mean is exactly 1/2
    torch.testing.assert_close(both, torch.full_like(both, 0.5))


def test_multiscale_averages_softmax_resized_to_the_label_size():
    images = torch.zeros(2, 3, 8, 8)
    probs = predict_probabilities(_SizeDependent(), images, (8, 8), scales=(0.5, 1.0))
    assert probs.shape == (2, 2, 8, 8)
    sigmoid = lambda z: 1 / (1 + math.exp(-z))
    expected = (sigmoid(0.4) + sigmoid(0.8)) / 2  # heights 4 and 8
    torch.testing.assert_close(probs[:, 0], torch.full((2, 8, 8), expected))
    torch.testing.assert_close(probs.sum(1), torch.ones(2, 8, 8))


class _Fixed(nn.Module):
    def __init__(self, prediction):
        super().__init__()
        self.prediction = prediction

    def forward(self, x):
        return nn.functional.one_hot(self.prediction, 2).permute(0, 3, 1, 2).float() * 10


def test_evaluate_model_on_a_hand_computed_case():
    labels = torch.tensor([[[0, 1], [1, 255]]])
    prediction = torch.tensor([[[0, 0], [1, 1]]])
    result = evaluate_model(_Fixed(prediction), [(torch.zeros(1, 3, 2, 2), labels)], ("a", "b"))
    # class a: TP 1, FP 1 (pixel (0,1)), FN 0 -> 1/2; class b: TP 1, FN 1, FP 0 (pixel (1,1) is ignored) -> 1/2
    assert result["val_iou"] == {"a": pytest.approx(0.5), "b": pytest.approx(0.5)}
    assert result["val_miou"] == pytest.approx(0.5)
    assert result["confusion_matrix"] == [[1, 0], [1, 1]]
    assert result["val_pixel_acc"] == pytest.approx(2 / 3)


def test_loss_uses_the_models_own_loss_or_weighted_aux_terms():
    class WithLoss(nn.Module):
        def loss(self, outputs, target, ignore_index=255):
            return torch.tensor(7.0)

    target = torch.zeros(1, 4, 4, dtype=torch.long)
    assert float(segmentation_loss(WithLoss(), None, target)) == 7.0
    outputs = {"out": torch.zeros(1, 3, 4, 4), "aux": torch.zeros(1, 3, 2, 2)}
    # uniform logits over 3 classes: each cross-entropy is log 3
    assert float(segmentation_loss(nn.Identity(), outputs, target, aux_weight=0.4)) == pytest.approx(1.4 * math.log(3))
    ignored = torch.full((1, 4, 4), 255)
    ignored[0, 0, 0] = 1
    logits = torch.zeros(1, 3, 4, 4)
    logits[0, 1, 0, 0] = 2.0
    expected = -math.log(math.exp(2) / (math.exp(2) + 2))  # only the one labelled pixel counts
    assert float(segmentation_loss(nn.Identity(), logits, ignored)) == pytest.approx(expected)


def test_darts_genotype_gets_small_default_options_that_the_user_overrides():
    spec = ModelSpec.from_source({"genotype": DARTS_V2.to_dict(), "options": {"C": 6}}, 2, ("a", "b"))
    assert spec.options == {"C": 6, "layers": 5, "reductions": 2, "head_channels": 64}
    baseline = ModelSpec.from_source({"baseline": "icnet"}, 2, ("a", "b"))
    assert baseline.options == {} and baseline.label() == "icnet"
    with pytest.raises(ConfigError, match="model_options"):
        ModelSpec.from_source({"baseline": "deeplabv3plus", "options": {"C": 4}}, 2, ("a", "b")).build()


@pytest.mark.parametrize("source, size", [
    (DARTS_SOURCE, 16), ({"baseline": "deeplabv3plus", "options": {"backbone": "mobilenet_v2"}}, 32)])
def test_model_file_rebuilds_the_network_alone(tmp_path, source, size):
    trainer = Retrainer(RetrainConfig(**{**TINY, "image_size": size}, epochs=1), source)
    trainer.train_epoch()
    assert trainer.update_best(trainer.evaluate())
    path = trainer.save_best(tmp_path / "best.pt")
    model, payload = load_model_checkpoint(path)
    assert payload["spec"] == trainer.spec.to_dict() and payload["data"]["image_size"] == size
    trainer.model.load_state_dict(trainer.best["state_dict"])
    trainer.model.eval()
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        torch.testing.assert_close(model(x), trainer.model(x))


def test_reading_a_foreign_file_names_it(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(1)}, path)
    with pytest.raises(ConfigError, match="other.pt: not a nasplat model checkpoint"):
        read_checkpoint(path)
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        read_checkpoint(tmp_path / "missing.pt")


def test_resumed_training_matches_uninterrupted_training(tmp_path):
    config = RetrainConfig(**TINY, epochs=2)
    straight = Retrainer(config, DARTS_SOURCE)
    for _ in range(2):
        straight.train_epoch()
        straight.update_best(straight.evaluate())
    first = Retrainer(config, DARTS_SOURCE)
    first.train_epoch()
    first.update_best(first.evaluate())
    first.save(tmp_path)
    resumed = Retrainer(config, DARTS_SOURCE)
    resumed.restore(tmp_path)
    assert resumed.epoch == 1
    resumed.train_epoch()
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        torch.testing.assert_close(a, b, msg=name)
    assert resumed.optimizer.param_groups[0]["lr"] == pytest.approx(straight.optimizer.param_groups[0]["lr"])


@pytest.mark.parametrize("fields, message", [
    ({"genotype": "g.json", "baseline": "icnet"}, "'genotype', 'baseline': give exactly one"),
    ({"eval_scales": [1.0, 0]}, "'eval_scales'"),
    ({"lr_range": [0.1, 0.01]}, "'lr_range'"),
    ({"batch_sizes": [4, 0]}, "'batch_sizes'"),
    ({"lr": 0}, "'lr' must be a number > 0"),
    ({"model_options": "C=4"}, "'model_options' must be a mapping"),
    ({"placement_strategy": "spread"}, "'placement_strategy' must be one of"),
])
def test_config_errors_name_the_field(fields, message):
    with pytest.raises(ConfigError, match=message):
        RetrainConfig(**fields)


def test_a_batch_larger_than_a_workers_share_is_refused_before_training():
    from nasplat.runtime.preflight import check_dataset

    config = RetrainConfig(train_samples=8, batch_size=8, workers=2)  # 4 samples per worker
    with pytest.raises(ConfigError, match=r"'batch_size' \(8\) is larger than a worker's share .*\(4 samples"):
        check_dataset(config, lambda data: len(data.train_a) + len(data.train_b))


def test_config_from_dict_rejects_unknown_fields_and_round_trips():
    with pytest.raises(ConfigError, match="retrain.yaml: unknown field 'learning_rate'"):
        RetrainConfig.from_dict({"learning_rate": 0.1}, source="retrain.yaml")
    config = RetrainConfig(baseline="icnet", eval_scales=[0.75, 1.0])
    assert RetrainConfig.from_dict(config.to_dict()) == config
    assert config.replace(epochs=3).epochs == 3


def test_a_diverging_run_stops_with_a_clear_error():
    trainer = Retrainer(RetrainConfig(**TINY, epochs=1, lr=1e30), DARTS_SOURCE)
    with pytest.raises(TrainingDiverged, match=r"diverged in epoch 1: .*lower --lr"):
        trainer.train_epoch()


def test_retrains_on_cityscapes_shards_with_their_19_classes(tmp_path):
    from nasplat.data.fixtures import make_cityscapes_fixture
    from pipelines.data import prepare

    prepare("cityscapes", tmp_path / "shards", root=str(make_cityscapes_fixture(tmp_path / "cs")), progress=None)
    config = RetrainConfig(dataset=f"parquet:{tmp_path / 'shards'}", image_size=16, batch_size=2, workers=1, epochs=1)
    trainer = Retrainer(config, {"baseline": "deeplabv3plus", "options": {"backbone": "mobilenet_v2"}})
    assert trainer.spec.num_classes == 19 and trainer.spec.class_names[0] == "road"
    assert math.isfinite(trainer.train_epoch()["train_loss"])
    metrics = trainer.evaluate()
    assert 0.0 <= metrics["val_miou"] <= 1.0
    matrix = torch.tensor(metrics["confusion_matrix"])
    labelled = sum(int((masks != 255).sum()) for _, masks in trainer.val_loader)
    assert matrix.shape == (19, 19) and int(matrix.sum()) == labelled > 0  # ignore pixels (255) are not counted
