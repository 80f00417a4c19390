"""Tests of the YAML configs shipped under heron/model_zoo/configs/: Detectron2's model-zoo
entries under their Detectron2 names, with the published hyper-parameters."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

import heron.model_zoo as model_zoo
from heron.config.config import CfgNode, get_cfg
from heron.model_zoo import get_config_file
from heron.model_zoo.urls import CHECKPOINT_SUFFIXES

CONFIG_DIR = os.path.join(os.path.dirname(model_zoo.__file__), "configs")
SHIPPED = sorted(
    os.path.relpath(os.path.join(folder, name), CONFIG_DIR).replace(os.sep, "/")
    for folder, _dirs, files in os.walk(CONFIG_DIR)
    for name in files
    if name.endswith(".yaml")
)
PARITY_DIR = Path(
    os.environ.get("HERON_PARITY_DIR", Path(__file__).resolve().parents[2].parent / "shared/parity")
)
SPEC_NAMES = sorted(p.stem for p in (PARITY_DIR / "specs").glob("*.json"))

BASES = [
    "Base-RCNN-C4.yaml",
    "Base-RCNN-DilatedC5.yaml",
    "Base-RCNN-FPN.yaml",
    "Base-RetinaNet.yaml",
    "COCO-Keypoints/Base-Keypoint-RCNN-FPN.yaml",
    "COCO-PanopticSegmentation/Base-Panoptic-FPN.yaml",
]
HERON_OWN = ["Shapes/mask_rcnn_R_18_FPN_demo.yaml"]  # `heron demo`
# Detectron2's YAML configs that have no published checkpoint (quick_schedules/ and the
# lazy .py configs are not shipped as YAML).
WITHOUT_CHECKPOINT = [
    "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x_giou.yaml",
    "LVISv1-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml",
    "LVISv1-InstanceSegmentation/mask_rcnn_R_101_FPN_1x.yaml",
    "LVISv1-InstanceSegmentation/mask_rcnn_X_101_32x8d_FPN_1x.yaml",
    "Misc/mask_rcnn_R_50_FPN_1x_cls_agnostic.yaml",
    "Misc/semantic_R_50_FPN_1x.yaml",
    "PascalVOC-Detection/faster_rcnn_R_50_FPN.yaml",
]
# Every YAML the zoo ships, written out so that an added or lost file shows in the diff.
EXPECTED = [
    "Base-RCNN-C4.yaml",
    "Base-RCNN-DilatedC5.yaml",
    "Base-RCNN-FPN.yaml",
    "Base-RetinaNet.yaml",
    "COCO-Detection/fast_rcnn_R_50_FPN_1x.yaml",
    "COCO-Detection/faster_rcnn_R_101_C4_3x.yaml",
    "COCO-Detection/faster_rcnn_R_101_DC5_3x.yaml",
    "COCO-Detection/faster_rcnn_R_101_FPN_3x.yaml",
    "COCO-Detection/faster_rcnn_R_50_C4_1x.yaml",
    "COCO-Detection/faster_rcnn_R_50_C4_3x.yaml",
    "COCO-Detection/faster_rcnn_R_50_DC5_1x.yaml",
    "COCO-Detection/faster_rcnn_R_50_DC5_3x.yaml",
    "COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml",
    "COCO-Detection/faster_rcnn_R_50_FPN_3x.yaml",
    "COCO-Detection/faster_rcnn_X_101_32x8d_FPN_3x.yaml",
    "COCO-Detection/retinanet_R_101_FPN_3x.yaml",
    "COCO-Detection/retinanet_R_50_FPN_1x.yaml",
    "COCO-Detection/retinanet_R_50_FPN_3x.yaml",
    "COCO-Detection/rpn_R_50_C4_1x.yaml",
    "COCO-Detection/rpn_R_50_FPN_1x.yaml",
    "COCO-InstanceSegmentation/mask_rcnn_R_101_C4_3x.yaml",
    "COCO-InstanceSegmentation/mask_rcnn_R_101_DC5_3x.yaml",
    "COCO-InstanceSegmentation/mask_rcnn_R_101_FPN_3x.yaml",
    "COCO-InstanceSegmentation/mask_rcnn_R_50_C4_1x.yaml",
    "COCO-InstanceSegmentation/mask_rcnn_R_50_C4_3x.yaml",
    "COCO-InstanceSegmentation/mask_rcnn_R_50_DC5_1x.yaml",
    "COCO-InstanceSegmentation/mask_rcnn_R_50_DC5_3x.yaml",
    "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml",
    "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x_giou.yaml",
    "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml",
    "COCO-InstanceSegmentation/mask_rcnn_X_101_32x8d_FPN_3x.yaml",
    "COCO-Keypoints/Base-Keypoint-RCNN-FPN.yaml",
    "COCO-Keypoints/keypoint_rcnn_R_101_FPN_3x.yaml",
    "COCO-Keypoints/keypoint_rcnn_R_50_FPN_1x.yaml",
    "COCO-Keypoints/keypoint_rcnn_R_50_FPN_3x.yaml",
    "COCO-Keypoints/keypoint_rcnn_X_101_32x8d_FPN_3x.yaml",
    "COCO-PanopticSegmentation/Base-Panoptic-FPN.yaml",
    "COCO-PanopticSegmentation/panoptic_fpn_R_101_3x.yaml",
    "COCO-PanopticSegmentation/panoptic_fpn_R_50_1x.yaml",
    "COCO-PanopticSegmentation/panoptic_fpn_R_50_3x.yaml",
    "Cityscapes/mask_rcnn_R_50_FPN.yaml",
    "Detectron1-Comparisons/faster_rcnn_R_50_FPN_noaug_1x.yaml",
    "Detectron1-Comparisons/keypoint_rcnn_R_50_FPN_1x.yaml",
    "Detectron1-Comparisons/mask_rcnn_R_50_FPN_noaug_1x.yaml",
    "LVISv0.5-InstanceSegmentation/mask_rcnn_R_101_FPN_1x.yaml",
    "LVISv0.5-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml",
    "LVISv0.5-InstanceSegmentation/mask_rcnn_X_101_32x8d_FPN_1x.yaml",
    "LVISv1-InstanceSegmentation/mask_rcnn_R_101_FPN_1x.yaml",
    "LVISv1-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml",
    "LVISv1-InstanceSegmentation/mask_rcnn_X_101_32x8d_FPN_1x.yaml",
    "Misc/cascade_mask_rcnn_R_50_FPN_1x.yaml",
    "Misc/cascade_mask_rcnn_R_50_FPN_3x.yaml",
    "Misc/cascade_mask_rcnn_X_152_32x8d_FPN_IN5k_gn_dconv.yaml",
    "Misc/mask_rcnn_R_50_FPN_1x_cls_agnostic.yaml",
    "Misc/mask_rcnn_R_50_FPN_1x_dconv_c3-c5.yaml",
    "Misc/mask_rcnn_R_50_FPN_3x_dconv_c3-c5.yaml",
    "Misc/mask_rcnn_R_50_FPN_3x_gn.yaml",
    "Misc/mask_rcnn_R_50_FPN_3x_syncbn.yaml",
    "Misc/panoptic_fpn_R_101_dconv_cascade_gn_3x.yaml",
    "Misc/scratch_mask_rcnn_R_50_FPN_3x_gn.yaml",
    "Misc/scratch_mask_rcnn_R_50_FPN_9x_gn.yaml",
    "Misc/scratch_mask_rcnn_R_50_FPN_9x_syncbn.yaml",
    "Misc/semantic_R_50_FPN_1x.yaml",
    "PascalVOC-Detection/faster_rcnn_R_50_C4.yaml",
    "PascalVOC-Detection/faster_rcnn_R_50_FPN.yaml",
    "Shapes/mask_rcnn_R_18_FPN_demo.yaml",
]
# Entries (not bases) whose file name states what they are.
ENTRIES = [n for n in SHIPPED if not os.path.basename(n).startswith("Base-")]
ENTRIES_D2 = [n for n in ENTRIES if n not in HERON_OWN]


def merged(name: str) -> CfgNode:
    cfg = get_cfg()
    cfg.merge_from_file(get_config_file(name))
    return cfg


def flatten(tree: dict, prefix: str = "") -> dict:
    """{dotted key: leaf} of a nested mapping."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def as_lists(value):
    if isinstance(value, (list, tuple)):
        return [as_lists(v) for v in value]
    return value


def zoo_keys(name: str) -> set[str]:
    """Dotted keys that the file and its _BASE_ chain set (not the defaults)."""
    raw = CfgNode.load_yaml_with_base(get_config_file(name))
    return set(flatten(raw)) - {"_BASE_"}


def test_every_published_yaml_entry_and_the_bases_are_shipped():
    published = [
        name + ".yaml" for name in CHECKPOINT_SUFFIXES if not name.startswith("new_baselines/")
    ]
    missing = sorted(set(published + BASES) - set(SHIPPED))
    assert not missing, f"not shipped: {missing}"
    assert sorted(published + BASES + HERON_OWN + WITHOUT_CHECKPOINT) == EXPECTED


def test_the_shipped_yaml_files_are_exactly_the_expected_list():
    assert sorted(EXPECTED) == EXPECTED  # kept sorted, so that the diff of SHIPPED reads well
    assert SHIPPED == EXPECTED


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_config_loads(name):
    path = get_config_file(name)
    assert os.path.isabs(path) and os.path.isfile(path)
    cfg = get_cfg()
    cfg.merge_from_file(path)
    assert cfg.VERSION == 2


@pytest.mark.parametrize("name", SHIPPED)
def test_every_key_a_shipped_config_sets_exists_in_the_defaults(name):
    # Independent of the merge's own strictness: each dotted key of the resolved file must
    # name a leaf of get_cfg(), so that Detectron2's merge would accept it too.
    defaults = flatten(get_cfg())
    unknown = sorted(zoo_keys(name) - set(defaults))
    assert not unknown, f"{name} sets keys that get_cfg() lacks: {unknown}"


def test_merge_refuses_a_key_the_defaults_lack(tmp_path):
    # the property the loading tests rely on: a misspelled key fails the merge
    path = tmp_path / "typo.yaml"
    path.write_text(f'_BASE_: "{get_config_file("Base-RCNN-FPN.yaml")}"\nMODEL:\n  DEPHT: 50\n')
    with pytest.raises(KeyError, match=r"MODEL\.DEPHT"):
        get_cfg().merge_from_file(str(path))


def test_parity_kit_names_shipped_configs():
    assert len(SPEC_NAMES) == 15, f"parity kit not found at {PARITY_DIR} (set HERON_PARITY_DIR)"
    for spec_name in SPEC_NAMES:
        spec = json.loads((PARITY_DIR / "specs" / f"{spec_name}.json").read_text())
        assert spec["config_file"] in SHIPPED


@pytest.mark.parametrize("spec_name", SPEC_NAMES)
def test_parity_config_merges_to_detectron2s_values_for_every_key_the_zoo_sets(spec_name):
    spec = json.loads((PARITY_DIR / "specs" / f"{spec_name}.json").read_text())
    cfg = merged(spec["config_file"])
    cfg.merge_from_list(spec["overrides"])
    ours = flatten(cfg)
    reference = flatten(yaml.safe_load(spec["config_yaml"]))
    # The kit's models load generated weights, so its dumps carry MODEL.WEIGHTS "".
    keys = zoo_keys(spec["config_file"]) - {"MODEL.WEIGHTS"}
    diffs = {
        key: (ours[key], reference[key])
        for key in sorted(keys)
        # type() as well: 1 == 1.0 == True in Python, but not in a config
        if as_lists(ours[key]) != as_lists(reference[key])
        or (
            type(ours[key]) is not type(reference[key])
            and not (isinstance(ours[key], (list, tuple)) and isinstance(reference[key], list))
        )
    }
    assert not diffs, f"{spec['config_file']}: (ours, Detectron2) differ at {diffs}"


# -- invariants that the entry names state ------------------------------------------------


@pytest.mark.parametrize("name", ENTRIES_D2)
def test_entry_name_matches_architecture_and_heads(name):
    cfg = merged(name)
    stem = os.path.basename(name)
    arch = cfg.MODEL.META_ARCHITECTURE
    if stem.startswith("retinanet"):
        assert arch == "RetinaNet"
    elif stem.startswith("rpn"):
        assert arch == "ProposalNetwork"
    elif stem.startswith("panoptic"):
        assert arch == "PanopticFPN"
    elif stem.startswith("semantic"):
        assert arch == "SemanticSegmentor"
    else:
        assert arch == "GeneralizedRCNN"
    if stem.startswith(("mask_rcnn", "cascade_mask", "scratch_mask", "panoptic")):
        assert cfg.MODEL.MASK_ON is True
    if stem.startswith(("faster_rcnn", "fast_rcnn", "rpn", "retinanet")):
        assert cfg.MODEL.MASK_ON is False
    assert cfg.MODEL.KEYPOINT_ON is stem.startswith("keypoint")
    if "cascade" in stem:
        assert cfg.MODEL.ROI_HEADS.NAME == "CascadeROIHeads"
        assert cfg.MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG is True


@pytest.mark.parametrize("name", ENTRIES_D2)
def test_entry_name_matches_backbone(name):
    cfg = merged(name)
    stem = os.path.basename(name)
    resnets = cfg.MODEL.RESNETS
    if "_C4" in stem:
        assert cfg.MODEL.ROI_HEADS.NAME == "Res5ROIHeads"
        assert cfg.MODEL.BACKBONE.NAME == "build_resnet_backbone"
    elif "_DC5" in stem:
        assert resnets.RES5_DILATION == 2 and cfg.MODEL.ROI_HEADS.IN_FEATURES == ["res5"]
    else:
        assert "FPN" in cfg.MODEL.BACKBONE.NAME.upper()
    depth = {"_R_50_": 50, "_R_101_": 101, "_X_101_": 101, "_X_152_": 152}
    (expected_depth,) = [d for tag, d in depth.items() if tag in stem + "_"]
    assert expected_depth == resnets.DEPTH
    if "_X_" in stem:  # ResNeXt 32x8d, Caffe2-trained: stride in the 3x3 conv
        assert (resnets.NUM_GROUPS, resnets.WIDTH_PER_GROUP) == (32, 8)
        assert resnets.STRIDE_IN_1X1 is False
    else:
        assert (resnets.NUM_GROUPS, resnets.WIDTH_PER_GROUP) == (1, 64)
    weights = cfg.MODEL.WEIGHTS
    if weights.startswith("detectron2://ImageNetPretrained/"):
        tag = {"_R_50_": "MSRA/R-50.pkl", "_R_101_": "MSRA/R-101.pkl"}
        tag["_X_101_"] = "FAIR/X-101-32x8d.pkl"
        (expected,) = [w for t, w in tag.items() if t in stem + "_"]
        assert weights == "detectron2://ImageNetPretrained/" + expected


# The large Panoptic FPN runs its own batch-32 schedule (checked below).
STANDARD_3X = [n for n in ENTRIES_D2 if "_3x" in n and "dconv_cascade_gn" not in n]


@pytest.mark.parametrize("name", STANDARD_3X)
def test_3x_entries_train_270k_iterations_dropping_at_210k_and_250k(name):
    cfg = merged(name)
    # 3 x the 1x schedule (90k iterations, drops at 60k and 80k); the drops sit 60k and
    # 20k before the end, as in 1x
    assert cfg.SOLVER.MAX_ITER == 3 * 90000
    assert tuple(cfg.SOLVER.STEPS) == (270000 - 60000, 270000 - 20000)
    expected_lr = 0.01 if cfg.MODEL.META_ARCHITECTURE == "RetinaNet" else 0.02
    assert cfg.SOLVER.IMS_PER_BATCH == 16 and expected_lr == cfg.SOLVER.BASE_LR


# LVIS v1 trains 180k iterations (checked in the LVIS test).
STANDARD_1X = [n for n in ENTRIES_D2 if n.endswith("_1x.yaml") and "LVISv1" not in n]


@pytest.mark.parametrize("name", STANDARD_1X)
def test_1x_entries_keep_the_90k_schedule(name):
    cfg = merged(name)
    assert cfg.SOLVER.MAX_ITER == 90000 and tuple(cfg.SOLVER.STEPS) == (60000, 80000)


# -- spot checks of published hyper-parameters --------------------------------------------


def test_zoo_configs_carry_the_published_settings():
    cfg = merged("COCO-InstanceSegmentation/mask_rcnn_X_101_32x8d_FPN_3x.yaml")
    assert cfg.MODEL.RESNETS.DEPTH == 101 and cfg.MODEL.RESNETS.NUM_GROUPS == 32
    assert cfg.MODEL.RESNETS.WIDTH_PER_GROUP == 8 and cfg.MODEL.RESNETS.STRIDE_IN_1X1 is False
    assert cfg.MODEL.PIXEL_STD == [57.375, 57.12, 58.395]
    assert cfg.SOLVER.STEPS == (210000, 250000) and cfg.SOLVER.MAX_ITER == 270000
    assert cfg.MODEL.ROI_HEADS.NAME == "StandardROIHeads"  # from Base-RCNN-FPN.yaml


def test_keypoint_entries_detect_people_with_17_keypoints():
    cfg = merged("COCO-Keypoints/keypoint_rcnn_X_101_32x8d_FPN_3x.yaml")
    assert cfg.MODEL.ROI_HEADS.NUM_CLASSES == 1
    assert cfg.MODEL.ROI_KEYPOINT_HEAD.NUM_KEYPOINTS == 17
    assert cfg.MODEL.ROI_BOX_HEAD.SMOOTH_L1_BETA == 0.5
    assert cfg.MODEL.RPN.POST_NMS_TOPK_TRAIN == 1500
    assert cfg.DATASETS.TRAIN == ("keypoints_coco_2017_train",)
    assert cfg.DATASETS.TEST == ("keypoints_coco_2017_val",)
    d1 = merged("Detectron1-Comparisons/keypoint_rcnn_R_50_FPN_1x.yaml")
    assert d1.MODEL.ROI_KEYPOINT_HEAD.POOLER_RESOLUTION == 14
    assert d1.MODEL.ROI_KEYPOINT_HEAD.POOLER_TYPE == "ROIAlign"
    assert d1.MODEL.ROI_BOX_HEAD.SMOOTH_L1_BETA == 1.0 and d1.MODEL.RPN.SMOOTH_L1_BETA == 0.1111


def test_panoptic_3x_entries_use_the_separated_panoptic_datasets():
    for name in ("panoptic_fpn_R_50_3x", "panoptic_fpn_R_101_3x"):
        cfg = merged(f"COCO-PanopticSegmentation/{name}.yaml")
        assert cfg.DATASETS.TRAIN == ("coco_2017_train_panoptic_separated",)
        assert cfg.DATASETS.TEST == ("coco_2017_val_panoptic_separated",)
        assert cfg.MODEL.SEM_SEG_HEAD.LOSS_WEIGHT == 0.5
        assert cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS is False
    big = merged("Misc/panoptic_fpn_R_101_dconv_cascade_gn_3x.yaml")
    assert big.MODEL.RESNETS.NORM == "GN" and big.MODEL.RESNETS.DEFORM_ON_PER_STAGE == [
        False,
        True,
        True,
        True,
    ]
    assert (big.SOLVER.IMS_PER_BATCH, big.SOLVER.BASE_LR, big.SOLVER.MAX_ITER) == (32, 0.04, 135000)


@pytest.mark.parametrize(
    ("folder", "classes", "dataset", "max_iter"),
    [
        ("LVISv1-InstanceSegmentation", 1203, "lvis_v1", 180000),
        ("LVISv0.5-InstanceSegmentation", 1230, "lvis_v0.5", 90000),
    ],
)
@pytest.mark.parametrize("model", ["R_50", "R_101", "X_101_32x8d"])
def test_lvis_entries(folder, classes, dataset, max_iter, model):
    cfg = merged(f"{folder}/mask_rcnn_{model}_FPN_1x.yaml")
    assert classes == cfg.MODEL.ROI_HEADS.NUM_CLASSES
    assert cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST == 0.0001
    assert cfg.TEST.DETECTIONS_PER_IMAGE == 300
    assert (f"{dataset}_train",) == cfg.DATASETS.TRAIN
    assert (f"{dataset}_val",) == cfg.DATASETS.TEST
    assert cfg.DATALOADER.SAMPLER_TRAIN == "RepeatFactorTrainingSampler"
    assert cfg.DATALOADER.REPEAT_THRESHOLD == 0.001
    assert max_iter == cfg.SOLVER.MAX_ITER


def test_cityscapes_entry_fine_tunes_from_coco_at_large_scales():
    cfg = merged("Cityscapes/mask_rcnn_R_50_FPN.yaml")
    assert cfg.MODEL.WEIGHTS == (
        "detectron2://COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x/137849600/"
        "model_final_f10217.pkl"
    )
    assert cfg.MODEL.ROI_HEADS.NUM_CLASSES == 8
    assert tuple(range(800, 1025, 32)) == cfg.INPUT.MIN_SIZE_TRAIN  # 800, 832, ..., 1024
    assert (cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TEST) == (
        1024,
        2048,
        2048,
    )
    assert cfg.DATASETS.TRAIN == ("cityscapes_fine_instance_seg_train",)
    assert (cfg.SOLVER.IMS_PER_BATCH, cfg.SOLVER.BASE_LR, cfg.SOLVER.MAX_ITER) == (8, 0.01, 24000)
    assert cfg.SOLVER.STEPS == (18000,) and cfg.TEST.EVAL_PERIOD == 8000


@pytest.mark.parametrize("arch", ["C4", "FPN"])
def test_pascal_voc_entries(arch):
    cfg = merged(f"PascalVOC-Detection/faster_rcnn_R_50_{arch}.yaml")
    assert cfg.MODEL.ROI_HEADS.NUM_CLASSES == 20
    assert tuple(range(480, 801, 32)) == cfg.INPUT.MIN_SIZE_TRAIN  # 480, 512, ..., 800
    assert cfg.INPUT.MIN_SIZE_TEST == 800
    assert cfg.DATASETS.TRAIN == ("voc_2007_trainval", "voc_2012_trainval")
    assert cfg.DATASETS.TEST == ("voc_2007_test",)
    assert (cfg.SOLVER.STEPS, cfg.SOLVER.MAX_ITER, cfg.SOLVER.WARMUP_ITERS) == (
        (12000, 16000),
        18000,
        100,
    )


def test_fast_rcnn_entry_reads_the_published_rpn_proposals():
    cfg = merged("COCO-Detection/fast_rcnn_R_50_FPN_1x.yaml")
    assert cfg.MODEL.LOAD_PROPOSALS is True
    assert cfg.MODEL.PROPOSAL_GENERATOR.NAME == "PrecomputedProposals"
    rpn = "detectron2://COCO-Detection/rpn_R_50_FPN_1x/137258492/"
    assert (rpn + "coco_2017_train_box_proposals_21bc3a.pkl",) == cfg.DATASETS.PROPOSAL_FILES_TRAIN
    assert (rpn + "coco_2017_val_box_proposals_ee0dad.pkl",) == cfg.DATASETS.PROPOSAL_FILES_TEST
    # the proposal files come from the model that CHECKPOINT_SUFFIXES names for rpn_R_50_FPN_1x
    assert CHECKPOINT_SUFFIXES["COCO-Detection/rpn_R_50_FPN_1x"].startswith("137258492/")
    assert cfg.DATALOADER.NUM_WORKERS == 2


def test_rpn_c4_entry_keeps_more_proposals_at_test_time():
    cfg = merged("COCO-Detection/rpn_R_50_C4_1x.yaml")
    assert (cfg.MODEL.RPN.PRE_NMS_TOPK_TEST, cfg.MODEL.RPN.POST_NMS_TOPK_TEST) == (12000, 2000)


def test_syncbn_entry_keeps_the_msra_stride_and_precise_bn():
    cfg = merged("Misc/mask_rcnn_R_50_FPN_3x_syncbn.yaml")
    assert cfg.MODEL.RESNETS.NORM == cfg.MODEL.FPN.NORM == "SyncBN"
    assert cfg.MODEL.ROI_BOX_HEAD.NORM == cfg.MODEL.ROI_MASK_HEAD.NORM == "SyncBN"
    assert (cfg.MODEL.ROI_BOX_HEAD.NUM_CONV, cfg.MODEL.ROI_BOX_HEAD.NUM_FC) == (4, 1)
    assert cfg.MODEL.RESNETS.STRIDE_IN_1X1 is True  # MSRA R-50 weights
    assert cfg.TEST.PRECISE_BN.ENABLED is True


@pytest.mark.parametrize("norm", ["gn", "syncbn"])
def test_scratch_9x_entries_train_nine_1x_schedules_at_4x_batch(norm):
    cfg = merged(f"Misc/scratch_mask_rcnn_R_50_FPN_9x_{norm}.yaml")
    assert cfg.MODEL.WEIGHTS == "" and cfg.MODEL.BACKBONE.FREEZE_AT == 0
    # images seen: 202500 * 64 = 12,960,000 = 9 * (90000 * 16)
    assert cfg.SOLVER.MAX_ITER * cfg.SOLVER.IMS_PER_BATCH == 9 * 90000 * 16
    # LR scales with the batch: 0.02 * 64 / 16 = 0.08
    assert pytest.approx(0.02 * cfg.SOLVER.IMS_PER_BATCH / 16) == cfg.SOLVER.BASE_LR
    assert cfg.SOLVER.STEPS == (202500 - 15000, 202500 - 5000)
    assert cfg.MODEL.RESNETS.STRIDE_IN_1X1 is False
    assert {"gn": "GN", "syncbn": "SyncBN"}[norm] == cfg.MODEL.RESNETS.NORM


def test_scratch_3x_gn_entry_only_drops_the_pretrained_weights():
    scratch = merged("Misc/scratch_mask_rcnn_R_50_FPN_3x_gn.yaml")
    pretrained = merged("Misc/mask_rcnn_R_50_FPN_3x_gn.yaml")
    assert scratch.MODEL.WEIGHTS == "" and scratch.MODEL.BACKBONE.FREEZE_AT == 0
    scratch.MODEL.WEIGHTS = pretrained.MODEL.WEIGHTS
    scratch.MODEL.BACKBONE.FREEZE_AT = pretrained.MODEL.BACKBONE.FREEZE_AT
    assert scratch == pretrained


def test_x152_entry_uses_the_large_batch_recipe():
    cfg = merged("Misc/cascade_mask_rcnn_X_152_32x8d_FPN_IN5k_gn_dconv.yaml")
    assert cfg.MODEL.WEIGHTS == "catalog://ImageNetPretrained/FAIR/X-152-32x8d-IN5k"
    assert cfg.MODEL.ROI_MASK_HEAD.NUM_CONV == 8
    assert (cfg.SOLVER.IMS_PER_BATCH, cfg.SOLVER.BASE_LR, cfg.SOLVER.MAX_ITER) == (128, 0.16, 50000)
    assert cfg.INPUT.MIN_SIZE_TRAIN == (640, 864)
    assert cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING == "range" and cfg.INPUT.MAX_SIZE_TRAIN == 1440
    assert cfg.INPUT.CROP.ENABLED is True


def test_loss_variants():
    giou = merged("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x_giou.yaml")
    assert giou.MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_TYPE == "giou"
    assert giou.MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_WEIGHT == 10.0
    agnostic = merged("Misc/mask_rcnn_R_50_FPN_1x_cls_agnostic.yaml")
    assert agnostic.MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG is True
    assert agnostic.MODEL.ROI_MASK_HEAD.CLS_AGNOSTIC_MASK is True
    noaug = merged("Detectron1-Comparisons/mask_rcnn_R_50_FPN_noaug_1x.yaml")
    assert noaug.INPUT.MIN_SIZE_TRAIN == (800,)
    assert noaug.MODEL.ROI_MASK_HEAD.POOLER_SAMPLING_RATIO == 2


def test_retinanet_config_evaluates_its_anchor_sizes():
    cfg = merged("COCO-Detection/retinanet_R_50_FPN_1x.yaml")
    sizes = cfg.MODEL.ANCHOR_GENERATOR.SIZES
    # one row per level P3..P7: x, x * 2**(1/3), x * 2**(2/3)
    assert [row[0] for row in sizes] == [32, 64, 128, 256, 512]
    assert sizes[2] == [128, 128 * 2 ** (1.0 / 3), 128 * 2 ** (2.0 / 3)]
    assert sizes[0][1] == pytest.approx(40.3175, abs=1e-4)  # 32 * 1.259921


# -- lookup ---------------------------------------------------------------------------------


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
    # the Python (lazy) configs are listed too; tests/model_zoo/test_lazy_zoo_configs.py
    # checks those
    listed = model_zoo.list_config_files()
    assert [n for n in listed if n.endswith(".yaml")] == SHIPPED
    assert all(n.endswith((".yaml", ".py")) for n in listed)
