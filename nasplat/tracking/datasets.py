"""The data a run trained and validated on, as MLflow dataset inputs (``log_inputs``): name, source, digest.

One input per split that was read, built from the description :func:`nasplat.data.sources.search_data` gives
(``SearchData.description``):

* ``parquet:DIR``: source = the shard folder, digest = the first 16 hex digits of ``manifest.json``'s sha256
  (the manifest lists every shard's checksum, so it changes when any shard does);
* ``voc`` / ``cityscapes``: source = the dataset root, digest from root and split name;
* ``synthetic``: source = the generator's settings (seed, image size, scene index range), digest from them.

The input's context tag (``mlflow.data.context``) is ``training`` or ``validation``; the profile holds the
number of samples.
"""
from __future__ import annotations

import hashlib
import json
import warnings
from typing import Any, Mapping, Sequence

from mlflow.data.code_dataset_source import CodeDatasetSource
from mlflow.data.dataset_source_registry import resolve_dataset_source
from mlflow.data.meta_dataset import MetaDataset
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

from nasplat.data.shard_format import read_manifest
from nasplat.tracking.logger import RunLogger
from nasplat.tracking.outbox import outbox_for

DIGEST_LENGTH = 16
CONTEXTS = {"train": "training", "val": "validation"}
SYNTHETIC_GENERATOR = "nasplat.data.synthetic.SyntheticScenes"


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:DIGEST_LENGTH]


def _entity(source: Any, name: str, digest: str, samples: int | None) -> dict[str, Any]:
    fields = MetaDataset(source, name=name, digest=digest)._to_mlflow_entity().to_dictionary()
    fields["profile"] = json.dumps({"samples": samples}) if samples is not None else None
    return fields


def _local_source(root: str) -> Any:
    with warnings.catch_warnings():  # MLflow registers the local-file source twice and says so
        warnings.simplefilter("ignore")
        return resolve_dataset_source(root)


def dataset_records(description: Mapping[str, Any], splits: Sequence[str] = tuple(CONTEXTS)) -> list[dict[str, Any]]:
    """``[{"dataset": <mlflow Dataset fields>, "tags": {...}}, ...]`` for ``splits`` (``train``, ``val``)."""
    kind = description["dataset"]
    counts = dict(description.get("counts") or {})
    records = []
    for split in splits:
        context = CONTEXTS[split]
        if kind == "synthetic":
            ranges = description["index_ranges"]
            span = [ranges["train_a"][0], ranges["train_b"][1]] if split == "train" else list(ranges["val"])
            settings = {"generator": SYNTHETIC_GENERATOR, "seed": description["seed"], "size": description["size"],
                        "index_range": span}
            fields = _entity(CodeDatasetSource({k: v if isinstance(v, str) else json.dumps(v)
                                                for k, v in settings.items()}), f"synthetic/{split}",
                             _digest(settings), span[1] - span[0])
            split_name = split
        else:
            root = description["root"]
            split_name = description["train_split"] if split == "train" else "val"
            digest = (read_manifest(root).sha256[:DIGEST_LENGTH] if kind == "parquet"
                      else _digest({"dataset": kind, "root": root, "split": split_name}))
            samples = counts.get("train_a", 0) + counts.get("train_b", 0) if split == "train" else counts.get("val")
            fields = _entity(_local_source(root), f"{kind}/{split_name}", digest, samples)
        records.append({"dataset": fields, "tags": {MLFLOW_DATASET_CONTEXT: context, "nasplat.split": split_name}})
    return records


def log_datasets(logger: RunLogger, description: Mapping[str, Any], splits: Sequence[str] = tuple(CONTEXTS)) -> None:
    """Queue the run's dataset inputs (see :func:`dataset_records`)."""
    outbox_for(logger.tracking_uri, logger.run_id).put({"op": "inputs",
                                                        "datasets": dataset_records(description, splits)})
