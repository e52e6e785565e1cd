"""Retrain configuration: the shared experiment fields plus the model source and the training recipe.

The model comes from exactly one source: a genotype file (``genotype``), an MLflow run of a search
(``from_run``: the search's parent run or one of its trial runs) or a registered baseline
(``baseline``). With none given, the retrain takes the latest finished search.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any

from nasplat.training.config import ConfigError, ExperimentConfig, is_count, is_number, option

SOURCE_FIELDS = ("genotype", "from_run", "baseline")
DDP_MODES = ("auto", "on", "off")
"""--ddp: how retrain workers average gradients (:mod:`nasplat.retraining.parallel`)."""
AMP_MODES = ("off", "fp16", "bf16")
"""--amp: mixed precision of a retrain."""
ALIAS_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,255}")
"""The characters and length of a registered-model alias MLflow accepts."""

GENOTYPE_DEFAULT_OPTIONS: dict[str, dict[str, Any]] = {
    "darts": {"C": 8, "layers": 5, "reductions": 2, "head_channels": 64},
}
"""Network options used for a searched genotype of that space unless ``model_options`` overrides them:
sized so the default retrain finishes in minutes on 2 CPU cores (the paper's networks are larger)."""


@dataclasses.dataclass
class RetrainConfig(ExperimentConfig):
    """Everything a retrain needs. Field names are the YAML keys; ``--flag-name`` sets ``flag_name``."""

    genotype: str | None = option(None, "genotype JSON file to retrain (e.g. nasplat_runs/<search>/genotype.json)")
    from_run: str | None = option(None, "MLflow run id of a search (parent run: its best genotype) or of a search trial")
    rank: int = option(1, "which of the search trial's strongest genotypes to retrain (its top_k_genotypes.json, "
                       "--top-k of the search): 1 = the decoded genotype; with --from-run or the latest search")
    baseline: str | None = option(None, "registered baseline model to train instead: duc_hdc, deeplabv3plus, icnet, ...")
    model_options: dict = option({}, "network options as KEY=VALUE, repeatable (darts genotype: C, layers, "
                                 "reductions, head_channels, drop_path; deeplabv3plus: backbone=resnet101|"
                                 "mobilenet_v2, output_stride=16|8; deeplabv3plus and duc_hdc: "
                                 "pretrained=imagenet or backbone_weights=PATH, docs/retrain.md)")
    batch_size: int = option(8, "batch size per worker (sampled from --batch-sizes when --trials > 1)")
    trials: int = option(1, "Tune trials; > 1: Optuna samples lr, weight decay and batch size, ASHA stops weak trials")
    experiment: str = option("nasplat-retrain", "MLflow experiment name")
    lr: float = option(0.05, "SGD learning rate at the start of the poly schedule (sampled when --trials > 1)")
    momentum: float = option(0.9, "SGD momentum")
    weight_decay: float = option(3e-4, "SGD weight decay (sampled when --trials > 1)")
    poly_power: float = option(0.9, "power of the poly schedule lr * (1 - t/T)^power, t counted in iterations")
    aux_weight: float = option(0.4, "weight of auxiliary outputs' losses for models that return them and have no "
                               "loss method")
    eval_scales: list = option([1.0], "validation scales; the softmax is averaged over them")
    eval_flip: bool = option(False, "also average the softmax over horizontally flipped images")
    lr_range: list = option([0.01, 0.1], "LOW HIGH of the log-uniform learning-rate range sampled when --trials > 1")
    weight_decay_range: list = option([1e-5, 1e-3], "LOW HIGH of the log-uniform weight-decay range sampled when "
                                      "--trials > 1")
    batch_sizes: list = option([4, 8], "batch sizes sampled when --trials > 1")
    search_experiment: str = option("nasplat-search", "MLflow experiment searched for the latest finished search "
                                     "when no model source is given")
    register_model: str | None = option(None, "register the best model in the MLflow model registry under this name")
    model_alias: str = option("candidate", "alias the registered version gets (with --register-model); empty: none")
    ddp: str = option("auto", choices=DDP_MODES, help="how workers average gradients: auto (DistributedDataParallel "
                      "with SyncBatchNorm on GPUs, nasplat's explicit all-reduce on CPUs), on (DDP everywhere) or off "
                      "(the explicit all-reduce everywhere)")
    amp: str = option("off", choices=AMP_MODES, help="mixed precision: fp16 (autocast and a gradient scaler; GPUs "
                      "only), bf16 (autocast; GPUs or CPUs) or off")

    def validate(self) -> None:
        super().validate()
        given = [name for name in SOURCE_FIELDS if getattr(self, name)]
        if len(given) > 1:
            raise ConfigError(
                f"config fields {', '.join(repr(n) for n in given)}: give exactly one model source "
                "(genotype file, from_run or baseline), not several"
            )
        self.require_counts("rank")
        if self.rank != 1 and (self.genotype or self.baseline):
            raise ConfigError(f"config field 'rank' (--rank {self.rank}) picks among a search run's top-k genotypes: "
                              "give --from-run RUN_ID (or no source: the latest search), not a genotype file or "
                              "a baseline")
        self.require_mapping("model_options")
        self.require_choice("ddp", DDP_MODES)
        self.require_choice("amp", AMP_MODES)
        if self.amp == "fp16" and not self.gpus_per_worker:
            raise ConfigError("config field 'amp': fp16 needs GPUs (--gpus-per-worker 1); on CPUs use --amp bf16 or off")
        alias = self.model_alias
        if not isinstance(alias, str) or (alias and (not ALIAS_PATTERN.fullmatch(alias) or alias.lower() == "latest"
                                                     or re.fullmatch(r"[vV]\d+", alias))):
            raise ConfigError(f"config field 'model_alias' must be up to 255 letters, digits, '_' or '-', not 'latest' "
                              f"or v<number> (MLflow reserves them), or empty for none; got {alias!r}")
        self.require_numbers("lr", "poly_power", strict=True)
        self.require_numbers("momentum", "weight_decay", "aux_weight")
        if (not isinstance(self.eval_scales, (list, tuple)) or not self.eval_scales
                or not all(is_number(s) and s > 0 for s in self.eval_scales)):
            raise ConfigError(f"config field 'eval_scales' must be a non-empty list of numbers > 0, got {self.eval_scales!r}")
        if not isinstance(self.eval_flip, bool):
            raise ConfigError(f"config field 'eval_flip' must be true or false, got {self.eval_flip!r}")
        for name in ("lr_range", "weight_decay_range"):
            bounds = getattr(self, name)
            if (not isinstance(bounds, (list, tuple)) or len(bounds) != 2 or not all(is_number(b) and b > 0 for b in bounds)
                    or bounds[0] > bounds[1]):
                raise ConfigError(f"config field '{name}' must be [low, high] with 0 < low <= high (log-uniform), got {bounds!r}")
        if (not isinstance(self.batch_sizes, (list, tuple)) or not self.batch_sizes
                or not all(is_count(b) for b in self.batch_sizes)):
            raise ConfigError(f"config field 'batch_sizes' must be a non-empty list of positive integers, got {self.batch_sizes!r}")
