import logging

import numpy as np
import pytest
import torch
from torch import nn

from heron.checkpoint.c2_model_loading import (
    align_and_update_state_dicts,
    convert_basic_c2_names,
    convert_c2_detectron_names,
)
from tests.checkpoint.helpers import ConvNorm, FrozenBN, captured_records


@pytest.fixture
def c2_log():
    with captured_records("heron.checkpoint.c2_model_loading") as records:
        yield records


def _messages(records, level=logging.DEBUG):
    return "\n".join(r.getMessage() for r in records if r.levelno >= level)


_FrozenBN = FrozenBN
_ConvNorm = ConvNorm


def _tiny_detector():
    """Keys backbone.bottom_up.{stem.conv1, res2.0.conv1, res2.0.shortcut}.{weight, norm.*}."""
    bottom_up = nn.Module()
    bottom_up.stem = nn.Module()
    bottom_up.stem.conv1 = _ConvNorm(3, 4, 3)
    block = nn.Module()
    block.conv1 = _ConvNorm(4, 4, 1)
    block.shortcut = _ConvNorm(4, 8, 1)
    bottom_up.res2 = nn.Sequential(block)
    model = nn.Module()
    model.backbone = nn.Module()
    model.backbone.bottom_up = bottom_up
    return model


# Caffe2 blob -> Detectron2 name, written from the renaming rules by hand.
_BACKBONE_NAMES = {
    "conv1_w": "stem.conv1.weight",  # conv1.w -> conv1.weight -> stem.conv1.weight
    "res_conv1_bn_s": "stem.conv1.norm.weight",  # res.conv1.bn.s -> res.conv1.norm.weight
    "res_conv1_bn_b": "stem.conv1.norm.bias",
    "res_conv1_bn_rm": "stem.conv1.norm.running_mean",
    "res_conv1_bn_riv": "stem.conv1.norm.running_var",
    "res2_0_branch2a_w": "res2.0.conv1.weight",
    "res2_0_branch2a_bn_s": "res2.0.conv1.norm.weight",
    "res2_0_branch2a_bn_b": "res2.0.conv1.norm.bias",
    "res2_0_branch2b_w": "res2.0.conv2.weight",
    "res2_0_branch2c_bn_rm": "res2.0.conv3.norm.running_mean",
    "res2_0_branch1_w": "res2.0.shortcut.weight",
    "res2_0_branch1_bn_s": "res2.0.shortcut.norm.weight",
    "res4_5_branch2a_gn_s": "res4.5.conv1.norm.weight",
    "res4_5_branch2a_gn_b": "res4.5.conv1.norm.bias",
    "fc1000_w": "fc1000.weight",
    "fc1000_b": "fc1000.bias",
    "pred_w": "linear.weight",  # hard-coded mapping pred -> linear
}

_HEAD_NAMES = {
    "conv_rpn_fpn2_w": "proposal_generator.rpn_head.conv.weight",
    "rpn_cls_logits_fpn2_b": "proposal_generator.rpn_head.objectness_logits.bias",
    "rpn_bbox_pred_fpn2_w": "proposal_generator.rpn_head.anchor_deltas.weight",
    "fc6_w": "box_head.fc1.weight",
    "fc7_b": "box_head.fc2.bias",
    "head_conv1_w": "box_head.conv1.weight",
    "head_conv1_gn_s": "box_head.conv1.norm.weight",
    "fpn_inner_res5_2_sum_w": "fpn_lateral5.weight",
    "fpn_inner_res4_5_sum_lateral_b": "fpn_lateral4.bias",
    "fpn_inner_res3_3_sum_lateral_gn_s": "fpn_lateral3.norm.weight",
    "fpn_res2_2_sum_w": "fpn_output2.weight",
    "fpn_res3_3_sum_gn_b": "fpn_output3.norm.bias",
    "_[mask]_fcn1_w": "mask_head.mask_fcn1.weight",
    "conv5_mask_w": "mask_head.deconv.weight",
    "conv_fcn1_w": "roi_heads.keypoint_head.conv_fcn1.weight",
    "kps_score_lowres_b": "roi_heads.keypoint_head.score_lowres.bias",
    "kps_score_w": "roi_heads.keypoint_head.score.weight",
}


def test_convert_basic_c2_names_renames_backbone_blobs():
    originals = list(_BACKBONE_NAMES)
    assert convert_basic_c2_names(originals) == [_BACKBONE_NAMES[k] for k in originals]


def test_convert_basic_c2_names_of_empty_list_is_empty():
    assert convert_basic_c2_names([]) == []


def test_convert_c2_detectron_names_renames_heads_and_maps_back():
    blobs = {**_BACKBONE_NAMES, **_HEAD_NAMES}
    weights = {name: np.full((2,), i, np.float32) for i, name in enumerate(blobs)}

    renamed, to_original = convert_c2_detectron_names(weights)

    assert renamed.keys() == set(blobs.values())
    assert to_original == {new: old for old, new in blobs.items()}
    for old, new in blobs.items():
        assert renamed[new] is weights[old]  # renamed, not copied


def test_convert_c2_rpn_without_fpn():
    renamed, _ = convert_c2_detectron_names(
        {"conv_rpn_w": np.zeros(1), "rpn_cls_logits_w": np.zeros(1), "rpn_bbox_pred_b": np.zeros(1)}
    )
    assert set(renamed) == {
        "proposal_generator.rpn_head.conv.weight",
        "proposal_generator.rpn_head.objectness_logits.weight",
        "proposal_generator.rpn_head.anchor_deltas.bias",
    }


@pytest.mark.parametrize("to_array", [np.asarray, torch.as_tensor])
def test_background_class_moves_from_first_to_last(to_array):
    # Detectron1 predictor with 2 foreground classes: rows [bg, c1, c2].
    cls_w = to_array(np.array([[0.0, 0.0], [1.0, 1.0], [2.0, 2.0]], np.float32))
    cls_b = to_array(np.array([10.0, 11.0, 12.0], np.float32))
    bbox_w = to_array(np.arange(24, dtype=np.float32).reshape(12, 2))  # 3 classes x 4 deltas
    mask_w = to_array(np.arange(3, dtype=np.float32).reshape(3, 1, 1, 1))
    renamed, _ = convert_c2_detectron_names(
        {
            "cls_score_w": cls_w,
            "cls_score_b": cls_b,
            "bbox_pred_w": bbox_w,
            "mask_fcn_logits_w": mask_w,
        }
    )
    # cls_score: [bg, c1, c2] -> [c1, c2, bg]
    np.testing.assert_array_equal(
        np.asarray(renamed["cls_score.weight"]), [[1.0, 1.0], [2.0, 2.0], [0.0, 0.0]]
    )
    np.testing.assert_array_equal(np.asarray(renamed["cls_score.bias"]), [11.0, 12.0, 10.0])
    # bbox_pred: the background's 4 rows (0..3) are dropped, rows 4..11 remain
    np.testing.assert_array_equal(
        np.asarray(renamed["bbox_pred.weight"]), np.arange(8, 24, dtype=np.float32).reshape(8, 2)
    )
    # mask predictor: the background mask (row 0) is dropped
    np.testing.assert_array_equal(
        np.asarray(renamed["mask_head.predictor.weight"]).ravel(), [1.0, 2.0]
    )


def test_convert_c2_names_that_collide_raise():
    with pytest.raises(
        ValueError, match=r"conv_rpn_fpn2_w.*conv_rpn_w|conv_rpn_w.*conv_rpn_fpn2_w"
    ):
        convert_c2_detectron_names({"conv_rpn_w": np.zeros(1), "conv_rpn_fpn2_w": np.zeros(1)})


def _c2_backbone_weights(model_state):
    """Caffe2 blobs for the tiny detector, each filled with distinct values."""
    prefix = "backbone.bottom_up."
    d2_to_c2 = {
        "stem.conv1.weight": "conv1_w",
        "stem.conv1.norm.weight": "res_conv1_bn_s",
        "stem.conv1.norm.bias": "res_conv1_bn_b",
        "res2.0.conv1.weight": "res2_0_branch2a_w",
        "res2.0.conv1.norm.weight": "res2_0_branch2a_bn_s",
        "res2.0.conv1.norm.bias": "res2_0_branch2a_bn_b",
        "res2.0.shortcut.weight": "res2_0_branch1_w",
        "res2.0.shortcut.norm.weight": "res2_0_branch1_bn_s",
        "res2.0.shortcut.norm.bias": "res2_0_branch1_bn_b",
    }
    blobs = {}
    for i, (d2_name, c2_name) in enumerate(d2_to_c2.items()):
        shape = model_state[prefix + d2_name].shape
        blobs[c2_name] = np.arange(np.prod(shape), dtype=np.float32).reshape(shape) + 100 * i
    blobs["fc1000_w"] = np.ones((5, 8), np.float32)
    return blobs, {prefix + d2: c2 for d2, c2 in d2_to_c2.items()}


def test_caffe2_backbone_loads_into_nested_detectron2_model(c2_log):
    model = _tiny_detector()
    blobs, model_key_to_blob = _c2_backbone_weights(model.state_dict())

    result = align_and_update_state_dicts(model.state_dict(), blobs, c2_conversion=True)

    # every mapped blob lands on its model key; the classifier stays, under its D2 name
    assert set(result) == set(model_key_to_blob) | {"fc1000.weight"}
    incompatible = model.load_state_dict(
        {k: torch.as_tensor(v) for k, v in result.items() if k in model_key_to_blob}, strict=False
    )
    for key, blob in model_key_to_blob.items():
        torch.testing.assert_close(model.state_dict()[key], torch.as_tensor(blobs[blob]))
    # running statistics were not in the checkpoint
    assert sorted(incompatible.missing_keys) == sorted(
        f"backbone.bottom_up.{m}.norm.{s}"
        for m in ("stem.conv1", "res2.0.conv1", "res2.0.shortcut")
        for s in ("running_mean", "running_var")
    )
    table = _messages(c2_log, logging.INFO)
    assert "Names in Model" in table
    assert "submodule backbone.bottom_up" in table
    assert "res2_0_branch1" in table


def test_longest_suffix_wins_and_matches_stop_at_dots():
    model_state = {
        "backbone.stem.conv1.weight": torch.zeros(2),
        "backbone.res2.conv1.weight": torch.zeros(2),
        "roi_heads.mesh_head.whatever_conv1.weight": torch.zeros(2),
    }
    ckpt = {
        "conv1.weight": torch.tensor([1.0, 1.0]),
        "stem.conv1.weight": torch.tensor([2.0, 2.0]),
        "res2.conv1.weight": torch.tensor([3.0, 3.0]),
    }
    result = align_and_update_state_dicts(model_state, ckpt, c2_conversion=False)
    torch.testing.assert_close(result["backbone.stem.conv1.weight"], torch.tensor([2.0, 2.0]))
    torch.testing.assert_close(result["backbone.res2.conv1.weight"], torch.tensor([3.0, 3.0]))
    # "whatever_conv1" does not end with ".conv1": the short key stays unmatched
    assert "roi_heads.mesh_head.whatever_conv1.weight" not in result
    torch.testing.assert_close(result["conv1.weight"], torch.tensor([1.0, 1.0]))


def test_exact_key_matches_itself():
    model_state = {"a.b": torch.zeros(1), "b": torch.zeros(1)}
    result = align_and_update_state_dicts(
        model_state, {"b": torch.ones(1), "a.b": torch.full((1,), 2.0)}, c2_conversion=False
    )
    torch.testing.assert_close(result["a.b"], torch.full((1,), 2.0))
    torch.testing.assert_close(result["b"], torch.ones(1))


def test_one_checkpoint_key_for_two_model_keys_raises(c2_log):
    model_state = {"a.conv1.weight": torch.zeros(2), "b.conv1.weight": torch.zeros(2)}
    with pytest.raises(ValueError, match=r"'conv1.weight' matches both 'a.conv1.weight' and "):
        align_and_update_state_dicts(
            model_state, {"conv1.weight": torch.ones(2)}, c2_conversion=False
        )
    assert "Ambiguity found for conv1.weight" in _messages(c2_log, logging.ERROR)


def test_shape_mismatch_is_skipped_with_warning(c2_log):
    model_state = {"head.cls.weight": torch.zeros(3, 4), "head.cls.bias": torch.zeros(3)}
    ckpt = {"cls.weight": torch.ones(81, 4), "cls.bias": torch.ones(3)}
    result = align_and_update_state_dicts(model_state, ckpt, c2_conversion=False)
    assert "head.cls.weight" not in result
    assert result["cls.weight"].shape == (81, 4)  # left for the loader to report
    torch.testing.assert_close(result["head.cls.bias"], torch.ones(3))
    warning = _messages(c2_log, logging.WARNING)
    assert "cls.weight" in warning and "(81, 4)" in warning and "(3, 4)" in warning


def test_empty_checkpoint_matches_nothing(c2_log):
    result = align_and_update_state_dicts({"a.w": torch.zeros(1)}, {}, c2_conversion=False)
    assert result == {}
    assert "No weights" in _messages(c2_log, logging.WARNING)
