import importlib
import math

import pytest
import torch
from torchvision import ops

from heron.layers.nms import (
    batched_nms,
    batched_nms_rotated,
    dense_per_class_nms,
    nms,
    nms_rotated,
)

# The package re-exports a function of the same name, so fetch the module itself.
nms_module = importlib.import_module("heron.layers.nms")

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _random_xyxy(n, generator, spread=40.0):
    xy = torch.rand(n, 2, generator=generator) * spread
    wh = torch.rand(n, 2, generator=generator) * 15 + 1
    return torch.cat([xy, xy + wh], dim=1)


def _to_rotated(xyxy):
    centre = (xyxy[:, :2] + xyxy[:, 2:]) / 2
    wh = xyxy[:, 2:] - xyxy[:, :2]
    return torch.cat([centre, wh, torch.zeros_like(centre[:, :1])], dim=1)


def _separated_scores(n, generator):
    # a random permutation of n distinct levels: no ties, no near-ties
    return torch.randperm(n, generator=generator).float() / n


# --- axis-aligned --------------------------------------------------------------------------


def test_nms_is_torchvision_nms():
    assert nms is ops.nms


def test_batched_nms_matches_torchvision_and_casts_half_boxes():
    g = torch.Generator().manual_seed(0)
    boxes = _random_xyxy(60, g)
    scores = _separated_scores(60, g)
    idxs = torch.randint(0, 3, (60,), generator=g)
    expected = ops.batched_nms(boxes, scores, idxs, 0.5)
    assert 0 < len(expected) < 60
    torch.testing.assert_close(batched_nms(boxes, scores, idxs, 0.5), expected)
    # float16 boxes (exactly representable here after rounding) run in float32
    half = boxes.half()
    torch.testing.assert_close(
        batched_nms(half, scores, idxs, 0.5), ops.batched_nms(half.float(), scores, idxs, 0.5)
    )


def test_batched_nms_accepts_double_scores():
    boxes = torch.tensor([[0.0, 0, 2, 2], [0, 0, 2, 2.2]], dtype=torch.float64)
    scores = torch.tensor([0.5, 0.9], dtype=torch.float64)
    # IoU 4 / 4.4 > 0.5: the better box (index 1) suppresses the other
    assert batched_nms(boxes, scores, torch.tensor([0, 0]), 0.5).tolist() == [1]


def test_batched_nms_names_the_bad_shape():
    with pytest.raises(ValueError, match=r"\(N, 4\), got shape \(2, 5\)"):
        batched_nms(torch.zeros(2, 5), torch.zeros(2), torch.zeros(2, dtype=torch.int64), 0.5)


# --- rotated -------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.7])
def test_nms_rotated_at_angle_zero_matches_torchvision_nms(device, threshold):
    g = torch.Generator().manual_seed(1)
    boxes = _random_xyxy(150, g, spread=10.0)
    scores = _separated_scores(150, g)
    expected = ops.nms(boxes, scores, threshold)
    assert 10 < len(expected) < 140  # many boxes suppressed, many kept
    keep = nms_rotated(_to_rotated(boxes).to(device), scores.to(device), threshold)
    assert keep.dtype == torch.int64 and keep.device.type == device
    assert keep.cpu().tolist() == expected.tolist()


def test_nms_rotated_with_many_blocks_matches_torchvision_nms(monkeypatch):
    monkeypatch.setattr(nms_module, "_NMS_BLOCK", 16)
    g = torch.Generator().manual_seed(2)
    boxes = _random_xyxy(120, g, spread=25.0)
    scores = _separated_scores(120, g)
    expected = ops.nms(boxes, scores, 0.4)
    assert nms_rotated(_to_rotated(boxes), scores, 0.4).tolist() == expected.tolist()


def test_nms_rotated_hand_case_with_three_rotated_squares():
    # C: the side-2 square at 90 degrees (same region as A); A: the square at 0 degrees;
    # B: the square at 45 degrees. IoU(A, C) = 1. IoU(A, B): the octagon has area
    # 8 (sqrt2 - 1), so IoU = 8 (sqrt2 - 1) / (8 - 8 (sqrt2 - 1)) = 1 / sqrt2 = 0.7071.
    boxes = torch.tensor([[0.0, 0, 2, 2, 90], [0, 0, 2, 2, 0], [0, 0, 2, 2, 45]])
    scores = torch.tensor([0.7, 0.9, 0.8])
    # 0.5: A (best) suppresses B (0.707 > 0.5) and C (1 > 0.5)
    assert nms_rotated(boxes, scores, 0.5).tolist() == [1]
    # 0.8: B survives (0.707 <= 0.8), C does not (IoU 1 with A)
    assert nms_rotated(boxes, scores, 0.8).tolist() == [1, 2]
    # just above 1/sqrt2 B survives, just below it does not
    assert nms_rotated(boxes, scores, 1 / math.sqrt(2) + 1e-4).tolist() == [1, 2]
    assert nms_rotated(boxes, scores, 1 / math.sqrt(2) - 1e-4).tolist() == [1]


def test_nms_rotated_keeps_a_box_exactly_at_the_threshold():
    # a 1 x 1 box inside a 2 x 1 box: IoU = 1 / (2 + 1 - 1) = 0.5 exactly, not > 0.5
    boxes = torch.tensor([[1.0, 0.5, 2, 1, 0], [0.5, 0.5, 1, 1, 0]])
    assert nms_rotated(boxes, torch.tensor([0.9, 0.8]), 0.5).tolist() == [0, 1]
    assert nms_rotated(boxes, torch.tensor([0.9, 0.8]), 0.49).tolist() == [0]


def test_nms_rotated_suppression_is_not_transitive():
    # A and B overlap (IoU 1/3), B and C overlap (1/3), A and C do not. A suppresses B,
    # so C, which only B could have suppressed, is kept.
    boxes = torch.tensor([[0.0, 0, 1, 1, 0], [0.5, 0, 1, 1, 0], [1.0, 0, 1, 1, 0]])
    assert nms_rotated(boxes, torch.tensor([0.9, 0.8, 0.7]), 0.3).tolist() == [0, 2]


def test_nms_rotated_of_empty_input_is_empty_int64():
    keep = nms_rotated(torch.zeros(0, 5), torch.zeros(0), 0.5)
    assert keep.shape == (0,) and keep.dtype == torch.int64


def test_nms_rotated_names_bad_shapes():
    with pytest.raises(ValueError, match=r"\(N, 5\), got shape \(3, 4\)"):
        nms_rotated(torch.zeros(3, 4), torch.zeros(3), 0.5)
    with pytest.raises(ValueError, match=r"scores must be \(3,\)"):
        nms_rotated(torch.zeros(3, 5), torch.zeros(2), 0.5)


def test_batched_nms_rotated_never_suppresses_across_classes():
    # identical boxes, one per class: all kept; within a class only the best survives
    box = [0.0, 0, 4, 2, 30]
    boxes = torch.tensor([box] * 4)
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6])
    assert batched_nms_rotated(boxes, scores, torch.tensor([0, 1, 2, 3]), 0.5).tolist() == [
        0,
        1,
        2,
        3,
    ]
    assert batched_nms_rotated(boxes, scores, torch.tensor([0, 1, 0, 1]), 0.5).tolist() == [0, 1]


def test_batched_nms_rotated_equals_per_class_nms_on_tilted_boxes():
    g = torch.Generator().manual_seed(3)
    n = 90
    boxes = torch.cat(
        [
            torch.rand(n, 2, generator=g) * 30 - 10,  # negative coordinates too
            torch.rand(n, 2, generator=g) * 12 + 1,
            torch.full((n, 1), 45.0),  # diamonds: the widest reach for their size
        ],
        dim=1,
    )
    scores = _separated_scores(n, g)
    idxs = torch.randint(0, 4, (n,), generator=g)
    keep = batched_nms_rotated(boxes, scores, idxs, 0.3)
    # reference: NMS within each class, merged by decreasing score
    per_class = []
    for c in range(4):
        members = torch.nonzero(idxs == c).squeeze(1)
        per_class.append(members[nms_rotated(boxes[members], scores[members], 0.3)])
    merged = torch.cat(per_class)
    expected = merged[torch.argsort(scores[merged], descending=True)]
    assert len(expected) < n  # suppression happens within classes
    assert keep.tolist() == expected.tolist()


def test_batched_nms_rotated_of_empty_input_is_empty_int64():
    keep = batched_nms_rotated(
        torch.zeros(0, 5), torch.zeros(0), torch.zeros(0, dtype=torch.int64), 0.5
    )
    assert keep.shape == (0,) and keep.dtype == torch.int64


def test_dense_per_class_nms_hand_case():
    # class 0: boxes 0 and 1 overlap with IoU 81/119 = 0.68 > 0.5, box 1 (0.9) wins;
    # box 2 (0.2) is under the score threshold 0.3.
    # class 1: the same boxes with other scores: box 0 (0.8) suppresses box 1 (0.7);
    # box 2 is disjoint and kept.
    boxes = torch.tensor([[0.0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30]])
    dense = boxes.expand(2, 3, 4)
    scores = torch.tensor([[0.5, 0.9, 0.2], [0.8, 0.7, 0.6]])
    classes, regions = dense_per_class_nms(dense, scores, 0.3, 0.5)
    assert classes.tolist() == [0, 1, 1]
    assert regions.tolist() == [1, 0, 2]  # by class, then decreasing score


def test_dense_per_class_nms_equals_thresholded_batched_nms():
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(4, 50, 2, generator=g) * 80
    boxes = torch.cat([xy, xy + 5 + torch.rand(4, 50, 2, generator=g) * 30], dim=2)
    scores = torch.rand(4, 50, generator=g)
    classes, regions = dense_per_class_nms(boxes, scores, 0.2, 0.4)
    for c in range(4):  # per class: torchvision's NMS of the candidates above 0.2
        idx = (scores[c] > 0.2).nonzero()[:, 0]
        want = idx[ops.nms(boxes[c, idx], scores[c, idx], 0.4)]
        assert regions[classes == c].tolist() == want.tolist()


def test_dense_per_class_nms_exports_to_one_onnx_operator_run_per_class(tmp_path):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")

    class PerClass(torch.nn.Module):
        def forward(self, boxes, scores):
            return torch.stack(dense_per_class_nms(boxes, scores, 0.2, 0.4), dim=1)

    g = torch.Generator().manual_seed(1)
    xy = torch.rand(3, 40, 2, generator=g) * 60
    boxes = torch.cat([xy, xy + 5 + torch.rand(3, 40, 2, generator=g) * 30], dim=2)
    scores = torch.rand(3, 40, generator=g)
    path = str(tmp_path / "nms.onnx")
    axes = {"boxes": {0: "c", 1: "r"}, "scores": {0: "c", 1: "r"}}
    torch.onnx.export(
        PerClass(), (boxes, scores), path, dynamo=False, opset_version=17,
        input_names=["boxes", "scores"], dynamic_axes=axes,
    )  # fmt: skip
    assert [n.op_type for n in onnx.load(path).graph.node].count("NonMaxSuppression") == 1
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    for b, s in ((boxes, scores), (boxes[:2, :25], scores[:2, :25])):
        (got,) = session.run(None, {"boxes": b.numpy(), "scores": s.numpy()})
        want = torch.stack(dense_per_class_nms(b, s, 0.2, 0.4), dim=1)
        assert got.tolist() == want.tolist()
