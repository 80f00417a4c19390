import os

import pytest

import heron.model_zoo as model_zoo
from heron.config.config import get_cfg
from heron.model_zoo import get_config_file

CONFIG_DIR = os.path.join(os.path.dirname(model_zoo.__file__), "configs")
SHIPPED = sorted(
    os.path.relpath(os.path.join(folder, name), CONFIG_DIR).replace(os.sep, "/")
    for folder, _dirs, files in os.walk(CONFIG_DIR)
    for name in files
    if name.endswith(".yaml")
)
# The zoo files the parity kit's 15 specs name (their "config_file").
PARITY_CONFIGS = [
    "COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml",
    "COCO-Detection/faster_rcnn_R_50_C4_1x.yaml",
    "COCO-Detection/faster_rcnn_R_50_DC5_1x.yaml",
    "COCO-Detection/retinanet_R_50_FPN_1x.yaml",
    "COCO-Detection/rpn_R_50_FPN_1x.yaml",
    "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml",
    "COCO-InstanceSegmentation/mask_rcnn_R_50_C4_1x.yaml",
    "COCO-InstanceSegmentation/mask_rcnn_X_101_32x8d_FPN_3x.yaml",
    "COCO-Keypoints/keypoint_rcnn_R_50_FPN_1x.yaml",
    "COCO-PanopticSegmentation/panoptic_fpn_R_50_1x.yaml",
    "Misc/cascade_mask_rcnn_R_50_FPN_1x.yaml",
    "Misc/mask_rcnn_R_50_FPN_1x_dconv_c3-c5.yaml",
    "Misc/mask_rcnn_R_50_FPN_3x_gn.yaml",
    "Misc/semantic_R_50_FPN_1x.yaml",
    "LVISv1-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml",
]


def test_every_parity_config_and_its_bases_are_shipped():
    bases = [
        "Base-RCNN-FPN.yaml",
        "Base-RCNN-C4.yaml",
        "Base-RCNN-DilatedC5.yaml",
        "Base-RetinaNet.yaml",
        "COCO-Keypoints/Base-Keypoint-RCNN-FPN.yaml",
        "COCO-PanopticSegmentation/Base-Panoptic-FPN.yaml",
    ]
    heron_own = ["Shapes/mask_rcnn_R_18_FPN_demo.yaml"]  # `heron demo`
    assert sorted(PARITY_CONFIGS + bases + heron_own) == SHIPPED


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_config_loads(name):
    path = get_config_file(name)
    assert os.path.isabs(path) and os.path.isfile(path)
    cfg = get_cfg()
    cfg.merge_from_file(path)
    assert cfg.VERSION == 2


def test_zoo_configs_carry_the_published_settings():
    cfg = get_cfg()
    cfg.merge_from_file(
        get_config_file("COCO-InstanceSegmentation/mask_rcnn_X_101_32x8d_FPN_3x.yaml")
    )
    assert cfg.MODEL.RESNETS.DEPTH == 101 and cfg.MODEL.RESNETS.NUM_GROUPS == 32
    assert cfg.MODEL.RESNETS.WIDTH_PER_GROUP == 8 and cfg.MODEL.RESNETS.STRIDE_IN_1X1 is False
    assert cfg.MODEL.PIXEL_STD == [57.375, 57.12, 58.395]
    assert cfg.SOLVER.STEPS == (210000, 250000) and cfg.SOLVER.MAX_ITER == 270000
    assert cfg.MODEL.ROI_HEADS.NAME == "StandardROIHeads"  # from Base-RCNN-FPN.yaml


def test_retinanet_config_evaluates_its_anchor_sizes():
    cfg = get_cfg()
    cfg.merge_from_file(get_config_file("COCO-Detection/retinanet_R_50_FPN_1x.yaml"))
    sizes = cfg.MODEL.ANCHOR_GENERATOR.SIZES
    # one row per level P3..P7: x, x * 2**(1/3), x * 2**(2/3)
    assert [row[0] for row in sizes] == [32, 64, 128, 256, 512]
    assert sizes[2] == [128, 128 * 2 ** (1.0 / 3), 128 * 2 ** (2.0 / 3)]
    assert sizes[0][1] == pytest.approx(40.3175, abs=1e-4)  # 32 * 1.259921


def test_missing_config_lists_close_matches():
    with pytest.raises(FileNotFoundError, match=r"faster_rcnn_R_50_FPN_2x\.yaml") as info:
        get_config_file("COCO-Detection/faster_rcnn_R_50_FPN_2x.yaml")
    assert "COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml" in str(info.value)


def test_paths_outside_the_zoo_are_refused():
    with pytest.raises(FileNotFoundError, match="not available"):
        get_config_file("../__init__.py")
    with pytest.raises(FileNotFoundError, match="not available"):
        get_config_file(os.path.abspath(model_zoo.__file__))


def test_list_config_files_names_every_shipped_yaml():
    assert model_zoo.list_config_files() == SHIPPED
