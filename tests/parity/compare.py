"""Comparison of a Heron run with a parity-kit golden, at the kit README's tolerances."""

from __future__ import annotations

import numpy as np
import torch

from tests.parity.kit import Run, crc32_of, feature_stats, unpack_masks

# Scores closer than this may legitimately come out in either order (kit README).
TIE = 1e-5


def check_input(run: Run, gold: dict[str, np.ndarray]) -> None:
    assert list(run.resized.shape[:2]) == gold["input_hw"].tolist()
    assert crc32_of(run.resized) == int(gold["input_crc32"]), (
        "resized input differs from Detectron2's"
    )


def check_features(run: Run, gold: dict[str, np.ndarray]) -> None:
    names = sorted(run.features)
    assert names == [str(n) for n in gold["feat_names"]]
    for i, name in enumerate(names):
        feat = run.features[name]
        assert list(feat.shape) == gold["feat_shapes"][i].tolist(), name
        np.testing.assert_allclose(
            feature_stats(feat),
            gold["feat_stats"][i],
            rtol=1e-4,
            atol=1e-6,
            err_msg=f"feature {name}",
        )


def check_proposals(
    logits: np.ndarray, boxes: np.ndarray, gold_logits: np.ndarray, gold_boxes: np.ndarray
) -> None:
    """Proposals against Detectron2's: logits atol 1e-3, boxes atol 1e-2 px, in order
    except within groups of tied logits."""
    order = match_order(logits, boxes, gold_logits, gold_boxes, box_atol=1e-2)
    np.testing.assert_allclose(logits[order], gold_logits, atol=1e-3, rtol=0)
    np.testing.assert_allclose(boxes[order], gold_boxes, atol=1e-2, rtol=0)


def check_rpn(run: Run, gold: dict[str, np.ndarray]) -> None:
    """The first proposals of the proposal generator (resized-input pixels) and their count."""
    proposals = run.proposals[0]
    assert len(proposals) == int(gold["rpn_num"])
    n = len(gold["rpn_logits"])
    check_proposals(
        proposals.objectness_logits[:n].numpy(),
        proposals.proposal_boxes.tensor[:n].numpy(),
        gold["rpn_logits"],
        gold["rpn_boxes"],
    )


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    lt = np.maximum(a[:2], b[:2])
    rb = np.minimum(a[2:], b[2:])
    inter = np.prod(np.clip(rb - lt, 0, None))
    union = np.prod(a[2:] - a[:2]) + np.prod(b[2:] - b[:2]) - inter
    return float(inter / union) if union > 0 else 0.0


def match_order(
    scores: np.ndarray,
    boxes: np.ndarray,
    gold_scores: np.ndarray,
    gold_boxes: np.ndarray,
    box_atol: float,
) -> np.ndarray:
    """Index into our outputs for each golden output: the same position, except inside
    groups of near-tied scores, where the box with the best IoU is taken."""
    assert len(scores) == len(gold_scores), (
        f"{len(scores)} detections, Detectron2 gave {len(gold_scores)}"
    )
    order = np.arange(len(gold_scores))
    for i in range(len(gold_scores)):
        if np.abs(boxes[i] - gold_boxes[i]).max() <= box_atol:
            continue
        # Positions whose reference scores tie with this one, plus ours that do.
        ties = np.nonzero(
            (np.abs(gold_scores - gold_scores[i]) <= TIE) | (np.abs(scores - gold_scores[i]) <= TIE)
        )[0]
        if len(ties):
            order[i] = ties[np.argmax([_iou(boxes[j], gold_boxes[i]) for j in ties])]
    return order


def check_instances(run: Run, gold: dict[str, np.ndarray], box_atol: float) -> np.ndarray:
    inst = run.outputs["instances"]
    boxes = inst.pred_boxes.tensor.numpy()
    scores = inst.scores.numpy()
    order = match_order(scores, boxes, gold["scores"], gold["pred_boxes"], box_atol)
    np.testing.assert_array_equal(inst.pred_classes.numpy()[order], gold["pred_classes"])
    np.testing.assert_allclose(scores[order], gold["scores"], atol=1e-4, rtol=0)
    np.testing.assert_allclose(boxes[order], gold["pred_boxes"], atol=box_atol, rtol=0)
    return order


def check_masks(
    run: Run, gold: dict[str, np.ndarray], order: np.ndarray, raw_mask_probs: torch.Tensor
) -> None:
    masks = run.outputs["instances"].pred_masks.numpy()[order]
    gold_masks = unpack_masks(gold)
    assert masks.shape == gold_masks.shape
    differing = (masks != gold_masks).reshape(len(masks), -1).mean(axis=1)
    worst = int(np.argmax(differing)) if len(differing) else 0
    assert (differing <= 1e-3).all(), f"mask {worst}: {differing[worst]:.4%} of pixels differ"
    areas = masks.reshape(len(masks), -1).sum(axis=1)
    np.testing.assert_allclose(areas, gold["mask_areas"], atol=1e-3 * masks[0].size, rtol=0)
    probs = raw_mask_probs[:, 0].numpy()[order]
    np.testing.assert_allclose(probs, gold["mask_probs"].astype(np.float32), atol=1e-3, rtol=0)


def check_keypoints(
    run: Run, gold: dict[str, np.ndarray], order: np.ndarray, heatmaps: torch.Tensor
) -> None:
    keypoints = run.outputs["instances"].pred_keypoints.numpy()[order]
    gold_kp = gold["pred_keypoints"]
    xy_close = np.abs(keypoints[..., :2] - gold_kp[..., :2]).max(axis=-1) <= 1e-2
    # A rare argmax tie may move a point by a heatmap cell (kit README): allow 0.5%.
    assert xy_close.mean() >= 0.995, f"{(~xy_close).sum()} of {xy_close.size} keypoints moved"
    np.testing.assert_allclose(
        keypoints[..., 2][xy_close], gold_kp[..., 2][xy_close], atol=1e-3, rtol=0
    )
    first = gold["keypoint_heatmaps_first4"].astype(np.float32)
    ours = heatmaps.numpy()[order[: len(first)]]
    np.testing.assert_allclose(ours, first, rtol=2e-3, atol=1e-2)
