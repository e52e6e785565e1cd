"""One worker's share of a retrain, in plain PyTorch (no Ray, no MLflow).

A searched genotype and a hand-designed baseline go through the same code: a
:class:`~nasplat.retraining.model_file.ModelSpec` says how to build the network, :class:`Retrainer` trains it
(SGD with momentum and weight decay, poly learning rate stepped per iteration, ignore label 255, the model's own
``loss`` when it has one, gradients averaged across workers) and evaluates it with the shared
:func:`~nasplat.training.evaluation.evaluate_model`.
"""
from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import ConcatDataset, DataLoader, DistributedSampler

from nasplat.data.sources import search_data
from nasplat.retraining.config import RetrainConfig
from nasplat.retraining.model_file import BEST_MODEL_FILE, DATA_FIELDS, ModelSpec, save_model_checkpoint
from nasplat.training.checkpoints import atomic_save, load_state
from nasplat.retraining.parallel import Precision, replicate, unwrap, uses_ddp
from nasplat.training.collectives import average_buffers_, broadcast_module_, rank, world_size
from nasplat.training.heartbeat import EpochHeartbeat
from nasplat.training.config import ConfigError
from nasplat.training.divergence import global_mean, require_finite
from nasplat.training.evaluation import evaluate_model, validation_loader
from nasplat.training.metrics import IGNORE_INDEX
from nasplat.training.seeding import gather_rng_states, restore_worker_rng, seed_everything

STATE_FILE = "retrain_state.pt"


def poly_scheduler(optimizer: torch.optim.Optimizer, total_iters: int, power: float) -> torch.optim.lr_scheduler.LRScheduler:
    """The "poly" policy of DeepLab: lr_t = lr * (1 - t / T) ** power, stepped once per iteration."""
    return torch.optim.lr_scheduler.PolynomialLR(optimizer, total_iters=max(1, total_iters), power=power)


def _resize_labels(target: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    if tuple(target.shape[-2:]) == tuple(size):
        return target
    return F.interpolate(target[:, None].float(), size=tuple(size), mode="nearest")[:, 0].long()


def segmentation_loss(model: nn.Module, outputs: Any, target: torch.Tensor, aux_weight: float = 0.4) -> torch.Tensor:
    """Training loss: the model's own ``loss(outputs, target, ignore_index=255)`` when it has one
    (ICNet's cascade label guidance); otherwise cross-entropy on the logits, and for a dict of
    outputs ``CE(out) + aux_weight * sum(CE(aux))`` with labels resized (nearest) to each output."""
    loss_method = getattr(model, "loss", None)
    if callable(loss_method):
        return loss_method(outputs, target, ignore_index=IGNORE_INDEX)
    if isinstance(outputs, torch.Tensor):
        return F.cross_entropy(outputs, target, ignore_index=IGNORE_INDEX)
    total = F.cross_entropy(outputs["out"], _resize_labels(target, outputs["out"].shape[-2:]), ignore_index=IGNORE_INDEX)
    for key, logits in outputs.items():
        if key != "out":
            total = total + aux_weight * F.cross_entropy(
                logits, _resize_labels(target, logits.shape[-2:]), ignore_index=IGNORE_INDEX)
    return total


class Retrainer:
    """Trains one network on this worker's shard of the whole training split (train_a + train_b)."""

    def __init__(self, config: RetrainConfig, source: Mapping[str, Any], device: torch.device | str = "cpu") -> None:
        """``source``: {"genotype": dict} or {"baseline": name}, with optional "options"."""
        self.config = config
        self.device = torch.device(device)
        seed_everything(config.seed)
        data = search_data(config.dataset, config.image_size, config.train_samples, config.val_samples,
                           config.seed, config.data_root)
        self.data_description = data.description
        self.val_data = data.val
        self.spec = ModelSpec.from_source(source, data.num_classes, data.class_names)
        self.model = self.spec.build().to(self.device)
        broadcast_module_(self.model)
        self.ddp = uses_ddp(config.ddp, self.device)
        self.replica = replicate(self.model, self.device) if self.ddp else self.model  # what training runs through
        self.model = unwrap(self.replica)  # SyncBatchNorm layers where DDP converted them
        self.precision = Precision(config.amp, self.device)
        train = ConcatDataset([data.train_a, data.train_b])
        self.sampler = DistributedSampler(train, num_replicas=world_size(), rank=rank(), shuffle=True,
                                          seed=config.seed, drop_last=True)
        self.train_loader = DataLoader(train, batch_size=config.batch_size, sampler=self.sampler, drop_last=True)
        if len(self.train_loader) == 0:
            raise ConfigError(
                f"config field 'batch_size' ({config.batch_size}) is larger than a worker's share "
                f"({len(train) // world_size()} samples) of the training split"
            )
        # every sample exactly once across workers (no DistributedSampler padding), so the mIoU is exact
        self.val_loader = validation_loader(data.val, config.batch_size)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=config.lr, momentum=config.momentum,
                                         weight_decay=config.weight_decay)
        self.total_iters = config.epochs * len(self.train_loader)
        self.scheduler = poly_scheduler(self.optimizer, self.total_iters, config.poly_power)
        self.epoch = 0
        self.best: dict[str, Any] = {"val_miou": -math.inf, "epoch": 0, "metrics": {}, "state_dict": None}
        self.worker_rng: list[dict[str, Any]] | None = None  # every worker's generators, see capture_rng()

    def train_epoch(self) -> dict[str, float]:
        """One pass over this worker's shard; returns train_loss, lr (at the epoch's start), time, samples/s."""
        self.replica.train()
        self.sampler.set_epoch(self.epoch)
        started, samples, steps = time.perf_counter(), 0, 0
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)  # read once per epoch: no sync per step
        lr = self.optimizer.param_groups[0]["lr"]
        params = [p for p in self.model.parameters() if p.requires_grad]
        heartbeat = EpochHeartbeat(f"epoch {self.epoch + 1}/{self.config.epochs}", len(self.train_loader),
                                   enabled=rank() == 0)
        for images, masks in self.train_loader:
            images, masks = images.to(self.device), masks.to(self.device)
            with self.precision.autocast():
                loss = segmentation_loss(self.model, self.replica(images), masks, self.config.aux_weight)
            self.precision.step(loss, self.optimizer, params, all_reduce=not self.ddp)
            self.scheduler.step()
            loss_sum += loss.detach()
            steps += 1
            samples += images.shape[0]
            heartbeat.beat(steps)
        loss_mean = global_mean(loss_sum, steps, self.device)  # the same on every rank: all of them stop together
        require_finite(self.epoch + 1, f"lr {lr:g}, batch size {self.config.batch_size}; lower --lr or raise "
                       "--image-size", loss=loss_mean)
        elapsed = time.perf_counter() - started
        self.epoch += 1
        return {"train_loss": loss_mean, "lr": lr, "epoch_time_s": elapsed,
                "samples_per_s": samples * world_size() / elapsed if elapsed > 0 else math.nan}

    def evaluate(self, scales: Sequence[float] | None = None, flip: bool | None = None) -> dict[str, Any]:
        """Validation metrics over the whole val split (BatchNorm statistics averaged across workers first)."""
        average_buffers_(self.model)
        return evaluate_model(
            self.model, self.val_loader, self.spec.class_names,
            scales=self.config.eval_scales if scales is None else scales,
            flip=self.config.eval_flip if flip is None else flip, device=self.device,
        )

    def update_best(self, metrics: Mapping[str, Any]) -> bool:
        """Keep the weights of the epoch with the highest val mIoU; True if this epoch is the new best."""
        miou = float(metrics["val_miou"])
        if math.isnan(miou) or miou <= self.best["val_miou"]:
            return False
        self.best = {"val_miou": miou, "epoch": self.epoch, "state_dict": {k: v.detach().cpu().clone() for k, v in
                                                                            self.model.state_dict().items()},
                     "metrics": {k: v for k, v in metrics.items() if k != "confusion_matrix"}}
        return True

    def checkpoint_extra(self) -> dict[str, Any]:
        """What a model file records besides spec and weights: data, evaluation settings, best metrics."""
        config = self.config.to_dict()
        return {"data": {k: config[k] for k in DATA_FIELDS},
                "eval": {"scales": list(self.config.eval_scales), "flip": self.config.eval_flip},
                "epoch": self.best["epoch"], "metrics": self.best["metrics"]}

    def save_best(self, path: str | Path) -> Path:
        return save_model_checkpoint(path, self.spec, self.best["state_dict"], **self.checkpoint_extra())

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "precision": self.precision.state_dict(),
                "epoch": self.epoch, "best": self.best,
                "worker_rng": self.worker_rng or gather_rng_states(), "spec": self.spec.to_dict()}

    def capture_rng(self) -> None:
        """Record every worker's generators for the next checkpoint (a collective: call it on every rank)."""
        self.worker_rng = gather_rng_states()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("spec") != self.spec.to_dict():
            raise ConfigError(f"the checkpoint trains {ModelSpec.from_dict(state['spec']).label()}, not "
                              f"{self.spec.label()}: resume it with its own model source and options")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.precision.load_state_dict(state.get("precision", {}))
        self.epoch = int(state["epoch"])
        self.best = dict(state["best"])
        restore_worker_rng(state["worker_rng"])

    def save(self, directory: str | Path) -> Path:
        """Training state (resume) and the best model file into ``directory``."""
        directory = Path(directory)
        path = atomic_save(self.state_dict(), directory / STATE_FILE)
        if self.best["state_dict"] is not None:
            self.save_best(directory / BEST_MODEL_FILE)
        return path

    def restore(self, directory: str | Path) -> None:
        self.load_state_dict(load_state(Path(directory) / STATE_FILE))
