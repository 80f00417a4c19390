"""DatasetMapper throughput on the shapes dataset at Detectron2's 800-px training size.

ResizeShortestEdge(800, max 1333) + RandomFlip, polygon masks, through
build_detection_train_loader with 0 and 2 workers; images/s over --images images after a
warm-up batch.

    .venv/bin/python benchmarks/bench_mapper.py [--images 200] [--root DIR]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

from heron.data import DatasetMapper, build_detection_train_loader
from heron.data.datasets import generate_shapes_dataset, load_coco_json
from heron.data.transforms import RandomFlip, ResizeShortestEdge


def images_per_second(dicts: list[dict], num_workers: int, num_images: int, batch: int) -> float:
    mapper = DatasetMapper(
        True,
        augmentations=[ResizeShortestEdge((800, 800), 1333, "choice"), RandomFlip()],
        image_format="BGR",
        use_instance_mask=True,
        instance_mask_format="polygon",
    )
    loader = build_detection_train_loader(
        dicts, mapper=mapper, total_batch_size=batch, num_workers=num_workers
    )
    it = iter(loader)
    next(it)  # warm-up: workers start, first files are read
    start = time.perf_counter()
    seen = 0
    while seen < num_images:
        seen += len(next(it))
    return seen / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--root", default=None, help="where to generate the dataset")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        info = generate_shapes_dataset(args.root or tmp, num_images=64, image_size=(480, 640))
        dicts = load_coco_json(info["json_file"], info["image_root"])
        print(f"shapes: {len(dicts)} images 480x640 resized to 800 px, polygon masks")
        for workers in (0, 2):
            rate = images_per_second(dicts, workers, args.images, args.batch)
            print(f"  num_workers={workers}: {rate:6.1f} images/s")


if __name__ == "__main__":
    main()
