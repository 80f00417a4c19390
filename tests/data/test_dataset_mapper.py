import logging

import numpy as np
import pytest
import torch
from PIL import Image

from heron.config.config import get_cfg
from heron.data.common import MapDataset
from heron.data.dataset_mapper import DatasetMapper
from heron.data.transforms.augmentation_impl import RandomCrop, RandomFlip, Resize
from heron.structures.boxes import BoxMode

# Source image (h, w) = (20, 40): left 10 columns red, the rest blue (RGB).
_H, _W = 20, 40


def _write_image(path):
    arr = np.zeros((_H, _W, 3), dtype=np.uint8)
    arr[:, :10] = (255, 0, 0)
    arr[:, 10:] = (0, 0, 255)
    Image.fromarray(arr).save(path)
    return str(path)


def _record(file_name):
    return {
        "file_name": file_name,
        "image_id": 7,
        "height": _H,
        "width": _W,
        "annotations": [
            {"bbox": [4, 2, 10, 6], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 1},
            {"bbox": [0, 0, 5, 5], "bbox_mode": BoxMode.XYXY_ABS, "category_id": 3},
        ],
    }


def _flip_mapper(**kwargs):
    # Resize (20, 40) -> (40, 80) (x2), then a horizontal flip that always fires.
    augs = [Resize((40, 80)), RandomFlip(prob=1.0)]
    return DatasetMapper(True, augmentations=augs, image_format="BGR", **kwargs)


def test_mapper_train_scales_and_flips_boxes_and_image(tmp_path):
    record = _record(_write_image(tmp_path / "img.png"))
    out = _flip_mapper()(record)
    image = out["image"]
    assert image.shape == (3, 40, 80) and image.dtype == torch.uint8
    assert image.is_contiguous()
    # After x2 and a flip, the red band (columns 0..9 -> 0..19) sits at columns 60..79.
    # BGR order: red is (0, 0, 255), blue is (255, 0, 0).
    torch.testing.assert_close(image[:, 5, 79], torch.tensor([0, 0, 255], dtype=torch.uint8))
    torch.testing.assert_close(image[:, 5, 0], torch.tensor([255, 0, 0], dtype=torch.uint8))
    inst = out["instances"]
    # box 1: XYWH (4,2,10,6) -> XYXY (4,2,14,8) -> x2 (8,4,28,16) -> flip 80-x (52,4,72,16)
    # box 2: (0,0,5,5) -> x2 (0,0,10,10) -> flip (70,0,80,10)
    expected = torch.tensor([[52.0, 4, 72, 16], [70, 0, 80, 10]])
    torch.testing.assert_close(inst.gt_boxes.tensor, expected)
    torch.testing.assert_close(inst.gt_classes, torch.tensor([1, 3]))
    assert inst.image_size == (40, 80)
    assert "annotations" not in out
    # the caller's record is untouched (deep copy)
    assert record["annotations"][0]["bbox"] == [4, 2, 10, 6]


def test_mapper_train_drops_crowd_and_segmentation_without_masks(tmp_path):
    record = _record(_write_image(tmp_path / "img.png"))
    record["annotations"][1]["iscrowd"] = 1
    record["annotations"][0]["segmentation"] = [[4, 2, 14, 2, 14, 8]]
    out = _flip_mapper()(record)
    assert len(out["instances"]) == 1
    assert not out["instances"].has("gt_masks")
    out = _flip_mapper(use_instance_mask=True, recompute_boxes=True)(record)
    # polygon (4,2),(14,2),(14,8) -> x2 (8,4),(28,4),(28,16) -> flip x: (72,4),(52,4),(52,16)
    torch.testing.assert_close(out["instances"].gt_boxes.tensor, torch.tensor([[52.0, 4, 72, 16]]))
    assert out["instances"].has("gt_masks")


def test_mapper_test_mode_drops_annotations(tmp_path):
    record = _record(_write_image(tmp_path / "img.png"))
    mapper = DatasetMapper(False, augmentations=[Resize((10, 20))], image_format="RGB")
    out = mapper(record)
    assert "annotations" not in out and "instances" not in out
    assert out["image"].shape == (3, 10, 20)
    assert (out["height"], out["width"]) == (_H, _W)  # original size kept for evaluation


def test_mapper_reads_sem_seg(tmp_path):
    record = _record(_write_image(tmp_path / "img.png"))
    seg = np.zeros((_H, _W), dtype=np.uint8)
    seg[:, 30:] = 5
    Image.fromarray(seg, mode="L").save(tmp_path / "seg.png")
    record["sem_seg_file_name"] = str(tmp_path / "seg.png")
    mapper = DatasetMapper(False, augmentations=[RandomFlip(prob=1.0)], image_format="BGR")
    out = mapper(record)
    assert out["sem_seg"].dtype == torch.int64 and out["sem_seg"].shape == (_H, _W)
    # columns 30..39 flip to 0..9
    assert out["sem_seg"][:, :10].eq(5).all() and out["sem_seg"][:, 10:].eq(0).all()


def test_mapper_precomputed_proposals(tmp_path):
    record = _record(_write_image(tmp_path / "img.png"))
    record["proposal_boxes"] = np.array([[0, 0, 10, 10], [5, 5, 5, 9], [1, 1, 4, 4]], "float32")
    record["proposal_bbox_mode"] = BoxMode.XYXY_ABS
    record["proposal_objectness_logits"] = np.array([3.0, 2.0, 1.0])
    mapper = DatasetMapper(False, augmentations=[], image_format="BGR", precomputed_proposal_topk=1)
    props = mapper(record)["proposals"]
    # the zero-width box is dropped, then top-1 keeps the first
    torch.testing.assert_close(props.proposal_boxes.tensor, torch.tensor([[0.0, 0, 10, 10]]))
    torch.testing.assert_close(props.objectness_logits, torch.tensor([3.0]))


def test_mapper_from_config_with_crop():
    cfg = get_cfg()
    cfg.INPUT.CROP.ENABLED = True
    cfg.MODEL.MASK_ON = True
    mapper = DatasetMapper(cfg, is_train=True)
    assert isinstance(mapper.augmentations.augs[0], RandomCrop)
    assert mapper.recompute_boxes and mapper.use_instance_mask
    assert mapper.image_format == cfg.INPUT.FORMAT
    test_mapper = DatasetMapper(cfg, is_train=False)
    assert not isinstance(test_mapper.augmentations.augs[0], RandomCrop)
    assert not test_mapper.recompute_boxes


def test_mapper_from_config_runs_on_image(tmp_path):
    cfg = get_cfg()
    cfg.INPUT.MIN_SIZE_TEST = 10  # short side 20 -> 10: (20, 40) -> (10, 20)
    mapper = DatasetMapper(cfg, is_train=False)
    out = mapper(_record(_write_image(tmp_path / "img.png")))
    assert out["image"].shape == (3, 10, 20)


def test_mapper_recompute_boxes_requires_masks():
    with pytest.raises(ValueError, match="use_instance_mask"):
        DatasetMapper(True, augmentations=[], image_format="BGR", recompute_boxes=True)


@pytest.mark.parametrize("corrupt", [False, True])
def test_mapper_bad_image_raises_naming_file_and_record(tmp_path, corrupt):
    path = tmp_path / "broken.jpg"
    if corrupt:
        path.write_bytes(b"\x00garbage")
    record = _record(str(path))
    with pytest.raises(OSError, match=r"image_id=7.*broken\.jpg"):
        _flip_mapper()(record)


def test_mapper_skip_bad_returns_none_and_counts(tmp_path, caplog):
    record = _record(str(tmp_path / "missing.jpg"))
    mapper = _flip_mapper(skip_bad=True)
    with caplog.at_level(logging.WARNING, logger="heron.data.dataset_mapper"):
        assert mapper(record) is None
        assert mapper(record) is None
    assert mapper.num_skipped == 2
    assert "missing.jpg" in caplog.text and "2 skipped" in caplog.text


def test_mapper_skip_bad_with_map_dataset_retries_other_item(tmp_path):
    good = _record(_write_image(tmp_path / "good.png"))
    bad = _record(str(tmp_path / "missing.jpg"))
    ds = MapDataset([bad, good], _flip_mapper(skip_bad=True))
    out = ds[0]
    assert out["file_name"] == good["file_name"]


def test_mapper_size_mismatch_raises(tmp_path):
    record = _record(_write_image(tmp_path / "img.png"))
    record["width"] = 41
    with pytest.raises(ValueError, match=r"img\.png.*\(41, 20\).*\(40, 20\)"):
        _flip_mapper()(record)


def test_mapper_unicode_file_name(tmp_path):
    record = _record(_write_image(tmp_path / "образ_画像.png"))
    out = _flip_mapper()(record)
    assert out["image"].shape == (3, 40, 80)


def test_albumentations_pipeline_runs_before_heron_augmentations(tmp_path):
    import albumentations as A

    record = _record(_write_image(tmp_path / "img.png"))
    record["annotations"][0]["segmentation"] = [[4, 2, 14, 2, 14, 8, 4, 8]]
    record["annotations"][1]["segmentation"] = [[0, 0, 5, 0, 5, 5, 0, 5]]
    mapper_kwargs = {"image_format": "BGR", "use_instance_mask": True}
    # Albumentations flips, Heron resizes x2: the same as Heron's resize + flip.
    ours = DatasetMapper(
        True,
        augmentations=[Resize((40, 80))],
        albumentations=[A.HorizontalFlip(p=1.0)],
        **mapper_kwargs,
    )(record)
    reference = _flip_mapper(use_instance_mask=True)(record)
    torch.testing.assert_close(ours["image"], reference["image"])  # BGR kept around RGB ops
    torch.testing.assert_close(
        ours["instances"].gt_boxes.tensor, reference["instances"].gt_boxes.tensor
    )
    for a, b in zip(ours["instances"].gt_masks.polygons, reference["instances"].gt_masks.polygons):
        np.testing.assert_allclose(a[0], b[0])
    # inference ignores the pipeline
    test_out = DatasetMapper(
        False, augmentations=[], albumentations=[A.HorizontalFlip(p=1.0)], **mapper_kwargs
    )(record)
    torch.testing.assert_close(
        test_out["image"][:, 5, 0], torch.tensor([0, 0, 255], dtype=torch.uint8)
    )


def test_albumentations_refuses_precomputed_proposals_and_names_bad_records(tmp_path):
    import albumentations as A

    with pytest.raises(ValueError, match="precomputed proposals"):
        DatasetMapper(
            True,
            augmentations=[],
            image_format="BGR",
            precomputed_proposal_topk=10,
            albumentations=[A.HorizontalFlip(p=1.0)],
        )
    record = _record(_write_image(tmp_path / "img.png"))
    record["annotations"][0]["bbox_mode"] = BoxMode.XYWHA_ABS
    mapper = DatasetMapper(
        True, augmentations=[], image_format="BGR", albumentations=[A.HorizontalFlip(p=1.0)]
    )
    with pytest.raises(ValueError, match=r"albumentations on image_id=7, file_name=.*img\.png"):
        mapper(record)
