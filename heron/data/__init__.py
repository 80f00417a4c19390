"""Data: catalogs, dataset formats, samplers, dataset wrappers and transforms.

Datasets are lists of Detectron2-style "dataset dicts"; `DatasetCatalog` maps a name to a
function producing them and `MetadataCatalog` holds each dataset's metadata.
"""

from heron.data import datasets, detection_utils, samplers, transforms
from heron.data.build import (
    build_batch_data_loader,
    build_detection_test_loader,
    build_detection_train_loader,
    get_detection_dataset_dicts,
    load_proposals_into_dataset,
    print_instances_class_histogram,
)
from heron.data.catalog import DatasetCatalog, Metadata, MetadataCatalog
from heron.data.common import (
    AspectRatioGroupedDataset,
    DatasetFromList,
    MapDataset,
    ToIterableDataset,
)
from heron.data.dataset_mapper import DatasetMapper

__all__ = [
    "AspectRatioGroupedDataset",
    "DatasetCatalog",
    "DatasetFromList",
    "DatasetMapper",
    "MapDataset",
    "Metadata",
    "MetadataCatalog",
    "ToIterableDataset",
    "build_batch_data_loader",
    "build_detection_test_loader",
    "build_detection_train_loader",
    "datasets",
    "detection_utils",
    "get_detection_dataset_dicts",
    "load_proposals_into_dataset",
    "print_instances_class_histogram",
    "samplers",
    "transforms",
]
