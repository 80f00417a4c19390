"""`heron demo`: a short, honest tour of what Heron can do today.

Each step computes something real on made-up data and prints it. The tour is replaced by
training and predicting on the built-in shapes dataset once the main job lands.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image


def _step(title: str) -> None:
    print(f"\n== {title}")


def _shapes_step() -> None:
    import collections
    import tempfile

    from heron.data.datasets import generate_shapes_dataset, get_shapes_metadata, load_coco_json
    from heron.data.transforms import AugInput, AugmentationList, RandomFlip, ResizeShortestEdge

    with tempfile.TemporaryDirectory() as root:
        info = generate_shapes_dataset(root, num_images=8, image_size=(128, 128), split="demo")
        dicts = load_coco_json(info["json_file"], info["image_root"])
        classes = get_shapes_metadata()["thing_classes"]
        counts = collections.Counter(
            classes[a["category_id"] - 1] for d in dicts for a in d["annotations"]
        )
        print(
            f"{len(dicts)} images, {sum(counts.values())} instances: {dict(sorted(counts.items()))}"
        )
        first = dicts[0]
        with Image.open(first["file_name"]) as f:
            image = np.asarray(f.convert("RGB"))
        boxes = np.array([a["bbox"] for a in first["annotations"]], dtype=np.float64)
        boxes[:, 2:] += boxes[:, :2]  # XYWH -> XYXY
        aug_input = AugInput(image, boxes=boxes)
        AugmentationList([ResizeShortestEdge(256, 512), RandomFlip(prob=1.0)])(aug_input)
        print(
            f"image {image.shape[:2]} -> {aug_input.image.shape[:2]} after resize + flip; "
            f"first box {boxes[0].round(1).tolist()} -> {aug_input.boxes[0].round(1).tolist()}"
        )


def run_demo() -> int:
    """Run every step of the tour; returns the process exit code."""
    from heron import __version__
    from heron.config import get_cfg
    from heron.layers import batched_nms, nms_rotated, paste_masks_in_image
    from heron.model_zoo import get_config_file
    from heron.modeling import build_model
    from heron.structures import (
        BitMasks,
        Boxes,
        BoxMode,
        Instances,
        PolygonMasks,
        RotatedBoxes,
        pairwise_iou,
        pairwise_iou_rotated,
    )

    print(f"Heron {__version__} on PyTorch {torch.__version__}")

    _step("Config: Detectron2 defaults + a model-zoo file")
    cfg = get_cfg()
    cfg.merge_from_file(get_config_file("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    print(
        f"META_ARCHITECTURE={cfg.MODEL.META_ARCHITECTURE}, BACKBONE={cfg.MODEL.BACKBONE.NAME}, "
        f"ANCHOR_GENERATOR.SIZES={cfg.MODEL.ANCHOR_GENERATOR.SIZES}"
    )

    _step("Boxes, IoU, and class-wise NMS")
    boxes = Boxes(torch.tensor([[10.0, 10, 50, 50], [12, 12, 52, 52], [60, 60, 90, 90]]))
    scores = torch.tensor([0.9, 0.8, 0.7])
    print("pairwise IoU:\n", pairwise_iou(boxes, boxes).numpy().round(3))
    keep = batched_nms(boxes.tensor, scores, torch.tensor([0, 0, 1]), 0.5)
    print("kept after NMS at IoU 0.5:", keep.tolist())
    print(
        "as XYWH:", BoxMode.convert(boxes.tensor[:1], BoxMode.XYXY_ABS, BoxMode.XYWH_ABS).tolist()
    )

    _step("Rotated boxes: exact intersection in pure PyTorch")
    square = RotatedBoxes(torch.tensor([[0.0, 0, 2, 2, 0], [0, 0, 2, 2, 45]]))
    iou = pairwise_iou_rotated(square.tensor, square.tensor)[0, 1].item()
    octagon = 8 * (math.sqrt(2) - 1)
    print(
        f"IoU of a 2x2 square and itself rotated 45 deg: {iou:.6f} "
        f"(exact: {octagon / (8 - octagon):.6f})"
    )
    print("rotated NMS keeps:", nms_rotated(square.tensor, torch.tensor([0.9, 0.8]), 0.5).tolist())

    _step("Masks: polygons to bitmaps, pasting a 28x28 mask into an image")
    polygons = PolygonMasks([[np.array([10.0, 10, 40, 10, 40, 30, 10, 30])]])
    bitmask = BitMasks.from_polygon_masks(polygons, 48, 64)
    print(
        f"polygon area {polygons.area().item():.0f} px, rasterized {int(bitmask.tensor.sum())} px, "
        f"box {bitmask.get_bounding_boxes().tensor.tolist()}"
    )
    pasted = paste_masks_in_image(torch.ones(1, 28, 28), torch.tensor([[8.0, 4, 24, 20]]), (32, 32))
    print(
        f"a full 28x28 mask pasted into box (8,4)-(24,20): {int(pasted.sum())} px set (16x16 = 256)"
    )

    _step("Data: the built-in shapes dataset, loaded as Detectron2 dataset dicts")
    _shapes_step()

    _step("A Mask R-CNN R50-FPN built from the zoo config (untrained weights)")
    torch.manual_seed(0)
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0
    model = build_model(cfg).eval()
    params = sum(p.numel() for p in model.parameters())
    image = torch.rand(3, 240, 320) * 255
    with torch.no_grad():
        result: Instances = model([{"image": image, "height": 240, "width": 320}])[0]["instances"]
    print(
        f"{params / 1e6:.1f}M parameters; on a 240x320 image it returns {len(result)} instances "
        f"with fields {sorted(result.get_fields())}"
    )
    print(
        "\nLoad Detectron2 weights with heron.checkpoint.DetectionCheckpointer(model).load(path)."
    )
    return 0
