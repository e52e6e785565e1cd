"""Search configuration: the shared experiment fields plus what only a supernet search has."""
from __future__ import annotations

import dataclasses

from nasplat.searching.remedy_options import REMEDY_CHOICES, resolve_remedies
from nasplat.training.config import ConfigError, ExperimentConfig, is_count, option

EARLY_STOP_PRESETS = ("off", "paper", "reference")
EARLY_STOP_MODES = ("stop", "ada", "simulate")
COSTS = ("off", "latency", "flops", "params")


@dataclasses.dataclass
class SearchConfig(ExperimentConfig):
    """Everything a search needs. Field names are the YAML keys; ``--flag-name`` sets ``flag_name``."""

    space: str = option("darts", "search space: a registered name (darts, autodeeplab), or FILE.py:NAME / "
                        "package.module:NAME for your own")
    trials: int = option(1, "Tune trials (seeds seed, seed+1, ...; ASHA stops weak ones when > 1)")
    experiment: str = option("nasplat-search", "MLflow experiment name")
    order: int = option(1, "1 = first-order DARTS, 2 = second-order (unrolled) architecture gradient", choices=(1, 2))
    warmup_epochs: int = option(0, "epochs that train weights only before architecture updates start")
    w_lr: float = option(0.025, "weight SGD learning rate (cosine schedule)")
    w_lr_min: float = option(0.001, "final weight learning rate of the cosine schedule")
    w_momentum: float = option(0.9, "weight SGD momentum")
    w_weight_decay: float = option(3e-4, "weight SGD weight decay")
    grad_clip: float = option(5.0, "weight gradient norm clip")
    arch_lr: float = option(3e-2, "architecture Adam learning rate (DARTS paper: 3e-4 over ~20k steps; the short "
                            "default search takes ~120 steps: at 3e-3 alpha barely moves, docs/collapse.md)")
    arch_lr_min: float = option(0.0, "final architecture learning rate of a cosine schedule over the epochs (the "
                                "rows commit while it is large and stay put at the end, so the genotype settles, "
                                "docs/collapse.md); equal to --arch-lr keeps it constant, as DARTS")
    arch_weight_decay: float = option(1e-3, "architecture Adam weight decay (DARTS: 1e-3)")
    arch_beta1: float = option(0.5, "architecture Adam beta1 (DARTS: 0.5)")
    arch_beta2: float = option(0.999, "architecture Adam beta2")
    space_options: dict = option({}, "supernet options as KEY=VALUE, repeatable (darts: C=8, layers=5, "
                                 "reductions=2, stem_stride=1, head_channels=64, max_skip_normal=2: at most 2 "
                                 "skip_connect in the decoded normal cell, null for the paper's decode)")
    early_stop: str = option("off", "RobustDARTS early stopping on the dominant Hessian eigenvalue: off, paper "
                             "(every epoch, k=5, ratio < 0.75, architecture of epoch i-5) or reference (the "
                             "authors' released code)", choices=EARLY_STOP_PRESETS)
    early_stop_mode: str = option("stop", "what a trigger does: stop (DARTS-ES), ada (DARTS-ADA: roll back, raise "
                                  "weight decay) or simulate (record only)", choices=EARLY_STOP_MODES)
    early_stop_options: dict = option({}, "overrides of the early-stop preset as KEY=VALUE, repeatable "
                                      "(eval_interval, window, centred, lookback, threshold, min_chosen_epoch, "
                                      "ada_factor, ada_max_weight_decay, extra_rollback, hessian_weight_decay, "
                                      "decide_on_final_epoch)")
    remedy: list = option(["skip_dropout", "entropy", "sgas"], "collapse remedies (docs/collapse.md): sdarts (SDARTS-RS "
                          "noise on the architecture in the weight step), beta_decay (beta-DARTS regulariser), "
                          "entropy (annealed entropy penalty: the search ends decided), darts_minus (DARTS- "
                          "auxiliary skip), skip_dropout (P-DARTS dropout on skip connections), sgas (SGAS: the "
                          "cells decided edge by edge over the search), or none",
                          choices=REMEDY_CHOICES)
    remedy_options: dict = option({}, "remedy settings as KEY=VALUE, repeatable (sdarts: epsilon_min, epsilon_max; "
                                  "beta_decay: beta_weight; entropy: entropy_weight, entropy_start; darts_minus: "
                                  "aux_skip_weight; skip_dropout: skip_dropout_rate; sgas: sgas_start, sgas_post)")
    hessian_batches: int = option(2, "split-B batches per worker used for the Hessian eigenvalue (the same ones "
                                  "every time)")
    hessian_iterations: int = option(20, "power-iteration steps for the Hessian eigenvalue")
    hessian_arch_weight_decay: bool = option(False, "add the architecture weight decay to the Hessian (H + wd*I), "
                                             "as the authors' code")
    cost: str = option("off", "cost-aware search: add the architecture's expected latency, FLOPs or parameters (the "
                       "searched ops, from the space's cost model) to the architecture loss; docs/cost_aware_search.md",
                       choices=COSTS)
    cost_weight: float = option(1.0, "weight W of the cost term: W * expected/uniform-architecture cost, or with "
                                "--cost-target W * max(0, expected/target - 1)")
    cost_target: float | None = option(None, "penalise only the expected cost above this (ms, GFLOPs or parameters "
                                       "of the searched ops)")
    cost_table: str | None = option(None, "per-op cost table from `nasplat profile-ops` (needed for --cost latency; "
                                    "FLOPs and parameters are counted when absent)")
    top_k: int = option(3, "each trial logs its K strongest distinct genotypes (top_k_genotypes.json); `nasplat "
                        "retrain --rank N` takes the N-th")
    channels_last: bool = option(True, "keep the supernet's weights and activations channels-last (NHWC): about 0.7x "
                                 "the step time on CPUs (docs/performance.md); not yet timed on GPUs")
    picture_interval: int = option(5, "draw cells, arch heatmaps and prediction overlays every N epochs into the "
                                   "MLflow run (pictures/epoch_NNN/); 0 = only at the end (pictures/final/)")

    def validate(self) -> None:
        super().validate()
        if self.order not in (1, 2) or isinstance(self.order, bool):
            raise ConfigError(f"config field 'order' must be 1 (first order) or 2 (second order), got {self.order!r}")
        if not is_count(self.warmup_epochs, 0) or self.warmup_epochs >= self.epochs:
            raise ConfigError(f"config field 'warmup_epochs' must be in 0..epochs-1 ({self.epochs - 1}: at least one "
                              f"epoch must update the architecture), got {self.warmup_epochs!r}")
        if self.train_samples < 2 * self.workers:
            raise ConfigError(
                f"config field 'train_samples' ({self.train_samples}) must give each of the {self.workers} "
                "workers at least one sample in each of the two search splits"
            )
        self.require_numbers("w_lr", "arch_lr", strict=True)
        self.require_numbers("w_lr_min", "w_momentum", "w_weight_decay", "grad_clip", "arch_weight_decay",
                             "arch_beta1", "arch_beta2")
        self.require_numbers("arch_lr_min")
        if self.arch_lr_min > self.arch_lr:
            raise ConfigError(f"config field 'arch_lr_min' ({self.arch_lr_min:g}) must not exceed 'arch_lr' "
                              f"({self.arch_lr:g}); equal to it keeps the architecture learning rate constant")
        self.require_choice("early_stop", EARLY_STOP_PRESETS)
        self.require_choice("early_stop_mode", EARLY_STOP_MODES)
        self.require_mapping("space_options", "early_stop_options", "remedy_options")
        resolve_remedies(self.remedy, self.remedy_options)
        self.require_counts("hessian_batches", "hessian_iterations")
        if not isinstance(self.hessian_arch_weight_decay, bool):
            raise ConfigError(f"config field 'hessian_arch_weight_decay' must be true or false, "
                              f"got {self.hessian_arch_weight_decay!r}")
        self._validate_cost()
        self.require_counts("top_k")
        if not is_count(self.picture_interval, 0):
            raise ConfigError(
                f"config field 'picture_interval' must be an integer >= 0 (0 = pictures only at the end), "
                f"got {self.picture_interval!r}"
            )

    def with_space_defaults(self, search_defaults: dict) -> "SearchConfig":
        """This config with a space's ``search_defaults`` under the space options the user gave."""
        return self.replace(space_options={**search_defaults, **self.space_options})

    def with_resolved_remedies(self) -> "SearchConfig":
        """This config with every option of its remedies spelt out (defaults included), so that the run's stored
        settings and MLflow params say what it ran with, and a resume keeps it when a default changes."""
        resolved = resolve_remedies(self.remedy, self.remedy_options)
        return self.replace(remedy_options={key: value for options in resolved.values() for key, value in options.items()})

    def _validate_cost(self) -> None:
        self.require_choice("cost", COSTS)
        self.require_numbers("cost_weight")
        if self.cost_target is not None:
            self.require_numbers("cost_target", strict=True)
        if self.cost == "off" and (self.cost_target is not None or self.cost_table is not None):
            given = "cost_target" if self.cost_target is not None else "cost_table"
            raise ConfigError(f"config field '{given}' needs a cost: set 'cost' to latency, flops or params")
        if self.cost == "latency" and not self.cost_table:
            raise ConfigError("config field 'cost_table' is needed for cost latency: measure one with `nasplat "
                              "profile-ops --space SPACE --image-size S --out table.json` and pass --cost-table "
                              "table.json")
        if self.cost_table is not None and (not isinstance(self.cost_table, str) or not self.cost_table):
            raise ConfigError(f"config field 'cost_table' must be a file path, got {self.cost_table!r}")
