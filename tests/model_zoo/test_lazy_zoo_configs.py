"""Tests of the Python (lazy) configs shipped under heron/model_zoo/configs/common and
heron/model_zoo/configs/new_baselines: they load, build, run, feed data, and carry
Detectron2's published settings."""

from __future__ import annotations

import functools
import uuid

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

import heron.model_zoo as model_zoo
from heron.config import LazyConfig, instantiate
from heron.data.catalog import DatasetCatalog, MetadataCatalog
from heron.data.datasets import generate_shapes_dataset
from heron.data.datasets.coco import register_coco_instances
from heron.layers.batch_norm import NaiveSyncBatchNorm
from heron.modeling.backbone import RegNet
from heron.solver.lr_scheduler import LRMultiplier

# Every lazy config Heron ships, written out so that an added or lost file shows in a diff.
# Detectron2's common/models/multimodal_mask_rcnn_fpn.py is left out: it builds a
# MultiModalRCNN meta-architecture that Heron does not have.
# The lazy configs beside the YAML ones in Detectron2's COCO folders -> the output key
TOP_LEVEL_PY = {
    "COCO-Detection/fcos_R_50_FPN_1x.py": "instances",
    "COCO-Detection/retinanet_R_50_FPN_1x.py": "instances",
    "COCO-InstanceSegmentation/mask_rcnn_R_50_C4_1x.py": "instances",
    "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.py": "instances",
    "COCO-InstanceSegmentation/mask_rcnn_regnetx_4gf_dds_fpn_1x.py": "instances",
    "COCO-InstanceSegmentation/mask_rcnn_regnety_4gf_dds_fpn_1x.py": "instances",
    "COCO-Keypoints/keypoint_rcnn_R_50_FPN_1x.py": "instances",
    "COCO-PanopticSegmentation/panoptic_fpn_R_50_1x.py": "panoptic_seg",
}
EXPECTED_PY = (
    list(TOP_LEVEL_PY)
    + [
        "common/coco_schedule.py",
        "common/data/coco.py",
        "common/data/coco_keypoint.py",
        "common/data/coco_panoptic_separated.py",
        "common/data/constants.py",
        "common/models/cascade_rcnn.py",
        "common/models/fcos.py",
        "common/models/keypoint_rcnn_fpn.py",
        "common/models/mask_rcnn_c4.py",
        "common/models/mask_rcnn_fpn.py",
        "common/models/mask_rcnn_vitdet.py",
        "common/models/panoptic_fpn.py",
        "common/models/retinanet.py",
        "common/optim.py",
        "common/train.py",
    ]
    + [
        f"new_baselines/mask_rcnn_{arch}_FPN_{ep}ep_LSJ.py"
        for arch, eps in [
            ("R_101", (100, 200, 400)),
            ("R_50", (100, 200, 400, 50)),
            ("regnetx_4gf_dds", (100, 200, 400)),
            ("regnety_4gf_dds", (100, 200, 400)),
        ]
        for ep in eps
    ]
)
NEW_BASELINES = [n for n in EXPECTED_PY if n.startswith("new_baselines/")]
BASE_100EP = {  # each new baseline -> the 100-epoch config it rescales
    n: n.rsplit("_", 2)[0] + "_100ep_LSJ.py" for n in NEW_BASELINES
}
EPOCHS = {n: int(n.rsplit("_", 2)[1][:-2]) for n in NEW_BASELINES}

H, W = 64, 96  # test image size (height, width)


def load(name: str):
    return LazyConfig.load(model_zoo.get_config_file(name))


def run_once(model_cfg) -> tuple[nn.Module, dict]:
    """Build a model config with random weights and run one eval forward on a 64x96 image."""
    # Random weights behind FrozenBN (identity) blow activations up to ~1e3 after 50
    # layers, which saturates the softmax and can leave no detection; a large pixel_std
    # scales the input down so that the scores stay spread out.
    model_cfg.pixel_std = [1e3, 1e3, 1e3]
    # Few regions per image keep the heads cheap (C4 runs res5 per region, the keypoint
    # head has eight 512-channel convs); the wiring under test is unchanged.
    if "proposal_generator" in model_cfg:
        model_cfg.proposal_generator.post_nms_topk = (1000, 20)
        heads = model_cfg.roi_heads
        for predictor in heads.get("box_predictors", None) or [heads.box_predictor]:
            predictor.test_topk_per_image = 5
    torch.manual_seed(0)
    model = instantiate(model_cfg).eval()
    with torch.no_grad():
        (out,) = model([{"image": torch.rand(3, H, W) * 255, "height": H, "width": W}])
    return model, out


def check_instances(out: dict, mask: bool = False, keypoints: int = 0) -> None:
    inst = out["instances"]
    assert inst.image_size == (H, W)
    n = len(inst)
    assert n > 0  # the score threshold is lowered to 0 by the callers
    assert inst.pred_boxes.tensor.shape == (n, 4)
    assert inst.scores.shape == (n,) and inst.pred_classes.shape == (n,)
    boxes = inst.pred_boxes.tensor
    # boxes are clipped to the image: 0 <= x <= 96, 0 <= y <= 64
    assert (boxes[:, 0::2] >= 0).all() and (boxes[:, 0::2] <= W).all()
    assert (boxes[:, 1::2] >= 0).all() and (boxes[:, 1::2] <= H).all()
    if mask:
        assert inst.pred_masks.shape == (n, H, W) and inst.pred_masks.dtype == torch.bool
    else:
        assert not inst.has("pred_masks")
    if keypoints:
        assert inst.pred_keypoints.shape == (n, keypoints, 3)


# ---------------------------------------------------------------------------------------
# the files
# ---------------------------------------------------------------------------------------


def test_the_shipped_python_configs_are_exactly_the_expected_list():
    shipped = [n for n in model_zoo.list_config_files() if n.endswith(".py")]
    assert shipped == sorted(EXPECTED_PY)


@pytest.mark.parametrize("name", EXPECTED_PY)
def test_every_python_config_loads(name):
    cfg = load(name)
    assert len(cfg) > 0
    if name.startswith("new_baselines/"):
        assert set(cfg) == {"dataloader", "lr_multiplier", "model", "optimizer", "train"}


@pytest.mark.parametrize("name", sorted(TOP_LEVEL_PY))
def test_coco_folder_lazy_configs_train_from_imagenet_and_predict(name):
    cfg = load(name)
    assert set(cfg) == {"dataloader", "lr_multiplier", "model", "optimizer", "train"}
    if "regnet" in name:  # pycls's ImageNet weights
        assert cfg.train.init_checkpoint.startswith("https://dl.fbaipublicfiles.com/pycls/")
        assert cfg.optimizer.weight_decay == 5e-5
    else:
        assert cfg.train.init_checkpoint == "detectron2://ImageNetPretrained/MSRA/R-50.pkl"
    if "retinanet" in name or "fcos" in name:
        assert cfg.optimizer.lr == 0.01 and cfg.dataloader.train.mapper.use_instance_mask is False
    _, out = run_once(cfg.model)
    assert TOP_LEVEL_PY[name] in out


# ---------------------------------------------------------------------------------------
# models: build with random weights, one eval forward at 64x96
# ---------------------------------------------------------------------------------------


@functools.cache
def built_rcnn(name: str) -> tuple[nn.Module, dict]:
    """run_once on an R-CNN config with every detection kept (score threshold 0), built
    once per test process and shared by the tests that inspect the model."""
    cfg = load(name)
    heads = cfg.model.roi_heads
    for predictor in heads.get("box_predictors", None) or [heads.box_predictor]:
        predictor.test_score_thresh = 0.0
    return run_once(cfg.model)


@pytest.mark.parametrize(
    "name, keypoints",
    [
        ("common/models/mask_rcnn_fpn.py", 0),
        ("common/models/mask_rcnn_c4.py", 0),
        ("common/models/cascade_rcnn.py", 0),
        ("common/models/keypoint_rcnn_fpn.py", 17),
    ],
)
def test_rcnn_models_build_and_predict(name, keypoints):
    _, out = built_rcnn(name)
    check_instances(out, mask=not keypoints, keypoints=keypoints)
    assert len(out["instances"]) <= 5  # test_topk_per_image, set by run_once


def test_mask_rcnn_fpn_keeps_the_published_architecture():
    model, _ = built_rcnn("common/models/mask_rcnn_fpn.py")
    assert model.backbone.size_divisibility == 32
    assert list(model.backbone.output_shape()) == ["p2", "p3", "p4", "p5", "p6"]
    # 3, 4, 6, 3 bottleneck blocks in res2..res5
    assert [len(s) for s in model.backbone.bottom_up.stages] == [3, 4, 6, 3]
    assert model.proposal_generator.anchor_generator.num_cell_anchors == [3] * 5
    assert model.roi_heads.num_classes == 80


def test_cascade_has_three_stages_with_rising_iou_and_delta_weights():
    model, _ = built_rcnn("common/models/cascade_rcnn.py")
    heads = model.roi_heads
    assert [m.thresholds[1] for m in heads.proposal_matchers] == [0.5, 0.6, 0.7]
    assert [p.box2box_transform.weights for p in heads.box_predictor] == [
        (10, 10, 5, 5),
        (20, 20, 10, 10),
        (30, 30, 15, 15),
    ]
    # class-agnostic regression: 4 outputs per region
    assert all(p.bbox_pred.out_features == 4 for p in heads.box_predictor)


def test_keypoint_model_detects_people_with_the_detectron1_proposal_budget():
    cfg = load("common/models/keypoint_rcnn_fpn.py")
    assert cfg.model.roi_heads.num_classes == 1
    assert "mask_head" not in cfg.model.roi_heads
    assert tuple(cfg.model.proposal_generator.post_nms_topk) == (1500, 1000)
    assert cfg.model.roi_heads.box_predictor.smooth_l1_beta == 0.5
    assert cfg.model.roi_heads.keypoint_head.conv_dims == [512] * 8


def test_panoptic_fpn_predicts_semantic_instance_and_panoptic_outputs():
    cfg = load("common/models/panoptic_fpn.py")
    cfg.model.roi_heads.box_predictor.test_score_thresh = 0.0
    _, out = run_once(cfg.model)
    check_instances(out, mask=True)
    assert out["sem_seg"].shape == (54, H, W)  # 53 stuff classes + "things"
    panoptic, segments = out["panoptic_seg"]
    assert panoptic.shape == (H, W)
    assert isinstance(segments, list)


@pytest.mark.parametrize("name", ["common/models/retinanet.py", "common/models/fcos.py"])
def test_dense_detectors_build_and_predict(name):
    cfg = load(name)
    cfg.model.test_score_thresh = 0.0
    model, out = run_once(cfg.model)
    check_instances(out)
    assert list(model.backbone.output_shape()) == ["p3", "p4", "p5", "p6", "p7"]


def test_retinanet_anchors_are_three_octaves_of_three_ratios():
    cfg = load("common/models/retinanet.py")
    sizes = cfg.model.anchor_generator.sizes
    torch.testing.assert_close(
        torch.tensor(sizes[0]), torch.tensor([32.0, 32 * 2 ** (1 / 3), 32 * 2 ** (2 / 3)])
    )
    assert [s[0] for s in sizes] == [32, 64, 128, 256, 512]


def test_fcos_computes_p6_from_p5_with_group_norm_heads():
    cfg = load("common/models/fcos.py")
    assert cfg.model.backbone.top_block.in_feature == "p5"
    assert cfg.model.backbone.top_block.in_channels == 256
    assert cfg.model.head.norm == "GN"
    assert (cfg.model.test_score_thresh, cfg.model.test_nms_thresh) == (0.2, 0.6)
    for key in ("anchor_generator", "box2box_transform", "anchor_matcher", "input_format"):
        assert key not in cfg.model


def test_vitdet_model_builds_and_predicts_with_a_small_square_pad():
    cfg = load("common/models/mask_rcnn_vitdet.py")
    vit = cfg.model.backbone.net
    assert (vit.embed_dim, vit.depth, vit.num_heads, vit.drop_path_rate) == (768, 12, 12, 0.1)
    assert vit.window_block_indexes == [0, 1, 3, 4, 6, 7, 9, 10]
    assert cfg.model.input_format == "RGB"
    # For speed: ViT-B blocks, but 3 of them (two windowed, one global, the pattern of
    # each group of three in the full net), and inputs padded to 128x128, not 1024x1024.
    vit.depth, vit.window_block_indexes = 3, [0, 1]
    cfg.model.backbone.square_pad = 128
    cfg.model.roi_heads.box_predictor.test_score_thresh = 0.0
    _, out = run_once(cfg.model)
    check_instances(out, mask=True)


# ---------------------------------------------------------------------------------------
# new baselines
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "new_baselines/mask_rcnn_R_50_FPN_100ep_LSJ.py",
        "new_baselines/mask_rcnn_R_101_FPN_100ep_LSJ.py",
        "new_baselines/mask_rcnn_regnetx_4gf_dds_FPN_100ep_LSJ.py",
        "new_baselines/mask_rcnn_regnety_4gf_dds_FPN_100ep_LSJ.py",
    ],
)
def test_new_baseline_models_build_with_syncbn_and_predict(name):
    cfg = load(name)
    cfg.model.roi_heads.box_predictor.test_score_thresh = 0.0
    model, out = run_once(cfg.model)
    check_instances(out, mask=True)
    bottom_up = model.backbone.bottom_up
    assert isinstance(model.backbone.fpn_lateral2.norm, nn.SyncBatchNorm)
    stem_norm = bottom_up.stem.conv1.norm if hasattr(bottom_up.stem, "conv1") else bottom_up.stem.bn
    assert isinstance(stem_norm, nn.SyncBatchNorm)
    assert all(p.requires_grad for p in bottom_up.parameters())  # freeze_at=0
    head_norms = [
        m
        for head in (model.roi_heads.box_head, model.roi_heads.mask_head)
        for m in head.modules()
        if isinstance(m, NaiveSyncBatchNorm)
    ]
    assert len(head_norms) == 4 + 4  # 4 box-head convs + 4 mask-head convs
    assert all(m._stats_mode == "N" for m in head_norms)
    # 2 convs in the RPN head, 4conv1fc box head
    assert len(model.proposal_generator.rpn_head.conv) == 2
    assert len(model.roi_heads.box_head.conv_norm_relus) == 4
    assert len(model.roi_heads.box_head.fcs) == 1


def test_r101_baseline_has_23_blocks_in_res4():
    cfg = load("new_baselines/mask_rcnn_R_101_FPN_100ep_LSJ.py")
    stages = instantiate(cfg.model.backbone.bottom_up.stages)
    # 3, 4, 23, 3 bottleneck blocks
    assert [len(s) for s in stages] == [3, 4, 23, 3]


@pytest.mark.parametrize(
    "arch, widths, depths, se",
    [
        # pycls RegNetX-4.0GF and RegNetY-4.0GF (Radosavovic et al. 2020, Table/model zoo)
        ("regnetx", [80, 240, 560, 1360], [2, 5, 14, 2], 0.0),
        ("regnety", [128, 192, 512, 1088], [2, 6, 12, 2], 0.25),
    ],
)
def test_regnet_baselines_have_the_published_widths(arch, widths, depths, se):
    cfg = load(f"new_baselines/mask_rcnn_{arch}_4gf_dds_FPN_100ep_LSJ.py")
    bottom_up = cfg.model.backbone.bottom_up
    assert bottom_up._target_ is RegNet
    assert bottom_up.norm == "SyncBN" and bottom_up.get("se_ratio", 0.0) == se
    assert cfg.model.pixel_std == [57.375, 57.120, 58.395]
    assert cfg.train.cudnn_benchmark is True
    net = instantiate(bottom_up)
    shapes = net.output_shape()
    assert [shapes[f"s{i}"].channels for i in range(1, 5)] == widths
    assert [len(list(stage.children())) for stage, _ in net.stages_and_names] == depths


@pytest.mark.parametrize("name", NEW_BASELINES)
def test_new_baselines_train_from_scratch_with_lsj_at_batch_64(name):
    cfg = load(name)
    assert cfg.train.init_checkpoint == ""
    assert cfg.train.amp.enabled is True and cfg.train.ddp.fp16_compression is True
    assert (cfg.optimizer.lr, cfg.optimizer.weight_decay, cfg.optimizer.momentum) == (
        0.1,
        4e-5,
        0.9,
    )
    loader = cfg.dataloader.train
    assert loader.total_batch_size == 64 and loader.mapper.recompute_boxes is True
    resize, crop, flip = loader.mapper.augmentations
    assert (resize.min_scale, resize.max_scale) == (0.1, 2.0)
    assert (resize.target_height, resize.target_width) == (1024, 1024)
    assert tuple(crop.crop_size) == (1024, 1024)
    assert flip.horizontal is True


@pytest.mark.parametrize("name", NEW_BASELINES)
def test_new_baseline_schedules_scale_the_100_epoch_one(name):
    cfg = load(name)
    k = EPOCHS[name] / 100
    # 100 epochs = 184375 iterations of 64 images over COCO's 118k training images
    assert cfg.train.max_iter == int(184375 * k)
    assert abs(cfg.train.max_iter * 64 / 118000 - EPOCHS[name]) < 0.01 * EPOCHS[name]
    sched = cfg.lr_multiplier
    assert sched.scheduler["values"] == [1.0, 0.1, 0.01]
    assert sched.scheduler.milestones == [int(163889 * k), int(177546 * k)]
    assert sched.scheduler.num_updates == cfg.train.max_iter
    # the warmup stays 500 iterations of the 100-epoch schedule (a fraction fixed there)
    assert sched.warmup_length == 500 / 184375 and sched.warmup_factor == 0.067


@pytest.mark.parametrize("name", [n for n in NEW_BASELINES if EPOCHS[n] != 100])
def test_longer_and_shorter_baselines_keep_the_100_epoch_model(name):
    def comparable(model_cfg):
        # the NaiveSyncBatchNorm factories are fresh lambdas per load; compare the rest
        heads = model_cfg.roi_heads
        for head in (heads.box_head, heads.mask_head):
            assert NaiveSyncBatchNorm in type(head.conv_norm(4)).__mro__
            head.conv_norm = None
        return OmegaConf.to_container(model_cfg)

    assert comparable(load(name).model) == comparable(load(BASE_100EP[name]).model)


@pytest.mark.parametrize("name", [n for n in NEW_BASELINES if EPOCHS[n] != 50])
def test_trained_new_baseline_points_at_the_published_checkpoint(name):
    cfg = model_zoo.get_config(name, trained=True)
    assert cfg.train.init_checkpoint == model_zoo.get_checkpoint_url(name)
    assert cfg.train.init_checkpoint.endswith(".pkl")


# ---------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_coco(tmp_path_factory):
    """A 4-image shapes dataset registered in COCO format under a unique name."""
    info = generate_shapes_dataset(
        str(tmp_path_factory.mktemp("shapes")), num_images=4, image_size=(H, W), seed=3
    )
    name = f"lazy_zoo_shapes_{uuid.uuid4().hex[:8]}"
    register_coco_instances(name, {}, info["json_file"], info["image_root"])
    yield name
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


def _point_at(loader_cfg, dataset_name: str, batch_size: int | None = None) -> None:
    loader_cfg.dataset.names = dataset_name
    loader_cfg.num_workers = 0
    if batch_size is not None:
        loader_cfg.total_batch_size = batch_size


@pytest.mark.parametrize(
    "name, size",
    [
        # shortest edge drawn from 640..800 with the long side capped at 1333: a 64x96 image
        # is scaled by s/64 (s in 640..800), the long side 96*s/64 <= 1200 stays under 1333
        ("common/data/coco.py", None),
        # LSJ pads/crops every image to 1024x1024
        ("new_baselines/mask_rcnn_R_50_FPN_100ep_LSJ.py", (1024, 1024)),
    ],
)
def test_train_loaders_yield_a_batch_from_a_registered_dataset(name, size, tiny_coco):
    cfg = load(name)
    _point_at(cfg.dataloader.train, tiny_coco, batch_size=2)
    batch = next(iter(instantiate(cfg.dataloader.train)))
    assert len(batch) == 2
    for record in batch:
        c, h, w = record["image"].shape
        assert c == 3 and record["image"].dtype == torch.uint8
        if size is None:
            assert h in (640, 672, 704, 736, 768, 800) and w == h * 3 // 2
        else:
            assert (h, w) == size
        inst = record["instances"]
        assert inst.has("gt_masks") and inst.gt_boxes.tensor.shape == (len(inst), 4)


def test_test_loader_and_evaluator_use_the_test_dataset(tiny_coco):
    cfg = load("common/data/coco.py")
    assert cfg.dataloader.test.dataset.filter_empty is False
    _point_at(cfg.dataloader.test, tiny_coco)
    assert cfg.dataloader.test.mapper.image_format == "BGR"  # follows the train mapper
    assert cfg.dataloader.evaluator.dataset_name == tiny_coco
    (record,) = next(iter(instantiate(cfg.dataloader.test)))
    # short side 64 -> 800: factor 12.5, long side 96 * 12.5 = 1200 <= 1333
    assert record["image"].shape == (3, 800, 1200)
    assert (record["height"], record["width"]) == (H, W)
    evaluator = instantiate(cfg.dataloader.evaluator)
    assert type(evaluator).__name__ == "COCOEvaluator"


def test_keypoint_loader_flips_left_and_right_coco_keypoints():
    loader = load("common/data/coco_keypoint.py").dataloader
    assert loader.train.dataset.names == "keypoints_coco_2017_train"
    assert loader.test.dataset.names == "keypoints_coco_2017_val"
    assert loader.train.dataset.min_keypoints == 1
    mapper = loader.train.mapper
    assert mapper.use_keypoint is True and mapper.use_instance_mask is False
    # COCO's 17 keypoints: nose, then left/right pairs (eyes, ears, shoulders, ...), each
    # swapped by a horizontal flip
    expected = [0] + [i + 1 if i % 2 else i - 1 for i in range(1, 17)]
    assert list(mapper.keypoint_hflip_indices) == expected


def test_panoptic_loader_evaluates_boxes_semantics_and_panoptic_quality():
    loader = load("common/data/coco_panoptic_separated.py").dataloader
    assert loader.train.dataset.names == "coco_2017_train_panoptic_separated"
    assert loader.train.dataset.filter_empty is False
    loader.test.dataset.names = "renamed"
    evaluators = loader.evaluator.evaluators
    assert [e._target_.__name__ for e in evaluators] == [
        "COCOEvaluator",
        "SemSegEvaluator",
        "COCOPanopticEvaluator",
    ]
    assert [e.dataset_name for e in evaluators] == ["renamed"] * 3  # follow the test set


# ---------------------------------------------------------------------------------------
# optimizer, schedules, train
# ---------------------------------------------------------------------------------------


def _small_model() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))


def test_sgd_gives_norm_layers_no_weight_decay():
    cfg = load("common/optim.py").SGD
    cfg.params.model = _small_model()
    opt = instantiate(cfg)
    assert isinstance(opt, torch.optim.SGD)
    decay_by_param = {}
    for group in opt.param_groups:
        assert group["lr"] == 0.02 and group["momentum"] == 0.9
        for p in group["params"]:
            decay_by_param[id(p)] = group["weight_decay"]
    conv, bn = cfg.params.model
    # conv weight and bias decay at 1e-4; BN weight and bias do not (weight_decay_norm=0)
    assert [decay_by_param[id(p)] for p in conv.parameters()] == [1e-4, 1e-4]
    assert [decay_by_param[id(p)] for p in bn.parameters()] == [0.0, 0.0]


def test_adamw_groups_follow_its_learning_rate():
    cfg = load("common/optim.py").AdamW
    cfg.params.model = _small_model()
    cfg.lr = 3e-4
    opt = instantiate(cfg)
    assert isinstance(opt, torch.optim.AdamW)
    assert {g["lr"] for g in opt.param_groups} == {3e-4}
    assert {g["betas"] for g in opt.param_groups} == {(0.9, 0.999)}
    assert {g["weight_decay"] for g in opt.param_groups} == {0.0, 0.1}


def _lrs_at(multiplier_cfg, max_iter: int, iters: list[int], base_lr: float = 1.0):
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=base_lr)
    sched = LRMultiplier(opt, instantiate(multiplier_cfg), max_iter)
    out = []
    for it in range(max(iters) + 1):
        if it in iters:
            out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_1x_schedule_warms_up_then_drops_at_60k_and_80k():
    cfg = load("common/coco_schedule.py").lr_multiplier_1x
    sched = instantiate(cfg)
    # linear warmup over 1000 iterations from 0.001: f(i) = 0.001 * (1 - i/1000) + i/1000
    # i=0 -> 0.001, i=500 -> 0.5005, i=1000 -> 1
    for it, lr in [(0, 0.001), (500, 0.5005), (1000, 1.0), (59999, 1.0), (60000, 0.1)]:
        torch.testing.assert_close(sched(it / 90000), lr)
    torch.testing.assert_close(sched(79999 / 90000), 0.1)
    torch.testing.assert_close(sched(80000 / 90000), 0.01)
    torch.testing.assert_close(sched(89999 / 90000), 0.01)
    # through LRMultiplier on an optimizer with lr 0.02: 0.02 * f(i)
    lrs = _lrs_at(cfg, 90000, [0, 10], base_lr=0.02)
    torch.testing.assert_close(lrs, [0.02 * 0.001, 0.02 * (0.001 * 0.99 + 0.01)])


def test_3x_and_9x_schedules_drop_60k_and_20k_before_the_end():
    schedules = load("common/coco_schedule.py")
    for key, total in [("lr_multiplier_3x", 270000), ("lr_multiplier_9x", 810000)]:
        cfg = schedules[key]
        assert cfg.scheduler.milestones == [total - 60000, total - 20000]
        assert cfg.scheduler.num_updates == total
        assert cfg.warmup_length == 1000 / total
        sched = instantiate(cfg)
        torch.testing.assert_close(sched((total - 60001) / total), 1.0)
        torch.testing.assert_close(sched((total - 60000) / total), 0.1)
        torch.testing.assert_close(sched((total - 20000) / total), 0.01)
    # 2x keeps the 1x fractions (milestones 6/9 and 8/9)
    assert schedules.lr_multiplier_2x.scheduler.milestones == [60000, 80000]
    assert schedules.lr_multiplier_2x.warmup_length == 1000 / 180000


def test_new_baseline_lr_multiplier_values():
    cfg = load("new_baselines/mask_rcnn_R_50_FPN_100ep_LSJ.py")
    max_iter = cfg.train.max_iter
    sched = instantiate(cfg.lr_multiplier)
    # warmup over 500 iterations from 0.067: i=250 -> 0.067 * 0.5 + 0.5 = 0.5335
    for it, value in [
        (0, 0.067),
        (250, 0.5335),
        (500, 1.0),
        (163888, 1.0),
        (163889, 0.1),
        (177545, 0.1),
        (177546, 0.01),
    ]:
        torch.testing.assert_close(sched(it / max_iter), value)


def test_train_defaults():
    train = load("common/train.py").train
    assert train.max_iter == 90000
    assert train.init_checkpoint == "detectron2://ImageNetPretrained/MSRA/R-50.pkl"
    assert train.checkpointer == {"period": 5000, "max_to_keep": 100}
    assert (train.eval_period, train.log_period) == (5000, 20)
    assert train.amp.enabled is False
    assert dict(train.ddp) == {
        "broadcast_buffers": False,
        "find_unused_parameters": False,
        "fp16_compression": False,
    }


def test_constants_are_the_imagenet_statistics_in_both_channel_orders():
    c = load("common/data/constants.py").constants
    assert c.imagenet_bgr256_mean == c.imagenet_rgb256_mean[::-1]
    assert c.imagenet_bgr256_std == [1.0, 1.0, 1.0]
    assert c.imagenet_rgb256_std == [58.395, 57.12, 57.375]
