from __future__ import annotations

import json
import logging
import os

import numpy as np
import pycocotools.mask as mask_util
import pytest
from PIL import Image

from heron.data.catalog import DatasetCatalog, MetadataCatalog
from heron.data.datasets.cityscapes import (
    create_cityscapes_train_ids,
    load_cityscapes_instances,
    load_cityscapes_semantic,
    register_all_cityscapes,
)
from heron.data.datasets.cityscapes_labels import (
    CITYSCAPES_LABELS,
    cityscapes_name_to_label,
    cityscapes_thing_labels,
)
from heron.structures.boxes import BoxMode
from heron.structures.masks import polygons_to_bitmask

H, W = 32, 64
STEM_A = "aachen_000000_000019_"
STEM_B = "bochum_000000_000313_"


def _rect(x0, y0, x1, y1):
    """Polygon of the pixel rectangle x0..x1, y0..y1 (inclusive, as PIL fills it)."""
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1]]


def _box_mask(x0, y0, x1, y1):
    m = np.zeros((H, W), dtype=bool)
    m[y0 : y1 + 1, x0 : x1 + 1] = True
    return m


# Scene A, in drawing order. Later objects overwrite earlier ones.
SCENE_A = [
    {"label": "road", "polygon": _rect(0, 20, 63, 31)},
    {"label": "car", "polygon": _rect(2, 2, 21, 11)},  # 20 x 10 = 200 px
    {"label": "person", "polygon": _rect(15, 5, 29, 14)},  # 15 x 10 = 150 px
    {"label": "cargroup", "polygon": _rect(40, 2, 59, 9)},  # 20 x 8 = 160 px, crowd
    {"label": "license plate", "polygon": _rect(3, 3, 6, 4)},  # id -1: never drawn
    {"label": "car", "polygon": _rect(45, 4, 50, 6)},  # fully hidden by the building
    {"label": "building", "polygon": _rect(44, 3, 52, 7)},
    {"label": "rider", "polygon": _rect(2, 2, 10, 10), "deleted": 1},  # skipped
    {"label": "caravan", "polygon": _rect(0, 28, 3, 31)},  # instance class ignored in eval
]
# Visible masks built with numpy slices, independently of the PIL rasterization under test.
CAR_A = _box_mask(2, 2, 21, 11) & ~_box_mask(15, 5, 29, 14)  # 200 - 7 * 7 = 151 px
PERSON_A = _box_mask(15, 5, 29, 14)  # 150 px
CROWD_A = _box_mask(40, 2, 59, 9) & ~_box_mask(44, 3, 52, 7)  # 160 - 9 * 5 = 115 px
CROWD_A_FILLED = _box_mask(40, 2, 59, 9)  # the building makes a hole in the crowd

# Scene B: an L-shaped truck and a train with a hole.
SCENE_B = [
    {"label": "bicycle", "polygon": _rect(10, 10, 13, 12)},  # 4 x 3 = 12 px
    {"label": "truck", "polygon": _rect(30, 0, 40, 20)},  # 11 x 21 = 231 px
    {"label": "sky", "polygon": _rect(35, 0, 63, 5)},  # hides 6 x 6 = 36 px of the truck
    {"label": "train", "polygon": _rect(45, 10, 60, 25)},  # 16 x 16 = 256 px
    {"label": "pole", "polygon": _rect(50, 15, 54, 19)},  # a 5 x 5 = 25 px hole in the train
]
BICYCLE_B = _box_mask(10, 10, 13, 12)
TRUCK_B = _box_mask(30, 0, 40, 20) & ~_box_mask(35, 0, 63, 5)  # 195 px
TRAIN_B = _box_mask(45, 10, 60, 25) & ~_box_mask(50, 15, 54, 19)  # 231 px
TRAIN_B_FILLED = _box_mask(45, 10, 60, 25)


def _label_and_instance_maps(scene_id):
    """labelIds and instanceIds images of a scene, painted with numpy in drawing order."""
    label = np.zeros((H, W), dtype=np.uint16)
    inst = np.zeros((H, W), dtype=np.uint16)

    def paint(mask, label_id, inst_id):
        label[mask], inst[mask] = label_id, inst_id

    if scene_id == "A":
        paint(_box_mask(0, 20, 63, 31), 7, 7)
        paint(_box_mask(2, 2, 21, 11), 26, 26000)
        paint(_box_mask(15, 5, 29, 14), 24, 24000)
        paint(_box_mask(40, 2, 59, 9), 26, 26)  # group: the bare label id marks a crowd
        paint(_box_mask(45, 4, 50, 6), 26, 26001)
        paint(_box_mask(44, 3, 52, 7), 11, 11)
        paint(_box_mask(0, 28, 3, 31), 29, 29000)
    else:
        paint(_box_mask(10, 10, 13, 12), 33, 33000)
        paint(_box_mask(30, 0, 40, 20), 27, 27000)
        paint(_box_mask(35, 0, 63, 5), 23, 23)
        paint(_box_mask(45, 10, 60, 25), 31, 31000)
        paint(_box_mask(50, 15, 54, 19), 17, 17)
    return label, inst


def _write_split(root, split="train"):
    """Write a two-city Cityscapes split under root; return (image_dir, gt_dir)."""
    image_dir, gt_dir = root / "leftImg8bit" / split, root / "gtFine" / split
    for city, stem, scene, objects in [
        ("aachen", STEM_A, "A", SCENE_A),
        ("bochum", STEM_B, "B", SCENE_B),
    ]:
        (image_dir / city).mkdir(parents=True)
        (gt_dir / city).mkdir(parents=True)
        Image.new("RGB", (W, H)).save(image_dir / city / f"{stem}leftImg8bit.png")
        doc = {"imgHeight": H, "imgWidth": W, "objects": objects}
        (gt_dir / city / f"{stem}gtFine_polygons.json").write_text(json.dumps(doc))
        label, inst = _label_and_instance_maps(scene)
        Image.fromarray(label.astype(np.uint8)).save(gt_dir / city / f"{stem}gtFine_labelIds.png")
        Image.fromarray(inst).save(gt_dir / city / f"{stem}gtFine_instanceIds.png")
    return str(image_dir), str(gt_dir)


def _decode(segmentation):
    return mask_util.decode(segmentation).astype(bool)


def _polygon_mask(segmentation):
    return polygons_to_bitmask([np.asarray(p) for p in segmentation], H, W)


def test_label_table_has_34_labels_plus_license_plate_and_8_thing_classes():
    ids = [label.id for label in CITYSCAPES_LABELS]
    assert ids == list(range(34)) + [-1]
    train = sorted(label.trainId for label in CITYSCAPES_LABELS if label.trainId not in (255, -1))
    assert train == list(range(19))
    names = [label.name for label in cityscapes_thing_labels()]
    assert names == ["person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle"]
    assert cityscapes_name_to_label()["car"].color == (0, 0, 142)


def test_json_instances_resolve_occlusion_in_drawing_order(tmp_path, caplog):
    image_dir, gt_dir = _write_split(tmp_path)
    with caplog.at_level(logging.INFO, logger="heron.data.datasets.cityscapes"):
        dicts = load_cityscapes_instances(image_dir, gt_dir, from_json=True, to_polygons=False)
    assert "Dropped 1 Cityscapes instances with no visible pixel" in caplog.text  # hidden car
    assert [os.path.basename(d["file_name"]) for d in dicts] == [
        STEM_A + "leftImg8bit.png",
        STEM_B + "leftImg8bit.png",
    ]
    a = dicts[0]
    assert a["image_id"] == STEM_A + "leftImg8bit.png"
    assert (a["height"], a["width"]) == (H, W)
    # Detectron2 emits annotations in reverse drawing order: cargroup, person, car.
    annos = a["annotations"]
    assert [x["category_id"] for x in annos] == [2, 0, 2]  # car = 2, person = 0
    assert [x["iscrowd"] for x in annos] == [1, 0, 0]
    assert all(x["bbox_mode"] == BoxMode.XYXY_ABS for x in annos)
    expected = [CROWD_A, PERSON_A, CAR_A]
    assert [int(m.sum()) for m in expected] == [115, 150, 151]
    for anno, mask in zip(annos, expected):
        np.testing.assert_array_equal(_decode(anno["segmentation"]), mask)
    # boxes span pixel borders: car pixels x 2..21, y 2..11 -> (2, 2, 22, 12)
    assert [x["bbox"] for x in annos] == [[40, 2, 60, 10], [15, 5, 30, 15], [2, 2, 22, 12]]


def test_json_instances_of_second_city_keep_lshape_and_hole(tmp_path):
    image_dir, gt_dir = _write_split(tmp_path)
    b = load_cityscapes_instances(image_dir, gt_dir, from_json=True, to_polygons=False)[1]
    annos = b["annotations"]
    assert [x["category_id"] for x in annos] == [5, 3, 7]  # train, truck, bicycle
    assert [int(_decode(x["segmentation"]).sum()) for x in annos] == [231, 195, 12]
    for anno, mask in zip(annos, [TRAIN_B, TRUCK_B, BICYCLE_B]):
        np.testing.assert_array_equal(_decode(anno["segmentation"]), mask)
    assert annos[1]["bbox"] == [30, 0, 41, 21]  # truck pixels x 30..40, y 0..20


def test_json_polygons_rasterize_back_to_the_visible_mask(tmp_path):
    image_dir, gt_dir = _write_split(tmp_path)
    dicts = load_cityscapes_instances(image_dir, gt_dir, from_json=True, to_polygons=True)
    cases = [
        (dicts[0]["annotations"], [CROWD_A_FILLED, PERSON_A, CAR_A]),
        (dicts[1]["annotations"], [TRAIN_B_FILLED, TRUCK_B, BICYCLE_B]),
    ]
    for annos, masks in cases:
        for anno, mask in zip(annos, masks):
            assert isinstance(anno["segmentation"], list)
            # Exact for these rectilinear shapes: polygon edges sit a quarter pixel inside the
            # mask border, so pycocotools fills exactly the mask pixels. Holes (the building
            # in the crowd, the pole in the train) come back filled because COCO polygons keep
            # outer boundaries only, as in Detectron2: IoU with the visible mask is then
            # 115 / 160 and 231 / 256, which is why only the hole-filled masks match exactly.
            np.testing.assert_array_equal(_polygon_mask(anno["segmentation"]), mask)


def test_png_instances_match_detectron2_semantics(tmp_path):
    image_dir, gt_dir = _write_split(tmp_path)
    dicts = load_cityscapes_instances(image_dir, gt_dir, from_json=False, to_polygons=False)
    annos = dicts[0]["annotations"]
    # sorted instance ids 26 (car crowd), 24000 (person), 26000 (car); 26001 is absent from
    # the png (hidden) and 29000 (caravan) is ignored in evaluation
    assert [x["category_id"] for x in annos] == [2, 0, 2]
    assert [x["iscrowd"] for x in annos] == [1, 0, 0]
    for anno, mask in zip(annos, [CROWD_A, PERSON_A, CAR_A]):
        np.testing.assert_array_equal(_decode(anno["segmentation"]), mask)
    # png boxes are (min x, min y, max x, max y) of pixel indices, as in Detectron2
    assert [x["bbox"] for x in annos] == [[40, 2, 59, 9], [15, 5, 29, 14], [2, 2, 21, 11]]
    assert dicts[0]["image_id"] == STEM_A + "leftImg8bit.png"


def test_png_instances_to_polygons_and_thin_instances_dropped(tmp_path, caplog):
    image_dir, gt_dir = _write_split(tmp_path)
    inst = np.zeros((H, W), dtype=np.uint16)
    inst[30, 5:10] = 32000  # a one-row motorcycle: Detectron2 drops it
    inst[0:4, 0:3] = 25000  # a 3 x 4 rider
    path = os.path.join(gt_dir, "bochum", STEM_B + "gtFine_instanceIds.png")
    Image.fromarray(inst).save(path)
    with caplog.at_level(logging.INFO, logger="heron.data.datasets.cityscapes"):
        b = load_cityscapes_instances(image_dir, gt_dir, from_json=False, to_polygons=True)[1]
    assert "Dropped 1 Cityscapes instances" in caplog.text
    assert [x["category_id"] for x in b["annotations"]] == [1]  # rider
    expected = np.zeros((H, W), dtype=bool)
    expected[0:4, 0:3] = True
    np.testing.assert_array_equal(_polygon_mask(b["annotations"][0]["segmentation"]), expected)


def test_image_without_objects_has_empty_annotations(tmp_path):
    image_dir, gt_dir = _write_split(tmp_path)
    path = os.path.join(gt_dir, "aachen", STEM_A + "gtFine_polygons.json")
    with open(path, "w") as f:
        json.dump({"imgHeight": H, "imgWidth": W, "objects": []}, f)
    a = load_cityscapes_instances(image_dir, gt_dir)[0]
    assert a["annotations"] == []


def test_instance_errors_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="image_dir must be an existing directory"):
        load_cityscapes_instances(str(tmp_path / "nope"), str(tmp_path))
    image_dir, gt_dir = _write_split(tmp_path)
    path = os.path.join(gt_dir, "aachen", STEM_A + "gtFine_polygons.json")
    with open(path, "w") as f:
        json.dump({"imgHeight": H, "imgWidth": W, "objects": [{"label": "dragon"}]}, f)
    with pytest.raises(KeyError, match="object 0 has unknown Cityscapes label 'dragon'"):
        load_cityscapes_instances(image_dir, gt_dir)
    os.remove(path)
    with pytest.raises(FileNotFoundError, match=r"gtFine_polygons\.json"):
        load_cityscapes_instances(image_dir, gt_dir)
    open(os.path.join(image_dir, "aachen", "notes.txt"), "w").close()
    with pytest.raises(ValueError, match=r"does not end with 'leftImg8bit\.png'"):
        load_cityscapes_instances(image_dir, gt_dir, from_json=False, to_polygons=False)


def test_empty_image_dir_is_an_error(tmp_path):
    (tmp_path / "img").mkdir()
    with pytest.raises(ValueError, match="No Cityscapes images"):
        load_cityscapes_instances(str(tmp_path / "img"), str(tmp_path))


def test_to_polygons_without_opencv_says_what_to_use(tmp_path, monkeypatch):
    import sys

    image_dir, gt_dir = _write_split(tmp_path)
    monkeypatch.setitem(sys.modules, "cv2", None)  # makes "import cv2" raise ImportError
    with pytest.raises(ImportError, match="to_polygons=False"):
        load_cityscapes_instances(image_dir, gt_dir, to_polygons=True)
    assert len(load_cityscapes_instances(image_dir, gt_dir, to_polygons=False)) == 2


def test_create_train_ids_maps_label_ids_and_ignores(tmp_path):
    _, gt_dir = _write_split(tmp_path)
    assert create_cityscapes_train_ids(gt_dir) == 2
    path = os.path.join(gt_dir, "aachen", STEM_A + "gtFine_labelTrainIds.png")
    train_ids = np.asarray(Image.open(path))
    # label ids -> train ids: 0 unlabeled -> 255, 7 road -> 0, 11 building -> 2,
    # 24 person -> 11, 26 car -> 13, 29 caravan -> 255
    label, _ = _label_and_instance_maps("A")
    expected = np.full((H, W), 255, dtype=np.uint8)
    for label_id, train_id in [(7, 0), (11, 2), (24, 11), (26, 13)]:
        expected[label == label_id] = train_id
    np.testing.assert_array_equal(train_ids, expected)
    assert train_ids[0, 0] == 255 and train_ids[31, 0] == 255 and train_ids[31, 63] == 0
    leftovers = [f for f in os.listdir(os.path.join(gt_dir, "aachen")) if f.endswith(".tmp")]
    assert leftovers == []


def test_semantic_pairs_images_with_train_id_files(tmp_path):
    image_dir, gt_dir = _write_split(tmp_path)
    with pytest.raises(
        ValueError,
        match=r"2 \*_gtFine_labelTrainIds\.png files are missing.*create_cityscapes_train_ids",
    ):
        load_cityscapes_semantic(image_dir, gt_dir)
    create_cityscapes_train_ids(gt_dir)
    dicts = load_cityscapes_semantic(image_dir, gt_dir)
    assert len(dicts) == 2
    for d, city, stem in zip(dicts, ["aachen", "bochum"], [STEM_A, STEM_B]):
        assert d["file_name"] == os.path.join(image_dir, city, stem + "leftImg8bit.png")
        assert d["sem_seg_file_name"] == os.path.join(
            gt_dir, city, stem + "gtFine_labelTrainIds.png"
        )
        assert (d["height"], d["width"]) == (H, W)
    # without the json, the size comes from the image header
    os.remove(os.path.join(gt_dir, "bochum", STEM_B + "gtFine_polygons.json"))
    assert (load_cityscapes_semantic(image_dir, gt_dir)[1]["height"]) == H


_CITYSCAPES_NAMES = [
    f"cityscapes_fine_{task}_{split}"
    for task in ("instance_seg", "sem_seg")
    for split in ("train", "val", "test")
]


@pytest.fixture
def free_cityscapes_names():
    """Take the built-in Cityscapes names out of the catalogs for one test, then restore."""
    saved = {n: DatasetCatalog.pop(n) for n in _CITYSCAPES_NAMES if n in DatasetCatalog}
    saved_meta = {n: MetadataCatalog.pop(n) for n in _CITYSCAPES_NAMES if n in MetadataCatalog}
    yield
    for n in _CITYSCAPES_NAMES:
        DatasetCatalog.pop(n, None)
        MetadataCatalog.pop(n, None)
    DatasetCatalog.update(saved)
    MetadataCatalog.update(saved_meta)


def test_register_all_cityscapes_is_lazy_and_sets_metadata(tmp_path, free_cityscapes_names):
    register_all_cityscapes(str(tmp_path))  # nothing exists yet: registration reads no file
    assert set(_CITYSCAPES_NAMES) <= set(DatasetCatalog.list())
    inst = MetadataCatalog.get("cityscapes_fine_instance_seg_train")
    assert inst.evaluator_type == "cityscapes_instance"
    assert inst.thing_classes == [label.name for label in cityscapes_thing_labels()]
    assert inst.image_dir == os.path.join(str(tmp_path), "cityscapes/leftImg8bit/train/")
    assert inst.gt_dir == os.path.join(str(tmp_path), "cityscapes/gtFine/train/")
    sem = MetadataCatalog.get("cityscapes_fine_sem_seg_val")
    assert sem.evaluator_type == "cityscapes_sem_seg"
    assert sem.ignore_label == 255
    train_labels = sorted(
        (x for x in CITYSCAPES_LABELS if 0 <= x.trainId < 255), key=lambda x: x.trainId
    )
    assert sem.stuff_classes == [x.name for x in train_labels]
    assert sem.stuff_colors == [x.color for x in train_labels]

    _write_split(tmp_path / "cityscapes", "train")
    dicts = DatasetCatalog.get("cityscapes_fine_instance_seg_train")
    assert [len(d["annotations"]) for d in dicts] == [3, 3]
    assert isinstance(dicts[0]["annotations"][0]["segmentation"], list)  # polygons
    with pytest.raises(ValueError, match="create_cityscapes_train_ids"):
        DatasetCatalog.get("cityscapes_fine_sem_seg_train")
