"""Load Detectron1/Caffe2 weights and partial checkpoints by name matching.

Two steps, both with Detectron2's rules:

1. ``convert_c2_detectron_names`` renames Caffe2 blobs (``res2_0_branch2a_bn_s``) to
   Detectron2 parameter names (``res2.0.conv1.norm.weight``) and moves the background
   class of the box classifier from Detectron1's first row to Detectron2's last.
2. ``align_and_update_state_dicts`` matches the (renamed) checkpoint keys to the model's:
   a checkpoint key matches a model key that ends with it at a "." boundary, so
   ``res2.0.conv1.weight`` fills ``backbone.bottom_up.res2.0.conv1.weight``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from tabulate import tabulate

__all__ = [
    "align_and_update_state_dicts",
    "convert_basic_c2_names",
    "convert_c2_detectron_names",
]

logger = logging.getLogger(__name__)

# A rename rule is (kind, old, new): "re" rules go through re.sub, "str" rules through
# str.replace (every occurrence). Rules apply in order to every key, each to the output of
# the previous one, so the order below is part of the definition.
_Rule = tuple[str, str, str]

# Backbone names (convert_basic_c2_names), after "_" has become ".".
_BASIC_RULES: list[_Rule] = [
    ("re", r"\.b$", ".bias"),
    ("re", r"\.w$", ".weight"),
    # batch norm and group norm parameters are all called "norm"
    ("re", r"bn\.s$", "norm.weight"),
    ("re", r"bn\.bias$", "norm.bias"),
    ("re", r"bn\.rm", "norm.running_mean"),
    ("re", r"bn\.running.mean$", "norm.running_mean"),
    ("re", r"bn\.riv$", "norm.running_var"),
    ("re", r"bn\.running.var$", "norm.running_var"),
    ("re", r"bn\.gamma$", "norm.weight"),
    ("re", r"bn\.beta$", "norm.bias"),
    ("re", r"gn\.s$", "norm.weight"),
    ("re", r"gn\.bias$", "norm.bias"),
    # stem; "stem." keeps conv1 from matching the conv1 of every head
    ("re", r"^res\.conv1\.norm\.", "conv1.norm."),
    ("re", r"^conv1\.", "stem.conv1."),
    # residual blocks (stages keep Caffe2's res2..res5 names)
    ("str", ".branch1.", ".shortcut."),
    ("str", ".branch2a.", ".conv1."),
    ("str", ".branch2b.", ".conv2."),
    ("str", ".branch2c.", ".conv3."),
    # DensePose heads
    ("re", r"^body.conv.fcn", "body_conv_fcn"),
    ("str", "AnnIndex.lowres", "ann_index_lowres"),
    ("str", "Index.UV.lowres", "index_uv_lowres"),
    ("str", "U.lowres", "u_lowres"),
    ("str", "V.lowres", "v_lowres"),
]

_RPN = "proposal_generator.rpn_head"
_KEYPOINT_HEAD = "roi_heads.keypoint_head"

# Detection heads (convert_c2_detectron_names), applied after _BASIC_RULES. FPN names are
# handled by _rename_fpn between the box-head and mask-head rules.
_HEAD_RULES_BEFORE_FPN: list[_Rule] = [
    # RPN: with FPN the shared head is named after level 2 ("fpn2")
    ("str", "conv.rpn.fpn2", f"{_RPN}.conv"),
    ("str", "conv.rpn", f"{_RPN}.conv"),
    ("str", "rpn.bbox.pred.fpn2", f"{_RPN}.anchor_deltas"),
    ("str", "rpn.cls.logits.fpn2", f"{_RPN}.objectness_logits"),
    ("str", "rpn.bbox.pred", f"{_RPN}.anchor_deltas"),
    ("str", "rpn.cls.logits", f"{_RPN}.objectness_logits"),
    # Fast R-CNN box head and predictor
    ("re", r"^bbox\.pred", "bbox_pred"),
    ("re", r"^cls\.score", "cls_score"),
    ("re", r"^fc6\.", "box_head.fc1."),
    ("re", r"^fc7\.", "box_head.fc2."),
    ("re", r"^head\.conv", "box_head.conv"),  # 4conv1fc head: head_conv1_w, head_conv1_gn_s
]
_HEAD_RULES_AFTER_FPN: list[_Rule] = [
    # mask head: StandardROIHeads, then Res5ROIHeads
    ("str", ".[mask].fcn", "mask_head.mask_fcn"),
    ("re", r"^\.mask\.fcn", "mask_head.mask_fcn"),
    ("str", "mask.fcn.logits", "mask_head.predictor"),
    ("str", "conv5.mask", "mask_head.deconv"),
    # keypoint head: its convs are plain "conv_fcnX" blobs
    ("str", "conv.fcn", f"{_KEYPOINT_HEAD}.conv_fcn"),
    ("str", "kps.score.lowres", f"{_KEYPOINT_HEAD}.score_lowres"),
    ("str", "kps.score.", f"{_KEYPOINT_HEAD}.score."),
]


def _apply_rules(key: str, rules: list[_Rule]) -> str:
    for kind, old, new in rules:
        key = re.sub(old, new, key) if kind == "re" else key.replace(old, new)
    return key


def convert_basic_c2_names(original_keys: list[str]) -> list[str]:
    """Rename Caffe2 backbone blob names to Detectron2 parameter names.

    Handles typical ResNet backbones: "_" becomes ".", "_w"/"_b" become weight/bias,
    "_bn_s"/"_bn_b"/"_bn_rm"/"_bn_riv" become norm.{weight, bias, running_mean,
    running_var}, the stem gets "stem.", branch1/2a/2b/2c become shortcut/conv1/2/3.

    Args:
        original_keys: Caffe2 blob names.

    Returns:
        The converted names, in the same order.
    """
    keys = [{"pred_b": "linear_b", "pred_w": "linear_w"}.get(k, k) for k in original_keys]
    return [_apply_rules(k.replace("_", "."), _BASIC_RULES) for k in keys]


def _rename_fpn(name: str) -> str:
    """FPN lateral ("fpn.inner.resN...") and output ("fpn.resN...") convs, with norms.

    "fpn.inner.res2.2.sum.lateral.weight" -> "fpn_lateral2.weight";
    "fpn.res2.2.sum.norm.bias" -> "fpn_output2.norm.bias".
    """
    parts = name.split(".")
    norm = ".norm" if "norm" in parts else ""
    if name.startswith("fpn.inner."):
        return f"fpn_lateral{int(parts[2][len('res') :])}{norm}.{parts[-1]}"
    if name.startswith("fpn.res"):
        return f"fpn_output{int(parts[1][len('res') :])}{norm}.{parts[-1]}"
    return name


def convert_c2_detectron_names(
    weights: Mapping[str, Any],
) -> tuple[dict[str, Any], dict[str, str]]:
    """Map Caffe2 Detectron weight names to Detectron2 names, adapting predictor layouts.

    Besides renaming, Detectron1's predictors carry a background class first; Detectron2
    has no background in class-specific box regression and mask prediction and puts the
    background logit last:

    - ``bbox_pred.*``: the first 4 rows (background box deltas) are dropped;
    - ``mask_head.predictor.*``: the first row (background mask) is dropped;
    - ``cls_score.*``: row 0 moves to the end, ``(K + 1, ...)`` rows [bg, c1..cK] ->
      [c1..cK, bg].

    Args:
        weights: Caffe2 blob name -> numpy array or tensor.

    Returns:
        (Detectron2 name -> value, Detectron2 name -> original Caffe2 name).

    Raises:
        ValueError: two blobs would get the same Detectron2 name.
    """
    logger.info("Renaming Caffe2 weights ......")
    original_keys = sorted(weights.keys())
    renamed_keys = [
        _apply_rules(_rename_fpn(_apply_rules(k, _HEAD_RULES_BEFORE_FPN)), _HEAD_RULES_AFTER_FPN)
        for k in convert_basic_c2_names(original_keys)
    ]
    if len(set(renamed_keys)) != len(renamed_keys):
        seen: dict[str, str] = {}
        for orig, renamed in zip(original_keys, renamed_keys):
            if renamed in seen:
                raise ValueError(
                    f"Caffe2 blobs {seen[renamed]!r} and {orig!r} both convert to {renamed!r}"
                )
            seen[renamed] = orig

    new_weights: dict[str, Any] = {}
    new_to_original: dict[str, str] = {}
    for orig, renamed in zip(original_keys, renamed_keys):
        new_to_original[renamed] = orig
        value = weights[orig]
        if renamed.startswith(("bbox_pred.", "mask_head.predictor.")):
            first_kept = 4 if renamed.startswith("bbox_pred.") else 1
            new_weights[renamed] = value[first_kept:]
            logger.info(
                "Remove prediction weight for background class in %s. The shape changes from "
                "%s to %s.",
                renamed,
                tuple(value.shape),
                tuple(new_weights[renamed].shape),
            )
        elif renamed.startswith("cls_score."):
            logger.info(
                "Move classification weights for background class in %s from index 0 to index %d.",
                renamed,
                value.shape[0] - 1,
            )
            new_weights[renamed] = _concat_rows(value[1:], value[:1])
        else:
            new_weights[renamed] = value
    return new_weights, new_to_original


def _concat_rows(a: Any, b: Any) -> Any:
    if isinstance(a, torch.Tensor):
        return torch.cat([a, b])
    return np.concatenate([a, b])


def align_and_update_state_dicts(
    model_state_dict: Mapping[str, Any],
    ckpt_state_dict: Mapping[str, Any],
    c2_conversion: bool = True,
) -> dict[str, Any]:
    """Rename checkpoint keys to the model keys they match, by suffix.

    A checkpoint key matches a model key equal to it or ending with "." + it, so weights
    saved without a wrapper's prefix (an ImageNet backbone, a sub-module's state_dict) fill
    the nested model. When several checkpoint keys match one model key the longest wins
    (``res2.0.conv1.weight`` over ``conv1.weight``). Matches whose shapes differ are
    skipped with a warning. The matched pairs are logged as a table.

    Args:
        model_state_dict: the model's state_dict (only keys and shapes are used).
        ckpt_state_dict: the checkpoint's state_dict; values are tensors (numpy arrays
            are accepted when ``c2_conversion`` is False too).
        c2_conversion: first rename Caffe2 blob names with
            :func:`convert_c2_detectron_names`.

    Returns:
        A new state_dict: matched values under their model key, plus every unmatched
        checkpoint entry under its (converted) checkpoint name, for the loader to report.

    Raises:
        ValueError: one checkpoint key matches two model keys (e.g. a bare
            ``conv1.weight`` against two modules' conv1), which has no right answer.
    """
    model_keys = sorted(model_state_dict.keys())
    if c2_conversion:
        ckpt_state_dict, original_keys = convert_c2_detectron_names(ckpt_state_dict)
    else:
        original_keys = {k: k for k in ckpt_state_dict}
    ckpt_keys = set(ckpt_state_dict.keys())

    result: dict[str, Any] = {}
    matched: dict[str, str] = {}  # checkpoint key -> model key
    for key_model in model_keys:
        key_ckpt = _longest_suffix_match(key_model, ckpt_keys)
        if key_ckpt is None:
            continue
        value = ckpt_state_dict[key_ckpt]
        shape_model = tuple(model_state_dict[key_model].shape)
        if tuple(value.shape) != shape_model:
            logger.warning(
                "Shape of %s in checkpoint is %s, while shape of %s in model is %s. %s will "
                "not be loaded. Please double check and see if this is desired.",
                key_ckpt,
                tuple(value.shape),
                key_model,
                shape_model,
                key_ckpt,
            )
            continue
        if key_ckpt in matched:
            logger.error(
                "Ambiguity found for %s in checkpoint! It matches at least two keys in the "
                "model (%s and %s).",
                key_ckpt,
                matched[key_ckpt],
                key_model,
            )
            raise ValueError(
                f"Cannot match one checkpoint key to multiple keys in the model: "
                f"{key_ckpt!r} matches both {matched[key_ckpt]!r} and {key_model!r}"
            )
        matched[key_ckpt] = key_model
        result[key_model] = value

    _log_matches(matched, original_keys, model_state_dict)
    for key_ckpt in sorted(ckpt_keys - matched.keys()):
        result[key_ckpt] = ckpt_state_dict[key_ckpt]
    return result


def _longest_suffix_match(key_model: str, ckpt_keys: set[str]) -> str | None:
    """The longest checkpoint key equal to ``key_model`` or to a tail after one of its dots.

    Scanning tails from the longest down returns the longest match first; two different
    keys of the same length cannot both be tails of one string, so the match is unique.
    """
    if key_model in ckpt_keys:
        return key_model
    pos = key_model.find(".")
    while pos >= 0:
        tail = key_model[pos + 1 :]
        if tail in ckpt_keys:
            return tail
        pos = key_model.find(".", pos + 1)
    return None


def _log_matches(
    matched: Mapping[str, str],
    original_keys: Mapping[str, str],
    model_state_dict: Mapping[str, Any],
) -> None:
    """Log "names in model | names in checkpoint | shapes", one row per module.

    The prefix shared by all matched model keys is named once in the title. Keys of one
    module are merged into a row when their checkpoint names share a prefix, e.g.
    ``res2.0.conv1.* | res2_0_branch2a_{w,bn_s,bn_b}``.
    """
    if not matched:
        logger.warning("No weights in the checkpoint matched any key of the model.")
        return
    ckpt_of = {key_model: original_keys[key_ckpt] for key_ckpt, key_model in matched.items()}
    model_keys = sorted(ckpt_of)
    common = _common_dotted_prefix(model_keys)
    rows = []
    for group in _group_by_module(model_keys, ckpt_of):
        shapes = [str(tuple(model_state_dict[k].shape)).replace(" ", "") for k in group]
        if len(group) == 1:
            rows.append((group[0][len(common) :], ckpt_of[group[0]], shapes[0]))
            continue
        rows.append(
            (
                _common_dotted_prefix([k[len(common) :] for k in group]) + "*",
                _brace_names([ckpt_of[k] for k in group]),
                " ".join(shapes),
            )
        )
    table = tabulate(
        rows, tablefmt="pipe", headers=["Names in Model", "Names in Checkpoint", "Shapes"]
    )
    where = f"submodule {common[:-1]}" if common else "model"
    logger.info("Following weights matched with %s:\n%s", where, table)


def _group_by_module(keys: list[str], ckpt_of: Mapping[str, str]) -> list[list[str]]:
    """Split sorted ``keys`` into rows: the widest module whose keys' checkpoint names share
    a prefix forms one row; other keys stand alone."""
    parents = sorted({k[: k.rfind(".") + 1] for k in keys if "." in k}, key=len)
    group_of: dict[str, list[str]] = {}
    for parent in parents:
        members = [k for k in keys if k.startswith(parent)]
        if len(members) > 1 and _common_str_prefix([ckpt_of[k] for k in members]):
            for k in members:
                group_of.setdefault(k, members)
    rows: list[list[str]] = []
    done: set[str] = set()
    for k in keys:
        if k in done:
            continue
        group = [m for m in group_of.get(k, [k]) if m not in done]
        done.update(group)
        rows.append(group)
    return rows


def _common_dotted_prefix(names: list[str]) -> str:
    """Longest shared prefix made of whole "."-separated parts, with its trailing dot."""
    first, *rest = [n.split(".") for n in names]
    length = len(first)
    for parts in rest:
        length = min(length, len(parts))
        for i in range(length):
            if parts[i] != first[i]:
                length = i
                break
    return ".".join(first[:length]) + "." if length else ""


def _common_str_prefix(names: list[str]) -> str:
    lo, hi = min(names), max(names)  # the prefix of the extremes is shared by all
    n = 0
    while n < min(len(lo), len(hi)) and lo[n] == hi[n]:
        n += 1
    return lo[:n]


def _brace_names(names: list[str]) -> str:
    """["res2_w", "res2_b"] -> "res2_{w,b}" (batch-norm quadruples shortened to "bn_*")."""
    prefix = _common_str_prefix(names)
    text = prefix + "{" + ",".join(n[len(prefix) :] for n in names) + "}"
    for full in ("bn_{beta,running_mean,running_var,gamma}", "bn_{b,riv,rm,s}"):
        text = text.replace(full, "bn_*")
    return text
