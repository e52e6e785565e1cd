"""Retrain replicas in step: DistributedDataParallel and the explicit all-reduce give the same weights; mixed
precision modes; the GPU-only settings refused on CPUs."""
from __future__ import annotations

import math
import os

import pytest
import torch
from conftest import spawn_gloo
from torch import nn

from nasplat.retraining.config import RetrainConfig
from nasplat.retraining.loop import Retrainer
from nasplat.retraining.parallel import Precision, unwrap, uses_ddp
from nasplat.training.config import ConfigError
from search_spaces.darts import DARTS_V2

TINY = {"image_size": 16, "train_samples": 16, "val_samples": 4, "batch_size": 2, "workers": 2, "epochs": 2}
DARTS_SOURCE = {"genotype": DARTS_V2.to_dict(), "options": {"C": 4, "layers": 3, "head_channels": 8}}


def _ddp_and_all_reduce(rank: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    weights = {}
    for mode in ("on", "off"):
        trainer = Retrainer(RetrainConfig(**TINY, ddp=mode), DARTS_SOURCE)
        wrapped = trainer.replica is not trainer.model
        trainer.train_epoch()
        trainer.train_epoch()
        weights[mode] = {"wrapped": wrapped,
                         "params": {n: p.detach().clone() for n, p in trainer.model.named_parameters()},
                         "keys": sorted(trainer.state_dict()["model"])}
    torch.save(weights, os.path.join(out_dir, f"rank{rank}.pt"))


def test_ddp_and_the_explicit_all_reduce_train_the_same_weights(tmp_path):
    spawn_gloo(_ddp_and_all_reduce, tmp_path)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    for result in ranks:
        assert result["on"]["wrapped"] and not result["off"]["wrapped"]
        assert result["on"]["keys"] == result["off"]["keys"]  # no "module." prefix in checkpoints
        for name, ddp_value in result["on"]["params"].items():
            torch.testing.assert_close(ddp_value, result["off"]["params"][name], rtol=1e-4, atol=1e-5, msg=name)
    for name, value in ranks[0]["on"]["params"].items():  # the replicas agree
        torch.testing.assert_close(value, ranks[1]["on"]["params"][name], rtol=0, atol=1e-6, msg=name)


def test_a_single_worker_never_wraps_its_network_in_ddp():
    assert not uses_ddp("on", torch.device("cpu"))  # no process group here: a single worker
    assert not uses_ddp("auto", torch.device("cpu"))


def test_bf16_autocast_trains_on_a_cpu_close_to_full_precision():
    losses = {}
    for amp in ("off", "bf16"):
        trainer = Retrainer(RetrainConfig(**{**TINY, "workers": 1}, amp=amp), DARTS_SOURCE)
        losses[amp] = trainer.train_epoch()["train_loss"]
    assert math.isfinite(losses["bf16"])
    assert losses["bf16"] == pytest.approx(losses["off"], rel=0.05)


def test_precision_step_without_amp_is_a_plain_sgd_step():
    layer = nn.Linear(3, 1, bias=False)
    layer.weight.data.fill_(1.0)
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.5)
    precision = Precision("off", torch.device("cpu"))
    with precision.autocast():
        loss = layer(torch.tensor([[1.0, 2.0, 3.0]])).sum()
    precision.step(loss, optimizer, list(layer.parameters()), all_reduce=False)
    assert torch.equal(layer.weight.data, torch.tensor([[0.5, 0.0, -0.5]]))  # w - 0.5 * x
    assert precision.state_dict() == {} and unwrap(layer) is layer


@pytest.mark.parametrize("fields, message", [
    ({"amp": "fp16"}, "fp16 needs GPUs"),
    ({"amp": "fp8"}, "'amp' must be one of"),
    ({"ddp": "yes"}, "'ddp' must be one of"),
])
def test_precision_and_ddp_settings_are_checked(fields, message):
    with pytest.raises(ConfigError, match=message):
        RetrainConfig(**fields)


def test_fp16_without_a_gpu_is_refused_by_the_precision_itself():
    with pytest.raises(ValueError, match="needs a GPU"):
        Precision("fp16", torch.device("cpu"))
