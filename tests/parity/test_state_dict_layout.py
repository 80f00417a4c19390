"""Every parity case's model has exactly the kit's state_dict layout (keys and shapes).

This is the precondition for loading Detectron2 checkpoints with no renaming; it needs
no weights, so it runs fast and pinpoints naming mistakes before the numeric checks.
"""

from __future__ import annotations

import pytest

from tests.parity.kit import build_cfg_without_weights, spec

CASES = [
    "faster_R50_FPN",
    "faster_R50_C4",
    "faster_R50_DC5",
    "rpn_R50_FPN",
    "mask_R50_FPN",
    "mask_R50_C4",
    "mask_X101_FPN",
    "keypoint_R50_FPN",
    "cascade_mask_R50_FPN",
    "mask_R50_FPN_dconv",
    "mask_R50_FPN_gn",
    "lvis_mask_R50_FPN",
    "retinanet_R50_FPN",
    "semantic_R50_FPN",
    "panoptic_R50_FPN",
]


@pytest.mark.parametrize("case", CASES)
def test_model_state_dict_matches_the_kit_layout(case):
    from heron.modeling import build_model

    model = build_model(build_cfg_without_weights(case))
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    theirs = {entry[0]: list(entry[1]) for entry in spec(case)["state_dict"]}
    missing = sorted(set(theirs) - set(ours))
    unexpected = sorted(set(ours) - set(theirs))
    assert not missing and not unexpected, f"missing {missing[:5]}, unexpected {unexpected[:5]}"
    wrong = {k: (ours[k], theirs[k]) for k in theirs if ours[k] != theirs[k]}
    assert not wrong, f"shape mismatches (ours, Detectron2's): {wrong}"
