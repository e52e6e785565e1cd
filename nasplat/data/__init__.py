"""Datasets for nasplat: synthetic scenes, PASCAL VOC 2012, Cityscapes, and Parquet shards.

No Ray here: a Ray Dataset of shards is built by ``nasplat.runtime.ray_data.ray_dataset``.
"""

from nasplat.data.cityscapes import CITYSCAPES_CLASSES, CITYSCAPES_PALETTE, CityscapesSegmentation, cityscapes_records
from nasplat.data.records import DataError, SampleRecord, load_sample
from nasplat.data.shard_format import Manifest, ShardError, read_manifest
from nasplat.data.shard_reader import ShardDataset, verify_shards
from nasplat.data.shard_writer import prepare_shards
from nasplat.data.synthetic import SyntheticScenes, synthetic_splits
from nasplat.data.transforms import SegmentationAugment
from nasplat.data.voc import VOC_CLASSES, VOC_PALETTE, VOCSegmentation, voc_records

__all__ = [
    "CITYSCAPES_CLASSES", "CITYSCAPES_PALETTE", "CityscapesSegmentation", "DataError", "Manifest",
    "SampleRecord", "SegmentationAugment", "ShardDataset", "ShardError", "SyntheticScenes", "VOCSegmentation",
    "VOC_CLASSES", "VOC_PALETTE", "cityscapes_records", "load_sample", "prepare_shards", "read_manifest",
    "synthetic_splits", "verify_shards", "voc_records",
]
