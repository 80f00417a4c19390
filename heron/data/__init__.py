"""Data: catalogs, dataset formats, samplers, dataset wrappers and transforms.

Datasets are lists of Detectron2-style "dataset dicts"; `DatasetCatalog` maps a name to a
function producing them and `MetadataCatalog` holds each dataset's metadata.
"""

from heron.data import datasets, detection_utils, samplers, transforms
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
    "datasets",
    "detection_utils",
    "samplers",
    "transforms",
]
