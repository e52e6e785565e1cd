"""One worker's share of a retrain, in plain PyTorch (no Ray, no MLflow).

A searched genotype and a hand-designed baseline go through the same code: :class:`ModelSpec`
says how to build the network, :class:`Retrainer` trains it (SGD with momentum and weight decay,
poly learning rate stepped per iteration, ignore label 255, the model's own ``loss`` when it has
one, gradients averaged across workers) and evaluates it (:func:`evaluate_model`: mIoU, per-class
IoU, confusion matrix; optionally multi-scale and flipped). Model checkpoints are self-describing:
:func:`load_model_checkpoint` rebuilds the network from the file alone.
"""
from __future__ import annotations

import dataclasses
import math
import pickle
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import (
    ConcatDataset,
    DataLoader,
    Dataset,
    DistributedSampler,
    Subset,
)

from nasplat.training.config import ConfigError
from nasplat.data.sources import search_data
from nasplat.training.collectives import (
    average_,
    average_buffers_,
    broadcast_module_,
    rank,
    world_size,
)
from nasplat.spaces.registry import genotype_from_dict
from nasplat.training.metrics import IGNORE_INDEX, ConfusionMatrix
from nasplat.models import get_model
from nasplat.retraining.config import GENOTYPE_DEFAULT_OPTIONS, RetrainConfig
from nasplat.searching.loop import seed_everything
from nasplat.spaces.registry import get_space

CHECKPOINT_FORMAT = "nasplat-model"
CHECKPOINT_VERSION = 1
STATE_FILE = "retrain_state.pt"
BEST_MODEL_FILE = "best_model.pt"
DATA_FIELDS = ("dataset", "data_root", "image_size", "train_samples", "val_samples", "seed")
"""Config fields that fix the data; checkpoints record them so ``evaluate`` sees the same split."""


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """How to build a network: a genotype (dict form) or a registered baseline name, plus options."""

    num_classes: int
    class_names: tuple[str, ...]
    genotype: dict | None = None
    baseline: str | None = None
    options: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if (self.genotype is None) == (self.baseline is None):
            raise ConfigError("a model spec needs exactly one of 'genotype' and 'baseline'")
        if len(self.class_names) != self.num_classes:
            raise ConfigError(f"model spec: {len(self.class_names)} class names for {self.num_classes} classes")

    @classmethod
    def from_source(cls, source: Mapping[str, Any], num_classes: int, class_names: Sequence[str]) -> ModelSpec:
        """``source`` = {"genotype": dict} or {"baseline": name}, with optional "options"; a genotype's
        options start from :data:`GENOTYPE_DEFAULT_OPTIONS` of its space."""
        genotype, baseline = source.get("genotype"), source.get("baseline")
        options = dict(source.get("options") or {})
        if genotype is not None:
            options = {**GENOTYPE_DEFAULT_OPTIONS.get(str(genotype.get("space")), {}), **options}
        return cls(int(num_classes), tuple(class_names), genotype=genotype, baseline=baseline, options=options)

    def build(self) -> nn.Module:
        """The network; a baseline from the model registry, a genotype through its space's ``build``."""
        try:
            if self.baseline is not None:
                return get_model(self.baseline, num_classes=self.num_classes, **self.options)
            genotype = genotype_from_dict(self.genotype)
            return get_space(genotype.space).build(genotype, self.num_classes, **self.options)
        except TypeError as err:
            raise ConfigError(f"config field 'model_options' {self.options!r} does not fit {self.label()}: {err}") from None

    def label(self) -> str:
        """A short human name: ``darts:<genotype hash>`` or ``deeplabv3plus(backbone=mobilenet_v2)``."""
        if self.baseline is not None:
            options = ",".join(f"{k}={v}" for k, v in sorted(self.options.items()))
            return self.baseline + (f"({options})" if options else "")
        genotype = genotype_from_dict(self.genotype)
        return f"{genotype.space}:{genotype.short_hash()}"

    def to_dict(self) -> dict[str, Any]:
        return {"num_classes": self.num_classes, "class_names": list(self.class_names), "genotype": self.genotype,
                "baseline": self.baseline, "options": dict(self.options)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelSpec:
        return cls(int(data["num_classes"]), tuple(data["class_names"]), genotype=data.get("genotype"),
                   baseline=data.get("baseline"), options=dict(data.get("options") or {}))


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


def predict_probabilities(
    model: nn.Module, images: torch.Tensor, size: Sequence[int], scales: Sequence[float] = (1.0,), flip: bool = False
) -> torch.Tensor:
    """Class probabilities [N,C,*size]: the softmax averaged over ``scales`` (the image resized
    bilinearly by each factor) and, with ``flip``, over horizontally flipped copies (flipped back),
    each resized bilinearly to ``size`` before averaging. The model must be in eval mode."""
    height, width = images.shape[-2:]
    total, count = None, 0
    for scale in scales:
        scaled = images
        if scale != 1.0:
            target = (max(1, round(height * scale)), max(1, round(width * scale)))
            scaled = F.interpolate(images, size=target, mode="bilinear", align_corners=False)
        views = [(scaled, False), (scaled.flip(-1), True)] if flip else [(scaled, False)]
        for view, flipped in views:
            probs = torch.softmax(model(view).float(), dim=1)
            if flipped:
                probs = probs.flip(-1)
            if tuple(probs.shape[-2:]) != tuple(size):
                probs = F.interpolate(probs, size=tuple(size), mode="bilinear", align_corners=False)
            total = probs if total is None else total + probs
            count += 1
    return total / count


@torch.no_grad()
def evaluate_model(
    model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], class_names: Sequence[str],
    scales: Sequence[float] = (1.0,), flip: bool = False, device: torch.device | str = "cpu",
) -> dict[str, Any]:
    """Loss, mIoU, pixel accuracy, per-class IoU and confusion matrix over ``batches`` (summed
    across workers when torch.distributed is initialised). ``val_loss`` is the mean negative log of
    the averaged probability of the true class (cross-entropy for one scale without flip)."""
    model.eval()
    device = torch.device(device)
    matrix = ConfusionMatrix(len(class_names))
    sums = torch.zeros(2, dtype=torch.float64, device=device)  # loss sum, labelled pixels
    for images, masks in batches:
        images, masks = images.to(device), masks.to(device)
        probs = predict_probabilities(model, images, masks.shape[-2:], scales, flip)
        log_probs = probs.clamp_min(1e-12).log()
        sums[0] += F.nll_loss(log_probs, masks, ignore_index=IGNORE_INDEX, reduction="sum").double()
        sums[1] += (masks != IGNORE_INDEX).sum()
        matrix.update(probs.argmax(1), masks)
    matrix.all_reduce()
    if world_size() > 1:
        torch.distributed.all_reduce(sums)
    iou = matrix.iou()
    return {
        "val_loss": float(sums[0] / sums[1].clamp_min(1)),
        "val_miou": matrix.miou(),
        "val_pixel_acc": matrix.pixel_accuracy(),
        "val_iou": {name: float(v) for name, v in zip(class_names, iou)},
        "confusion_matrix": matrix.matrix.cpu().tolist(),
    }


def save_model_checkpoint(path: str | Path, spec: ModelSpec, state_dict: Mapping[str, torch.Tensor],
                          **extra: Any) -> Path:
    """Write a self-describing model file: format tag, model spec, state_dict and ``extra`` (plain values)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "spec": spec.to_dict(),
               "state_dict": {k: v.detach().cpu() for k, v in state_dict.items()}, **extra}
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)
    return path


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a model file (``weights_only=True``) and check it is one; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as err:
        raise ConfigError(f"{path}: not a readable checkpoint ({err})") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ConfigError(f"{path}: not a nasplat model checkpoint (no format '{CHECKPOINT_FORMAT}')")
    if payload.get("version") != CHECKPOINT_VERSION:
        raise ConfigError(f"{path}: unsupported checkpoint version {payload.get('version')!r} (expected {CHECKPOINT_VERSION})")
    return payload


def load_model_checkpoint(path: str | Path, device: torch.device | str = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the network of a model file with its weights, in eval mode; also return the payload."""
    payload = read_checkpoint(path)
    model = ModelSpec.from_dict(payload["spec"]).build()
    model.load_state_dict(payload["state_dict"])
    return model.to(device).eval(), payload


def validation_split(data: Mapping[str, Any]) -> tuple[Dataset, tuple[str, ...], int]:
    """The validation dataset, class names and class count of a checkpoint's ``data`` record."""
    splits = search_data(data["dataset"], int(data["image_size"]), int(data["train_samples"]),
                         int(data["val_samples"]), int(data["seed"]), data.get("data_root"))
    return splits.val, splits.class_names, splits.num_classes


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite."""


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
        self.spec = ModelSpec.from_source(source, data.num_classes, data.class_names)
        self.model = self.spec.build().to(self.device)
        broadcast_module_(self.model)
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
        self.val_loader = DataLoader(Subset(data.val, range(rank(), len(data.val), world_size())),
                                     batch_size=config.batch_size)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=config.lr, momentum=config.momentum,
                                         weight_decay=config.weight_decay)
        self.total_iters = config.epochs * len(self.train_loader)
        self.scheduler = poly_scheduler(self.optimizer, self.total_iters, config.poly_power)
        self.epoch = 0
        self.best: dict[str, Any] = {"val_miou": -math.inf, "epoch": 0, "metrics": {}, "state_dict": None}

    def train_epoch(self) -> dict[str, float]:
        """One pass over this worker's shard; returns train_loss, lr (at the epoch's start), time, samples/s."""
        self.model.train()
        self.sampler.set_epoch(self.epoch)
        started, samples, steps = time.perf_counter(), 0, 0
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)  # read once per epoch: no sync per step
        lr = self.optimizer.param_groups[0]["lr"]
        params = [p for p in self.model.parameters() if p.requires_grad]
        for images, masks in self.train_loader:
            images, masks = images.to(self.device), masks.to(self.device)
            loss = segmentation_loss(self.model, self.model(images), masks, self.config.aux_weight)
            self.optimizer.zero_grad(set_to_none=False)
            loss.backward()
            average_([p.grad for p in params])
            self.optimizer.step()
            self.scheduler.step()
            loss_sum += loss.detach()
            steps += 1
            samples += images.shape[0]
        loss_mean = (loss_sum / max(steps, 1)).reshape(1)
        average_([loss_mean])  # every rank sees the same value, so all of them stop together
        if not math.isfinite(float(loss_mean)):
            raise TrainingDiverged(
                f"training diverged in epoch {self.epoch + 1}: the mean training loss is {float(loss_mean)} "
                f"(lr {lr:g}, batch size {self.config.batch_size}); lower --lr or raise --image-size"
            )
        elapsed = time.perf_counter() - started
        self.epoch += 1
        return {"train_loss": float(loss_mean), "lr": lr, "epoch_time_s": elapsed,
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
                "scheduler": self.scheduler.state_dict(), "epoch": self.epoch, "best": self.best,
                "torch_rng": torch.get_rng_state(), "spec": self.spec.to_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.epoch = int(state["epoch"])
        self.best = dict(state["best"])
        torch.set_rng_state(state["torch_rng"])

    def save(self, directory: str | Path) -> Path:
        """Training state (resume) and the best model file into ``directory``."""
        directory = Path(directory)
        path = directory / STATE_FILE
        torch.save(self.state_dict(), path.with_suffix(".tmp"))
        path.with_suffix(".tmp").replace(path)
        if self.best["state_dict"] is not None:
            self.save_best(directory / BEST_MODEL_FILE)
        return path

    def restore(self, directory: str | Path) -> None:
        path = Path(directory) / STATE_FILE
        # on the CPU: load_state_dict moves weights and optimiser state to the parameters' device, and the
        # torch RNG state must stay a CPU tensor
        self.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
