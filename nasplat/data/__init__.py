"""Datasets for nasplat: synthetic scenes, PASCAL VOC 2012, Cityscapes, and Parquet shards."""

from nasplat.data.cityscapes import CITYSCAPES_CLASSES, CITYSCAPES_PALETTE, CityscapesSegmentation, cityscapes_records
from nasplat.data.records import DataError, SampleRecord, load_sample
from nasplat.data.shards import Manifest, ShardDataset, ShardError, prepare_shards, ray_dataset, verify_shards
from nasplat.data.synthetic import SyntheticScenes, synthetic_splits
from nasplat.data.transforms import SegmentationAugment
from nasplat.data.voc import VOC_CLASSES, VOC_PALETTE, VOCSegmentation, voc_records

__all__ = [
    "CITYSCAPES_CLASSES", "CITYSCAPES_PALETTE", "CityscapesSegmentation", "DataError", "Manifest",
    "SampleRecord", "SegmentationAugment", "ShardDataset", "ShardError", "SyntheticScenes", "VOCSegmentation",
    "VOC_CLASSES", "VOC_PALETTE", "cityscapes_records", "load_sample", "prepare_shards", "ray_dataset",
    "synthetic_splits", "verify_shards", "voc_records",
]
