"""Model outputs to JSON: RLE masks, class filters, semantic and panoptic PNGs, drawing."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_util

from heron.serve.encode import (
    encode_png,
    filter_instances,
    instances_to_json,
    masks_to_rle,
    outputs_to_json,
    panoptic_to_json,
    render_visualization,
    sem_seg_to_json,
)
from heron.structures.boxes import Boxes
from heron.structures.instances import Instances


def _png_array(text: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(text))))


def _instances(n: int = 3, height: int = 5, width: int = 6) -> Instances:
    generator = torch.Generator().manual_seed(0)
    return Instances(
        (height, width),
        pred_boxes=Boxes(
            torch.tensor([[0.5, 1.0, 3.0, 4.0]]).repeat(n, 1) + torch.arange(n)[:, None]
        ),
        scores=torch.tensor([0.2, 0.8, 0.5, 0.9, 0.1][:n]),
        pred_classes=torch.tensor([0, 1, 2, 1, 0][:n]),
        pred_masks=torch.rand(n, height, width, generator=generator) > 0.5,
    )


def test_rle_round_trips_through_pycocotools():
    masks = torch.rand(4, 7, 9, generator=torch.Generator().manual_seed(1)) > 0.5
    rles = masks_to_rle(masks)
    assert [r["size"] for r in rles] == [[7, 9]] * 4
    assert all(isinstance(r["counts"], str) for r in rles)
    decoded = mask_util.decode([{"size": r["size"], "counts": r["counts"]} for r in rles])
    np.testing.assert_array_equal(decoded.transpose(2, 0, 1), masks.numpy())


def test_rle_of_no_masks_is_empty():
    assert masks_to_rle(torch.zeros(0, 4, 4, dtype=torch.bool)) == []


def test_filter_sorts_by_score_and_applies_threshold_and_classes():
    instances = _instances(5)  # scores 0.2, 0.8, 0.5, 0.9, 0.1; classes 0, 1, 2, 1, 0
    torch.testing.assert_close(
        filter_instances(instances).scores, torch.tensor([0.9, 0.8, 0.5, 0.2, 0.1])
    )
    torch.testing.assert_close(
        filter_instances(instances, 0.5).scores, torch.tensor([0.9, 0.8, 0.5])
    )
    kept = filter_instances(instances, 0.0, [0, 2])
    assert kept.pred_classes.tolist() == [2, 0, 0]
    assert len(filter_instances(instances, 0.95)) == 0


def test_instances_json_fields_and_class_names():
    instances = _instances(3)
    records = instances_to_json(instances, ["a", "b"])  # class 2 has no name
    assert [r["class_name"] for r in records] == ["a", "b", "class_2"]
    assert records[1]["box"] == [1.5, 2.0, 4.0, 5.0]  # [0.5, 1, 3, 4] + 1
    assert records[1]["score"] == pytest.approx(0.8)
    for record, mask in zip(records, instances.pred_masks):
        np.testing.assert_array_equal(mask_util.decode(record["mask"]), mask.numpy())
    assert "keypoints" not in records[0]


def test_keypoints_and_soft_masks():
    instances = _instances(2)
    instances.pred_masks = instances.pred_masks[:, None].float() * 0.7  # (N, 1, H, W), soft
    instances.pred_keypoints = torch.tensor([[[1.0, 2.0, 0.5]], [[3.0, 4.0, 0.25]]])
    records = instances_to_json(instances, [])
    assert records[1]["keypoints"] == [[3.0, 4.0, 0.25]]
    # 0.7 > 0.5, so the thresholded soft mask equals the original binary mask
    np.testing.assert_array_equal(
        mask_util.decode(records[0]["mask"]), _instances(2).pred_masks[0].numpy()
    )


def test_empty_instances_give_an_empty_list():
    assert instances_to_json(_instances(3)[torch.zeros(3, dtype=torch.bool)], ["a"]) == []


@pytest.mark.parametrize(("num_classes", "mode"), [(3, "L"), (300, "I;16")])
def test_sem_seg_png_is_the_argmax_class_map(num_classes, mode):
    logits = torch.randn(num_classes, 4, 5, generator=torch.Generator().manual_seed(2))
    result = sem_seg_to_json(logits, [f"c{i}" for i in range(num_classes)])
    image = Image.open(io.BytesIO(base64.b64decode(result["png"])))
    assert image.mode == mode
    np.testing.assert_array_equal(np.asarray(image), logits.argmax(dim=0).numpy())
    assert result["classes"][:2] == ["c0", "c1"]


def test_panoptic_png_holds_segment_ids_and_areas_are_counted():
    seg = torch.tensor([[0, 1, 1], [2, 2, 2], [300, 300, 1]], dtype=torch.int32)
    info = [
        {"id": 1, "category_id": 4, "isthing": True, "score": 0.75, "instance_id": 0},
        {"id": 2, "category_id": 7, "isthing": False},
        {"id": 300, "category_id": 1, "isthing": False, "area": 2},
    ]
    result = panoptic_to_json(seg, info)
    np.testing.assert_array_equal(_png_array(result["png"]), seg.numpy())
    assert result["segments_info"] == [
        {"id": 1, "category_id": 4, "isthing": True, "score": 0.75, "area": 3},
        {"id": 2, "category_id": 7, "isthing": False, "area": 3},
        {"id": 300, "category_id": 1, "isthing": False, "area": 2},
    ]


def test_outputs_to_json_has_the_fields_the_model_made():
    outputs = {
        "instances": _instances(3),
        "sem_seg": torch.zeros(2, 5, 6),
        "panoptic_seg": (torch.zeros(5, 6, dtype=torch.int32), []),
    }
    fields, filtered = outputs_to_json(
        outputs, thing_classes=["a", "b", "c"], stuff_classes=["x", "y"], score_threshold=0.4
    )
    assert [r["score"] for r in fields["instances"]] == pytest.approx([0.8, 0.5])
    assert len(filtered["instances"]) == 2
    assert set(fields) == {"instances", "sem_seg", "panoptic_seg"}
    assert (
        outputs_to_json({"sem_seg": torch.zeros(2, 5, 6)}, thing_classes=[], stuff_classes=[])[0][
            "instances"
        ]
        == []
    )


def test_encode_png_rejects_other_dtypes():
    with pytest.raises(TypeError, match="uint8 or uint16"):
        encode_png(np.zeros((2, 2), dtype=np.float32))


def test_visualization_is_an_rgb_png_of_the_image_size():
    image = np.full((5, 6, 3), 90, dtype=np.uint8)
    drawn = _png_array(render_visualization(image, {"instances": _instances(2)}, None))
    assert drawn.shape == (5, 6, 3) and drawn.dtype == np.uint8
    assert (drawn != 90).any()  # something was drawn
