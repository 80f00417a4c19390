"""COCO box evaluation time: pycocotools' COCOeval vs the fast backend COCOEvaluator uses.

Synthetic data: --images images of 640x480 with about 7 ground-truth boxes each over 80
categories, and --dets detections per image (jittered copies of the ground truth, some
with the wrong class, plus random boxes). Both backends run evaluate + accumulate +
summarize on the same data in the same process; the script checks that their 12 statistics
agree and prints the time ratio.

    nice .venv/bin/python benchmarks/bench_coco_eval.py [--images 5000] [--dets 100]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import time

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from heron.evaluation.fast_eval import COCOeval_opt, fast_coco_from_dataset

NUM_CATEGORIES = 80
WIDTH, HEIGHT = 640, 480


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


def run(coco_gt, detections: list[dict], cocoeval_cls) -> tuple[np.ndarray, float, float]:
    """Return (stats, seconds to load results, seconds for evaluate+accumulate+summarize)."""
    with contextlib.redirect_stdout(io.StringIO()):
        start = time.perf_counter()
        coco_dt = coco_gt.loadRes([dict(d) for d in detections])
        load_time = time.perf_counter() - start
        coco_eval = cocoeval_cls(coco_gt, coco_dt, "bbox")
        start = time.perf_counter()
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
        eval_time = time.perf_counter() - start
    return np.asarray(coco_eval.stats[:12], dtype=np.float64), load_time, eval_time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--dets", type=int, default=100, help="detections per image")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    dataset, detections = make_data(args.images, args.dets, args.seed)
    print(
        f"{args.images} images, {len(dataset['annotations'])} ground-truth boxes, "
        f"{len(detections)} detections, {NUM_CATEGORIES} categories, task bbox"
    )
    with contextlib.redirect_stdout(io.StringIO()):
        slow_gt = COCO()
        slow_gt.dataset = dataset
        slow_gt.createIndex()
    fast_gt = fast_coco_from_dataset(dataset)
    fast_stats, fast_load, fast_eval = run(fast_gt, detections, COCOeval_opt)
    print(f"  faster-coco-eval: loadRes {fast_load:7.2f} s, eval {fast_eval:7.2f} s")
    slow_stats, slow_load, slow_eval = run(slow_gt, detections, COCOeval)
    print(f"  pycocotools:      loadRes {slow_load:7.2f} s, eval {slow_eval:7.2f} s")
    gap = float(np.abs(fast_stats - slow_stats).max())
    if gap > 1e-9:
        raise AssertionError(
            f"the backends disagree (max gap {gap}):\n fast {fast_stats}\n slow {slow_stats}"
        )
    print(f"  stats equal (max gap {gap:.1e}): AP {100 * slow_stats[0]:.3f}")
    print(f"  eval time ratio fast / pycocotools: {fast_eval / slow_eval:.3f}")
    print(f"  speed-up: {slow_eval / fast_eval:.1f}x")


if __name__ == "__main__":
    main()
