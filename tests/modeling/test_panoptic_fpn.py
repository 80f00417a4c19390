"""combine_semantic_and_instance_outputs on hand-built maps, and PanopticFPN's losses,
outputs and training."""

from __future__ import annotations

import logging

import pytest
import torch

from heron.modeling.meta_arch.build import build_model
from heron.modeling.meta_arch.panoptic_fpn import (
    PanopticFPN,
    combine_semantic_and_instance_outputs,
)
from heron.structures.boxes import Boxes
from heron.structures.instances import Instances
from heron.structures.masks import BitMasks
from heron.utils.events import EventStorage
from tests.modeling.rcnn_fixtures import OBJECTS, small_rcnn_cfg, synthetic_batch


def _box_mask(rows: slice, cols: slice, shape=(4, 6)) -> torch.Tensor:
    mask = torch.zeros(shape, dtype=torch.bool)
    mask[rows, cols] = True
    return mask


def _detections(scores, classes, masks, shape=(4, 6)) -> Instances:
    return Instances(
        shape,
        scores=torch.tensor(scores),
        pred_classes=torch.tensor(classes),
        pred_masks=torch.stack(masks) if masks else torch.zeros(0, *shape, dtype=torch.bool),
    )


def _f32(x: float) -> float:
    return torch.tensor(x).item()  # scores come back as float32 values


def test_combine_pastes_instances_by_score_then_stuff():
    r01, r23, everything = slice(0, 2), slice(2, 4), slice(None)
    detections = _detections(
        scores=[0.8, 0.3, 0.9, 0.6, 0.7, 0.65],
        classes=[5, 7, 3, 8, 1, 2],
        masks=[
            _box_mask(everything, slice(2, 4)),  # 0: B, 8 px, 2 of them under A (25%): kept
            _box_mask(r23, slice(4, 6)),  # 1: D, below the score threshold: ends the pass
            _box_mask(r01, slice(0, 3)),  # 2: A, best score: pasted first, whole
            torch.zeros(4, 6, dtype=torch.bool),  # 3: E, empty mask: skipped
            _box_mask(r01, slice(0, 2)),  # 4: C, entirely under A (100% > 50%): skipped
            _box_mask(r23, slice(0, 4)),  # 5: F, 4 of 8 px under B (50%, not > 50%): kept
        ],
    )
    semantic = torch.tensor(
        [
            [4, 4, 9, 9, 0, 0],  # 9 lies only under instances: no free area
            [4, 4, 4, 4, 4, 4],
            [4, 4, 4, 4, 4, 4],  # 4 keeps the 4 free pixels of rows 1-2, cols 4-5
            [0, 0, 0, 0, 6, 6],  # 0 is the things class: never stuff; 6 has 2 px < 3
        ]
    )
    panoptic, segments = combine_semantic_and_instance_outputs(
        detections, semantic, overlap_threshold=0.5, stuff_area_thresh=3, instances_score_thresh=0.5
    )
    expected = torch.tensor(
        [
            [1, 1, 1, 2, 0, 0],
            [1, 1, 1, 2, 4, 4],
            [3, 3, 2, 2, 4, 4],
            [3, 3, 2, 2, 0, 0],
        ],
        dtype=torch.int32,
    )
    torch.testing.assert_close(panoptic, expected)
    assert segments == [
        {"id": 1, "isthing": True, "score": _f32(0.9), "category_id": 3, "instance_id": 2},
        {"id": 2, "isthing": True, "score": _f32(0.8), "category_id": 5, "instance_id": 0},
        {"id": 3, "isthing": True, "score": _f32(0.65), "category_id": 2, "instance_id": 5},
        {"id": 4, "isthing": False, "category_id": 4, "area": 4},
    ]


def test_combine_overlap_above_the_threshold_drops_the_instance():
    detections = _detections(
        scores=[0.9, 0.8],
        classes=[1, 2],
        masks=[_box_mask(slice(0, 2), slice(0, 6)), _box_mask(slice(1, 3), slice(0, 6))],
    )
    semantic = torch.zeros(4, 6, dtype=torch.long)
    # instance 1 is half covered: kept at threshold 0.5, dropped at 0.49
    _, kept = combine_semantic_and_instance_outputs(detections, semantic, 0.5, 1, 0.5)
    _, dropped = combine_semantic_and_instance_outputs(detections, semantic, 0.49, 1, 0.5)
    assert [s["instance_id"] for s in kept] == [0, 1]
    assert [s["instance_id"] for s in dropped] == [0]


def test_combine_without_instances_gives_stuff_only():
    semantic = torch.tensor([[1, 1, 2], [1, 2, 0]])
    panoptic, segments = combine_semantic_and_instance_outputs(
        _detections([], [], [], shape=(2, 3)), semantic, 0.5, 2, 0.5
    )
    # label 1: 3 px, label 2: 2 px, both >= 2; label 0 stays unassigned
    torch.testing.assert_close(panoptic, torch.tensor([[1, 1, 2], [1, 2, 0]], dtype=torch.int32))
    assert segments == [
        {"id": 1, "isthing": False, "category_id": 1, "area": 3},
        {"id": 2, "isthing": False, "category_id": 2, "area": 2},
    ]


def test_combine_names_mismatched_shapes():
    detections = _detections([0.9], [1], [_box_mask(slice(0, 1), slice(0, 1))])
    with pytest.raises(ValueError, match=r"pred_masks of shape \(1, 4, 6\) do not match"):
        combine_semantic_and_instance_outputs(detections, torch.zeros(4, 5), 0.5, 1, 0.5)
    with pytest.raises(ValueError, match=r"\(H, W\) label map, got shape \(1, 4, 6\)"):
        combine_semantic_and_instance_outputs(detections, torch.zeros(1, 4, 6), 0.5, 1, 0.5)


def _panoptic_cfg():
    cfg = small_rcnn_cfg(mask=True)
    cfg.MODEL.META_ARCHITECTURE = "PanopticFPN"
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = 3  # 0: things, 1 and 2: stuff
    cfg.MODEL.SEM_SEG_HEAD.CONVS_DIM = 32
    cfg.MODEL.PANOPTIC_FPN.COMBINE.STUFF_AREA_LIMIT = 512
    return cfg


def _sem_seg(objects, size: int) -> torch.Tensor:
    """Stuff 1 on the left half, 2 on the right; every object's pixels are class 0."""
    sem_seg = torch.ones(size, size, dtype=torch.long)
    sem_seg[:, size // 2 :] = 2
    for x0, y0, x1, y1, _ in objects:
        sem_seg[y0:y1, x0:x1] = 0
    return sem_seg


def _panoptic_batch(size: int = 128) -> list[dict]:
    """The two synthetic images with instances, plus one with no objects at all."""
    batch = synthetic_batch(size)
    for inputs, objects in zip(batch, OBJECTS):
        inputs["sem_seg"] = _sem_seg(objects, size)
    empty = Instances(
        (size, size),
        gt_boxes=Boxes(torch.zeros(0, 4)),
        gt_classes=torch.zeros(0, dtype=torch.long),
        gt_masks=BitMasks(torch.zeros(0, size, size, dtype=torch.bool)),
    )
    image = torch.rand(3, size, size, generator=torch.Generator().manual_seed(1)) * 60
    batch.append({"image": image, "instances": empty, "sem_seg": _sem_seg([], size)})
    return batch


def test_instance_and_semantic_loss_weights_scale_their_losses():
    losses = {}
    for weights in ((1.0, 1.0), (2.0, 0.5)):
        cfg = _panoptic_cfg()
        cfg.MODEL.PANOPTIC_FPN.INSTANCE_LOSS_WEIGHT = weights[0]
        cfg.MODEL.SEM_SEG_HEAD.LOSS_WEIGHT = weights[1]
        torch.manual_seed(0)
        model = build_model(cfg).train()
        torch.manual_seed(1)  # same proposal and ROI sampling for both models
        with EventStorage():
            losses[weights] = model(_panoptic_batch()[:2])
    base, scaled = losses[(1.0, 1.0)], losses[(2.0, 0.5)]
    assert set(base) == {
        "loss_sem_seg",
        "loss_rpn_cls",
        "loss_rpn_loc",
        "loss_cls",
        "loss_box_reg",
        "loss_mask",
    }
    # INSTANCE_LOSS_WEIGHT scales every ROI-head loss (not the RPN's)
    for key, factor in {
        "loss_cls": 2.0,
        "loss_box_reg": 2.0,
        "loss_mask": 2.0,
        "loss_rpn_cls": 1.0,
        "loss_rpn_loc": 1.0,
        "loss_sem_seg": 0.5,
    }.items():
        torch.testing.assert_close(scaled[key], base[key] * factor)


def test_panoptic_fpn_needs_instances_and_sem_seg_in_training():
    model = build_model(_panoptic_cfg()).train()
    batch = _panoptic_batch()[:1]
    with pytest.raises(KeyError, match="input 0 has no 'sem_seg'"):
        model([{k: v for k, v in batch[0].items() if k != "sem_seg"}])
    with pytest.raises(KeyError, match="input 0 has no 'instances'"):
        model([{k: v for k, v in batch[0].items() if k != "instances"}])


def test_panoptic_fpn_inference_outputs(caplog):
    cfg = _panoptic_cfg()
    cfg.MODEL.PANOPTIC_FPN.COMBINE.ENABLED = False  # unused, as in Detectron2: only warns
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0
    cfg.MODEL.PANOPTIC_FPN.COMBINE.INSTANCES_CONFIDENCE_THRESH = 0.0
    torch.manual_seed(0)
    with caplog.at_level(logging.WARNING):
        model = build_model(cfg).eval()
    assert isinstance(model, PanopticFPN) and "COMBINE.ENABLED is no longer used" in caplog.text
    assert model.combine_stuff_area_thresh == 512
    batch = [{"image": x["image"]} for x in _panoptic_batch()[:2]]
    batch[1].update(height=96, width=64)
    with torch.no_grad():
        outputs = model(batch)
        raw_instances, raw_sem_seg = model.inference(batch, do_postprocess=False)
    assert raw_sem_seg.shape == (2, 3, 128, 128) and len(raw_instances) == 2
    out = outputs[1]
    assert set(out) == {"sem_seg", "instances", "panoptic_seg"}
    assert out["sem_seg"].shape == (3, 96, 64) and out["instances"].image_size == (96, 64)
    panoptic, segments = out["panoptic_seg"]
    assert panoptic.shape == (96, 64) and panoptic.dtype == torch.int32
    assert [s["id"] for s in segments] == list(range(1, len(segments) + 1))
    assert set(panoptic.unique().tolist()) <= {0, *(s["id"] for s in segments)}
    for s in segments:
        if not s["isthing"]:
            assert s["area"] == (panoptic == s["id"]).sum().item() >= 512
            assert s["category_id"] in (1, 2)


def _pixel_accuracy(model, batch) -> float:
    model.eval()
    with torch.no_grad():
        outputs = model([{"image": x["image"]} for x in batch])
    model.train()
    hits = [(o["sem_seg"].argmax(0) == x["sem_seg"]).float().mean() for o, x in zip(outputs, batch)]
    return float(sum(hits) / len(hits))


def test_panoptic_fpn_overfits_images_with_and_without_instances():
    torch.manual_seed(0)
    model = build_model(_panoptic_cfg()).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    batch = _panoptic_batch()
    accuracy_before = _pixel_accuracy(model, batch)
    totals, sem_seg = [], []
    with EventStorage() as storage:
        for step in range(40):
            storage.iter = step
            losses = model(batch)
            total = sum(losses.values())
            assert torch.isfinite(total), losses
            optimizer.zero_grad()
            total.backward()
            optimizer.step()
            totals.append(total.item())
            sem_seg.append(losses["loss_sem_seg"].item())
    accuracy_after = _pixel_accuracy(model, batch)
    end = sum(totals[-5:]) / 5
    print(
        f"total loss {totals[0]:.3f} -> {end:.3f}; loss_sem_seg {sem_seg[0]:.3f} -> "
        f"{sem_seg[-1]:.3f}; pixel accuracy {accuracy_before:.3f} -> {accuracy_after:.3f}"
    )
    assert end < 0.6 * totals[0], totals
    assert sem_seg[-1] < 0.3 * sem_seg[0], sem_seg
    assert accuracy_after > 0.9 and accuracy_after > accuracy_before + 0.2
    # the things of the first image come out as segments of their classes
    model.eval()
    with torch.no_grad():
        _, segments = model([{"image": batch[0]["image"]}])[0]["panoptic_seg"]
    things = {s["category_id"] for s in segments if s["isthing"]}
    assert things == {cls for *_, cls in OBJECTS[0]}, segments
