from __future__ import annotations

import json
import os

import numpy as np
import pycocotools.mask as mask_util
import pytest
from PIL import Image

from heron.data.datasets.shapes import (
    SHAPES_CATEGORIES,
    generate_shapes_dataset,
    get_shapes_metadata,
    register_shapes,
)

SIZE = (64, 64)


def _dilate(mask: np.ndarray, iterations: int = 1) -> np.ndarray:
    """Binary dilation with the 4-connected cross (scipy.ndimage's default structure)."""
    out = mask.copy()
    for _ in range(iterations):
        grown = out.copy()
        grown[1:] |= out[:-1]
        grown[:-1] |= out[1:]
        grown[:, 1:] |= out[:, :-1]
        grown[:, :-1] |= out[:, 1:]
        out = grown
    return out


def _erode(mask: np.ndarray) -> np.ndarray:
    """Binary erosion with the same cross; outside the image counts as background."""
    padded = np.pad(mask, 1, constant_values=False)
    return ~_dilate(~padded)[1:-1, 1:-1]


def _generate(root, **kwargs):
    args = {"num_images": 4, "image_size": SIZE, "seed": 0}
    args.update(kwargs)
    return generate_shapes_dataset(str(root), **args)


def _load(info):
    with open(info["json_file"]) as f:
        coco = json.load(f)
    images = {
        img["id"]: np.asarray(Image.open(os.path.join(info["image_root"], img["file_name"])))
        for img in coco["images"]
    }
    return coco, images


def _mask(ann, height, width):
    rles = mask_util.frPyObjects(ann["segmentation"], height, width)
    return mask_util.decode(mask_util.merge(rles)).astype(bool)


def test_same_seed_gives_identical_files_and_other_seed_differs(tmp_path):
    a = _generate(tmp_path / "a")
    b = _generate(tmp_path / "b")
    c = _generate(tmp_path / "c", seed=1)
    with open(a["json_file"], "rb") as fa, open(b["json_file"], "rb") as fb:
        assert fa.read() == fb.read()
    coco_a, images_a = _load(a)
    _, images_b = _load(b)
    coco_c, images_c = _load(c)
    for image_id, pixels in images_a.items():
        np.testing.assert_array_equal(pixels, images_b[image_id])
    assert coco_a["annotations"] != coco_c["annotations"]
    assert any(not np.array_equal(images_a[i], images_c[i]) for i in images_a)


def test_train_and_val_splits_differ_for_one_seed(tmp_path):
    train, _ = _load(_generate(tmp_path, split="train"))
    val, _ = _load(_generate(tmp_path, split="val"))
    assert train["annotations"] != val["annotations"]


def test_coco_fields_and_ids(tmp_path):
    coco, images = _load(_generate(tmp_path))
    assert [img["id"] for img in coco["images"]] == [1, 2, 3, 4]
    for img in coco["images"]:
        assert (img["height"], img["width"]) == SIZE
        assert images[img["id"]].shape == (*SIZE, 3)
    ann_ids = [ann["id"] for ann in coco["annotations"]]
    assert ann_ids == list(range(1, len(ann_ids) + 1))
    assert {c["id"] for c in coco["categories"]} == {1, 2, 3, 4, 5}
    triangle = next(c for c in coco["categories"] if c["name"] == "triangle")
    assert triangle["keypoints"] == ["top", "left", "right"]
    for ann in coco["annotations"]:
        assert ann["iscrowd"] == 0
        assert len(ann["keypoints"]) == 9
        assert all(isinstance(v, float) for v in ann["bbox"])
    # every image has at least one shape
    assert {ann["image_id"] for ann in coco["annotations"]} == {1, 2, 3, 4}


def test_polygon_masks_match_the_painted_pixels(tmp_path):
    coco, images = _load(_generate(tmp_path, num_images=6))
    h, w = SIZE
    for ann in coco["annotations"]:
        mask = _mask(ann, h, w)
        # Erode by one pixel: JPEG blurs the border between shape and background.
        inner = _erode(mask)
        assert inner.sum() > 0
        pixels = images[ann["image_id"]][inner].astype(np.int32)
        err = np.abs(pixels - np.array(ann["color"])).max(axis=1)
        assert (err <= 12).mean() >= 0.95, ann["id"]
        # The ring just outside the shape is background, not the shape's color.
        ring = _dilate(mask, 3) & ~_dilate(mask, 1)
        outside = images[ann["image_id"]][ring].astype(np.int32)
        assert (np.abs(outside - np.array(ann["color"])).max(axis=1) <= 12).mean() < 0.5


def test_shapes_do_not_overlap(tmp_path):
    coco, _ = _load(_generate(tmp_path, num_images=6))
    h, w = SIZE
    for image_id in {ann["image_id"] for ann in coco["annotations"]}:
        total = np.zeros((h, w), dtype=np.int32)
        for ann in coco["annotations"]:
            if ann["image_id"] == image_id:
                total += _mask(ann, h, w)
        assert total.max() == 1


def test_bbox_is_polygon_bounds_and_area_is_polygon_area(tmp_path):
    coco, _ = _load(_generate(tmp_path))
    for ann in coco["annotations"]:
        xy = np.array(ann["segmentation"][0]).reshape(-1, 2)
        x0, y0 = xy.min(axis=0)
        x1, y1 = xy.max(axis=0)
        np.testing.assert_allclose(ann["bbox"], [x0, y0, x1 - x0, y1 - y0], rtol=0, atol=1e-9)
        # shapes stay at least one pixel inside the image
        assert x0 >= 1 and y0 >= 1 and x1 <= SIZE[1] - 1 and y1 <= SIZE[0] - 1
        rle = mask_util.frPyObjects(ann["segmentation"], *SIZE)
        pixel_area = float(mask_util.area(mask_util.merge(rle)))
        # shoelace by hand on the vertex list
        x, y = xy[:, 0], xy[:, 1]
        shoelace = 0.5 * abs(np.sum(x * np.roll(y, -1) - y * np.roll(x, -1)))
        assert ann["area"] == pytest.approx(shoelace, rel=1e-9)
        # the rasterized mask covers about the same area (boundary pixels differ)
        perimeter = np.sum(np.hypot(*(np.roll(xy, -1, axis=0) - xy).T))
        assert abs(pixel_area - ann["area"]) <= perimeter


def test_square_area_matches_side_squared(tmp_path):
    coco, _ = _load(_generate(tmp_path, num_images=20))
    squares = [a for a in coco["annotations"] if a["category_id"] == 2]
    assert squares
    for ann in squares:
        xy = np.array(ann["segmentation"][0]).reshape(-1, 2)
        side = np.hypot(*(xy[1] - xy[0]))
        assert ann["area"] == pytest.approx(side**2, rel=1e-9)


def test_triangle_keypoints_lie_on_its_corners(tmp_path):
    coco, _ = _load(_generate(tmp_path, num_images=20))
    triangles = [a for a in coco["annotations"] if a["category_id"] == 3]
    assert triangles
    for ann in triangles:
        corners = np.array(ann["segmentation"][0]).reshape(3, 2)
        kps = np.array(ann["keypoints"]).reshape(3, 3)
        # stored as pixel indices: the COCO loader's +0.5 puts them on the corners
        np.testing.assert_allclose(kps[:, :2] + 0.5, corners, atol=1e-9)
        assert kps[:, 2].tolist() == [2, 2, 2]
        assert ann["num_keypoints"] == 3
        top, left, right = corners
        # image y grows downward: the top corner is above both others, left is left of right
        assert top[1] < min(left[1], right[1])
        assert left[0] < right[0]
    for ann in coco["annotations"]:
        if ann["category_id"] != 3:
            assert ann["keypoints"] == [0.0] * 9 and ann["num_keypoints"] == 0


def test_all_five_shape_types_appear(tmp_path):
    coco, _ = _load(_generate(tmp_path, num_images=20))
    assert {ann["category_id"] for ann in coco["annotations"]} == {1, 2, 3, 4, 5}


def test_panoptic_png_segments_match_segments_info(tmp_path):
    info = _generate(tmp_path, panoptic=True)
    with open(info["panoptic_json"]) as f:
        pan = json.load(f)
    coco, _ = _load(info)
    isthing = {c["id"]: c["isthing"] for c in pan["categories"]}
    assert isthing == {c["id"]: c["isthing"] for c in SHAPES_CATEGORIES}
    stuff_names = get_shapes_metadata()["stuff_classes"]
    for ann in pan["annotations"]:
        rgb = np.asarray(Image.open(os.path.join(info["panoptic_root"], ann["file_name"])))
        rgb = rgb.astype(np.int64)
        ids = rgb[..., 0] + 256 * rgb[..., 1] + 256**2 * rgb[..., 2]
        semantic = np.asarray(
            Image.open(os.path.join(info["sem_seg_root"], ann["file_name"]))
        ).astype(np.int64)
        assert sorted(np.unique(ids).tolist()) == sorted(s["id"] for s in ann["segments_info"])
        assert sum(s["area"] for s in ann["segments_info"]) == ids.size
        for seg in ann["segments_info"]:
            where = ids == seg["id"]
            assert seg["area"] == where.sum()
            ys, xs = np.nonzero(where)
            assert seg["bbox"] == [xs.min(), ys.min(), int(np.ptp(xs)) + 1, int(np.ptp(ys)) + 1]
            # semantic label = category_id - 1, an index into stuff_classes
            assert np.all(semantic[where] == seg["category_id"] - 1)
            assert stuff_names[seg["category_id"] - 1]
        # 2 or 3 stuff bands; things in the panoptic map are the instance annotations
        num_stuff = sum(not isthing[s["category_id"]] for s in ann["segments_info"])
        assert num_stuff in (2, 3)
        things = [s for s in ann["segments_info"] if isthing[s["category_id"]]]
        instances = [a for a in coco["annotations"] if a["image_id"] == ann["image_id"]]
        assert len(things) == len(instances)
        for inst in instances:
            match = [s for s in things if s["category_id"] == inst["category_id"]]
            mask = _mask(inst, *SIZE)
            assert any(np.array_equal(ids == s["id"], mask) for s in match)


def test_second_call_reuses_files(tmp_path):
    first = _generate(tmp_path, panoptic=True)
    assert first["reused"] is False
    paths = [first["json_file"], first["panoptic_json"]]
    paths += [os.path.join(first["image_root"], n) for n in os.listdir(first["image_root"])]
    before = {p: os.stat(p).st_mtime_ns for p in paths}
    second = _generate(tmp_path, panoptic=True)
    assert second["reused"] is True
    assert second["num_annotations"] == first["num_annotations"]
    assert {p: os.stat(p).st_mtime_ns for p in paths} == before
    assert not [n for n in os.listdir(first["split_dir"]) if n.startswith(".tmp_")]


def test_changed_arguments_regenerate(tmp_path):
    _generate(tmp_path)
    again = _generate(tmp_path, seed=3)
    assert again["reused"] is False


def test_missing_file_triggers_regeneration(tmp_path):
    first = _generate(tmp_path)
    os.remove(os.path.join(first["image_root"], "000002.jpg"))
    again = _generate(tmp_path)
    assert again["reused"] is False
    assert os.path.isfile(os.path.join(first["image_root"], "000002.jpg"))


def test_zero_images_writes_empty_dataset(tmp_path):
    coco, _ = _load(_generate(tmp_path, num_images=0))
    assert coco["images"] == [] and coco["annotations"] == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_images": -1}, "num_images"),
        ({"image_size": (8, 64)}, "image_size"),
        ({"split": ""}, "split"),
        ({"max_shapes": 0}, "max_shapes"),
    ],
)
def test_bad_arguments_name_the_argument(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        _generate(tmp_path, **kwargs)


def test_metadata_lists_classes_and_keypoint_rules():
    meta = get_shapes_metadata()
    assert meta["thing_classes"] == ["circle", "square", "triangle", "star", "ellipse"]
    assert len(meta["thing_colors"]) == 5
    assert meta["keypoint_names"] == ["top", "left", "right"]
    assert meta["keypoint_flip_map"] == [("left", "right")]
    assert meta["stuff_classes"][5:] == ["sky", "ground", "water"]
    names = set(meta["keypoint_names"])
    assert all(a in names and b in names for a, b, _ in meta["keypoint_connection_rules"])


_ALL_SHAPES_NAMES = (
    "shapes_train",
    "shapes_val",
    "shapes_panoptic_train",
    "shapes_panoptic_val",
    "shapes_panoptic_train_separated",
    "shapes_panoptic_val_separated",
)


@pytest.fixture
def fresh_shapes_catalog(tmp_path):
    """Register the shapes names under tmp_path for one test, then put back the
    registrations made on import (later tests in this process use them)."""
    from heron.data.catalog import DatasetCatalog, MetadataCatalog

    saved = {}
    for name in _ALL_SHAPES_NAMES:
        if name in DatasetCatalog.list():
            saved[name] = (DatasetCatalog.data[name], MetadataCatalog.data.get(name))
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
    register_shapes(str(tmp_path))
    yield DatasetCatalog, MetadataCatalog
    for name in _ALL_SHAPES_NAMES:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    for name, (loader, metadata) in saved.items():
        DatasetCatalog.data[name] = loader
        if metadata is not None:
            MetadataCatalog.data[name] = metadata


def test_register_shapes_generates_on_first_get(tmp_path, fresh_shapes_catalog):
    dataset_catalog, metadata_catalog = fresh_shapes_catalog
    assert not (tmp_path / "shapes").exists()  # registration generates nothing
    meta = metadata_catalog.get("shapes_val")
    assert meta.thing_classes[2] == "triangle"
    dicts = dataset_catalog.get("shapes_val")
    assert len(dicts) == 50
    assert (tmp_path / "shapes" / "val" / "annotations.json").is_file()
    assert not (tmp_path / "shapes" / "train").exists()
    record = dicts[0]
    assert record["file_name"].startswith(str(tmp_path))
    assert record["annotations"]


def test_panoptic_names_load_standard_and_separated_forms(tmp_path, fresh_shapes_catalog):
    dataset_catalog, metadata_catalog = fresh_shapes_catalog
    standard = dataset_catalog.get("shapes_panoptic_val")
    assert len(standard) == 50
    record = standard[0]
    assert record["pan_seg_file_name"].endswith(os.path.join("panoptic", "000001.png"))
    # contiguous ids: things 0..4 with isthing, stuff (sky, ground, water) 5..7 without
    for seg in record["segments_info"]:
        assert (seg["category_id"] <= 4) == bool(seg["isthing"])
    assert metadata_catalog.get("shapes_panoptic_val").evaluator_type == "coco_panoptic_seg"

    separated = dataset_catalog.get("shapes_panoptic_val_separated")
    assert len(separated) == 50
    first = separated[0]
    assert first["annotations"] and first["sem_seg_file_name"].endswith("000001.png")
    labels = np.asarray(Image.open(first["sem_seg_file_name"]))
    pan = np.asarray(Image.open(record["pan_seg_file_name"])).astype(np.int64)
    ids = pan[..., 0] + 256 * pan[..., 1] + 65536 * pan[..., 2]
    thing_ids = [s["id"] for s in record["segments_info"] if s["isthing"]]
    # every thing pixel is 0 and every stuff pixel is 1..3 in the separated labels
    is_thing = np.isin(ids, thing_ids)
    assert (labels[is_thing] == 0).all()
    assert np.isin(labels[~is_thing], [1, 2, 3]).all()
    assert metadata_catalog.get("shapes_panoptic_val_separated").stuff_classes == [
        "things",
        "sky",
        "ground",
        "water",
    ]
