"""Run a Heron model exported to ONNX ("heron-deploy-v1") with onnxruntime, numpy and Pillow.

The exported graph takes the resized image and returns raw detections at that size
(see `OnnxPredictor`); this module does the rest of Detectron2's test-time pipeline:
reading the image, ResizeShortestEdge, and the postprocessing in `heron.deploy.postprocess`.
It imports neither torch nor any Heron module that does.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

try:
    import onnxruntime as ort
except ImportError as e:  # the deploy machine needs onnxruntime, nothing else heavy
    raise ImportError(
        "heron.deploy needs onnxruntime: pip install onnxruntime (or heron[export])"
    ) from e
from PIL import Image, ImageOps, UnidentifiedImageError

from heron.deploy.postprocess import (
    combine_semantic_and_instance_outputs,
    detector_postprocess,
    resize_shortest_edge,
    sem_seg_postprocess,
)

__all__ = ["FORMAT_KEY", "FORMAT_VERSION", "OnnxPredictor", "load_image"]

FORMAT_KEY = "heron.format"
FORMAT_VERSION = "heron-deploy-v1"
_REQUIRED_KEYS = ("meta_architecture", "input_format", "min_size_test", "max_size_test", "outputs")
_PANOPTIC_KEYS = (
    "panoptic_overlap_thresh",
    "panoptic_stuff_area_limit",
    "panoptic_instances_score_thresh",
)
_KNOWN_OUTPUTS = ("boxes", "scores", "classes", "mask_probs", "keypoints", "sem_seg")


def load_image(image: Any, format: str = "RGB") -> np.ndarray:
    """Turn a file path, PIL image or uint8 array into an (h, w, 3) uint8 RGB array.

    Args:
        image: a path (str or os.PathLike; turned upright by its EXIF orientation, as
            Detectron2's read_image does), a PIL.Image (converted to RGB), or an (h, w, 3)
            uint8 numpy array whose channel order is `format`.
        format: channel order of an array input: "RGB" (Pillow, imageio) or "BGR"
            (cv2.imread). Paths and PIL images are always read as RGB.

    Raises:
        FileNotFoundError: the path does not exist.
        ValueError: the file is not a readable image, or the array is not (h, w, 3) uint8.
        TypeError: `image` is none of the accepted types.
    """
    if format not in ("RGB", "BGR"):
        raise ValueError(f"format must be 'RGB' or 'BGR', got {format!r}")
    if isinstance(image, (str, os.PathLike)):
        if format != "RGB":
            raise ValueError(
                f"format={format!r} applies to numpy arrays only; image files are read as RGB"
            )
        return np.asarray(_read_image_file(os.fspath(image)))
    if isinstance(image, Image.Image):
        if format != "RGB":
            raise ValueError(
                f"format={format!r} applies to numpy arrays only; PIL images are read as RGB"
            )
        return np.asarray(image.convert("RGB"))
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(
                f"image array must be (H, W, 3) uint8, got shape {image.shape} dtype {image.dtype}"
            )
        return image[:, :, ::-1] if format == "BGR" else image
    raise TypeError(
        f"image must be a file path, a PIL.Image or an (H, W, 3) uint8 numpy array, "
        f"got {type(image).__name__}"
    )


def _read_image_file(path: str) -> Image.Image:
    """Open, decode and RGB-convert an image file, naming it in every error."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"image file {path!r} not found")
    try:
        with Image.open(path) as opened:
            opened.load()  # decode now, so a truncated file fails here
            upright = ImageOps.exif_transpose(opened)
            return upright.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        # Pillow reports some malformed files as SyntaxError or ValueError.
        raise ValueError(f"cannot read image file {path!r}: {e}") from e


class OnnxPredictor:
    """Predictions for one image from a "heron-deploy-v1" ONNX model, without PyTorch.

    The model file carries its settings in metadata_props (resize sizes, channel order,
    class names, panoptic thresholds). Calling the predictor reads the image, applies
    Heron's test-time ResizeShortestEdge (PIL bilinear on uint8), runs the graph, and maps
    its outputs back to the original image as Detectron2's postprocessing does.

    Attributes:
        metadata: the model's metadata_props, verbatim.
        meta_architecture, input_format: from the metadata.
        min_size_test, max_size_test: the resize rule's sizes.
        thing_classes, stuff_classes: class names (may be empty).
        output_names: the graph's outputs, e.g. ["boxes", "scores", "classes", "mask_probs"].
    """

    def __init__(self, path: str | os.PathLike, providers: list[str] | None = None) -> None:
        """
        Args:
            path: the .onnx file.
            providers: onnxruntime execution providers in order of preference; None
                means all that this onnxruntime build has (CPU last).
        """
        path = os.fspath(path)
        if not os.path.exists(path):
            raise FileNotFoundError(f"OnnxPredictor: model file {path!r} not found")
        try:
            self.session = ort.InferenceSession(
                path, providers=providers or ort.get_available_providers()
            )
        except Exception as e:  # onnxruntime raises its own exception types
            raise ValueError(f"OnnxPredictor: cannot load ONNX model {path!r}: {e}") from e
        self.path = path
        self.metadata: dict[str, str] = dict(self.session.get_modelmeta().custom_metadata_map)
        self._read_metadata()
        self._check_graph()

    def _read_metadata(self) -> None:
        meta = self.metadata
        found = meta.get(FORMAT_KEY)
        if found != FORMAT_VERSION:
            raise ValueError(
                f"OnnxPredictor: {self.path!r} is not a Heron deployment model: metadata key "
                f"{FORMAT_KEY!r} must be {FORMAT_VERSION!r}, got {found!r} (export it with "
                f"heron.export.export_onnx(..., postprocess='outside'))"
            )
        keys = _REQUIRED_KEYS + (
            _PANOPTIC_KEYS if meta.get("meta_architecture") == "PanopticFPN" else ()
        )
        for key in keys:
            if key not in meta:
                raise ValueError(
                    f"OnnxPredictor: {self.path!r} lacks metadata key {key!r}; "
                    f"it has {sorted(meta)}"
                )
        self.meta_architecture = meta["meta_architecture"]
        self.input_format = meta["input_format"]
        if self.input_format not in ("RGB", "BGR"):
            raise ValueError(
                f"OnnxPredictor: metadata key 'input_format' must be 'RGB' or 'BGR', "
                f"got {self.input_format!r}"
            )
        self.min_size_test = int(self._number("min_size_test"))
        self.max_size_test = int(self._number("max_size_test"))
        self.mask_threshold = self._number("mask_threshold", default="0.5")
        self.thing_classes: list[str] = self._json_list("thing_classes")
        self.stuff_classes: list[str] = self._json_list("stuff_classes")
        self.output_names: list[str] = self._json_list("outputs", default=None)
        if self.meta_architecture == "PanopticFPN":
            self.panoptic_overlap_thresh = self._number("panoptic_overlap_thresh")
            self.panoptic_stuff_area_limit = self._number("panoptic_stuff_area_limit")
            self.panoptic_instances_score_thresh = self._number("panoptic_instances_score_thresh")

    def _number(self, key: str, default: str | None = None) -> float:
        text = self.metadata.get(key, default)
        try:
            return float(text)
        except (TypeError, ValueError) as e:
            raise ValueError(
                f"OnnxPredictor: metadata key {key!r} must be a number, got {text!r}"
            ) from e

    def _json_list(self, key: str, default: str | None = "[]") -> list:
        text = self.metadata.get(key, default)
        try:
            value = json.loads(text)
        except (TypeError, json.JSONDecodeError) as e:
            raise ValueError(
                f"OnnxPredictor: metadata key {key!r} must be a JSON list, got {text!r}"
            ) from e
        if not isinstance(value, list):
            raise ValueError(
                f"OnnxPredictor: metadata key {key!r} must be a JSON list, got {text!r}"
            )
        return value

    def _check_graph(self) -> None:
        inputs = [i.name for i in self.session.get_inputs()]
        if inputs != ["image"]:
            raise ValueError(
                f"OnnxPredictor: {self.path!r} must have one input named 'image', has {inputs}"
            )
        graph_outputs = {o.name for o in self.session.get_outputs()}
        for name in self.output_names:
            if name not in _KNOWN_OUTPUTS or name not in graph_outputs:
                raise ValueError(
                    f"OnnxPredictor: metadata key 'outputs' lists {name!r}, which is not an "
                    f"output of the graph ({sorted(graph_outputs)}) or not one of {_KNOWN_OUTPUTS}"
                )
        has_boxes = "boxes" in self.output_names
        if has_boxes and not {"scores", "classes"} <= set(self.output_names):
            raise ValueError(
                f"OnnxPredictor: outputs {self.output_names} have 'boxes' without "
                f"'scores' and 'classes'"
            )
        if self.meta_architecture == "PanopticFPN" and not {"mask_probs", "sem_seg"} <= set(
            self.output_names
        ):
            raise ValueError(
                f"OnnxPredictor: a PanopticFPN model needs outputs 'mask_probs' and "
                f"'sem_seg', has {self.output_names}"
            )

    def preprocess(self, image: Any, format: str = "RGB") -> tuple[np.ndarray, tuple[int, int]]:
        """The graph's input for `image`: (3, H, W) float32 in the model's channel order.

        Returns the input and the original (h, w). See `load_image` for `image`, `format`.
        """
        rgb = load_image(image, format)
        if rgb.shape[0] == 0 or rgb.shape[1] == 0:
            raise ValueError(f"image must not be empty, got shape {rgb.shape}")
        ordered = rgb[:, :, ::-1] if self.input_format == "BGR" else rgb
        resized = resize_shortest_edge(ordered, self.min_size_test, self.max_size_test)
        tensor = np.ascontiguousarray(resized.transpose(2, 0, 1), dtype=np.float32)
        return tensor, (rgb.shape[0], rgb.shape[1])

    def __call__(
        self, image: Any, format: str = "RGB", return_sem_seg_logits: bool = False
    ) -> dict[str, Any]:
        """Predict on one image.

        Args:
            image: a file path, a PIL.Image, or an (h, w, 3) uint8 numpy array (RGB unless
                `format="BGR"`, e.g. from cv2.imread).
            format: channel order of an array input, "RGB" or "BGR".
            return_sem_seg_logits: also return the (C, h, w) logits of semantic models.

        Returns:
            dict with, where the model has them (n detections, original size h x w):
            - "boxes" (n, 4) float32 XYXY in original pixels, "scores" (n,) float32,
              "classes" (n,) int64, "class_names" list of n str (thing_classes[c], or
              str(c) when the model carries no name for c);
            - "masks" (n, h, w) bool; "keypoints" (n, K, 3) float32 (x, y, score);
            - "sem_seg" (h, w) int64 labels (argmax of the resized logits), and with
              `return_sem_seg_logits` "sem_seg_logits" (C, h, w) float32, what Detectron2
              returns as "sem_seg";
            - "panoptic_seg" for PanopticFPN: ((h, w) int32 segment ids, segments_info).
        """
        tensor, (orig_h, orig_w) = self.preprocess(image, format)
        raw = dict(zip(self.output_names, self.session.run(self.output_names, {"image": tensor})))
        input_size = (tensor.shape[1], tensor.shape[2])
        result: dict[str, Any] = {}
        if "boxes" in raw:
            result.update(
                detector_postprocess(
                    raw["boxes"],
                    raw["scores"],
                    raw["classes"],
                    input_size,
                    (orig_h, orig_w),
                    mask_probs=raw.get("mask_probs"),
                    keypoints=raw.get("keypoints"),
                    mask_threshold=self.mask_threshold,
                )
            )
            result["class_names"] = [self._class_name(int(c)) for c in result["classes"]]
        if "sem_seg" in raw:
            logits = sem_seg_postprocess(raw["sem_seg"], input_size, orig_h, orig_w)
            result["sem_seg"] = logits.argmax(axis=0)
            if return_sem_seg_logits:
                result["sem_seg_logits"] = logits
        if self.meta_architecture == "PanopticFPN":
            result["panoptic_seg"] = combine_semantic_and_instance_outputs(
                result["scores"],
                result["classes"],
                result["masks"],
                result["sem_seg"],
                self.panoptic_overlap_thresh,
                self.panoptic_stuff_area_limit,
                self.panoptic_instances_score_thresh,
            )
        return result

    def _class_name(self, class_id: int) -> str:
        if 0 <= class_id < len(self.thing_classes):
            return str(self.thing_classes[class_id])
        return str(class_id)
