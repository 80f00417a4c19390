import logging
import uuid

import pytest
import torch

from heron.config import get_cfg
from heron.data.build import (
    build_detection_test_loader,
    build_detection_train_loader,
    get_detection_dataset_dicts,
    trivial_batch_collator,
    worker_init_reset_seed,
)
from heron.data.catalog import DatasetCatalog, MetadataCatalog
from heron.data.dataset_mapper import DatasetMapper
from heron.data.datasets import generate_shapes_dataset, register_coco_instances
from heron.data.transforms import RandomFlip, ResizeShortestEdge


def _register(dicts, thing_classes=("a", "b")):
    name = f"test_build_{uuid.uuid4().hex[:8]}"
    DatasetCatalog.register(name, lambda: dicts)
    MetadataCatalog.get(name).set(thing_classes=list(thing_classes))
    return name


def _record(i, annotations):
    return {
        "file_name": f"{i}.jpg",
        "image_id": i,
        "height": 10,
        "width": 10,
        "annotations": annotations,
    }


def _ann(category_id, iscrowd=0, keypoints=None):
    ann = {"bbox": [0, 0, 5, 5], "bbox_mode": 1, "category_id": category_id, "iscrowd": iscrowd}
    if keypoints is not None:
        ann["keypoints"] = keypoints
    return ann


def test_dataset_dicts_filter_crowd_only_and_few_keypoints(caplog):
    dicts = [
        _record(0, [_ann(0, keypoints=[1, 1, 2, 2, 2, 2])]),  # 2 visible keypoints
        _record(1, [_ann(1, iscrowd=1)]),  # crowd only: removed
        _record(2, []),  # no annotation: removed
        _record(3, [_ann(1, keypoints=[1, 1, 2, 0, 0, 0])]),  # 1 visible keypoint
    ]
    name = _register(dicts)
    with caplog.at_level(logging.INFO, logger="heron.data.build"):
        out = get_detection_dataset_dicts(name)
    assert [d["image_id"] for d in out] == [0, 3]
    assert "Removed 2 images with no usable annotations" in caplog.text
    assert "Distribution of instances among all 2 categories" in caplog.text
    out = get_detection_dataset_dicts(name, min_keypoints=2)
    assert [d["image_id"] for d in out] == [0]
    assert len(get_detection_dataset_dicts(name, filter_empty=False)) == 4


def test_dataset_dicts_errors_name_the_dataset():
    with pytest.raises(KeyError, match="not_registered_anywhere"):
        get_detection_dataset_dicts("not_registered_anywhere")
    empty = _register([])
    with pytest.raises(ValueError, match=f"Dataset '{empty}' is empty"):
        get_detection_dataset_dicts(empty)
    bad = _register([_record(0, [_ann(5)])])
    with pytest.raises(ValueError, match="outside"):
        get_detection_dataset_dicts(bad)


@pytest.fixture(scope="module")
def shapes_name(tmp_path_factory):
    info = generate_shapes_dataset(
        str(tmp_path_factory.mktemp("shapes")), num_images=6, image_size=(64, 96), split="train"
    )
    name = f"test_shapes_{uuid.uuid4().hex[:8]}"
    register_coco_instances(name, {}, info["json_file"], info["image_root"])
    return name


def _mapper(is_train=True):
    augs = [ResizeShortestEdge(64, 128)] + ([RandomFlip()] if is_train else [])
    return DatasetMapper(is_train, augmentations=augs, image_format="BGR", use_instance_mask=True)


@pytest.mark.parametrize("grouping", [True, False])
def test_train_loader_with_two_workers_yields_mapped_batches(shapes_name, grouping):
    loader = build_detection_train_loader(
        get_detection_dataset_dicts(shapes_name),
        mapper=_mapper(),
        total_batch_size=2,
        aspect_ratio_grouping=grouping,
        num_workers=2,
    )
    batches = []
    for batch in loader:
        batches.append(batch)
        if len(batches) == 3:
            break
    for batch in batches:
        assert isinstance(batch, list) and len(batch) == 2
        for item in batch:
            assert item["image"].shape == (3, 64, 96) and item["image"].dtype == torch.uint8
            inst = item["instances"]
            assert len(inst) > 0 and len(inst.gt_masks) == len(inst)
            boxes = inst.gt_boxes.tensor
            assert (boxes[:, 2] <= 96).all() and (boxes[:, 3] <= 64).all()


def test_train_loader_from_config(shapes_name):
    cfg = get_cfg()
    cfg.DATASETS.TRAIN = (shapes_name,)
    cfg.SOLVER.IMS_PER_BATCH = 2
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.INPUT.MIN_SIZE_TRAIN = (64,)
    cfg.INPUT.MAX_SIZE_TRAIN = 128
    batch = next(iter(build_detection_train_loader(cfg)))
    assert len(batch) == 2 and batch[0]["image"].shape[1] == 64
    cfg.DATALOADER.SAMPLER_TRAIN = "MagicSampler"
    with pytest.raises(ValueError, match="MagicSampler"):
        build_detection_train_loader(cfg)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_test_loader_yields_every_image_once(shapes_name, num_workers):
    loader = build_detection_test_loader(
        get_detection_dataset_dicts(shapes_name, filter_empty=False),
        mapper=_mapper(is_train=False),
        num_workers=num_workers,
    )
    ids = [batch[0]["image_id"] for batch in loader]
    assert sorted(ids) == list(range(1, 7))
    assert "instances" not in next(iter(loader))[0]


def test_collator_and_worker_seeds():
    assert trivial_batch_collator([{"a": 1}, {"b": 2}]) == [{"a": 1}, {"b": 2}]
    torch.manual_seed(3)
    worker_init_reset_seed(0)
    first = torch.rand(3)
    torch.manual_seed(3)
    worker_init_reset_seed(1)
    assert not torch.equal(first, torch.rand(3))
    torch.manual_seed(3)
    worker_init_reset_seed(0)
    assert torch.equal(first, torch.rand(3))


def _write_proposals(path, content):
    import pickle

    with open(path, "wb") as f:
        pickle.dump(content, f)
    return str(path)


def test_proposal_files_are_matched_by_image_id_and_sorted(tmp_path):
    import numpy as np

    from heron.structures.boxes import BoxMode

    dicts = [_record(7, [_ann(0)]), _record(3, [_ann(1)])]
    name = _register(dicts)
    path = _write_proposals(
        tmp_path / "props.pkl",
        {
            # legacy key "indexes"; ids as ints while the file lists extra images
            "indexes": [3, 99, 7],
            "boxes": [
                np.array([[0, 0, 2, 2], [1, 1, 5, 5]], dtype=np.float32),
                np.zeros((1, 4), dtype=np.float32),
                np.array([[2, 2, 4, 4]], dtype=np.float32),
            ],
            "objectness_logits": [np.array([0.5, 2.0]), np.array([1.0]), np.array([0.1])],
            "bbox_mode": int(BoxMode.XYXY_ABS),
        },
    )
    out = get_detection_dataset_dicts(name, proposal_files=[path])
    by_id = {d["image_id"]: d for d in out}
    # image 3: logits (0.5, 2.0) -> sorted descending puts the second box first
    np.testing.assert_array_equal(by_id[3]["proposal_boxes"], [[1, 1, 5, 5], [0, 0, 2, 2]])
    np.testing.assert_array_equal(by_id[3]["proposal_objectness_logits"], [2.0, 0.5])
    np.testing.assert_array_equal(by_id[7]["proposal_boxes"], [[2, 2, 4, 4]])
    assert by_id[7]["proposal_bbox_mode"] == BoxMode.XYXY_ABS


def test_proposal_file_errors_name_the_file_and_image(tmp_path):
    import numpy as np

    from heron.data.build import load_proposals_into_dataset
    from heron.utils.safe_pickle import UnsafePickleError

    records = [_record(1, [])]
    path = _write_proposals(tmp_path / "a.pkl", {"ids": [2], "boxes": [], "objectness_logits": []})
    with pytest.raises(KeyError, match=r"a\.pkl has no proposals for image_id 1"):
        load_proposals_into_dataset(records, path)
    path = _write_proposals(tmp_path / "b.pkl", {"ids": [1], "boxes": []})
    with pytest.raises(ValueError, match=r"b\.pkl: missing keys \['objectness_logits'\]"):
        load_proposals_into_dataset(records, path)
    path = _write_proposals(
        tmp_path / "c.pkl",
        {"ids": [1], "boxes": [np.zeros((2, 4))], "objectness_logits": [np.zeros(3)]},
    )
    with pytest.raises(ValueError, match="image_id 1: 2 boxes but 3 objectness logits"):
        load_proposals_into_dataset(records, path)
    path = _write_proposals(tmp_path / "d.pkl", {"ids": logging.getLogger})  # a callable global
    with pytest.raises(UnsafePickleError):
        load_proposals_into_dataset(records, path)
    name = _register([_record(1, [_ann(0)])])
    with pytest.raises(ValueError, match="2 proposal files given for 1 datasets"):
        get_detection_dataset_dicts(name, proposal_files=[path, path])
