"""Datasets, transforms and the data module: everything between files on disk and a training batch."""

from crossearth_gate.data.catalog import (
    DATASETS,
    IGNORE_INDEX,
    DatasetInfo,
    DomainSpec,
    demo_data_root,
    get_dataset_info,
    list_pairs,
)
from crossearth_gate.data.datamodule import SegDataModule
from crossearth_gate.data.datasets import SegmentationDataset, read_image, read_mask
from crossearth_gate.data.definition import DatasetDef, LabelDef
from crossearth_gate.data.radiometry import Radiometry
from crossearth_gate.data.transforms import IMAGENET_MEAN, IMAGENET_STD, EvalTransform, TrainTransform

__all__ = [
    "DATASETS",
    "IGNORE_INDEX",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "DatasetDef",
    "DatasetInfo",
    "DomainSpec",
    "EvalTransform",
    "LabelDef",
    "Radiometry",
    "SegDataModule",
    "SegmentationDataset",
    "TrainTransform",
    "demo_data_root",
    "get_dataset_info",
    "list_pairs",
    "read_image",
    "read_mask",
]
