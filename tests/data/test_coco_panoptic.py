from __future__ import annotations

import copy
import json
import logging
import os
import uuid

import numpy as np
import pytest
from PIL import Image

from heron.data.catalog import DatasetCatalog, MetadataCatalog
from heron.data.datasets.builtin_meta import COCO_CATEGORIES
from heron.data.datasets.coco_panoptic import (
    load_coco_panoptic_json,
    merge_to_panoptic,
    register_all_coco_panoptic,
    register_coco_panoptic,
    register_coco_panoptic_separated,
    separate_coco_semantic_from_panoptic,
)
from heron.data.datasets.shapes import (
    SHAPES_CATEGORIES,
    generate_shapes_dataset,
    get_shapes_metadata,
)

# Hand-built dataset: things have ids 1 and 2, stuff 7 and 9 (ids as in a panoptic json).
META = {
    "thing_dataset_id_to_contiguous_id": {1: 0, 2: 1},
    "stuff_dataset_id_to_contiguous_id": {7: 2, 9: 3},
}


@pytest.fixture
def new_name():
    """Return a factory of unique dataset names; every catalog entry they start is removed."""
    made = []

    def make() -> str:
        made.append(f"pan_test_{uuid.uuid4().hex[:8]}")
        return made[-1]

    yield make
    for prefix in made:
        for catalog in (DatasetCatalog, MetadataCatalog):
            for name in [n for n in catalog.list() if n.startswith(prefix)]:
                catalog.remove(name)


def _encode(ids: np.ndarray) -> np.ndarray:
    """(H, W) segment ids -> (H, W, 3) uint8 RGB with id = R + 256 G + 256**2 B."""
    ids = np.asarray(ids, dtype=np.int64)
    return np.stack([ids % 256, ids // 256 % 256, ids // 65536], axis=-1).astype(np.uint8)


def _panoptic_json(tmp_path, anns, pngs=None, touch_images=True):
    """Write a panoptic json, its PNGs (dict file_name -> id array) and empty image files."""
    (tmp_path / "pan").mkdir(exist_ok=True)
    (tmp_path / "img").mkdir(exist_ok=True)
    for ann in anns:
        name = ann.get("file_name")
        if name is None:
            continue
        ids = (pngs or {}).get(name, np.zeros((2, 2), dtype=np.int64))
        png, image = (
            tmp_path / "pan" / name,
            tmp_path / "img" / (os.path.splitext(name)[0] + ".jpg"),
        )
        png.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(_encode(ids)).save(png)
        if touch_images:
            image.parent.mkdir(parents=True, exist_ok=True)
            image.write_bytes(b"")
    json_file = tmp_path / "panoptic.json"
    json_file.write_text(json.dumps({"annotations": anns, "categories": []}))
    return str(json_file), str(tmp_path / "img"), str(tmp_path / "pan")


def _two_images():
    return [
        {
            "image_id": 7,
            "file_name": "000007.png",
            "segments_info": [
                {"id": 1001, "category_id": 1, "iscrowd": 0, "area": 3},
                {"id": 9000, "category_id": 9, "iscrowd": 0, "area": 1},
            ],
        },
        {
            "image_id": 3,
            "file_name": "000003.png",
            "segments_info": [{"id": 2002, "category_id": 2, "iscrowd": 1, "area": 4}],
        },
    ]


def test_load_maps_category_ids_sets_isthing_and_builds_file_names(tmp_path):
    json_file, img, pan = _panoptic_json(tmp_path, _two_images())
    dicts = load_coco_panoptic_json(json_file, img, pan, META)
    # json order is kept; .png -> .jpg for the image, the PNG name for the label
    assert dicts == [
        {
            "file_name": os.path.join(img, "000007.jpg"),
            "image_id": 7,
            "pan_seg_file_name": os.path.join(pan, "000007.png"),
            "segments_info": [
                # thing 1 -> 0; stuff 9 -> 3; other keys kept
                {"id": 1001, "category_id": 0, "iscrowd": 0, "area": 3, "isthing": True},
                {"id": 9000, "category_id": 3, "iscrowd": 0, "area": 1, "isthing": False},
            ],
        },
        {
            "file_name": os.path.join(img, "000003.jpg"),
            "image_id": 3,
            "pan_seg_file_name": os.path.join(pan, "000003.png"),
            "segments_info": [
                {"id": 2002, "category_id": 1, "iscrowd": 1, "area": 4, "isthing": True}
            ],
        },
    ]


def test_load_converts_image_id_to_int_and_accepts_metadata_object(tmp_path):
    anns = _two_images()[:1]
    anns[0]["image_id"] = "7"  # Detectron2 applies int() to panoptic image ids
    json_file, img, pan = _panoptic_json(tmp_path, anns)
    meta = MetadataCatalog.get(f"pan_meta_{uuid.uuid4().hex[:8]}").set(**META)
    try:
        (record,) = load_coco_panoptic_json(json_file, img, pan, meta)
    finally:
        MetadataCatalog.remove(meta.name)
    assert record["image_id"] == 7
    assert [s["category_id"] for s in record["segments_info"]] == [0, 3]


def test_load_image_without_segments_has_empty_segments_info(tmp_path):
    anns = [{"image_id": 1, "file_name": "a.png", "segments_info": []}]
    json_file, img, pan = _panoptic_json(tmp_path, anns)
    (record,) = load_coco_panoptic_json(json_file, img, pan, META)
    assert record["segments_info"] == []


def test_load_shapes_panoptic_split_matches_the_pngs(tmp_path):
    info = generate_shapes_dataset(tmp_path, num_images=3, image_size=(64, 64), panoptic=True)
    things = [c["id"] for c in SHAPES_CATEGORIES if c["isthing"]]
    stuff = [c["id"] for c in SHAPES_CATEGORIES if not c["isthing"]]
    # standard form: contiguous id = position in SHAPES_CATEGORIES = category_id - 1
    meta = {
        "thing_dataset_id_to_contiguous_id": {i: i - 1 for i in things},
        "stuff_dataset_id_to_contiguous_id": {i: i - 1 for i in stuff},
    }
    dicts = load_coco_panoptic_json(
        info["panoptic_json"], info["image_root"], info["panoptic_root"], meta
    )
    assert [d["image_id"] for d in dicts] == [1, 2, 3]
    for d in dicts:
        assert os.path.isfile(d["file_name"]) and d["file_name"].endswith(".jpg")
        rgb = np.asarray(Image.open(d["pan_seg_file_name"]), dtype=np.int64)
        ids = rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]
        assert sorted(s["id"] for s in d["segments_info"]) == np.unique(ids).tolist()
        for s in d["segments_info"]:
            # shapes writes segment id = 1000 * category_id (+ k for the k-th shape)
            category_id = s["id"] // 1000
            assert s["category_id"] == category_id - 1
            assert s["isthing"] == (category_id in things)
            assert s["area"] == int((ids == s["id"]).sum())


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.pop("annotations"), r"panoptic\.json: expected a JSON object with an"),
        (lambda d: d["annotations"].clear(), r"panoptic\.json: 'annotations' is empty"),
        (
            lambda d: d["annotations"][1].pop("segments_info"),
            r"panoptic\.json: annotation #1 \(image_id 3\) is missing .*'segments_info'",
        ),
        (
            lambda d: d["annotations"][0]["segments_info"][1].pop("category_id"),
            r"panoptic\.json: segment #1 of image_id 7 is missing .*'category_id'",
        ),
        (
            lambda d: d["annotations"][0]["segments_info"][1].update(category_id=5),
            r"panoptic\.json: segment id 9000 of image_id 7 has category_id 5, which is in "
            r"neither thing_dataset_id_to_contiguous_id \[1, 2\] nor "
            r"stuff_dataset_id_to_contiguous_id \[7, 9\]",
        ),
        (
            lambda d: d["annotations"][1].update(image_id=7),
            r"panoptic\.json: image_id 7 appears more than once",
        ),
        (
            lambda d: d["annotations"][1].update(image_id="x3"),
            r"panoptic\.json: image_id must be an integer, got 'x3' \(file_name '000003\.png'\)",
        ),
    ],
)
def test_load_rejects_malformed_json_naming_file_and_record(tmp_path, mutate, message):
    json_file, img, pan = _panoptic_json(tmp_path, _two_images())
    with open(json_file) as f:
        data = json.load(f)
    mutate(data)
    with open(json_file, "w") as f:
        json.dump(data, f)
    with pytest.raises(ValueError, match=message):
        load_coco_panoptic_json(json_file, img, pan, META)


def test_load_reports_every_missing_image_with_count(tmp_path):
    anns = [{"image_id": i, "file_name": f"{i:03d}.png", "segments_info": []} for i in range(8)]
    json_file, img, pan = _panoptic_json(tmp_path, anns, touch_images=False)
    (tmp_path / "img" / "000.jpg").write_bytes(b"")
    # 7 of 8 images missing: the first five named, then "and 2 more"
    shown = [os.path.join(img, f"{i:03d}.jpg") for i in range(1, 6)]
    with pytest.raises(ValueError) as e:
        load_coco_panoptic_json(json_file, img, pan, META)
    assert str(e.value) == (
        f"{json_file}: 7 of 8 records have no file_name on disk, e.g. {shown} and 2 more"
    )


def test_load_reports_missing_panoptic_png(tmp_path):
    json_file, img, pan = _panoptic_json(tmp_path, _two_images())
    os.remove(os.path.join(pan, "000003.png"))
    with pytest.raises(ValueError, match=r"1 of 2 records have no pan_seg_file_name .*000003"):
        load_coco_panoptic_json(json_file, img, pan, META)


# ------------------------------------------------------------ separated semantic PNGs

# categories in a deliberately unsorted order: stuff 9 comes before stuff 7
_CATEGORIES = [
    {"id": 2, "isthing": 1},
    {"id": 9, "isthing": 0},
    {"id": 1, "isthing": 1},
    {"id": 7, "isthing": 0},
]


def test_separate_writes_things_zero_stuff_in_category_order_rest_ignored(tmp_path):
    ids = np.array(
        [
            [0, 1001, 1001, 9000],
            [7000, 7000, 2002, 9000],
            [4242, 7000, 1001, 0],
            [70000, 70000, 2002, 2002],  # 70000 = (112, 17, 1) exercises G and B
        ]
    )
    segments = [
        {"id": 1001, "category_id": 1},
        {"id": 2002, "category_id": 2},
        {"id": 9000, "category_id": 9},
        {"id": 7000, "category_id": 7},
        {"id": 70000, "category_id": 0},  # category 0 is ignore in prepare_panoptic_fpn.py
    ]  # 0 (void) and 4242 are in no segment
    anns = [{"image_id": 5, "file_name": "sub/x.png", "segments_info": segments}]
    json_file, _, pan = _panoptic_json(tmp_path, anns, pngs={"sub/x.png": ids})
    out = tmp_path / "sem"
    assert separate_coco_semantic_from_panoptic(json_file, pan, str(out), _CATEGORIES) == 1
    # things 1, 2 -> 0; stuff in the order given: 9 -> 1, 7 -> 2; everything else -> 255
    expected = np.array(
        [
            [255, 0, 0, 1],
            [2, 2, 0, 1],
            [255, 2, 0, 255],
            [255, 255, 0, 0],
        ],
        dtype=np.uint8,
    )
    with Image.open(out / "sub" / "x.png") as im:
        assert im.mode == "L"
        np.testing.assert_array_equal(np.asarray(im), expected)
    assert sorted(os.listdir(out / "sub")) == ["x.png"]  # no temporary files left behind


def test_separate_on_shapes_agrees_with_shapes_semantic_labels(tmp_path):
    info = generate_shapes_dataset(tmp_path, num_images=3, image_size=(64, 64), panoptic=True)
    out = tmp_path / "separated"
    count = separate_coco_semantic_from_panoptic(
        info["panoptic_json"], info["panoptic_root"], str(out), SHAPES_CATEGORIES
    )
    assert count == 3
    for i in range(1, 4):
        with Image.open(os.path.join(info["sem_seg_root"], f"{i:06d}.png")) as im:
            semantic = np.asarray(im).astype(np.int64)  # category_id - 1, every pixel labeled
        # things (ids 1-5, labels 0-4) -> 0; stuff 6, 7, 8 (labels 5, 6, 7) -> 1, 2, 3
        expected = np.where(semantic < 5, 0, semantic - 4)
        with Image.open(out / f"{i:06d}.png") as im:
            np.testing.assert_array_equal(np.asarray(im), expected.astype(np.uint8))


def test_separate_coco_categories_map_stuff_to_1_through_53(tmp_path):
    stuff_ids = [c["id"] for c in COCO_CATEGORIES if not c["isthing"]]
    ids = np.array([[1, 2, 3]])
    segments = [
        {"id": 1, "category_id": stuff_ids[0]},  # first stuff -> 1
        {"id": 2, "category_id": stuff_ids[-1]},  # last stuff -> 53
        {"id": 3, "category_id": 1},  # person -> 0
    ]
    anns = [{"image_id": 1, "file_name": "a.png", "segments_info": segments}]
    json_file, _, pan = _panoptic_json(tmp_path, anns, pngs={"a.png": ids})
    separate_coco_semantic_from_panoptic(json_file, pan, str(tmp_path / "s"), COCO_CATEGORIES)
    with Image.open(tmp_path / "s" / "a.png") as im:
        assert np.asarray(im).tolist() == [[1, 53, 0]]


def test_separate_reports_missing_pngs(tmp_path):
    json_file, _, pan = _panoptic_json(tmp_path, _two_images())
    os.remove(os.path.join(pan, "000007.png"))
    with pytest.raises(ValueError, match=r"panoptic\.json: 1 of 2 panoptic PNGs are missing"):
        separate_coco_semantic_from_panoptic(json_file, pan, str(tmp_path / "s"), _CATEGORIES)
    assert not (tmp_path / "s").exists()  # nothing written before the check


def test_separate_rejects_unknown_category(tmp_path):
    anns = _two_images()
    anns[1]["segments_info"][0]["category_id"] = 4
    json_file, _, pan = _panoptic_json(tmp_path, anns)
    with pytest.raises(ValueError, match=r"segment id 2002 of image_id 3 has category_id 4"):
        separate_coco_semantic_from_panoptic(json_file, pan, str(tmp_path / "s"), _CATEGORIES)


def test_separate_rejects_non_rgb_png(tmp_path):
    json_file, _, pan = _panoptic_json(tmp_path, _two_images())
    Image.fromarray(np.zeros((2, 2), dtype=np.uint8)).save(os.path.join(pan, "000003.png"))
    with pytest.raises(ValueError, match=r"000003\.png: panoptic PNG must be RGB, got mode 'L'"):
        separate_coco_semantic_from_panoptic(json_file, pan, str(tmp_path / "s"), _CATEGORIES)


@pytest.mark.parametrize(
    ("categories", "message"),
    [
        ([{"id": 1}], r"categories\[0\] needs keys 'id' and 'isthing'"),
        ([{"id": i, "isthing": 0} for i in range(1, 256)], r"hold 255 stuff classes; at most 254"),
    ],
)
def test_separate_rejects_bad_categories(tmp_path, categories, message):
    json_file, _, pan = _panoptic_json(tmp_path, _two_images())
    with pytest.raises(ValueError, match=message):
        separate_coco_semantic_from_panoptic(json_file, pan, str(tmp_path / "s"), categories)


# ------------------------------------------------------------ merge_to_panoptic


def test_merge_adds_sem_seg_file_to_each_detection_dict_in_detection_order():
    dets = [
        {"file_name": "im/b.jpg", "image_id": 2, "annotations": [{"category_id": 0}]},
        {"file_name": "im/./a.jpg", "image_id": 1, "annotations": []},  # same file after normpath
    ]
    sems = [
        {"file_name": "im/a.jpg", "sem_seg_file_name": "sem/a.png"},
        {"file_name": "im/b.jpg", "sem_seg_file_name": "sem/b.png"},
    ]
    before = copy.deepcopy(dets)
    merged = merge_to_panoptic(dets, sems)
    assert [m["image_id"] for m in merged] == [2, 1]
    assert [m["sem_seg_file_name"] for m in merged] == ["sem/b.png", "sem/a.png"]
    assert merged[0]["annotations"] == [{"category_id": 0}]
    assert dets == before  # inputs untouched


def test_merge_raises_naming_detection_files_without_partner():
    dets = [{"file_name": "a.jpg"}, {"file_name": "b.jpg"}]
    sems = [{"file_name": "a.jpg", "sem_seg_file_name": "a.png"}]
    with pytest.raises(ValueError, match=r"1 of 2 detection dicts have no .* \['b\.jpg'\]"):
        merge_to_panoptic(dets, sems)


def test_merge_raises_on_duplicate_sem_seg_file_name():
    sems = [{"file_name": "a.jpg", "sem_seg_file_name": f"{i}.png"} for i in range(2)]
    with pytest.raises(ValueError, match=r"file_name 'a\.jpg' more than once"):
        merge_to_panoptic([{"file_name": "a.jpg"}], sems)


def test_merge_logs_sem_seg_entries_left_out(caplog):
    sems = [{"file_name": f"{c}.jpg", "sem_seg_file_name": f"{c}.png"} for c in "abc"]
    with caplog.at_level(logging.WARNING, logger="heron.data.datasets.coco_panoptic"):
        merged = merge_to_panoptic([{"file_name": "c.jpg"}], sems)
    assert merged == [{"file_name": "c.jpg", "sem_seg_file_name": "c.png"}]
    assert "2 semantic segmentation entries have no detection dict" in caplog.text


def test_merge_of_empty_inputs_is_empty():
    assert merge_to_panoptic([], []) == []


# ------------------------------------------------------------ registration


def test_register_coco_panoptic_is_lazy_and_sets_metadata(tmp_path, new_name):
    name = new_name()
    missing = tmp_path / "nowhere"
    register_coco_panoptic(
        name, dict(META), str(missing / "img"), str(missing / "pan"), str(missing / "p.json")
    )
    assert not missing.exists()
    meta = MetadataCatalog.get(name)
    assert meta.panoptic_root == str(missing / "pan")
    assert meta.image_root == str(missing / "img")
    assert meta.panoptic_json == str(missing / "p.json")
    assert meta.json_file is None
    assert (meta.evaluator_type, meta.ignore_label, meta.label_divisor) == (
        "coco_panoptic_seg",
        255,
        1000,
    )
    assert meta.stuff_dataset_id_to_contiguous_id == {7: 2, 9: 3}
    with pytest.raises(FileNotFoundError):
        DatasetCatalog.get(name)


def test_register_coco_panoptic_loads_when_asked(tmp_path, new_name):
    name = new_name()
    json_file, img, pan = _panoptic_json(tmp_path, _two_images())
    register_coco_panoptic(name, dict(META), img, pan, json_file, "instances.json")
    assert MetadataCatalog.get(name).json_file == "instances.json"
    dicts = DatasetCatalog.get(name)
    assert dicts == load_coco_panoptic_json(json_file, img, pan, META)


def test_register_rejects_non_path_arguments(new_name):
    with pytest.raises(TypeError, match="panoptic_json must be a path, got int"):
        register_coco_panoptic(new_name(), {}, "img", "pan", 3)
    with pytest.raises(TypeError, match="sem_seg_root must be a path, got NoneType"):
        register_coco_panoptic_separated(new_name(), {}, "img", "pan", "p.json", None, "i.json")


def test_register_separated_is_lazy_and_sets_both_metadata(tmp_path, new_name):
    name = new_name()
    d = tmp_path / "nowhere"
    paths = [str(d / p) for p in ("img", "pan", "p.json", "sem", "i.json")]
    register_coco_panoptic_separated(name, {"stuff_classes": ["things", "sky"]}, *paths)
    assert not d.exists()
    sep, stuff = MetadataCatalog.get(name + "_separated"), MetadataCatalog.get(name + "_stuffonly")
    assert (sep.image_root, sep.panoptic_root, sep.panoptic_json) == tuple(paths[:3])
    assert (sep.sem_seg_root, sep.json_file) == (paths[3], paths[4])
    assert (sep.evaluator_type, sep.ignore_label) == ("coco_panoptic_seg", 255)
    assert (stuff.sem_seg_root, stuff.image_root) == (paths[3], paths[0])
    assert (stuff.evaluator_type, stuff.ignore_label) == ("sem_seg", 255)
    assert sep.stuff_classes == stuff.stuff_classes == ["things", "sky"]
    assert name not in DatasetCatalog  # only the two suffixed names
    with pytest.raises(FileNotFoundError):
        DatasetCatalog.get(name + "_separated")
    with pytest.raises(ValueError, match="gt_root must be an existing directory"):
        DatasetCatalog.get(name + "_stuffonly")


def test_register_separated_on_shapes_pairs_instances_with_semantic(tmp_path, new_name):
    info = generate_shapes_dataset(tmp_path, num_images=3, image_size=(64, 64), panoptic=True)
    sem_root = str(tmp_path / "separated")
    separate_coco_semantic_from_panoptic(
        info["panoptic_json"], info["panoptic_root"], sem_root, SHAPES_CATEGORIES
    )
    name = new_name()
    register_coco_panoptic_separated(
        name,
        get_shapes_metadata(),
        info["image_root"],
        info["panoptic_root"],
        info["panoptic_json"],
        sem_root,
        info["json_file"],
    )
    separated = DatasetCatalog.get(name + "_separated")
    with open(info["json_file"]) as f:
        coco = json.load(f)
    assert [d["image_id"] for d in separated] == [1, 2, 3]
    for d in separated:
        stem = f"{d['image_id']:06d}"
        assert d["file_name"] == os.path.join(info["image_root"], stem + ".jpg")
        assert d["sem_seg_file_name"] == os.path.join(sem_root, stem + ".png")
        expected = [a for a in coco["annotations"] if a["image_id"] == d["image_id"]]
        assert len(d["annotations"]) == len(expected) >= 1
    stuffonly = DatasetCatalog.get(name + "_stuffonly")
    assert [(d["file_name"], d["sem_seg_file_name"]) for d in stuffonly] == [
        (d["file_name"], d["sem_seg_file_name"]) for d in separated
    ]


def test_register_all_coco_panoptic_uses_detectron2_names_and_paths(tmp_path, monkeypatch):
    # Fresh catalogs, so the test neither sees nor disturbs names registered on import.
    monkeypatch.setattr(DatasetCatalog, "data", {})
    monkeypatch.setattr(MetadataCatalog, "data", {})
    root = str(tmp_path / "datasets")
    register_all_coco_panoptic(root)
    assert not os.path.exists(root)
    prefixes = ["coco_2017_train_panoptic", "coco_2017_val_panoptic", "coco_2017_val_100_panoptic"]
    assert sorted(DatasetCatalog.list()) == sorted(
        p + s for p in prefixes for s in ("", "_separated", "_stuffonly")
    )

    def j(*parts):
        return os.path.join(root, "coco", *parts)

    std = MetadataCatalog.get("coco_2017_val_100_panoptic")
    assert std.image_root == j("val2017")
    assert std.panoptic_root == j("panoptic_val2017_100")
    assert std.panoptic_json == j("annotations", "panoptic_val2017_100.json")
    assert std.json_file == j("annotations", "instances_val2017_100.json")
    assert (std.evaluator_type, std.label_divisor) == ("coco_panoptic_seg", 1000)
    assert len(std.stuff_classes) == 133  # standard form: all classes in one index space

    sep = MetadataCatalog.get("coco_2017_train_panoptic_separated")
    assert sep.image_root == j("train2017")
    assert sep.sem_seg_root == j("panoptic_stuff_train2017")
    assert sep.json_file == j("annotations", "instances_train2017.json")
    assert sep.panoptic_json == j("annotations", "panoptic_train2017.json")
    assert len(sep.stuff_classes) == 54  # "things" + 53 stuff classes
    stuff = MetadataCatalog.get("coco_2017_val_panoptic_stuffonly")
    assert (stuff.evaluator_type, stuff.sem_seg_root) == ("sem_seg", j("panoptic_stuff_val2017"))
