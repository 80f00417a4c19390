import json
import os
import subprocess
import sys

from PIL import Image

from heron.data import DatasetCatalog, MetadataCatalog
from heron.data.datasets.builtin_meta import COCO_CATEGORIES


def test_standard_names_are_registered_with_metadata_and_no_file_read():
    names = set(DatasetCatalog.list())
    expected = {
        "coco_2017_train",
        "coco_2017_val",
        "keypoints_coco_2017_val",
        "lvis_v1_val",
        "voc_2007_trainval",
        "voc_2012_val",
        "shapes_train",
        "shapes_val",
        "shapes_panoptic_train",
        "shapes_panoptic_val_separated",
        "coco_2017_train_panoptic",
        "coco_2017_val_panoptic_separated",
        "coco_2017_val_panoptic_stuffonly",
        "cityscapes_fine_instance_seg_train",
        "cityscapes_fine_sem_seg_val",
        "ade20k_sem_seg_train",
        "ade20k_sem_seg_val",
    }
    assert expected <= names
    assert MetadataCatalog.get("coco_2017_val_panoptic").evaluator_type == "coco_panoptic_seg"
    assert MetadataCatalog.get("cityscapes_fine_sem_seg_val").evaluator_type == "cityscapes_sem_seg"
    assert MetadataCatalog.get("ade20k_sem_seg_val").stuff_classes[0] == "wall"
    assert MetadataCatalog.get("coco_2017_val").thing_classes[0] == "person"
    assert MetadataCatalog.get("keypoints_coco_2017_val").keypoint_names[0] == "nose"
    assert MetadataCatalog.get("voc_2007_test").evaluator_type == "pascal_voc"
    assert MetadataCatalog.get("coco_2017_val").json_file.endswith(
        os.path.join("coco", "annotations", "instances_val2017.json")
    )


def test_a_standard_name_reads_from_heron_datasets(tmp_path):
    """coco_2017_val_100 under $HERON_DATASETS loads; a missing file names its path."""
    (tmp_path / "coco" / "val2017").mkdir(parents=True)
    (tmp_path / "coco" / "annotations").mkdir()
    Image.new("RGB", (8, 6)).save(tmp_path / "coco" / "val2017" / "a.jpg")
    coco = {
        "images": [{"id": 1, "file_name": "a.jpg", "height": 6, "width": 8}],
        "annotations": [
            {"id": 1, "image_id": 1, "bbox": [1, 1, 2, 2], "category_id": 1, "iscrowd": 0}
        ],
        # the builtin metadata fixes all 80 COCO classes; a json must declare the same ones
        "categories": [{"id": c["id"], "name": c["name"]} for c in COCO_CATEGORIES if c["isthing"]],
    }
    (tmp_path / "coco" / "annotations" / "instances_val2017_100.json").write_text(json.dumps(coco))
    code = (
        "from heron.data import DatasetCatalog\n"
        "d = DatasetCatalog.get('coco_2017_val_100')\n"
        "print(len(d), d[0]['file_name'])\n"
        "try:\n"
        "    DatasetCatalog.get('coco_2017_train')\n"
        "except (FileNotFoundError, OSError) as e:\n"
        "    print('ERR', e)\n"
    )
    env = {**os.environ, "HERON_DATASETS": str(tmp_path)}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    first, err = out.stdout.strip().splitlines()[:2]
    assert first == f"1 {tmp_path / 'coco' / 'val2017' / 'a.jpg'}"
    assert err.startswith("ERR") and "instances_train2017.json" in err
