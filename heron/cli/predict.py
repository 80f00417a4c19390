"""`heron predict`: run a model on images, a video or a webcam and save drawn predictions.

The counterpart of Detectron2's ``demo/demo.py``. Images go through
:meth:`BatchPredictor.predict_paths` (batched, files read in data-loader workers) and are
drawn with :class:`Visualizer`; a video or webcam stream is read with OpenCV frame by frame
and drawn with :class:`VideoVisualizer`, which keeps an object's color across frames.
Unreadable image files are reported and counted, never silently skipped.
"""

from __future__ import annotations

import argparse
import glob
import json
import logging
import os
import sys
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import numpy as np

from heron.cli.common import add_model_arguments, load_config

__all__ = ["VIDEO_EXTENSIONS", "add_parser", "draw_predictions", "predict_main"]

logger = logging.getLogger("heron.cli.predict")

# File name endings (lower case) that make an --input a video.
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm")
# (fourcc, extension) pairs tried in order for the output video; opencv-python-headless
# ships an FFmpeg that writes MPEG-4 Part 2 ("mp4v") but not H.264 ("avc1").
_VIDEO_CODECS = (("mp4v", ".mp4"), ("MJPG", ".avi"))
_GLOB_CHARS = ("*", "?", "[")


class _UsageError(Exception):
    """A problem with the command line or the inputs: printed, exit code 2."""


def add_parser(subparsers: Any) -> None:
    """Register the `predict` verb."""
    parser = subparsers.add_parser(
        "predict",
        help="run a model on images, a video or a webcam and save the drawn predictions",
        description="Builds the model of --config-file, loads its weights and predicts on "
        "--input: image files, directories (their images), glob patterns, one video file "
        f"({', '.join(VIDEO_EXTENSIONS)}) or a webcam id such as 0. Drawn images keep their "
        "file names under --output; a video is written to --output/<name>.mp4, a webcam to "
        "--output/webcam.mp4. Put config overrides last, after `--`. Exits 1 when some "
        "image files could not be read, 2 on a usage error.",
    )
    add_model_arguments(parser)
    parser.add_argument(
        "--input",
        nargs="+",
        required=True,
        metavar="X",
        help="image files, directories, glob patterns, one video file, or a webcam id",
    )
    parser.add_argument("--output", required=True, metavar="DIR", help="folder for the results")
    parser.add_argument(
        "--confidence-threshold",
        type=float,
        default=0.5,
        help="minimum score of a drawn detection (default: 0.5)",
    )
    parser.add_argument("--batch-size", type=int, default=4, help="images per forward")
    parser.add_argument(
        "--num-workers", type=int, default=0, help="processes reading image files (0: none)"
    )
    parser.add_argument(
        "--amp",
        choices=("off", "float16", "bfloat16"),
        default="off",
        help="autocast dtype for the forward (default: off)",
    )
    parser.add_argument(
        "--save-json",
        action="store_true",
        help="also write --output/predictions.json: COCO results, one record per detection, "
        "with file_name, image_id (the image's position in the input order) and dataset "
        "category ids",
    )
    parser.add_argument(
        "--max-frames",
        type=int,
        default=None,
        metavar="N",
        help="stop a video after N frames (required for a webcam)",
    )
    parser.set_defaults(handler=predict_main)


def setup_predict_config(args: argparse.Namespace) -> Any:
    """The frozen config of `args`, with --confidence-threshold applied to every head that
    has a test-time score threshold (as Detectron2's demo does)."""
    cfg = load_config(args, freeze=False)
    threshold = args.confidence_threshold
    cfg.MODEL.RETINANET.SCORE_THRESH_TEST = threshold
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = threshold
    cfg.MODEL.PANOPTIC_FPN.COMBINE.INSTANCES_CONFIDENCE_THRESH = threshold
    cfg.freeze()
    return cfg


def draw_predictions(visualizer: Any, predictions: dict[str, Any]) -> Any:
    """Draw one model output with a `Visualizer`: the panoptic map if present, else the
    semantic map (argmax over classes) and the instances, whichever are present."""
    if "panoptic_seg" in predictions:
        panoptic_seg, segments_info = predictions["panoptic_seg"]
        return visualizer.draw_panoptic_seg(panoptic_seg.cpu(), segments_info)
    vis = visualizer.output
    if "sem_seg" in predictions:
        vis = visualizer.draw_sem_seg(predictions["sem_seg"].argmax(dim=0).cpu())
    if "instances" in predictions:
        vis = visualizer.draw_instance_predictions(predictions["instances"].to("cpu"))
    return vis


def _draw_frame(video_visualizer: Any, frame_rgb: np.ndarray, predictions: dict[str, Any]) -> Any:
    """Draw one model output on a video frame with a `VideoVisualizer`."""
    if "panoptic_seg" in predictions:
        panoptic_seg, segments_info = predictions["panoptic_seg"]
        return video_visualizer.draw_panoptic_seg_predictions(
            frame_rgb, panoptic_seg.cpu(), segments_info
        )
    if "instances" in predictions:
        return video_visualizer.draw_instance_predictions(
            frame_rgb, predictions["instances"].to("cpu")
        )
    if "sem_seg" in predictions:
        return video_visualizer.draw_sem_seg(frame_rgb, predictions["sem_seg"].argmax(dim=0).cpu())
    raise ValueError(f"model output has nothing to draw, keys: {sorted(predictions)}")


def _expand_image_inputs(inputs: list[str]) -> list[str]:
    """Glob patterns -> their matches (sorted); files and directories are kept as given.

    Raises:
        _UsageError: a pattern matches nothing, or a directory holds no image files.
    """
    from heron.engine.predictor import IMAGE_EXTENSIONS

    paths: list[str] = []
    for item in inputs:
        if not os.path.exists(item) and any(c in item for c in _GLOB_CHARS):
            matches = sorted(glob.glob(os.path.expanduser(item), recursive=True))
            if not matches:
                raise _UsageError(f"--input pattern {item!r} matches no files")
            paths.extend(matches)
        elif os.path.isdir(item) and not any(
            n.lower().endswith(IMAGE_EXTENSIONS) for n in os.listdir(item)
        ):
            raise _UsageError(
                f"--input directory {item!r} holds no image files ({', '.join(IMAGE_EXTENSIONS)})"
            )
        else:
            paths.append(item)
    return paths


def _unique_name(path: str, seen: Counter[str]) -> str:
    """The output file name of `path`: its base name, with "_<k>" before the extension when
    k earlier inputs had the same base name (so no drawing overwrites another)."""
    base = os.path.basename(path)
    stem, ext = os.path.splitext(base)
    name = base if seen[base] == 0 else f"{stem}_{seen[base]}{ext}"
    seen[base] += 1
    return name


def _save_rgb(image: np.ndarray, path: str) -> None:
    """Write an (H, W, 3) uint8 RGB image; the extension picks the format. JPEG is written
    at quality 95 without chroma subsampling (PIL's default is 75 with 4:2:0), so thin
    colored outlines and small text stay legible."""
    from PIL import Image

    Image.fromarray(image).save(path, quality=95, subsampling=0)


def _to_dataset_ids(records: list[dict], metadata: Any) -> None:
    """Map contiguous category ids back to the dataset's ids when metadata has the map."""
    id_map = getattr(metadata, "thing_dataset_id_to_contiguous_id", None)
    if not id_map:
        return
    reverse = {v: k for k, v in id_map.items()}
    for record in records:
        record["category_id"] = reverse.get(record["category_id"], record["category_id"])


class _Summary:
    """Counts for the final table: processed and failed items, instances per class, time."""

    def __init__(self, unit: str, class_names: list[str] | None) -> None:
        self.unit = unit
        self.class_names = class_names
        self.processed = 0
        self.failed = 0
        self.per_class: Counter[int] = Counter()
        self.start = time.perf_counter()

    def add(self, predictions: dict[str, Any]) -> None:
        self.processed += 1
        if "instances" in predictions:
            classes = predictions["instances"].pred_classes.tolist()
            self.per_class.update(int(c) for c in classes)

    def table(self) -> str:
        from tabulate import tabulate

        seconds = time.perf_counter() - self.start
        rows: list[list[Any]] = [
            [f"{self.unit}s processed", self.processed],
            [f"{self.unit}s failed", self.failed],
        ]
        for c, n in sorted(self.per_class.items()):
            name = self.class_names[c] if self.class_names and c < len(self.class_names) else c
            rows.append([f"instances: {name}", n])
        per_item = seconds / self.processed if self.processed else float("nan")
        rows.append([f"seconds per {self.unit}", f"{per_item:.3f}"])
        return tabulate(rows, headers=["", "value"], tablefmt="github")


def _predict_images(args: argparse.Namespace, predictor: Any, metadata: Any) -> int:
    from heron.data.detection_utils import read_image
    from heron.evaluation.coco_evaluation import instances_to_coco_json
    from heron.utils.visualizer import ColorMode, Visualizer

    inputs = _expand_image_inputs(args.input)
    summary = _Summary("image", getattr(metadata, "thing_classes", None))
    seen: Counter[str] = Counter()
    records: list[dict] = []
    for image_index, (path, predictions) in enumerate(predictor.predict_paths(inputs)):
        if predictions is None:
            continue
        image = read_image(path, format="RGB")
        visualizer = Visualizer(image, metadata, instance_mode=ColorMode.IMAGE)
        vis = draw_predictions(visualizer, predictions)
        _save_rgb(vis.get_image(), os.path.join(args.output, _unique_name(path, seen)))
        summary.add(predictions)
        if args.save_json and "instances" in predictions:
            image_records = instances_to_coco_json(predictions["instances"].to("cpu"), image_index)
            _to_dataset_ids(image_records, metadata)
            for record in image_records:
                record["file_name"] = path
            records.extend(image_records)
    if args.save_json:
        with open(os.path.join(args.output, "predictions.json"), "w") as f:
            json.dump(records, f)
    summary.failed = len(predictor.failures)
    print(summary.table())
    if predictor.failures:
        for path, reason in predictor.failures:
            print(f"heron predict: failed: {path}: {reason}", file=sys.stderr)
        total = summary.processed + summary.failed
        print(f"heron predict: {summary.failed} of {total} files failed", file=sys.stderr)
        return 1
    return 0


def _import_cv2() -> Any:
    try:
        import cv2
    except ImportError:
        raise _UsageError(
            "reading videos and webcams needs OpenCV, which is not installed: run "
            "`pip install opencv-python-headless` (or `pip install heron[video]`)"
        ) from None
    return cv2


def _open_writer(cv2: Any, stem: str, fps: float, size: tuple[int, int]) -> tuple[Any, str]:
    """An opened cv2.VideoWriter for frames of (width, height) `size`, and its path."""
    for fourcc, ext in _VIDEO_CODECS:
        path = stem + ext
        writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*fourcc), fps, size)
        if writer.isOpened():
            return writer, path
        writer.release()
    codecs = ", ".join(c for c, _ in _VIDEO_CODECS)
    raise _UsageError(f"OpenCV cannot write a video to {stem}.* with any of {codecs}")


def _read_frames(capture: Any, max_frames: int | None) -> Iterator[np.ndarray]:
    count = 0
    while max_frames is None or count < max_frames:
        ok, frame = capture.read()
        if not ok:
            return
        count += 1
        yield frame


def _batches(frames: Iterator[np.ndarray], size: int) -> Iterator[list[np.ndarray]]:
    batch: list[np.ndarray] = []
    for frame in frames:
        batch.append(frame)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _predict_stream(
    args: argparse.Namespace, cv2: Any, capture: Any, stem: str, predictor: Any, metadata: Any
) -> int:
    """Predict on the frames of an opened capture and write the drawn video."""
    from tqdm import tqdm

    from heron.utils.video_visualizer import VideoVisualizer
    from heron.utils.visualizer import ColorMode

    width = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH))
    height = int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
    fps = capture.get(cv2.CAP_PROP_FPS) or 30.0
    total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) or None
    if total is not None and total <= 0:
        total = None
    if args.max_frames is not None:
        total = min(total, args.max_frames) if total else args.max_frames
    writer, out_path = _open_writer(cv2, stem, fps, (width, height))
    video_visualizer = VideoVisualizer(metadata, ColorMode.IMAGE)
    summary = _Summary("frame", getattr(metadata, "thing_classes", None))
    try:
        with tqdm(total=total, desc="predict", unit="frame", disable=None) as bar:
            for batch in _batches(_read_frames(capture, args.max_frames), args.batch_size):
                for frame, predictions in zip(batch, predictor(batch)):
                    vis = _draw_frame(video_visualizer, frame[:, :, ::-1], predictions)
                    writer.write(np.ascontiguousarray(vis.get_image()[:, :, ::-1]))
                    summary.add(predictions)
                bar.update(len(batch))
    finally:
        writer.release()
        capture.release()
    print(summary.table())
    print(f"heron predict: wrote {out_path}")
    return 0


def _open_capture(args: argparse.Namespace, cv2: Any, source: str) -> tuple[Any, str]:
    """The opened cv2.VideoCapture for a video file or webcam id, and the output stem."""
    if source.isdigit():
        if args.max_frames is None:
            raise _UsageError(f"--max-frames is required with a webcam (--input {source})")
        capture = cv2.VideoCapture(int(source))
        if not capture.isOpened():
            raise _UsageError(f"cannot open webcam {source}: no such camera, or it is busy")
        return capture, os.path.join(args.output, "webcam")
    if not os.path.isfile(source):
        raise _UsageError(f"--input video {source!r} is not a file")
    capture = cv2.VideoCapture(source)
    if not capture.isOpened():
        raise _UsageError(f"OpenCV cannot open video {source!r}")
    stem = os.path.splitext(os.path.basename(source))[0]
    return capture, os.path.join(args.output, stem)


def _stream_source(inputs: list[str]) -> str | None:
    """The video file or webcam id among `inputs`, None for images; mixing is an error."""
    streams = [x for x in inputs if x.isdigit() or x.lower().endswith(VIDEO_EXTENSIONS)]
    if not streams:
        return None
    if len(inputs) != 1:
        raise _UsageError(
            f"a video file or webcam id must be the only --input, got {len(inputs)} inputs "
            f"including {streams[0]!r}"
        )
    return streams[0]


def _check_args(args: argparse.Namespace) -> None:
    if args.batch_size < 1:
        raise _UsageError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.num_workers < 0:
        raise _UsageError(f"--num-workers must be >= 0, got {args.num_workers}")
    if args.max_frames is not None and args.max_frames < 1:
        raise _UsageError(f"--max-frames must be >= 1, got {args.max_frames}")


def predict_main(args: argparse.Namespace) -> int:
    """Run `heron predict`; returns the exit code (0; 1 when files failed; 2 on usage errors)."""
    from heron.data.catalog import Metadata
    from heron.engine.predictor import BatchPredictor

    try:
        _check_args(args)
        source = _stream_source(args.input)
        cv2 = _import_cv2() if source is not None else None
        cfg = setup_predict_config(args)
        amp = False if args.amp == "off" else args.amp
        predictor = BatchPredictor(cfg, args.batch_size, args.num_workers, amp)
        metadata = predictor.metadata if predictor.metadata is not None else Metadata()
        os.makedirs(args.output, exist_ok=True)
        if source is None:
            return _predict_images(args, predictor, metadata)
        capture, stem = _open_capture(args, cv2, source)
        return _predict_stream(args, cv2, capture, stem, predictor, metadata)
    except (_UsageError, FileNotFoundError) as e:
        print(f"heron predict: {e}", file=sys.stderr)
        return 2
