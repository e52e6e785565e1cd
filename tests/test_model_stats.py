"""Parameter, FLOP and latency figures against hand-computed values."""
import time

import pytest
import torch
from torch import nn

from nasplat.training.model_stats import count_flops, count_parameters, measure_latency


def test_parameters_of_known_layers():
    # Conv2d(3, 64, 7) with bias: 64*3*7*7 weights + 64 biases = 9472.
    assert count_parameters(nn.Conv2d(3, 64, 7)) == 9472
    # BatchNorm2d(64): weight and bias (running stats are buffers) = 128.
    assert count_parameters(nn.BatchNorm2d(64)) == 128
    # Linear(512, 1000): 512000 + 1000 (torchvision ResNet-18 head).
    assert count_parameters(nn.Linear(512, 1000)) == 513000


def test_shared_parameter_counted_once_and_trainable_filter():
    layer = nn.Linear(4, 4)  # 20 parameters
    model = nn.Sequential(layer, nn.ReLU(), layer)
    assert count_parameters(model) == 20
    frozen = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))  # 20 + 10
    frozen[0].requires_grad_(False)
    assert count_parameters(frozen) == 30
    assert count_parameters(frozen, trainable_only=True) == 10


def test_conv_flops_are_two_per_multiply_add():
    cin, cout, k, h, w = 3, 8, 3, 16, 20
    conv = nn.Conv2d(cin, cout, k, padding=1, bias=False)
    assert count_flops(conv, (1, cin, h, w)) == 2 * cin * cout * k * k * h * w
    # stride 2 halves each output side; batch 2 doubles the total
    strided = nn.Conv2d(cin, cout, k, stride=2, padding=1, bias=False)
    assert count_flops(strided, (2, cin, h, w)) == 2 * 2 * cin * cout * k * k * (h // 2) * (w // 2)


def test_grouped_conv_and_linear_flops():
    depthwise = nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False)
    assert count_flops(depthwise, (1, 16, 8, 8)) == 2 * 1 * 16 * 3 * 3 * 8 * 8

    class Head(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(12, 5)

        def forward(self, x):
            return self.fc(x.flatten(1))

    # input (1,3,2,2) flattens to 12 features: 2 * 12 * 5 = 120
    assert count_flops(Head(), (1, 3, 2, 2)) == 120


def test_flops_restore_training_mode_and_reject_bad_size():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4))
    model.train()
    count_flops(model, (1, 3, 4, 4))
    assert model.training
    with pytest.raises(ValueError, match="input_size"):
        count_flops(model, (3, 4, 4))


class _Sleeper(nn.Module):
    """Sleeps a fixed time and records the mode it ran in."""

    def __init__(self, seconds: float):
        super().__init__()
        self.seconds = seconds
        self.seen: list[tuple[bool, bool]] = []

    def forward(self, x):
        self.seen.append((self.training, torch.is_inference_mode_enabled()))
        time.sleep(self.seconds)
        return x


def test_latency_measures_wall_time_in_eval_inference_mode():
    model = _Sleeper(0.02)
    stats = measure_latency(model, (2, 3, 4, 4), warmup=1, repeats=3)
    assert len(model.seen) == 4  # 1 warmup + 3 timed
    assert all(seen == (False, True) for seen in model.seen)
    assert model.training  # restored
    assert 20.0 <= stats["min_ms"] <= stats["median_ms"] <= stats["max_ms"]
    assert stats["median_ms"] < 2000.0
    assert stats["repeats"] == 3
    assert stats["throughput_per_s"] == pytest.approx(2 * 1000.0 / stats["median_ms"])
    with pytest.raises(ValueError, match="repeats"):
        measure_latency(model, (1, 3, 4, 4), repeats=0)
