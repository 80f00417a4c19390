"""Fixtures shared by the `heron` verb tests: a tiny registered shapes dataset, and a small
Mask R-CNN config file with a checkpoint of its (seeded, untrained) weights."""

from __future__ import annotations

import os
import sys
import uuid

import pytest
import torch

from heron.data.catalog import DatasetCatalog, MetadataCatalog
from heron.data.datasets import generate_shapes_dataset, get_shapes_metadata
from heron.data.datasets.coco import register_coco_instances

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "modeling"))
from rcnn_fixtures import small_rcnn_cfg


@pytest.fixture(scope="module")
def tiny_shapes(tmp_path_factory):
    """(name, info): 4 shapes images of 64x96 registered under a unique name, with the
    shapes metadata (class names, colors, keypoint rules)."""
    info = generate_shapes_dataset(
        str(tmp_path_factory.mktemp("shapes")), num_images=4, image_size=(64, 96), split="val"
    )
    name = f"test_cli_shapes_{uuid.uuid4().hex[:8]}"
    meta = get_shapes_metadata()
    meta.pop("thing_dataset_id_to_contiguous_id")
    register_coco_instances(name, meta, info["json_file"], info["image_root"])
    yield name, info
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


@pytest.fixture(scope="module")
def tiny_model(tiny_shapes, tmp_path_factory):
    """(config_path, weights_path): a small ResNet-18 FPN Mask R-CNN for the 5 shape classes,
    tested on `tiny_shapes`, that keeps every detection (score threshold 0), and a
    checkpoint of its weights as built with seed 0."""
    from heron.modeling import build_model

    name, _ = tiny_shapes
    folder = tmp_path_factory.mktemp("tiny_model")
    cfg = small_rcnn_cfg(mask=True)
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 5
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0
    cfg.MODEL.WEIGHTS = ""
    cfg.DATASETS.TRAIN = (name,)
    cfg.DATASETS.TEST = (name,)
    cfg.INPUT.MIN_SIZE_TEST = 64
    cfg.INPUT.MAX_SIZE_TEST = 128
    cfg.DATALOADER.NUM_WORKERS = 0
    torch.manual_seed(0)
    model = build_model(cfg)
    weights = str(folder / "model.pth")
    torch.save({"model": model.state_dict()}, weights)
    config = folder / "config.yaml"
    config.write_text(cfg.dump())
    return str(config), weights
