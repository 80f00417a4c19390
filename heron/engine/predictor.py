"""Prediction from a config: Detectron2's ``DefaultPredictor`` (one image at a time) and
Heron's ``BatchPredictor`` (batched forward, optional autocast, and a data loader that reads
and resizes image files in worker processes).

Both build the model named by the config in eval mode on ``cfg.MODEL.DEVICE``, load
``cfg.MODEL.WEIGHTS``, and resize inputs as Detectron2's test-time pipeline does:
``ResizeShortestEdge([MIN_SIZE_TEST, MIN_SIZE_TEST], MAX_SIZE_TEST)``. Outputs come back in
the original image size.

Batching note: a batch is padded to its largest image (rounded up to the backbone's size
divisibility). For images of equal size this padding is the same as for one image alone and
batched outputs equal single-image outputs to float precision. For mixed sizes the extra
padding changes the features near the bottom/right border (normalization layers turn the
zero padding into non-zero activations, and the RPN sees anchors over the padded area), so
detections can differ; Detectron2's batched inference behaves the same way.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from heron.checkpoint.detection_checkpoint import DetectionCheckpointer
from heron.config import CfgNode
from heron.data.build import trivial_batch_collator
from heron.data.catalog import Metadata, MetadataCatalog
from heron.data.detection_utils import read_image
from heron.data.transforms.augmentation_impl import ResizeShortestEdge
from heron.modeling import build_model
from heron.structures.instances import Instances

__all__ = ["IMAGE_EXTENSIONS", "BatchPredictor", "DefaultPredictor"]

logger = logging.getLogger(__name__)

# File name endings (lower case) that a directory given to predict_paths expands to.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")

_AMP_DTYPES: dict[Any, torch.dtype | None] = {
    False: None,
    True: torch.float16,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}


def _check_input_format(input_format: str) -> str:
    if input_format not in ("RGB", "BGR"):
        raise ValueError(
            f"cfg.INPUT.FORMAT must be 'RGB' or 'BGR' for prediction, got {input_format!r}"
        )
    return input_format


def _load_weights(model: nn.Module, weights: str) -> None:
    """Load ``weights`` into ``model``; "" keeps the random initialization, with a warning."""
    if not weights:
        logger.warning(
            "cfg.MODEL.WEIGHTS is empty: the model keeps its random initialization and its "
            "predictions are meaningless. Set MODEL.WEIGHTS to a checkpoint to predict."
        )
        return
    try:
        DetectionCheckpointer(model).load(weights)
    except FileNotFoundError as e:
        raise FileNotFoundError(
            f"cfg.MODEL.WEIGHTS={weights!r}: no such checkpoint file. Set MODEL.WEIGHTS to an "
            "existing checkpoint path, URL or model-zoo name ('' for random weights)."
        ) from e


def _image_to_tensor(image: np.ndarray) -> torch.Tensor:
    """(H, W, C) array -> (C, H, W) float32 tensor, values unchanged (0-255)."""
    return torch.as_tensor(image.astype("float32").transpose(2, 0, 1))


class _PredictorBase:
    """Builds the eval-mode model, loads its weights and holds the test-time resize."""

    def __init__(self, cfg: CfgNode) -> None:
        self.cfg = cfg.clone()
        self.input_format = _check_input_format(self.cfg.INPUT.FORMAT)
        self.model = build_model(self.cfg)
        self.model.eval()
        self.metadata: Metadata | None = None
        if len(self.cfg.DATASETS.TEST):
            self.metadata = MetadataCatalog.get(self.cfg.DATASETS.TEST[0])
        _load_weights(self.model, self.cfg.MODEL.WEIGHTS)
        self.aug = ResizeShortestEdge(
            [self.cfg.INPUT.MIN_SIZE_TEST, self.cfg.INPUT.MIN_SIZE_TEST],
            self.cfg.INPUT.MAX_SIZE_TEST,
        )

    def _prepare(self, original_image: Any, name: str) -> dict[str, Any]:
        """One BGR (H, W, C) array -> the model's input dict (resized, model's channel order)."""
        if not isinstance(original_image, np.ndarray) or original_image.ndim != 3:
            got = (
                f"shape {original_image.shape}"
                if isinstance(original_image, np.ndarray)
                else type(original_image).__name__
            )
            raise ValueError(f"{name} must be an (H, W, C) numpy array in BGR order, got {got}")
        if self.input_format == "RGB":  # the caller's image is BGR, as cv2.imread returns it
            original_image = original_image[:, :, ::-1]
        height, width = original_image.shape[:2]
        image = self.aug.get_transform(original_image).apply_image(original_image)
        image = _image_to_tensor(image).to(self.cfg.MODEL.DEVICE)
        return {"image": image, "height": height, "width": width}


class DefaultPredictor(_PredictorBase):
    """Predicts on one image with the model, weights and test-time resize of ``cfg``.

    Attributes:
        cfg: a clone of the given config.
        model: the model, in eval mode on ``cfg.MODEL.DEVICE``.
        metadata: ``MetadataCatalog.get(cfg.DATASETS.TEST[0])``, or None when DATASETS.TEST
            is empty.
        aug: the test-time ``ResizeShortestEdge``.
        input_format: ``cfg.INPUT.FORMAT``, "RGB" or "BGR".

    Example::

        predictor = DefaultPredictor(cfg)
        outputs = predictor(cv2.imread("input.jpg"))  # {"instances": Instances, ...}

    Raises (constructor):
        ValueError: INPUT.FORMAT is neither "RGB" nor "BGR".
        FileNotFoundError: MODEL.WEIGHTS names a file that does not exist.
    """

    def __call__(self, original_image: np.ndarray) -> dict[str, Any]:
        """Run the model on one image.

        Args:
            original_image: (H, W, C) uint8 array in BGR order (as ``cv2.imread`` returns);
                it is flipped to RGB when the model's INPUT.FORMAT is RGB.

        Returns:
            The model's output for the image, e.g. {"instances": Instances} with boxes in
            the (H, W) of ``original_image``.
        """
        with torch.no_grad():
            inputs = self._prepare(original_image, "original_image")
            return self.model([inputs])[0]


def _parse_amp(amp: bool | str) -> torch.dtype | None:
    if isinstance(amp, (bool, str)) and amp in _AMP_DTYPES:
        return _AMP_DTYPES[amp]
    raise ValueError(f"amp must be False, True, 'float16' or 'bfloat16', got {amp!r}")


def _to_float32(x: Any) -> Any:
    """Cast the floating-point tensors in an output (Instances, Boxes, dicts...) to float32."""
    if isinstance(x, torch.Tensor):
        return x.float() if x.is_floating_point() and x.dtype != torch.float32 else x
    if isinstance(x, Instances):
        return Instances(x.image_size, **{k: _to_float32(v) for k, v in x.get_fields().items()})
    if isinstance(x, dict):
        return {k: _to_float32(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_to_float32(v) for v in x)
    tensor = getattr(x, "tensor", None)  # Boxes, RotatedBoxes, Keypoints, BitMasks
    if (
        isinstance(tensor, torch.Tensor)
        and tensor.is_floating_point()
        and tensor.dtype != torch.float32
    ):
        return type(x)(tensor.float())
    return x


def _expand_paths(paths_or_dir: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """A directory -> its image files, sorted by name; other entries are kept as given."""
    items = [paths_or_dir] if isinstance(paths_or_dir, (str, os.PathLike)) else paths_or_dir
    paths: list[str] = []
    for item in items:
        item = os.fspath(item)
        if os.path.isdir(item):
            names = sorted(
                n
                for n in os.listdir(item)
                if n.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(os.path.join(item, n))
            )
            if not names:
                raise ValueError(
                    f"paths_or_dir: directory {item!r} holds no image files "
                    f"(extensions {', '.join(IMAGE_EXTENSIONS)})"
                )
            paths.extend(os.path.join(item, n) for n in names)
        else:
            paths.append(item)
    return paths


class _ImageFiles(Dataset):
    """Reads and resizes image files (in data-loader workers). A file that cannot be read
    becomes {"file_name", "error"} instead of failing the whole loader."""

    def __init__(self, paths: list[str], input_format: str, aug: ResizeShortestEdge) -> None:
        self.paths = paths
        self.input_format = input_format
        self.aug = aug

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, idx: int) -> dict[str, Any]:
        path = self.paths[idx]
        try:
            image = read_image(path, format=self.input_format)
        except (OSError, ValueError) as e:
            return {"file_name": path, "error": f"{type(e).__name__}: {e}"}
        height, width = image.shape[:2]
        image = self.aug.get_transform(image).apply_image(image)
        # uint8 crosses the process boundary (4x smaller); converted to float32 by the caller
        chw = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
        return {"file_name": path, "image": chw, "height": height, "width": width}


class BatchPredictor(_PredictorBase):
    """Predicts on many images in batches, optionally under autocast, reading files in
    data-loader workers.

    Args:
        cfg: the config (model, MODEL.WEIGHTS, MODEL.DEVICE, INPUT.FORMAT and the test-time
            sizes), as for :class:`DefaultPredictor`.
        batch_size: images per forward.
        num_workers: data-loader processes that read and resize files in
            :meth:`predict_paths` (0: in this process).
        amp: autocast on the model's device: False (off), True or "float16", "bfloat16".
            Floating-point outputs are returned as float32 either way.

    Attributes:
        failures: (path, error message) of every file that :meth:`predict_paths` could not
            read, accumulated over calls (clear it to start over). A command-line tool can
            exit non-zero when it is not empty.
    """

    def __init__(
        self, cfg: CfgNode, batch_size: int = 4, num_workers: int = 0, amp: bool | str = False
    ) -> None:
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if not isinstance(num_workers, int) or num_workers < 0:
            raise ValueError(f"num_workers must be an int >= 0, got {num_workers!r}")
        self.amp_dtype = _parse_amp(amp)
        super().__init__(cfg)
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.failures: list[tuple[str, str]] = []

    def _forward(self, inputs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The model on ``inputs`` in chunks of batch_size, under no_grad and autocast."""
        outputs: list[dict[str, Any]] = []
        autocast: Any = contextlib.nullcontext()
        if self.amp_dtype is not None:
            device_type = torch.device(self.cfg.MODEL.DEVICE).type
            autocast = torch.autocast(device_type, dtype=self.amp_dtype)
        with torch.no_grad(), autocast:
            for start in range(0, len(inputs), self.batch_size):
                outputs.extend(self.model(inputs[start : start + self.batch_size]))
        if self.amp_dtype is not None:
            outputs = [_to_float32(o) for o in outputs]
        return outputs

    def __call__(self, images: Sequence[np.ndarray]) -> list[dict[str, Any]]:
        """Run the model on images in batches.

        Args:
            images: (H, W, C) uint8 arrays in BGR order (as ``cv2.imread`` returns); sizes
                may differ (see the module note on padding).

        Returns:
            One model output per image, in order, each in its image's original size.
        """
        if isinstance(images, np.ndarray):
            raise TypeError(
                "images must be a list of (H, W, C) arrays; for one image use [image] "
                f"(got an array of shape {images.shape})"
            )
        inputs = [self._prepare(image, f"images[{i}]") for i, image in enumerate(images)]
        return self._forward(inputs)

    def predict_paths(
        self, paths_or_dir: str | os.PathLike | Sequence[str | os.PathLike]
    ) -> Iterator[tuple[str, dict[str, Any] | None]]:
        """Predict on image files, yielding (path, output) in input order.

        Files are read with ``read_image(path, format=cfg.INPUT.FORMAT)`` and resized in
        ``num_workers`` data-loader processes. A file that cannot be read yields
        (path, None); its error is logged and appended to :attr:`failures`.

        Args:
            paths_or_dir: a directory (expanded to its .jpg/.jpeg/.png/.bmp/.webp files,
                sorted by name, not recursive), a file path, or a sequence of either.

        Raises:
            ValueError: a directory holds no image files.
        """
        paths = _expand_paths(paths_or_dir)
        loader = DataLoader(
            _ImageFiles(paths, self.input_format, self.aug),
            batch_size=self.batch_size,
            shuffle=False,
            num_workers=self.num_workers,
            collate_fn=trivial_batch_collator,
        )
        with tqdm(total=len(paths), desc="predict", unit="img", disable=None) as bar:
            for batch in loader:
                yield from self._predict_loaded(batch)
                bar.update(len(batch))

    def _predict_loaded(
        self, batch: list[dict[str, Any]]
    ) -> Iterator[tuple[str, dict[str, Any] | None]]:
        """Forward the readable records of a loaded batch; report the unreadable ones."""
        readable = [r for r in batch if "error" not in r]
        for record in readable:
            record["image"] = record["image"].to(self.cfg.MODEL.DEVICE).float()
        outputs = iter(self._forward(readable))
        for record in batch:
            path = record["file_name"]
            if "error" in record:
                logger.error("Cannot predict on %s: %s", path, record["error"])
                self.failures.append((path, record["error"]))
                yield path, None
            else:
                yield path, next(outputs)
