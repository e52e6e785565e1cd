"""Every MLflow tag, param and artifact path nasplat writes or reads, named once.

Runs: one parent run per search or retrain (``KIND_TAG`` = ``SEARCH`` / ``RETRAIN``) and one child run per
Tune trial (``SEARCH_TRIAL`` / ``RETRAIN_TRIAL``). docs/tracking.md lists what each holds.
"""
from __future__ import annotations

# run kinds (values of KIND_TAG)
SEARCH = "search"
SEARCH_TRIAL = "search-trial"
RETRAIN = "retrain"
RETRAIN_TRIAL = "retrain-trial"
EVALUATE = "evaluate"
COMPARE = "compare"
"""The run ``nasplat compare --plot`` logs its Pareto pictures to, one per set of experiments."""
TRIAL_KIND = {SEARCH: SEARCH_TRIAL, RETRAIN: RETRAIN_TRIAL}

# experiments
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_DEVELOPMENT = "custom_model_development"
"""The value of ``EXPERIMENT_KIND_TAG`` that opens an experiment in the MLflow 3 UI's model-training view (untagged
experiments open in its GenAI view)."""

# identity and provenance
KIND_TAG = "nasplat.kind"
RUN_NAME_TAG = "nasplat.run_name"
TRIAL_ID_TAG = "nasplat.trial_id"
PARENT_TAG = "mlflow.parentRunId"
COMMAND_TAG = "nasplat.command"
VERSION_TAG = "nasplat.version"
GIT_COMMIT_TAG = "nasplat.git_commit"
RAY_JOB_TAG = "nasplat.ray_job_id"
WORKER_NODE_TAG = "nasplat.worker_node"
"""Trial-run tag prefix: ``nasplat.worker_node.<rank>`` = the Ray node id that worker ran on."""
WORKER_PID_TAG = "nasplat.worker_pid"
"""Trial-run tag prefix: ``nasplat.worker_pid.<rank>`` = that worker's process id on its node (latest start)."""
RESTARTS_TAG = "nasplat.restarts"
"""Trial-run tag: how often Ray Train restarted the trial's workers from its last checkpoint (a worker lost)."""
RESUMES_TAG = "nasplat.resumes"
"""Trial-run tag: how often the trial was continued by a new driver (``--resume``, or the same ``--name``)."""
RESUME_OVERRIDES_TAG = "nasplat.resume_overrides"
"""Parent-run tag: the settings changed on resume, as JSON (the params keep the values the run started with)."""

# what a run is about
SPACE_TAG = "nasplat.space"
MODEL_TAG = "nasplat.model"
GENOTYPE_HASH_TAG = "genotype_hash"
BEST_TRIAL_RUN_TAG = "nasplat.best_trial_run"
BEST_EPOCH_TAG = "best_epoch"
LAST_EPOCH_TAG = "last_epoch"
GENOTYPE_CHANGED_TAG = "genotype_changed"
"""Prefix: ``genotype_changed.epoch_NNN`` = the new genotype hash at that epoch."""

FAILURE_REASON_TAG = "nasplat.failure_reason"
"""Why a trial (and, when no trial finished, its parent) failed: divergence, or the error that ended it."""

# lineage of a retrain
SEARCH_RUN_TAG = "nasplat.source_search_run"
TRIAL_RUN_TAG = "nasplat.source_trial_run"
GENOTYPE_FILE_TAG = "nasplat.source_genotype_file"
MODEL_RUN_TAG = "nasplat.model_run"
MODEL_URI_TAG = "nasplat.model_uri"
REGISTERED_MODEL_TAG = "nasplat.registered_model"
EVALUATED_RUN_TAG = "nasplat.evaluated_run"
"""On an ``evaluate`` run: the retrain run (parent or trial) whose model file it evaluated."""
SOURCE_RANK_TAG = "nasplat.source_rank"
"""On a retrain of a search run: which of the trial's top-k genotypes (``--rank``) it trains; 1 = the decoded one."""
LATENCY_INPUT_TAG = "nasplat.latency_input"
"""Where ``LATENCY_METRIC`` was measured: ``cpu 1x3xHxW``."""

# metrics a run's quality and cost are read from (MLflow's chart view plots one against the other)
MIOU_METRIC = "val_miou"
IOU_METRIC_PREFIX = "val_iou"
"""Per-class IoU: ``val_iou.<class name>``."""
PARAMS_METRIC = "params"
FLOPS_METRIC = "flops"
GFLOPS_METRIC = "gflops"
LATENCY_METRIC = "latency_ms"
"""Median forward time at batch 1 on CPU, in milliseconds."""

# artifacts
GENOTYPE_ARTIFACT = "genotype.json"
EPOCH_GENOTYPE_ARTIFACT = "genotypes/epoch_{epoch:03d}.json"
ARCH_ARTIFACT = "arch/epoch_{epoch:03d}.json"
EARLY_STOP_ARTIFACT = "early_stop/decision_{index:02d}.json"
TOP_K_ARTIFACT = "top_k_genotypes.json"
"""On a search trial run: its ``--top-k`` strongest distinct genotypes, rank 1 = its genotype.json."""
PARETO_ARTIFACT = "pareto_{cost}.png"
"""On a ``compare`` run: the Pareto picture of ``nasplat compare --plot`` for that cost metric."""
BEST_MODEL_DIR = "checkpoints"
BEST_MODEL_ARTIFACT = f"{BEST_MODEL_DIR}/best_model.pt"
CONFUSION_ARTIFACT = f"{BEST_MODEL_DIR}/confusion_matrix.json"
PREDICTIONS_IMAGE = "predictions"
CONFUSION_IMAGE = "confusion_matrix"
LOGGED_MODEL_NAME = "model"
"""The ``name=`` of the retrained model logged with ``mlflow.pytorch.log_model``."""

QUIET_DOWNLOADS = ("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
"""Environment setting: MLflow draws no tqdm bars while it downloads artifacts (nasplat prints its own lines)."""
