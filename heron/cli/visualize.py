"""`heron visualize-data` and `heron visualize-json`: draw a dataset, or saved predictions
next to the ground truth.

The counterparts of Detectron2's ``tools/visualize_data.py`` (annotations as loaded, or the
training loader's augmented batches) and ``tools/visualize_json_results.py`` (COCO-format
results, e.g. ``coco_instances_results.json`` written by COCOEvaluator).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections import Counter, defaultdict
from collections.abc import Iterator
from itertools import chain
from typing import Any

import numpy as np

from heron.cli.predict import _save_rgb, _unique_name

__all__ = [
    "add_parser",
    "parse_json_predictions",
    "predictions_to_instances",
    "visualize_data_main",
    "visualize_json_main",
]

logger = logging.getLogger("heron.cli.visualize")

_REQUIRED_KEYS = ("image_id", "category_id", "bbox", "score")


def add_parser(subparsers: Any) -> None:
    """Register the `visualize-data` and `visualize-json` verbs."""
    data = subparsers.add_parser(
        "visualize-data",
        help="draw a dataset's annotations, or the training loader's augmented batches",
        description="Draws every image of a dataset with its ground truth into --output-dir "
        "(same file names). The datasets are DATASETS.TRAIN of --config-file, or --dataset. "
        "--source annotation draws the records as loaded; --source dataloader draws what the "
        "training loader feeds the model (resized, flipped, ...). Config overrides "
        "(KEY VALUE) go last.",
    )
    group = data.add_mutually_exclusive_group(required=True)
    group.add_argument("--config-file", metavar="FILE", help="config whose DATASETS.TRAIN to draw")
    group.add_argument("--dataset", metavar="NAME", help="a registered dataset to draw")
    data.add_argument(
        "--source",
        choices=("annotation", "dataloader"),
        default="annotation",
        help="raw annotations, or the training data loader's augmented batches",
    )
    data.add_argument("--output-dir", required=True, metavar="DIR", help="folder for the images")
    data.add_argument(
        "--num-images",
        type=int,
        default=None,
        metavar="N",
        help="draw at most N images (default: every image of the datasets once)",
    )
    data.add_argument("--scale", type=float, default=1.0, help="output size factor")
    data.add_argument(
        "opts", nargs=argparse.REMAINDER, default=[], metavar="KEY VALUE", help="config overrides"
    )
    data.set_defaults(handler=visualize_data_main, weights=None, device=None)

    results = subparsers.add_parser(
        "visualize-json",
        help="draw COCO-format predictions above the ground truth of a dataset",
        description="Reads COCO results (a list of records with image_id, category_id, bbox "
        "XYWH, score and optional RLE segmentation), and for every image of --dataset that "
        "has predictions saves the predictions (top) above the ground truth (bottom) to "
        "--output/<file name>. Exits 2 on a malformed record, naming its index.",
    )
    results.add_argument("--input", required=True, metavar="FILE", help="COCO results json")
    results.add_argument("--dataset", required=True, metavar="NAME", help="a registered dataset")
    results.add_argument("--output", required=True, metavar="DIR", help="folder for the images")
    results.add_argument(
        "--conf-threshold",
        type=float,
        default=0.5,
        help="draw predictions scoring above this (default: 0.5)",
    )
    results.set_defaults(handler=visualize_json_main)


def _data_config(args: argparse.Namespace) -> Any:
    """The config: --config-file with overrides, or the defaults training on --dataset."""
    from heron.cli.common import load_config
    from heron.config import get_cfg

    if args.config_file is not None:
        return load_config(args)
    cfg = get_cfg()
    opts = list(args.opts or [])
    cfg.merge_from_list(opts[1:] if opts[:1] == ["--"] else opts)
    cfg.DATASETS.TRAIN = (args.dataset,)
    cfg.freeze()
    return cfg


def _annotation_images(cfg: Any, scale: float) -> Iterator[tuple[str, np.ndarray]]:
    """(file name, drawn RGB image) of every record of DATASETS.TRAIN, as loaded.

    The records are loaded before the first image is drawn, so an unknown dataset raises
    KeyError here rather than at the first iteration.
    """
    from heron.data.build import filter_images_with_few_keypoints
    from heron.data.catalog import DatasetCatalog, MetadataCatalog

    names = list(cfg.DATASETS.TRAIN)
    dicts = list(chain.from_iterable(DatasetCatalog.get(n) for n in names))
    if cfg.MODEL.KEYPOINT_ON:  # as the training loader would see them
        dicts = filter_images_with_few_keypoints(dicts, 1)
    return _draw_records(dicts, MetadataCatalog.get(names[0]), scale)


def _draw_records(dicts: list[dict], metadata: Any, scale: float) -> Iterator[tuple[str, Any]]:
    from heron.data.detection_utils import read_image
    from heron.utils.visualizer import Visualizer

    for dic in dicts:
        image = read_image(dic["file_name"], format="RGB")
        vis = Visualizer(image, metadata, scale=scale).draw_dataset_dict(dic)
        yield dic["file_name"], vis.get_image()


def _dataloader_images(cfg: Any, scale: float) -> Iterator[tuple[str, np.ndarray]]:
    """(file name, drawn RGB image) of the training loader's mapped images, endlessly."""
    from heron.data.build import build_detection_train_loader
    from heron.data.catalog import MetadataCatalog
    from heron.data.detection_utils import convert_image_to_rgb
    from heron.utils.visualizer import Visualizer

    metadata = MetadataCatalog.get(cfg.DATASETS.TRAIN[0])
    class_names = metadata.get("thing_classes")
    for batch in build_detection_train_loader(cfg):
        for per_image in batch:
            image = per_image["image"].permute(1, 2, 0).cpu().numpy()
            image = convert_image_to_rgb(image, cfg.INPUT.FORMAT)
            visualizer = Visualizer(image, metadata, scale=scale)
            fields = per_image["instances"].get_fields()
            classes = fields["gt_classes"].tolist() if "gt_classes" in fields else []
            labels = [class_names[c] if class_names else str(c) for c in classes]
            vis = visualizer.overlay_instances(
                labels=labels or None,
                boxes=fields.get("gt_boxes"),
                masks=fields.get("gt_masks"),
                keypoints=fields.get("gt_keypoints"),
            )
            yield per_image["file_name"], vis.get_image()


def visualize_data_main(args: argparse.Namespace) -> int:
    """Run `heron visualize-data`; returns the exit code (0, or 2 on a usage error)."""
    from tqdm import tqdm

    from heron.engine.defaults import DefaultTrainer

    if args.num_images is not None and args.num_images < 1:
        print(f"heron visualize-data: --num-images must be >= 1, got {args.num_images}")
        return 2
    try:
        cfg = _data_config(args)
        if not cfg.DATASETS.TRAIN:
            raise KeyError("the config's DATASETS.TRAIN is empty: nothing to draw")
        if args.source == "annotation":
            images = _annotation_images(cfg, args.scale)
            total = args.num_images
        else:
            images = _dataloader_images(cfg, args.scale)
            total = args.num_images or DefaultTrainer.train_dataset_size(cfg)
    except (FileNotFoundError, KeyError) as e:
        print(f"heron visualize-data: {e}", file=sys.stderr)
        return 2
    os.makedirs(args.output_dir, exist_ok=True)
    seen: Counter[str] = Counter()
    count = 0
    with tqdm(total=total, desc="visualize", unit="img", disable=None) as bar:
        for file_name, image in images:
            _save_rgb(image, os.path.join(args.output_dir, _unique_name(file_name, seen)))
            count += 1
            bar.update(1)
            if total is not None and count >= total:
                break
    print(f"heron visualize-data: wrote {count} images to {args.output_dir}")
    return 0


def parse_json_predictions(
    records: Any, image_ids: set, id_map: dict[int, int] | None
) -> dict[Any, list[dict]]:
    """Check COCO result records and group them by image id.

    Args:
        records: the loaded json: a list of dicts with "image_id", "category_id", "bbox"
            (XYWH, absolute pixels), "score" and optionally "segmentation" (RLE).
        image_ids: the ids of the dataset's images.
        id_map: dataset category id -> contiguous id (metadata's
            ``thing_dataset_id_to_contiguous_id``), or None when ids are contiguous already.

    Returns:
        image id -> its records, with "category_id" mapped to contiguous ids.

    Raises:
        ValueError: not a list, or a record is malformed; the message names the record index.
    """
    if not isinstance(records, list):
        raise ValueError(f"expected a list of prediction records, got {type(records).__name__}")
    by_image: dict[Any, list[dict]] = defaultdict(list)
    for i, record in enumerate(records):
        if not isinstance(record, dict):
            raise ValueError(f"record {i}: expected a dict, got {type(record).__name__}")
        missing = [k for k in _REQUIRED_KEYS if k not in record]
        if missing:
            raise ValueError(f"record {i}: missing key(s) {missing}, has {sorted(record)}")
        if record["image_id"] not in image_ids:
            raise ValueError(f"record {i}: image_id {record['image_id']!r} is not in the dataset")
        bbox = record["bbox"]
        if not isinstance(bbox, list) or len(bbox) != 4:
            raise ValueError(f"record {i}: bbox must be a list [x, y, w, h], got {bbox!r}")
        category = record["category_id"]
        if id_map is not None:
            if category not in id_map:
                raise ValueError(
                    f"record {i}: category_id {category!r} is not one of the dataset's "
                    f"{sorted(id_map)}"
                )
            category = id_map[category]
        by_image[record["image_id"]].append({**record, "category_id": category})
    return by_image


def predictions_to_instances(
    records: list[dict], image_size: tuple[int, int], conf_threshold: float
) -> Any:
    """One image's result records scoring above `conf_threshold` as `Instances`.

    Args:
        records: COCO result records with contiguous "category_id".
        image_size: (height, width).
        conf_threshold: records with score <= this are dropped (as Detectron2's tool).

    Returns:
        Instances with pred_boxes ((N, 4) XYXY, absolute pixels), scores (N,),
        pred_classes (N,) int64, and pred_masks_rle when records have "segmentation".
    """
    import torch

    from heron.structures.boxes import Boxes, BoxMode
    from heron.structures.instances import Instances

    chosen = [r for r in records if r["score"] > conf_threshold]
    boxes = np.asarray([r["bbox"] for r in chosen], dtype=np.float64).reshape(-1, 4)
    boxes = BoxMode.convert(boxes, BoxMode.XYWH_ABS, BoxMode.XYXY_ABS)
    instances = Instances(image_size)
    instances.pred_boxes = Boxes(torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4))
    instances.scores = torch.tensor([float(r["score"]) for r in chosen], dtype=torch.float32)
    instances.pred_classes = torch.tensor([int(r["category_id"]) for r in chosen]).long()
    if chosen and all("segmentation" in r for r in chosen):
        instances.pred_masks_rle = [r["segmentation"] for r in chosen]
    return instances


def visualize_json_main(args: argparse.Namespace) -> int:
    """Run `heron visualize-json`; returns the exit code (0, or 2 on bad input)."""
    from tqdm import tqdm

    from heron.data.catalog import DatasetCatalog, MetadataCatalog
    from heron.data.detection_utils import read_image
    from heron.utils.visualizer import Visualizer

    try:
        dicts = DatasetCatalog.get(args.dataset)
        metadata = MetadataCatalog.get(args.dataset)
        with open(args.input) as f:
            records = json.load(f)
        by_image = parse_json_predictions(
            records,
            {d["image_id"] for d in dicts},
            metadata.get("thing_dataset_id_to_contiguous_id"),
        )
    except (OSError, KeyError, ValueError) as e:  # json.JSONDecodeError is a ValueError
        print(f"heron visualize-json: {args.input}: {e}", file=sys.stderr)
        return 2
    os.makedirs(args.output, exist_ok=True)
    seen: Counter[str] = Counter()
    drawn = [d for d in dicts if d["image_id"] in by_image]
    for dic in tqdm(drawn, desc="visualize", unit="img", disable=None):
        image = read_image(dic["file_name"], format="RGB")
        height, width = image.shape[:2]
        instances = predictions_to_instances(
            by_image[dic["image_id"]], (height, width), args.conf_threshold
        )
        pred = Visualizer(image, metadata).draw_instance_predictions(instances).get_image()
        gt = Visualizer(image, metadata).draw_dataset_dict(dic).get_image()
        out = os.path.join(args.output, _unique_name(dic["file_name"], seen))
        _save_rgb(np.concatenate([pred, gt], axis=0), out)
    print(f"heron visualize-json: wrote {len(drawn)} images to {args.output}")
    return 0
