"""One worker's share of a supernet search, in plain PyTorch (no Ray, no MLflow).

:class:`SupernetSearch` owns the supernet, both optimisers, the schedule and the data shards of
this worker; it trains one epoch at a time, evaluates mIoU (confusion matrices summed across
workers), decodes the genotype and saves/restores everything needed to resume.
"""
from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from nasplat.searching.bilevel import BilevelOptimizer
from nasplat.training.config import ConfigError
from nasplat.searching.config import SearchConfig
from nasplat.searching.cost_search import cost_objective
from nasplat.data.sources import SearchData, search_data
from nasplat.training.collectives import average_buffers_, broadcast_module_, rank, world_size
from nasplat.training.heartbeat import EpochHeartbeat
from nasplat.spaces.genotype import Genotype
from nasplat.training.checkpoints import atomic_save, load_state
from nasplat.training.divergence import global_mean, require_finite
from nasplat.training.evaluation import evaluate_model, validation_loader
from nasplat.training.metrics import IGNORE_INDEX
from nasplat.training.seeding import gather_rng_states, restore_worker_rng, seed_everything
from nasplat.searching.early_stop import EarlyStopConfig, EarlyStopper, StopDecision
from nasplat.searching.hessian import dominant_hessian_eigenvalue
from nasplat.searching.remedies import build_remedies
from nasplat.spaces.registry import get_space

CHECKPOINT_FILE = "search_state.pt"
BatchStream = Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]]
EIGENVALUE_KIND = {"paper": "magnitude", "reference": "largest"}
"""The paper tracks the dominant eigenvalue; the authors' code takes the largest algebraic one."""


def _cpu_copy(value: Any) -> Any:
    """A deep copy with every tensor cloned to the CPU (snapshots must not alias live state)."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {k: _cpu_copy(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_cpu_copy(v) for v in value)
    return value


def early_stop_config(config: SearchConfig) -> EarlyStopConfig | None:
    """The RobustDARTS rule a search config asks for (None when off); errors name the option."""
    if config.early_stop == "off":
        return None
    try:
        return EarlyStopConfig.preset(config.early_stop, mode=config.early_stop_mode, **config.early_stop_options)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"config field 'early_stop_options': {err}") from None


def early_stop_conflicts(config: SearchConfig) -> list[str]:
    """Settings that keep the RobustDARTS rule from triggering, said once before the search starts."""
    if config.early_stop == "off" or "sgas" not in config.remedy:
        return []
    return ["--early-stop with the sgas remedy: the rows sgas decides leave the Hessian, its dominant eigenvalue "
            "falls as decisions accumulate and the rule (which waits for a rise) sees none after they begin; to "
            "early-stop, leave sgas out (--remedy skip_dropout entropy), see docs/robust_darts.md"]


def architecture_entropy(distributions: dict[str, torch.Tensor]) -> float:
    """Mean entropy (nats) of the architecture's choice distributions (rows of zeros are skipped)."""
    values = []
    for probs in distributions.values():
        rows = probs.detach().float().reshape(-1, probs.shape[-1])
        rows = rows[rows.sum(-1) > 0]
        values.append(-(rows * rows.clamp_min(1e-12).log()).sum(-1))
    return float(torch.cat(values).mean())


class SupernetSearch:
    """Bi-level search of one supernet on this worker's shards of splits A, B and val."""

    def __init__(
        self, config: SearchConfig, device: torch.device | str = "cpu", streams: Mapping[str, BatchStream] | None = None
    ) -> None:
        """``streams`` (split name -> callable giving an epoch's batches) replaces the local
        DataLoaders of those splits, e.g. with Ray Data shards; every worker must get the same
        number of batches."""
        self.config = config
        self.device = torch.device(device)
        self.streams = dict(streams or {})
        seed_everything(config.seed)
        self.space = get_space(config.space)
        self.data: SearchData = search_data(
            config.dataset, config.image_size, config.train_samples, config.val_samples, config.seed, config.data_root
        )
        self.model = self.space.supernet(num_classes=self.data.num_classes, **config.space_options).to(self.device)
        broadcast_module_(self.model)
        if config.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.weight_optimizer = torch.optim.SGD(
            self.model.weight_parameters(), lr=config.w_lr, momentum=config.w_momentum, weight_decay=config.w_weight_decay
        )
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            self.weight_optimizer, T_max=config.epochs, eta_min=config.w_lr_min
        )
        self.arch_optimizer = torch.optim.Adam(
            list(self.model.arch_parameters().values()), lr=config.arch_lr,
            betas=(config.arch_beta1, config.arch_beta2), weight_decay=config.arch_weight_decay,
        )
        self.arch_scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            self.arch_optimizer, T_max=config.epochs, eta_min=config.arch_lr_min)
        self.loss_fn = nn.CrossEntropyLoss(ignore_index=IGNORE_INDEX)
        self.cost = cost_objective(config, self.space, self.model.arch_parameters())
        penalty = (lambda: self.cost.penalty(self.model.arch_parameters())) if self.cost is not None else None
        remedies = build_remedies(config.remedy, config.remedy_options)
        for line in remedies.attach(self.model) if remedies is not None else ():
            if rank() == 0:  # a remedy with nothing to act on in this space, said once
                print(f"[nasplat] warning: {line}", flush=True)
        self.bilevel = BilevelOptimizer(self.model, self.weight_optimizer, self.arch_optimizer, self.loss_fn,
                                        order=config.order, grad_clip=config.grad_clip, arch_penalty=penalty,
                                        remedies=remedies)
        self.loaders = {  # only for the splits no stream (e.g. Ray Data) replaces
            name: self._loader(getattr(self.data, name), shuffle=True)
            for name in ("train_a", "train_b") if name not in self.streams
        }
        if "val" not in self.streams:
            self.loaders["val"] = validation_loader(self.data.val, config.batch_size)
        self.epoch = 0
        self.epochs_trained = 0  # counts rolled-back epochs too: the step of logged metrics
        self.stopper = self._make_stopper()
        self.hessian_batches = self._fixed_batches(self.data.train_b, config.hessian_batches) if self.stopper else []
        self.snapshots: dict[int, dict[str, Any]] = {}  # DARTS-ADA: end-of-epoch states by 0-based epoch
        self.arch_history: list[dict[str, Any]] = []  # one record_arch() per trained epoch, kept in checkpoints
        self.worker_rng: list[dict[str, Any]] | None = None  # every worker's generators, see capture_rng()

    def _make_stopper(self) -> EarlyStopper | None:
        stop_config = early_stop_config(self.config)
        if stop_config is None:
            return None
        return EarlyStopper(stop_config, weight_decay=self.config.w_weight_decay, display_offset=1)

    def _fixed_batches(self, dataset, count: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The first ``count`` batches of this worker's unshuffled shard, on the device."""
        loader = self._loader(dataset, shuffle=False)
        batches = []
        for images, masks in loader:
            batches.append((images.to(self.device), masks.to(self.device)))
            if len(batches) == count:
                break
        return batches

    def _loader(self, dataset, shuffle: bool) -> DataLoader:
        sampler = DistributedSampler(
            dataset, num_replicas=world_size(), rank=rank(), shuffle=shuffle, seed=self.config.seed, drop_last=shuffle
        )
        return DataLoader(dataset, batch_size=self.config.batch_size, sampler=sampler, drop_last=shuffle)

    def _batches(self, split: str) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
        return self.streams[split]() if split in self.streams else self.loaders[split]

    @property
    def arch_updates_active(self) -> bool:
        return self.epoch >= self.config.warmup_epochs

    def train_epoch(self) -> dict[str, float]:
        """One pass over split A, pairing each batch with a fresh batch of split B."""
        self.model.train()
        for name in ("train_a", "train_b"):
            if name in self.loaders:
                self.loaders[name].sampler.set_epoch(self.epoch)
        started, samples = time.perf_counter(), 0
        totals = {"train_loss": 0.0, "arch_loss": 0.0}
        steps = 0
        lr, arch_lr = self.weight_optimizer.param_groups[0]["lr"], self.arch_optimizer.param_groups[0]["lr"]
        remedies = self.bilevel.remedies
        if remedies is not None:
            remedies.set_epoch(self.epoch, self.config.epochs)
        total = min(map(len, self.loaders.values())) if len(self.loaders) == 2 else None  # None: a Ray Data stream
        heartbeat = EpochHeartbeat(f"epoch {self.epoch + 1}/{self.config.epochs}", total, enabled=rank() == 0)
        for batch_a, batch_b in zip(self._batches("train_a"), self._batches("train_b")):
            batch_a = tuple(t.to(self.device) for t in batch_a)
            batch_b = tuple(t.to(self.device) for t in batch_b)
            stats = self.bilevel.step(batch_a, batch_b, update_arch=self.arch_updates_active)
            for key, value in stats.items():
                totals[key] += value
            steps += 1
            samples += batch_a[0].shape[0]
            heartbeat.beat(steps)
        self.scheduler.step()
        self.arch_scheduler.step()
        self.epochs_trained += 1
        train_loss = global_mean(totals["train_loss"], steps, self.device)  # the same on every rank
        require_finite(self.epoch + 1, f"w_lr {lr:g}, arch_lr {arch_lr:g}; lower "
                       "--w-lr or --arch-lr", loss=train_loss, tensors=self.model.arch_parameters())
        elapsed = time.perf_counter() - started
        result = {"train_loss": train_loss, "w_lr": lr, "epoch_time_s": elapsed,
                  "samples_per_s": samples * world_size() / elapsed if elapsed > 0 else math.nan}
        if remedies is not None:
            result.update(remedies.schedule())
            decided = remedies.end_epoch(self.config.warmup_epochs)
            if decided is not None and rank() == 0:
                print(f"[nasplat] epoch {self.epoch + 1}: {decided}", flush=True)
            result.update(remedies.decision_metrics())
        if self.arch_updates_active:
            result["arch_loss"] = totals["arch_loss"] / max(steps, 1)
            result["arch_lr"] = arch_lr
        self.epoch += 1
        return result

    def evaluate(self) -> dict[str, Any]:
        """Validation loss (per labelled pixel) and mIoU over the whole val split, each sample counted once."""
        average_buffers_(self.model)
        return evaluate_model(self.model, self._batches("val"), self.data.class_names, device=self.device)

    def check_early_stop(self) -> tuple[float | None, StopDecision | None]:
        """RobustDARTS after an epoch: maybe compute the eigenvalue, apply the rule, roll back for ADA."""
        if self.stopper is None:
            return None, None
        epoch = self.epoch - 1  # the stopper counts epochs from 0, as the authors' code
        eigenvalue = None
        if self.stopper.should_evaluate(epoch):
            self.model.train()  # the authors compute it in train mode
            # the reference preset always adds the architecture weight decay (+wd I), as analyze.py
            with_decay = self.config.hessian_arch_weight_decay or self.stopper.config.hessian_weight_decay
            remedies = self.bilevel.remedies
            with remedies.without_dropout() if remedies is not None else contextlib.nullcontext():
                eigenvalue = dominant_hessian_eigenvalue(  # the same function at every power-iteration step
                    self.model, self.loss_fn, self.hessian_batches, iterations=self.config.hessian_iterations,
                    arch_weight_decay=self.config.arch_weight_decay if with_decay else 0.0,
                    which=EIGENVALUE_KIND[self.config.early_stop],
                )
        final = epoch == self.config.epochs - 1
        decision = self.stopper.update(epoch, eigenvalue, self.genotype().to_dict(), final=final)
        if self.stopper.config.mode == "ada":
            self._snapshot(epoch)
            if decision is not None:
                self._roll_back(decision)
        return eigenvalue, decision

    def _snapshot(self, epoch: int) -> None:
        keep_from = epoch - self.stopper.config.decision_delay - self.stopper.config.extra_rollback
        self.snapshots = {e: s for e, s in self.snapshots.items() if e >= keep_from}
        self.snapshots[epoch] = _cpu_copy(self._core_state())

    def _roll_back(self, decision: StopDecision) -> None:
        """DARTS-ADA: restore the end of ``resume_epoch`` and continue with the larger weight decay."""
        self._load_core(self.snapshots[decision.resume_epoch])
        for group in self.weight_optimizer.param_groups:
            group["weight_decay"] = decision.weight_decay
        self.snapshots = {e: s for e, s in self.snapshots.items() if e <= decision.resume_epoch}

    def genotype(self) -> Genotype:
        return self.space.decode(self.model.arch_parameters(), **self.model.decode_options())

    def cost_metrics(self, genotype: Genotype) -> dict[str, float]:
        """With ``--cost``: the expected cost, the penalty and the decoded genotype's cost (else nothing)."""
        return self.cost.metrics(self.model.arch_parameters(), genotype) if self.cost is not None else {}

    def arch_entropy(self) -> float:
        return architecture_entropy(self.model.arch_distributions())

    def record_arch(self) -> dict[str, Any]:
        """Append (and return) this epoch's arch distributions and raw parameters, as CPU copies.

        ``step`` counts trained epochs (rolled-back ones too), ``epoch`` is the current epoch; the
        history travels in checkpoints, so a resumed search still has every earlier epoch.
        """
        entry = {
            "step": self.epochs_trained,
            "epoch": self.epoch,
            "distributions": _cpu_copy(dict(self.model.arch_distributions())),
            "parameters": _cpu_copy(dict(self.model.arch_parameters())),
        }
        self.arch_history.append(entry)
        return entry

    def _core_state(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "weight_optimizer": self.weight_optimizer.state_dict(),
            "arch_optimizer": self.arch_optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "arch_scheduler": self.arch_scheduler.state_dict(),
            "epoch": self.epoch,
            "torch_rng": torch.get_rng_state(),
            "remedies": self.bilevel.remedies.state_dict() if self.bilevel.remedies is not None else {},
        }

    def _load_core(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.weight_optimizer.load_state_dict(state["weight_optimizer"])
        self.arch_optimizer.load_state_dict(state["arch_optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if "arch_scheduler" in state:
            self.arch_scheduler.load_state_dict(state["arch_scheduler"])
        else:  # written before the schedule existed: the rate stays what it was
            self.arch_scheduler = torch.optim.lr_scheduler.LambdaLR(self.arch_optimizer, lambda epoch: 1.0)
        self.epoch = int(state["epoch"])
        torch.set_rng_state(state["torch_rng"])
        if self.bilevel.remedies is not None:  # the decisions of sgas (absent in older checkpoints)
            self.bilevel.remedies.load_state_dict(state.get("remedies", {}))

    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed search needs, including the early-stop record and ADA snapshots."""
        return {
            **self._core_state(),
            "epochs_trained": self.epochs_trained,
            "stopper": self.stopper.state_dict() if self.stopper else None,
            "snapshots": self.snapshots,
            "arch_history": self.arch_history,
            "config": self.config.to_dict(),
            "worker_rng": self.worker_rng or gather_rng_states(),
        }

    def capture_rng(self) -> None:
        """Record every worker's generators for the next checkpoint (a collective: call it on every rank)."""
        self.worker_rng = gather_rng_states()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        recorded = state.get("config", {})
        if recorded.get("space") != self.config.space or recorded.get("space_options") != self.config.space_options:
            raise ConfigError(f"the checkpoint is of search space {recorded.get('space')!r} with options "
                              f"{recorded.get('space_options')}, not {self.config.space!r} with "
                              f"{self.config.space_options}: resume it with its own settings")
        self._load_core(state)
        self.epochs_trained = int(state["epochs_trained"])
        if self.stopper is not None and state["stopper"] is not None:
            self.stopper.load_state_dict(state["stopper"])
        self.snapshots = {int(e): s for e, s in state["snapshots"].items()}
        self.arch_history = list(state.get("arch_history", []))  # absent in older checkpoints
        if state.get("worker_rng"):
            restore_worker_rng(state["worker_rng"])

    def save(self, directory: str | Path) -> Path:
        return atomic_save(self.state_dict(), Path(directory) / CHECKPOINT_FILE)

    def restore(self, directory: str | Path) -> None:
        self.load_state_dict(load_state(Path(directory) / CHECKPOINT_FILE))
