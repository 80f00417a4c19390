"""COCO box and mask evaluation time: pycocotools' COCOeval vs the fast backend COCOEvaluator uses.

Synthetic data: --images images of 640x480 with about 7 ground-truth boxes each over 80
categories, and --dets detections per image (jittered copies of the ground truth, some
with the wrong class, plus random boxes). Both backends run evaluate + accumulate +
summarize on the same data in the same process; the script checks that their 12 statistics
agree and prints the time ratio.

For the segm task every ground-truth box and every detection box gets a mask: a 16-vertex
polygon of an ellipse inscribed in the box, each vertex's radius scaled by a factor drawn
uniformly from [0.75, 1] (a lumpy ellipse, so masks of overlapping boxes differ from the
boxes' overlap). The polygons come from their own generator seeded with --seed + 1, so the
boxes, classes and scores are those of the bbox task, and are rasterized once, before
timing, with ``pycocotools.mask.frPyObjects`` into compressed RLE (``counts`` as str, as
COCOEvaluator writes them). Ground-truth ``area`` is the mask area; detections drop their
``bbox`` before ``loadRes``, as COCOEvaluator does for segm, so their area is the mask area
too.

    nice .venv/bin/python benchmarks/bench_coco_eval.py [--images 5000] [--dets 100]
        [--task {bbox,segm,both}]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import time

import numpy as np
from pycocotools import mask as mask_util
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from heron.evaluation.fast_eval import COCOeval_opt, fast_coco_from_dataset

NUM_CATEGORIES = 80
WIDTH, HEIGHT = 640, 480
POLYGON_VERTICES = 16
# largest gap allowed between the two backends' statistics, per task
TOLERANCE = {"bbox": 1e-9, "segm": 1e-6}


def _random_boxes(rng: np.random.RandomState, n: int) -> np.ndarray:
    """(n, 4) XYWH boxes inside the image, sizes log-uniform from 4 to 400 px."""
    wh = np.exp(rng.uniform(np.log(4), np.log(400), (n, 2)))
    wh = np.minimum(wh, [WIDTH - 1, HEIGHT - 1])
    xy = rng.uniform(0, 1, (n, 2)) * ([WIDTH, HEIGHT] - wh)
    return np.concatenate([xy, wh], axis=1)


def make_data(num_images: int, dets_per_image: int, seed: int) -> tuple[dict, list[dict]]:
    """Return a COCO ground-truth dict and a list of detection records."""
    rng = np.random.RandomState(seed)
    cat_ids = list(range(1, NUM_CATEGORIES + 1))
    images, annotations, detections = [], [], []
    for img_id in range(1, num_images + 1):
        images.append(
            {"id": img_id, "file_name": f"{img_id}.jpg", "width": WIDTH, "height": HEIGHT}
        )
        num_gt = rng.randint(1, 14)  # mean 7
        gt_boxes = _random_boxes(rng, num_gt)
        gt_cats = rng.choice(cat_ids, num_gt)
        for box, cat in zip(gt_boxes, gt_cats):
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": img_id,
                    "bbox": box.tolist(),
                    "area": float(box[2] * box[3]),
                    "iscrowd": int(rng.rand() < 0.01),
                    "category_id": int(cat),
                }
            )
        # two jittered copies of each ground-truth box (10% with a wrong class)
        idx = np.repeat(np.arange(num_gt), 2)[:dets_per_image]
        jitter = rng.normal(0, 0.1, (len(idx), 4)) * gt_boxes[idx][:, [2, 3, 2, 3]]
        near = gt_boxes[idx] + jitter
        near[:, 2:] = np.maximum(near[:, 2:], 1.0)
        near_cats = np.where(rng.rand(len(idx)) < 0.9, gt_cats[idx], rng.choice(cat_ids, len(idx)))
        far = _random_boxes(rng, dets_per_image - len(idx))
        boxes = np.concatenate([near, far])
        cats = np.concatenate([near_cats, rng.choice(cat_ids, len(far))])
        scores = rng.uniform(0, 1, dets_per_image)
        for box, cat, score in zip(boxes, cats, scores):
            detections.append(
                {
                    "image_id": img_id,
                    "category_id": int(cat),
                    "bbox": box.tolist(),
                    "score": float(score),
                }
            )
    categories = [{"id": c, "name": f"class{c}"} for c in cat_ids]
    return {"images": images, "annotations": annotations, "categories": categories}, detections


def _ellipse_rles(rng: np.random.RandomState, boxes: np.ndarray) -> list[dict]:
    """Rasterize a lumpy ellipse inside each (n, 4) XYWH box into compressed RLE (str counts)."""
    if len(boxes) == 0:
        return []
    angles = np.linspace(0, 2 * np.pi, POLYGON_VERTICES, endpoint=False)
    radii = rng.uniform(0.75, 1.0, (len(boxes), POLYGON_VERTICES))
    half_w, half_h = boxes[:, 2:3] / 2, boxes[:, 3:4] / 2
    xs = boxes[:, 0:1] + half_w * (1 + radii * np.cos(angles))  # (n, V)
    ys = boxes[:, 1:2] + half_h * (1 + radii * np.sin(angles))
    polygons = np.stack([xs, ys], axis=2).reshape(len(boxes), -1)  # (n, 2V): x0, y0, x1, ...
    # a list of polygons gives one RLE per polygon
    rles = mask_util.frPyObjects(polygons.tolist(), HEIGHT, WIDTH)
    for rle in rles:
        rle["counts"] = rle["counts"].decode("utf-8")
    return rles


def add_masks(dataset: dict, detections: list[dict], seed: int) -> None:
    """Give every annotation and detection a compressed-RLE mask inside its box, in place.

    Annotation areas become mask areas; detections lose their ``bbox`` (see the module
    docstring).
    """
    rng = np.random.RandomState(seed)
    annotations = dataset["annotations"]
    gt_rles = _ellipse_rles(rng, np.array([a["bbox"] for a in annotations]).reshape(-1, 4))
    # pycocotools' area() overflows on lists of more than 255 RLEs (a uint8 length array
    # under numpy 2), so it is called in chunks
    gt_areas = [
        a for i in range(0, len(gt_rles), 255) for a in mask_util.area(gt_rles[i : i + 255])
    ]
    for ann, rle, area in zip(annotations, gt_rles, gt_areas):
        ann["segmentation"] = rle
        ann["area"] = float(area)
    dt_rles = _ellipse_rles(rng, np.array([d["bbox"] for d in detections]).reshape(-1, 4))
    for det, rle in zip(detections, dt_rles):
        det["segmentation"] = rle
        del det["bbox"]


def run(
    coco_gt, detections: list[dict], cocoeval_cls, iou_type: str = "bbox"
) -> tuple[np.ndarray, float, float]:
    """Return (stats, seconds to load results, seconds for evaluate+accumulate+summarize)."""
    with contextlib.redirect_stdout(io.StringIO()):
        start = time.perf_counter()
        coco_dt = coco_gt.loadRes([dict(d) for d in detections])
        load_time = time.perf_counter() - start
        coco_eval = cocoeval_cls(coco_gt, coco_dt, iou_type)
        start = time.perf_counter()
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
        eval_time = time.perf_counter() - start
    return np.asarray(coco_eval.stats[:12], dtype=np.float64), load_time, eval_time


def compare(dataset: dict, detections: list[dict], iou_type: str) -> None:
    """Time both backends on one task, check their statistics agree, print the ratio."""
    with contextlib.redirect_stdout(io.StringIO()):
        slow_gt = COCO()
        slow_gt.dataset = dataset
        slow_gt.createIndex()
    fast_gt = fast_coco_from_dataset(dataset)
    fast_stats, fast_load, fast_eval = run(fast_gt, detections, COCOeval_opt, iou_type)
    print(f"  faster-coco-eval: loadRes {fast_load:7.2f} s, eval {fast_eval:7.2f} s")
    slow_stats, slow_load, slow_eval = run(slow_gt, detections, COCOeval, iou_type)
    print(f"  pycocotools:      loadRes {slow_load:7.2f} s, eval {slow_eval:7.2f} s")
    gap = float(np.abs(fast_stats - slow_stats).max())
    if gap > TOLERANCE[iou_type]:
        raise AssertionError(
            f"the backends disagree on {iou_type} (max gap {gap}, allowed "
            f"{TOLERANCE[iou_type]}):\n fast {fast_stats}\n slow {slow_stats}"
        )
    print(f"  stats equal (max gap {gap:.1e}): AP {100 * slow_stats[0]:.3f}")
    print(f"  eval time ratio fast / pycocotools: {fast_eval / slow_eval:.3f}")
    print(f"  speed-up: {slow_eval / fast_eval:.1f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--dets", type=int, default=100, help="detections per image")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--task", choices=("bbox", "segm", "both"), default="both")
    args = parser.parse_args()
    dataset, detections = make_data(args.images, args.dets, args.seed)
    if args.task in ("bbox", "both"):
        print(
            f"{args.images} images, {len(dataset['annotations'])} ground-truth boxes, "
            f"{len(detections)} detections, {NUM_CATEGORIES} categories, task bbox"
        )
        compare(dataset, detections, "bbox")
    if args.task in ("segm", "both"):
        start = time.perf_counter()
        add_masks(dataset, detections, args.seed + 1)
        build_time = time.perf_counter() - start
        print(
            f"{args.images} images, {len(dataset['annotations'])} ground-truth masks, "
            f"{len(detections)} detection masks, {NUM_CATEGORIES} categories, task segm "
            f"(masks built in {build_time:.1f} s)"
        )
        compare(dataset, detections, "segm")


if __name__ == "__main__":
    main()
