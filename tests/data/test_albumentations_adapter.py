from __future__ import annotations

import copy
import sys

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from heron.data.detection_utils import annotations_to_instances, transform_instance_annotations
from heron.data.transforms.albumentations_adapter import AlbumentationsAdapter
from heron.data.transforms.transform import HFlipTransform
from heron.structures.boxes import BoxMode

A = pytest.importorskip("albumentations")
cv2 = pytest.importorskip("cv2")

H, W = 10, 20  # test image (height, width)


def make_image(h: int = H, w: int = W) -> np.ndarray:
    return (np.arange(h * w * 3, dtype=np.int64) % 251).astype(np.uint8).reshape(h, w, 3)


def rle_of(mask: np.ndarray) -> dict:
    return mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))


def exact(actual, expected) -> None:
    torch.testing.assert_close(
        torch.as_tensor(np.asarray(actual, dtype=np.float64)),
        torch.as_tensor(np.asarray(expected, dtype=np.float64)),
        rtol=0,
        atol=0,
    )


def test_hflip_agrees_exactly_with_heron_hflip_transform():
    mask = np.zeros((H, W), dtype=np.uint8)
    mask[2:5, 3:9] = 1
    mask[6, 1] = 1
    annos = [
        {
            "bbox": [1.25, 2.0, 5.5, 4.75],  # XYWH -> XYXY (1.25, 2, 6.75, 6.75)
            "bbox_mode": BoxMode.XYWH_ABS,
            "category_id": 3,
            "segmentation": [[1.25, 2.0, 6.75, 2.5, 4.0, 6.75], [2.0, 3.0, 3.0, 3.0, 3.0, 4.5]],
            "keypoints": [2.25, 3.5, 2, 5.75, 4.0, 1, 19.5, 9.5, 2],
        },
        {"bbox": [1, 2, 9, 7], "bbox_mode": BoxMode.XYXY_ABS, "category_id": 0,
         "segmentation": rle_of(mask), "keypoints": [0.0, 0.0, 0, 8.5, 2.5, 2, 1.0, 1.0, 2]},
    ]  # fmt: skip
    flip_indices = [2, 1, 0]
    image = make_image()
    adapter = AlbumentationsAdapter([A.HorizontalFlip(p=1)], keypoint_hflip_indices=flip_indices)
    out_image, out_annos, _ = adapter(image, copy.deepcopy(annos))

    heron_flip = HFlipTransform(W)
    np.testing.assert_array_equal(out_image, heron_flip.apply_image(image))
    assert len(out_annos) == 2
    for got, anno in zip(out_annos, annos):
        want = transform_instance_annotations(
            copy.deepcopy(anno), [heron_flip], (H, W), keypoint_hflip_indices=flip_indices
        )
        assert got["bbox_mode"] == BoxMode.XYXY_ABS
        assert got["category_id"] == anno["category_id"]
        exact(got["bbox"], want["bbox"])
        exact(np.reshape(got["keypoints"], (-1, 3)), want["keypoints"])
        if isinstance(anno["segmentation"], list):
            assert len(got["segmentation"]) == len(want["segmentation"])
            for p_got, p_want in zip(got["segmentation"], want["segmentation"]):
                exact(p_got, p_want)
        else:
            np.testing.assert_array_equal(
                mask_util.decode(got["segmentation"]), want["segmentation"]
            )
    # Hand check of one value: keypoint x = 2.25 -> 20 - 2.25 = 17.75, and it moved from
    # slot 0 to slot 2 by the flip indices.
    assert out_annos[0]["keypoints"][6:9] == [17.75, 3.5, 2.0]


def test_crop_drops_box_outside_and_clips_polygon_by_hand():
    annos = [
        # Triangle (4,2), (16,2), (4,8); box (4, 2, 16, 8).
        {"bbox": [4, 2, 16, 8], "bbox_mode": BoxMode.XYXY_ABS, "category_id": 1,
         "segmentation": [[4, 2, 16, 2, 4, 8]], "iscrowd": 0},
        {"bbox": [14, 2, 18, 6], "bbox_mode": BoxMode.XYXY_ABS, "category_id": 2},  # x >= 12
        {"bbox": [0, 0, 3, 3], "bbox_mode": BoxMode.XYXY_ABS, "category_id": 3},
    ]  # fmt: skip
    adapter = AlbumentationsAdapter([A.Crop(x_min=2, y_min=1, x_max=12, y_max=9)])
    out_image, out_annos, _ = adapter(make_image(), annos)

    assert out_image.shape == (8, 10, 3)
    assert [a["category_id"] for a in out_annos] == [1, 3]  # input order, box 2 dropped
    assert out_annos[0]["iscrowd"] == 0
    # Shifted by (-2, -1): triangle (2,1), (14,1), (2,7). Clip to x <= 10: edge (2,1)->(14,1)
    # leaves at (10,1); edge (14,1)->(2,7) is x = 14 - 12t, y = 1 + 6t, back at t = 1/3,
    # i.e. (10, 3). Result (2,1), (10,1), (10,3), (2,7).
    exact(out_annos[0]["segmentation"], [[2, 1, 10, 1, 10, 3, 2, 7]])
    exact(out_annos[0]["bbox"], [2, 1, 10, 7])  # (4-2, 2-1, min(16-2, 10), 8-1)
    exact(out_annos[1]["bbox"], [0, 0, 1, 2])  # (0-2 -> 0, 0-1 -> 0, 3-2, 3-1)
    assert annos[0]["segmentation"] == [[4, 2, 16, 2, 4, 8]]  # input untouched


def test_min_visibility_drops_mostly_cropped_box():
    annos = [
        {"bbox": [4, 2, 16, 8], "bbox_mode": BoxMode.XYXY_ABS, "category_id": 1},
        {"bbox": [0, 0, 3, 3], "bbox_mode": BoxMode.XYXY_ABS, "category_id": 3},
    ]
    # Crop x in [2, 12], y in [1, 9]. Box 1 keeps (12-4)*(8-2) = 48 of 72 = 0.67; box 3 keeps
    # (3-2)*(3-1) = 2 of 9 = 0.22 < 0.5.
    adapter = AlbumentationsAdapter(
        [A.Crop(x_min=2, y_min=1, x_max=12, y_max=9)], min_visibility=0.5
    )
    _, out_annos, _ = adapter(make_image(), annos)
    assert [a["category_id"] for a in out_annos] == [1]


def test_polygon_vanishing_in_crop_is_removed():
    anno = {"bbox": [1, 1, 18, 8], "bbox_mode": BoxMode.XYXY_ABS, "category_id": 0,
            "segmentation": [[1, 1, 4, 1, 4, 4], [14, 5, 18, 5, 18, 8]]}  # fmt: skip
    adapter = AlbumentationsAdapter([A.Crop(x_min=0, y_min=0, x_max=10, y_max=10)])
    _, out_annos, _ = adapter(make_image(), [anno])
    exact(out_annos[0]["segmentation"], [[1, 1, 4, 1, 4, 4]])
    exact(out_annos[0]["bbox"], [1, 1, 10, 8])


def test_rotate_90_maps_polygon_and_box_by_hand():
    # On a 10x10 image Albumentations' Rotate(90) turns the picture counter-clockwise about
    # its centre: (x, y) -> (y, 10 - x). Triangle (1,1), (5,1), (1,3) -> (1,9), (1,5), (3,9),
    # whose box is (1, 5, 3, 9).
    anno = {"bbox": [1, 1, 5, 3], "bbox_mode": BoxMode.XYXY_ABS, "category_id": 0,
            "segmentation": [[1, 1, 5, 1, 1, 3]]}  # fmt: skip
    for transform in (A.Rotate(limit=(90, 90), p=1), A.Affine(rotate=90, p=1)):
        adapter = AlbumentationsAdapter([transform])
        _, out_annos, _ = adapter(make_image(10, 10), [anno])
        got = out_annos[0]
        # cos(90 deg) is 6e-17 in float64 and the warp runs in float32: allow float32 rounding.
        kw = {"rtol": 0, "atol": 1e-5}
        torch.testing.assert_close(
            torch.tensor(got["segmentation"], dtype=torch.float64),
            torch.tensor([[1, 9, 1, 5, 3, 9]], dtype=torch.float64),
            **kw,
        )
        torch.testing.assert_close(
            torch.tensor(got["bbox"], dtype=torch.float64),
            torch.tensor([1, 5, 3, 9], dtype=torch.float64),
            **kw,
        )


def test_keypoints_leaving_the_image_get_zero_visibility():
    anno = {"bbox": [2, 2, 19, 8], "bbox_mode": BoxMode.XYXY_ABS, "category_id": 0,
            "keypoints": [3.5, 4.5, 1, 17.5, 4.5, 2, 14.0, 6.0, 2]}  # fmt: skip
    adapter = AlbumentationsAdapter([A.Affine(translate_px={"x": 5, "y": 0}, p=1)])
    _, out_annos, _ = adapter(make_image(), [anno])
    # x + 5: 8.5 inside; 22.5 > 20 outside -> zeroed; 19.0 <= 20 inside.
    torch.testing.assert_close(
        torch.tensor(out_annos[0]["keypoints"], dtype=torch.float64),
        torch.tensor([8.5, 4.5, 1, 0, 0, 0, 19.0, 6.0, 2], dtype=torch.float64),
        rtol=0,
        atol=1e-5,  # the affine warp of keypoints runs in float32
    )
    exact(out_annos[0]["bbox"], [7, 2, 20, 8])  # (2+5, 2, min(19+5, 20), 8)


def test_mirroring_transpose_swaps_left_right_keypoints():
    anno = {"bbox": [1, 1, 9, 9], "bbox_mode": BoxMode.XYXY_ABS, "category_id": 0,
            "keypoints": [2.5, 1.5, 2, 7.5, 3.5, 1]}  # fmt: skip
    adapter = AlbumentationsAdapter([A.Transpose(p=1)], keypoint_hflip_indices=[1, 0])
    out_image, out_annos, _ = adapter(make_image(), [anno])
    assert out_image.shape == (W, H, 3)
    # Transpose maps (x, y) -> (y, x); being a mirror image, slots 0 and 1 swap.
    exact(out_annos[0]["keypoints"], [3.5, 7.5, 1, 1.5, 2.5, 2])
    exact(out_annos[0]["bbox"], [1, 1, 9, 9])


def test_rotation_by_90_does_not_swap_keypoints_or_need_flip_indices():
    anno = {"bbox": [1, 1, 9, 9], "bbox_mode": BoxMode.XYXY_ABS, "category_id": 0,
            "keypoints": [2.5, 1.5, 2, 7.5, 3.5, 1]}  # fmt: skip
    adapter = AlbumentationsAdapter([A.Rotate(limit=(90, 90), p=1)])
    _, out_annos, _ = adapter(make_image(10, 10), [anno])
    # (x, y) -> (y, 10 - x): (1.5, 7.5) and (3.5, 2.5), order kept.
    torch.testing.assert_close(
        torch.tensor(out_annos[0]["keypoints"], dtype=torch.float64),
        torch.tensor([1.5, 7.5, 2, 3.5, 2.5, 1], dtype=torch.float64),
        rtol=0,
        atol=1e-5,
    )


def test_mirrored_keypoints_without_flip_indices_raise():
    anno = {"bbox": [1, 1, 9, 9], "bbox_mode": BoxMode.XYXY_ABS, "category_id": 0,
            "keypoints": [2.5, 1.5, 2]}  # fmt: skip
    adapter = AlbumentationsAdapter([A.HorizontalFlip(p=1)])
    with pytest.raises(ValueError, match=r"annotation 0 field 'keypoints'.*keypoint_hflip_indices"):
        adapter(make_image(), [anno])


def test_sem_seg_flips_with_the_image_and_resizes_with_nearest():
    sem_seg = (np.arange(H * W) % 7).astype(np.uint8).reshape(H, W)
    image = make_image()
    out_image, _, out_sem = AlbumentationsAdapter([A.HorizontalFlip(p=1)])(image, [], sem_seg)
    np.testing.assert_array_equal(out_image, image[:, ::-1])
    np.testing.assert_array_equal(out_sem, sem_seg[:, ::-1])
    # Doubling with nearest neighbour repeats every label twice along each axis.
    _, _, out_sem = AlbumentationsAdapter([A.Resize(2 * H, 2 * W, p=1)])(image, [], sem_seg)
    np.testing.assert_array_equal(out_sem, sem_seg.repeat(2, axis=0).repeat(2, axis=1))


def test_pixel_only_transform_leaves_annotations_identical():
    mask = np.zeros((H, W), dtype=np.uint8)
    mask[1:4, 2:7] = 1
    annos = [
        {"bbox": [1.1, 2.3, 6.7, 7.9], "bbox_mode": BoxMode.XYXY_ABS, "category_id": 4,
         "segmentation": [[1.1, 2.3, 6.7, 2.3, 3.3, 7.9]], "keypoints": [1.3, 2.7, 2, 5.1, 3.3, 1],
         "area": 12.5},
        {"bbox": [2, 1, 7, 4], "bbox_mode": BoxMode.XYXY_ABS, "category_id": 5,
         "segmentation": rle_of(mask)},
    ]  # fmt: skip
    image = make_image()
    adapter = AlbumentationsAdapter([A.RandomBrightnessContrast(p=1)], seed=0)
    out_image, out_annos, _ = adapter(image, copy.deepcopy(annos))
    assert not np.array_equal(out_image, image)
    assert out_annos == annos  # 1.1 etc. are not float32 numbers: no float32 round trip


def test_same_seed_gives_same_random_crop_and_box_follows_polygon():
    anno = {"bbox": [3, 2, 15, 8], "bbox_mode": BoxMode.XYXY_ABS, "category_id": 0,
            "segmentation": [[3, 2, 15, 2, 15, 8, 3, 8]]}  # fmt: skip
    pipeline = [A.RandomCrop(6, 12, p=1), A.HorizontalFlip(p=0.5)]
    out1 = AlbumentationsAdapter(pipeline, seed=11)(make_image(), [anno])
    out2 = AlbumentationsAdapter(A.Compose(pipeline, seed=11))(make_image(), [anno])
    np.testing.assert_array_equal(out1[0], out2[0])
    assert out1[1] == out2[1]
    # A 6x12 crop of a 10x20 image always overlaps the box (3..15, 2..8); the box of the
    # clipped rectangle polygon equals the transformed box.
    poly = np.reshape(out1[1][0]["segmentation"][0], (-1, 2))
    exact(out1[1][0]["bbox"], [*poly.min(axis=0), *poly.max(axis=0)])


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    x0=st.integers(0, 15),
    y0=st.integers(0, 7),
    bw=st.integers(1, 5),
    bh=st.integers(1, 3),
)
def test_rectangle_polygon_box_matches_box_under_random_geometry(seed, x0, y0, bw, bh):
    box = [x0, y0, x0 + bw, y0 + bh]
    anno = {"bbox": box, "bbox_mode": BoxMode.XYXY_ABS, "category_id": 0,
            "segmentation": [[x0, y0, x0 + bw, y0, x0 + bw, y0 + bh, x0, y0 + bh]]}  # fmt: skip
    pipeline = [A.RandomCrop(8, 16, p=1), A.HorizontalFlip(), A.VerticalFlip(), A.RandomRotate90()]
    _, out_annos, _ = AlbumentationsAdapter(pipeline, seed=seed)(make_image(), [anno])
    for got in out_annos:  # empty when the crop missed the box
        if got["segmentation"]:
            poly = np.reshape(got["segmentation"][0], (-1, 2))
            exact(got["bbox"], [*poly.min(axis=0), *poly.max(axis=0)])


def test_end_to_end_gt_boxes_match_polygon_mask_boxes():
    annos = [
        {"bbox": [4, 2, 16, 8], "bbox_mode": BoxMode.XYXY_ABS, "category_id": 1,
         "segmentation": [[4, 2, 16, 2, 4, 8]]},
        {"bbox": [0, 0, 3, 3], "bbox_mode": BoxMode.XYXY_ABS, "category_id": 3,
         "segmentation": [[0, 0, 3, 0, 3, 3, 0, 3]]},
    ]  # fmt: skip
    adapter = AlbumentationsAdapter(
        [A.Crop(x_min=2, y_min=1, x_max=12, y_max=9), A.HorizontalFlip(p=1)]
    )
    image, out_annos, _ = adapter(make_image(), annos)
    instances = annotations_to_instances(out_annos, image.shape[:2])
    torch.testing.assert_close(
        instances.gt_boxes.tensor, instances.gt_masks.get_bounding_boxes().tensor, rtol=0, atol=0
    )
    # Crop then flip in a width-10 crop: box (2, 1, 10, 7) -> (0, 1, 8, 7);
    # box (0, 0, 1, 2) -> (9, 0, 10, 2).
    torch.testing.assert_close(
        instances.gt_boxes.tensor, torch.tensor([[0.0, 1, 8, 7], [9, 0, 10, 2]])
    )
    torch.testing.assert_close(instances.gt_classes, torch.tensor([1, 3]))


def test_uncompressed_rle_and_array_masks_come_back_as_rle():
    mask = np.zeros((H, W), dtype=np.uint8)
    mask[3:6, 2:5] = 1
    compressed = rle_of(mask)
    uncompressed = {"size": [H, W], "counts": []}
    # Column-major run lengths of `mask`, written out by hand from its pixels.
    flat = mask.flatten(order="F")
    runs, value, count = [], 0, 0
    for v in flat:
        if v != value:
            runs.append(count)
            value, count = v, 0
        count += 1
    runs.append(count)
    uncompressed["counts"] = runs
    annos = [
        {"bbox": [2, 3, 5, 6], "bbox_mode": BoxMode.XYXY_ABS, "category_id": 0, "segmentation": s}
        for s in (compressed, uncompressed, mask)
    ]
    _, out_annos, _ = AlbumentationsAdapter([A.VerticalFlip(p=1)])(make_image(), annos)
    for got in out_annos:
        assert isinstance(got["segmentation"], dict)
        np.testing.assert_array_equal(mask_util.decode(got["segmentation"]), mask[::-1])


def test_empty_annotations():
    image = make_image()
    out_image, out_annos, out_sem = AlbumentationsAdapter([A.HorizontalFlip(p=1)])(image, [])
    assert out_annos == []
    assert out_sem is None
    np.testing.assert_array_equal(out_image, image[:, ::-1])


def test_single_annotation_keeps_extra_keys():
    anno = {"bbox": [1, 1, 4, 4], "bbox_mode": BoxMode.XYXY_ABS, "category_id": 7,
            "iscrowd": 0, "id": 42, "attributes": {"occluded": True}}  # fmt: skip
    _, out_annos, _ = AlbumentationsAdapter([A.HorizontalFlip(p=1)])(make_image(), [anno])
    assert out_annos == [{"bbox": [16.0, 1.0, 19.0, 4.0], "bbox_mode": BoxMode.XYXY_ABS,
                          "category_id": 7, "iscrowd": 0, "id": 42,
                          "attributes": {"occluded": True}}]  # fmt: skip
    assert out_annos[0]["attributes"] is not anno["attributes"]


@pytest.mark.parametrize(
    ("anno", "match"),
    [
        ({"bbox": [1, 2, 3], "bbox_mode": BoxMode.XYXY_ABS}, "annotation 1 field 'bbox'"),
        ({"bbox": [5, 2, 3, 4], "bbox_mode": BoxMode.XYXY_ABS}, "annotation 1 field 'bbox'"),
        ({"bbox": [1, 2, 3, 4]}, "annotation 1: fields 'bbox' and 'bbox_mode'"),
        ({"bbox": [1, 2, 3, 4, 0], "bbox_mode": BoxMode.XYWHA_ABS}, "field 'bbox_mode'"),
        (
            {"bbox": [1, 2, 3, 4], "bbox_mode": 0, "segmentation": [[1, 2, 3, 4, 5]]},
            "annotation 1 field 'segmentation': polygon 0",
        ),
        (
            {"bbox": [1, 2, 3, 4], "bbox_mode": 0, "segmentation": {"size": [5, 5], "counts": b""}},
            "annotation 1 field 'segmentation': RLE size",
        ),
        (
            {"bbox": [1, 2, 3, 4], "bbox_mode": 0, "segmentation": "oops"},
            "annotation 1 field 'segmentation'",
        ),
        (
            {"bbox": [1, 2, 3, 4], "bbox_mode": 0, "keypoints": [1, 2]},
            "annotation 1 field 'keypoints'",
        ),
    ],
)
def test_malformed_annotation_names_record_and_field(anno, match):
    good = {"bbox": [1, 2, 3, 4], "bbox_mode": BoxMode.XYXY_ABS, "category_id": 0}
    with pytest.raises(ValueError, match=match):
        AlbumentationsAdapter([A.HorizontalFlip(p=1)])(make_image(), [good, anno])


def test_non_line_preserving_transform_with_polygons_raises():
    anno = {"bbox": [1, 1, 6, 6], "bbox_mode": BoxMode.XYXY_ABS, "category_id": 0,
            "segmentation": [[1, 1, 6, 1, 6, 6]]}  # fmt: skip
    adapter = AlbumentationsAdapter([A.OneOf([A.ElasticTransform(p=1)], p=1)], seed=0)
    with pytest.raises(ValueError, match="ElasticTransform"):
        adapter(make_image(), [anno])
    # The same pipeline carries an RLE mask: it moves with the pixels.
    mask = np.zeros((H, W), dtype=np.uint8)
    mask[1:6, 1:6] = 1
    rle_anno = {**anno, "segmentation": rle_of(mask)}
    _, out_annos, _ = adapter(make_image(), [rle_anno])
    assert mask_util.decode(out_annos[0]["segmentation"]).shape == (H, W)


def test_reflect_border_duplicating_targets_raises():
    anno = {"bbox": [1, 2, 5, 6], "bbox_mode": BoxMode.XYXY_ABS, "category_id": 0}
    adapter = AlbumentationsAdapter(
        [A.Affine(translate_px={"x": 3, "y": 0}, border_mode=cv2.BORDER_REFLECT_101, p=1)]
    )
    with pytest.raises(ValueError, match="BORDER_CONSTANT"):
        adapter(make_image(), [anno])


def test_bad_image_and_transform_arguments_raise():
    adapter = AlbumentationsAdapter([A.HorizontalFlip(p=1)])
    with pytest.raises(ValueError, match="image must be an \\(H, W, C\\) uint8"):
        adapter(make_image().astype(np.float32), [])
    with pytest.raises(ValueError, match="sem_seg must be"):
        adapter(make_image(), [], np.zeros((3, 3), dtype=np.uint8))
    with pytest.raises(TypeError, match="item 1 must be an albumentations transform"):
        AlbumentationsAdapter([A.HorizontalFlip(p=1), HFlipTransform(W)])
    with pytest.raises(ValueError, match="min_visibility"):
        AlbumentationsAdapter([], min_visibility=1.5)


def test_missing_albumentations_raises_import_error_with_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "albumentations", None)  # makes the import fail
    with pytest.raises(ImportError, match=r"pip install 'heron\[albumentations\]'"):
        AlbumentationsAdapter([])


def test_vertical_flip_mirrors_so_keypoints_swap_unlike_detectron2():
    # Detectron2 swaps left/right only after HFlipTransform; a vertical flip is a mirror
    # image too (a horizontal flip plus a half turn), so the adapter swaps after it as well.
    anno = {"bbox": [1, 1, 9, 9], "bbox_mode": BoxMode.XYXY_ABS, "category_id": 0,
            "keypoints": [2.5, 1.5, 2, 7.5, 3.5, 1]}  # fmt: skip
    adapter = AlbumentationsAdapter([A.VerticalFlip(p=1)], keypoint_hflip_indices=[1, 0])
    _, out_annos, _ = adapter(make_image(), [anno])
    # y -> 10 - y: (2.5, 8.5) and (7.5, 6.5), then slots 0 and 1 swap.
    exact(out_annos[0]["keypoints"], [7.5, 6.5, 1, 2.5, 8.5, 2])
    exact(out_annos[0]["bbox"], [1, 1, 9, 9])  # (1, 10 - 9, 9, 10 - 1)
