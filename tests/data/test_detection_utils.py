import uuid

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from PIL import Image

from heron.config.config import get_cfg
from heron.data import detection_utils as utils
from heron.data.catalog import MetadataCatalog
from heron.data.transforms.augmentation_impl import RandomFlip, ResizeShortestEdge
from heron.data.transforms.transform import HFlipTransform, ResizeTransform, TransformList
from heron.structures.boxes import Boxes, BoxMode
from heron.structures.instances import Instances
from heron.structures.masks import BitMasks, PolygonMasks

# ----------------------------------------------------------------------------- read_image


def _half_white(w: int, h: int) -> Image.Image:
    arr = np.zeros((h, w, 3), dtype=np.uint8)
    arr[:, : w // 2] = 255  # left half white
    return Image.fromarray(arr)


@pytest.mark.parametrize("orientation, k", [(6, -1), (8, 1)])
def test_read_image_applies_exif_orientation(tmp_path, orientation, k):
    img = _half_white(16, 8)
    exif = img.getexif()
    exif[0x0112] = orientation
    path = tmp_path / "rot.jpg"
    img.save(path, exif=exif, quality=95)
    stored = np.asarray(Image.open(path).convert("RGB"))  # raw pixels, not re-oriented
    out = utils.read_image(str(path), format="RGB")
    # 6: shown rotated 90 degrees clockwise (np.rot90 k=-1); 8: counter-clockwise (k=1).
    np.testing.assert_array_equal(out, np.rot90(stored, k=k))
    assert out.shape == (16, 8, 3) and out.dtype == np.uint8
    # Clockwise turn brings the white left half to the top; counter-clockwise to the bottom.
    white_top = orientation == 6
    assert (out[2, 4].mean() > 200) == white_top
    assert (out[13, 4].mean() > 200) != white_top


def test_read_image_without_exif_keeps_pixels(tmp_path):
    arr = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    path = tmp_path / "a.png"
    Image.fromarray(arr).save(path)
    np.testing.assert_array_equal(utils.read_image(str(path), format="RGB"), arr)
    np.testing.assert_array_equal(utils.read_image(str(path), format="BGR"), arr[:, :, ::-1])


def test_read_image_grayscale_png_to_bgr_repeats_channel(tmp_path):
    gray = np.array([[0, 50, 100], [150, 200, 250]], dtype=np.uint8)
    path = tmp_path / "g.png"
    Image.fromarray(gray, mode="L").save(path)
    out = utils.read_image(str(path), format="BGR")
    assert out.shape == (2, 3, 3) and out.dtype == np.uint8
    for c in range(3):
        np.testing.assert_array_equal(out[:, :, c], gray)


def test_read_image_rgba_png_to_bgr_drops_alpha(tmp_path):
    rgba = np.zeros((2, 2, 4), dtype=np.uint8)
    rgba[..., 0], rgba[..., 1], rgba[..., 2], rgba[..., 3] = 10, 20, 30, 128
    path = tmp_path / "rgba.png"
    Image.fromarray(rgba, mode="RGBA").save(path)
    out = utils.read_image(str(path), format="BGR")
    assert out.shape == (2, 2, 3)
    np.testing.assert_array_equal(out[0, 0], [30, 20, 10])


def test_read_image_L_gives_single_channel(tmp_path):
    rgb = np.zeros((3, 4, 3), dtype=np.uint8)
    rgb[..., 1] = 100  # pure green 100 -> L = 0.587 * 100 = 58.7, PIL rounds to 59
    path = tmp_path / "c.png"
    Image.fromarray(rgb).save(path)
    out = utils.read_image(str(path), format="L")
    assert out.shape == (3, 4, 1) and out.dtype == np.uint8
    assert int(out[0, 0, 0]) == 59


def test_read_image_yuv_luma(tmp_path):
    rgb = np.full((1, 1, 3), 255, dtype=np.uint8)
    path = tmp_path / "w.png"
    Image.fromarray(rgb).save(path)
    out = utils.read_image(str(path), format="YUV-BT.601")
    # white: Y = 0.299 + 0.587 + 0.114 = 1; U = V = 0 up to the matrix's rounding
    np.testing.assert_allclose(out[0, 0], [1.0, 0.0, 0.0], atol=1e-4)


def test_read_image_missing_file_names_it(tmp_path):
    path = tmp_path / "nope.jpg"
    with pytest.raises(FileNotFoundError, match=r"nope\.jpg"):
        utils.read_image(str(path))


def test_read_image_corrupt_file_names_it(tmp_path):
    path = tmp_path / "bad.jpg"
    path.write_bytes(b"not an image at all")
    with pytest.raises(OSError, match=r"bad\.jpg"):
        utils.read_image(str(path), format="BGR")


def test_read_image_unicode_file_name(tmp_path):
    path = tmp_path / "图像_ñ_é.png"
    Image.fromarray(np.full((2, 2, 3), 7, dtype=np.uint8)).save(path)
    out = utils.read_image(str(path), format="RGB")
    np.testing.assert_array_equal(out, np.full((2, 2, 3), 7))


def test_convert_image_to_rgb_round_trips_bgr():
    bgr = np.array([[[1, 2, 3]]], dtype=np.uint8)
    np.testing.assert_array_equal(utils.convert_image_to_rgb(bgr, "BGR"), [[[3, 2, 1]]])


# ------------------------------------------------------------------------ check_image_size


def test_check_image_size_fills_missing_width_height():
    d = {"file_name": "x.jpg"}
    utils.check_image_size(d, np.zeros((5, 7, 3), dtype=np.uint8))
    assert d["width"] == 7 and d["height"] == 5


def test_check_image_size_mismatch_names_file_and_sizes():
    d = {"file_name": "x.jpg", "width": 8, "height": 5}
    with pytest.raises(ValueError, match=r"x\.jpg.*\(8, 5\).*\(7, 5\)"):
        utils.check_image_size(d, np.zeros((5, 7, 3), dtype=np.uint8))
    assert issubclass(utils.SizeMismatchError, ValueError)


# ----------------------------------------------------------------- annotation transforms

# Image (h, w) = (10, 20): flip horizontally (x -> 20 - x), then resize to (20, 40) (x2).
_FLIP_RESIZE = TransformList([HFlipTransform(20), ResizeTransform(10, 20, 20, 40)])


def test_transform_instance_annotations_box_polygon_keypoints():
    anno = {
        "bbox": [2, 3, 4, 5],  # XYWH -> XYXY (2, 3, 6, 8)
        "bbox_mode": BoxMode.XYWH_ABS,
        "segmentation": [[2, 3, 6, 3, 6, 8]],
        # nose, left_eye, right_eye
        "keypoints": [10, 5, 2, 4, 4, 2, 16, 4, 1],
        "category_id": 0,
    }
    out = utils.transform_instance_annotations(
        anno, _FLIP_RESIZE, (20, 40), keypoint_hflip_indices=[0, 2, 1]
    )
    # box: flip x -> (20-6, 3, 20-2, 8) = (14, 3, 18, 8); x2 -> (28, 6, 36, 16)
    np.testing.assert_allclose(out["bbox"], [28, 6, 36, 16])
    assert out["bbox_mode"] == BoxMode.XYXY_ABS
    # polygon: (2,3),(6,3),(6,8) -> flip (18,3),(14,3),(14,8) -> x2 (36,6),(28,6),(28,16)
    assert len(out["segmentation"]) == 1
    np.testing.assert_allclose(out["segmentation"][0], [36, 6, 28, 6, 28, 16])
    # keypoints: nose (10,5) -> (10,5) -> (20,10); left eye (4,4) -> (16,4) -> (32,8);
    # right eye (16,4) -> (4,4) -> (8,8). The flip swaps names: the new left eye is the
    # old right eye's point (8, 8, v=1), the new right eye is (32, 8, v=2).
    np.testing.assert_allclose(out["keypoints"], [[20, 10, 2], [8, 8, 1], [32, 8, 2]])


def test_transform_instance_annotations_clips_box_to_image():
    anno = {"bbox": [-5, 2, 30, 12], "bbox_mode": BoxMode.XYXY_ABS}
    out = utils.transform_instance_annotations(anno, [ResizeTransform(10, 20, 10, 20)], (10, 20))
    np.testing.assert_allclose(out["bbox"], [0, 2, 20, 10])


def test_transform_instance_annotations_rle_becomes_mask():
    mask = np.zeros((10, 20), dtype=np.uint8)
    mask[2:4, 0:5] = 1
    rle = mask_util.encode(np.asfortranarray(mask))
    anno = {"bbox": [0, 2, 5, 4], "bbox_mode": BoxMode.XYXY_ABS, "segmentation": rle}
    out = utils.transform_instance_annotations(anno, [HFlipTransform(20)], (10, 20))
    np.testing.assert_array_equal(out["segmentation"], mask[:, ::-1])


def test_transform_keypoints_outside_image_become_invisible():
    kps = [25, 5, 2, 3, 3, 2]  # x = 25 outside a 20-wide image
    out = utils.transform_keypoint_annotations(kps, [ResizeTransform(10, 20, 10, 20)], (10, 20))
    np.testing.assert_allclose(out, [[0, 0, 0], [3, 3, 2]])


def test_transform_keypoints_two_flips_do_not_swap():
    tfms = TransformList([HFlipTransform(20), HFlipTransform(20)])
    out = utils.transform_keypoint_annotations([4, 4, 2, 16, 4, 2], tfms, (10, 20), None)
    np.testing.assert_allclose(out, [[4, 4, 2], [16, 4, 2]])


def test_transform_keypoints_flip_without_indices_raises():
    with pytest.raises(ValueError, match="keypoint_hflip_indices"):
        utils.transform_keypoint_annotations([4, 4, 2], [HFlipTransform(20)], (10, 20))


# ---------------------------------------------------------------- annotations_to_instances


def _square_anno(x0, y0, x1, y1, cat, segm):
    return {"bbox": [x0, y0, x1, y1], "bbox_mode": BoxMode.XYXY_ABS, "category_id": cat,
            "segmentation": segm}  # fmt: skip


def test_annotations_to_instances_polygons():
    annos = [
        _square_anno(1, 1, 4, 4, 3, [[1, 1, 4, 1, 4, 4, 1, 4]]),
        _square_anno(0, 0, 2, 2, 5, [[0, 0, 2, 0, 2, 2]]),
    ]
    inst = utils.annotations_to_instances(annos, (6, 8))
    torch.testing.assert_close(inst.gt_boxes.tensor, torch.tensor([[1.0, 1, 4, 4], [0, 0, 2, 2]]))
    assert inst.gt_classes.dtype == torch.int64
    torch.testing.assert_close(inst.gt_classes, torch.tensor([3, 5]))
    assert isinstance(inst.gt_masks, PolygonMasks)
    # polygon bounding boxes equal the polygon extents
    torch.testing.assert_close(
        inst.gt_masks.get_bounding_boxes().tensor, torch.tensor([[1.0, 1, 4, 4], [0, 0, 2, 2]])
    )


def test_annotations_to_instances_rle_and_polygon_as_bitmask():
    mask = np.zeros((6, 8), dtype=np.uint8)
    mask[1:3, 2:5] = 1
    rle = mask_util.encode(np.asfortranarray(mask))
    poly = [[0, 0, 4, 0, 4, 4, 0, 4]]
    annos = [_square_anno(2, 1, 5, 3, 1, rle), _square_anno(0, 0, 4, 4, 2, poly)]
    inst = utils.annotations_to_instances(annos, (6, 8), mask_format="bitmask")
    assert isinstance(inst.gt_masks, BitMasks)
    assert inst.gt_masks.tensor.shape == (2, 6, 8)
    torch.testing.assert_close(inst.gt_masks.tensor[0], torch.from_numpy(mask.astype(bool)))
    # the polygon rasterized by pycocotools, the reference implementation
    ref = mask_util.decode(mask_util.merge(mask_util.frPyObjects(poly, 6, 8))).astype(bool)
    torch.testing.assert_close(inst.gt_masks.tensor[1], torch.from_numpy(ref))


def test_annotations_to_instances_rle_uncompressed_counts():
    # row-major 2x3 mask [[0, 1, 1], [0, 1, 0]] -> column-major runs: 2 zeros, 3 ones, 1 zero
    rle = {"size": [2, 3], "counts": [2, 3, 1]}
    inst = utils.annotations_to_instances(
        [_square_anno(1, 0, 3, 2, 0, rle)], (2, 3), mask_format="bitmask"
    )
    expected = torch.tensor([[False, True, True], [False, True, False]])
    torch.testing.assert_close(inst.gt_masks.tensor[0], expected)


def test_annotations_to_instances_polygon_format_rejects_rle():
    rle = mask_util.encode(np.asfortranarray(np.ones((2, 2), dtype=np.uint8)))
    with pytest.raises(ValueError, match="bitmask"):
        utils.annotations_to_instances([_square_anno(0, 0, 2, 2, 0, rle)], (2, 2))


def test_annotations_to_instances_empty_and_keypoints():
    inst = utils.annotations_to_instances([], (4, 5))
    assert inst.gt_boxes.tensor.shape == (0, 4) and inst.gt_classes.shape == (0,)
    anno = {"bbox": [0, 0, 2, 2], "bbox_mode": BoxMode.XYXY_ABS, "category_id": 1,
            "keypoints": [1, 1, 2, 0, 0, 0]}  # fmt: skip
    inst = utils.annotations_to_instances([anno], (4, 5))
    assert inst.gt_keypoints.tensor.shape == (1, 2, 3)


def test_annotations_to_instances_rotated():
    annos = [{"bbox": [5, 5, 4, 2, 30], "bbox_mode": BoxMode.XYWHA_ABS, "category_id": 2}]
    inst = utils.annotations_to_instances_rotated(annos, (10, 10))
    torch.testing.assert_close(inst.gt_boxes.tensor, torch.tensor([[5.0, 5, 4, 2, 30]]))
    torch.testing.assert_close(inst.gt_classes, torch.tensor([2]))


# ------------------------------------------------------------------ filter_empty_instances


def test_filter_empty_instances_by_box_and_mask():
    inst = Instances((4, 4))
    inst.gt_boxes = Boxes(torch.tensor([[0.0, 0, 2, 2], [1, 1, 1, 3], [0, 0, 3, 3]]))
    masks = torch.zeros(3, 4, 4, dtype=torch.bool)
    masks[0, :2, :2] = True
    masks[1, 1:3, 1] = True
    inst.gt_masks = BitMasks(masks)  # third mask empty
    out, keep = utils.filter_empty_instances(inst, return_mask=True)
    # box 1 has zero width; mask 2 is empty -> only instance 0 stays
    torch.testing.assert_close(keep, torch.tensor([True, False, False]))
    assert len(out) == 1
    assert len(utils.filter_empty_instances(inst, by_mask=False)) == 2
    assert len(utils.filter_empty_instances(inst, by_box=False, by_mask=False)) == 3


def test_filter_empty_instances_empty_input():
    inst = Instances((4, 4))
    inst.gt_boxes = Boxes(torch.zeros(0, 4))
    assert len(utils.filter_empty_instances(inst)) == 0


# ------------------------------------------------------------------------ metadata / cfg


def test_create_keypoint_hflip_indices_and_consistency():
    a, b = f"kp_a_{uuid.uuid4().hex}", f"kp_b_{uuid.uuid4().hex}"
    names = ["nose", "left_eye", "right_eye", "left_ear", "right_ear"]
    flip = [("left_eye", "right_eye"), ("left_ear", "right_ear")]
    MetadataCatalog.get(a).set(keypoint_names=names, keypoint_flip_map=flip)
    MetadataCatalog.get(b).set(keypoint_names=names, keypoint_flip_map=flip)
    try:
        assert utils.create_keypoint_hflip_indices([a, b]) == [0, 2, 1, 4, 3]
        assert utils.create_keypoint_hflip_indices(a) == [0, 2, 1, 4, 3]
        MetadataCatalog.get(b).set(thing_classes=["x"])
        with pytest.raises(ValueError, match="thing_classes"):
            utils.check_metadata_consistency("thing_classes", [a, b])
    finally:
        MetadataCatalog.remove(a)
        MetadataCatalog.remove(b)


def test_build_augmentation_train_and_test():
    cfg = get_cfg()
    cfg.INPUT.MIN_SIZE_TRAIN = (100, 200)
    cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING = "range"
    train = utils.build_augmentation(cfg, True)
    assert isinstance(train[0], ResizeShortestEdge) and isinstance(train[1], RandomFlip)
    assert train[0].is_range and tuple(train[0].short_edge_length) == (100, 200)
    assert train[1].horizontal and not train[1].vertical
    test = utils.build_augmentation(cfg, False)
    assert len(test) == 1 and test[0].max_size == cfg.INPUT.MAX_SIZE_TEST
    cfg.INPUT.RANDOM_FLIP = "none"
    assert len(utils.build_transform_gen(cfg, True)) == 1
    cfg.INPUT.RANDOM_FLIP = "diagonal"
    with pytest.raises(ValueError, match="RANDOM_FLIP"):
        utils.build_augmentation(cfg, True)


def test_gen_crop_transform_with_instance_contains_center():
    np.random.seed(0)
    inst = {"bbox": [30, 10, 40, 20], "bbox_mode": BoxMode.XYXY_ABS}  # center (x, y) = (35, 15)
    for _ in range(20):
        t = utils.gen_crop_transform_with_instance((8, 12), (30, 50), inst)
        assert (t.w, t.h) == (12, 8)
        assert t.x0 <= 35 <= t.x0 + t.w and t.y0 <= 15 <= t.y0 + t.h
        assert 0 <= t.x0 <= 50 - 12 and 0 <= t.y0 <= 30 - 8


def test_read_image_unknown_format_raises_value_error(tmp_path):
    path = tmp_path / "a.png"
    Image.fromarray(np.zeros((2, 2, 3), dtype=np.uint8)).save(path)
    with pytest.raises(ValueError, match="'XYZ'"):
        utils.read_image(str(path), format="XYZ")


def test_read_image_truncated_png_names_file(tmp_path):
    path = tmp_path / "full.png"
    Image.fromarray(np.random.RandomState(0).randint(0, 255, (32, 32, 3), np.uint8)).save(path)
    cut = tmp_path / "cut.png"
    cut.write_bytes(path.read_bytes()[:200])
    with pytest.raises(OSError, match=r"cut\.png"):
        utils.read_image(str(cut), format="RGB")


def test_convert_PIL_to_numpy_none_keeps_mode():
    img = Image.fromarray(np.full((2, 3), 9, dtype=np.uint8), mode="L")
    out = utils.convert_PIL_to_numpy(img, None)
    assert out.shape == (2, 3)
    np.testing.assert_array_equal(out, np.full((2, 3), 9))


def test_gen_crop_transform_with_instance_rejects_large_crop():
    inst = {"bbox": [0, 0, 2, 2], "bbox_mode": BoxMode.XYXY_ABS}
    with pytest.raises(ValueError, match="crop_size"):
        utils.gen_crop_transform_with_instance((40, 40), (30, 50), inst)
