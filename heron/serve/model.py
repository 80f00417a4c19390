"""The served model: loading it from a config in the background, and describing it.

:class:`ModelState` goes from "loading" to "ready" (model built, weights loaded, one
warm-up forward done) or to "failed" (with the error). The class names and the tasks the
model performs come from its config and dataset metadata.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

import numpy as np

__all__ = ["ModelState", "build_predictor", "class_names", "model_tasks"]

logger = logging.getLogger(__name__)

_NUM_CLASSES_KEY = {
    "RetinaNet": ("RETINANET", "NUM_CLASSES"),
    "FCOS": ("FCOS", "NUM_CLASSES"),
}


def _cfg_get(cfg: Any, *keys: str, default: Any = None) -> Any:
    node = cfg
    for key in keys:
        if node is None or not hasattr(node, key):
            return default
        node = getattr(node, key)
    return node


def _meta_get(metadata: Any, key: str) -> Any:
    if metadata is None:
        return None
    if isinstance(metadata, dict):
        return metadata.get(key)
    return getattr(metadata, key, None)


def class_names(cfg: Any, metadata: Any) -> tuple[list[str], list[str]]:
    """(thing class names, stuff class names) of a model.

    Names come from `metadata` (``thing_classes``/``stuff_classes``, attributes or dict
    keys); without them, things are named "class_0", "class_1", ... up to the number of
    classes of the model's head in `cfg` (none without a cfg), and stuff is empty unless the
    model has a semantic head, whose classes are named the same way.
    """
    things = _meta_get(metadata, "thing_classes")
    stuff = _meta_get(metadata, "stuff_classes")
    arch = _cfg_get(cfg, "MODEL", "META_ARCHITECTURE", default="")
    if things is None:
        section, key = _NUM_CLASSES_KEY.get(arch, ("ROI_HEADS", "NUM_CLASSES"))
        count = _cfg_get(cfg, "MODEL", section, key, default=0)
        things = [f"class_{i}" for i in range(count)] if arch != "SemanticSegmentor" else []
    if stuff is None:
        stuff = []
        if arch in ("SemanticSegmentor", "PanopticFPN"):
            count = _cfg_get(cfg, "MODEL", "SEM_SEG_HEAD", "NUM_CLASSES", default=0)
            stuff = [f"class_{i}" for i in range(count)]
    return list(things), list(stuff)


def model_tasks(cfg: Any) -> list[str]:
    """The outputs a model of `cfg` makes, among "instances", "masks", "keypoints",
    "sem_seg" and "panoptic_seg" (["instances"] without a cfg)."""
    if cfg is None:
        return ["instances"]
    arch = _cfg_get(cfg, "MODEL", "META_ARCHITECTURE", default="")
    tasks = []
    if arch != "SemanticSegmentor":
        tasks.append("instances")
        if _cfg_get(cfg, "MODEL", "MASK_ON", default=False):
            tasks.append("masks")
        if _cfg_get(cfg, "MODEL", "KEYPOINT_ON", default=False):
            tasks.append("keypoints")
    if arch in ("SemanticSegmentor", "PanopticFPN"):
        tasks.append("sem_seg")
    if arch == "PanopticFPN" and _cfg_get(
        cfg, "MODEL", "PANOPTIC_FPN", "COMBINE", "ENABLED", default=True
    ):
        tasks.append("panoptic_seg")
    return tasks


def build_predictor(cfg: Any, max_batch: int) -> Any:
    """A :class:`~heron.engine.predictor.BatchPredictor` of `cfg`, warmed up with one forward
    of a blank image of the test size."""
    from heron.engine.predictor import BatchPredictor

    predictor = BatchPredictor(cfg, batch_size=max_batch)
    size = int(cfg.INPUT.MIN_SIZE_TEST) or 64
    predictor([np.zeros((size, size, 3), dtype=np.uint8)])
    return predictor


class ModelState:
    """The served predictor and where its loading stands.

    Args:
        predictor: a ready predictor (status "ready" at once), or None to load one later
            with :meth:`load_in_background`.
        metadata: class names (``thing_classes``, ``stuff_classes``); None: the
            predictor's own ``metadata`` attribute when it has one.

    Attributes:
        status: "loading", "ready" or "failed".
        error: why loading failed ("" otherwise).
        predictor: the predictor once ready.
    """

    def __init__(self, predictor: Any = None, metadata: Any = None) -> None:
        self.predictor = predictor
        self._metadata = metadata
        self.status = "ready" if predictor is not None else "loading"
        self.error = ""
        self._ready = threading.Event()
        if predictor is not None:
            self._ready.set()

    @property
    def metadata(self) -> Any:
        """The metadata given, else the predictor's (None before it is loaded)."""
        if self._metadata is not None:
            return self._metadata
        return getattr(self.predictor, "metadata", None)

    @property
    def cfg(self) -> Any:
        """The predictor's config (None for a predictor without one)."""
        return getattr(self.predictor, "cfg", None)

    def load_in_background(self, cfg: Any, max_batch: int) -> threading.Thread:
        """Start a daemon thread that builds and warms up the predictor of `cfg`."""
        thread = threading.Thread(
            target=self._load, args=(cfg, max_batch), name="heron-serve-load", daemon=True
        )
        thread.start()
        return thread

    def _load(self, cfg: Any, max_batch: int) -> None:
        try:
            predictor = build_predictor(cfg, max_batch)
        except Exception as e:
            logger.exception("Loading the model failed")
            self.error = f"{type(e).__name__}: {e}"
            self.status = "failed"
        else:
            self.predictor = predictor
            self.status = "ready"
            logger.info("Model ready: %s", cfg.MODEL.META_ARCHITECTURE)
        finally:
            self._ready.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until loading finished (ready or failed); False on timeout."""
        return self._ready.wait(timeout)

    def resolved_metadata(self, cfg: Any) -> Any:
        """:attr:`metadata`, or while loading, that of `cfg`'s DATASETS.TEST[0] (which is
        what BatchPredictor reads)."""
        metadata = self.metadata
        test_sets = _cfg_get(cfg, "DATASETS", "TEST", default=())
        if metadata is None and test_sets:
            from heron.data.catalog import MetadataCatalog

            metadata = MetadataCatalog.get(test_sets[0])
        return metadata

    def class_names(self, cfg: Any) -> tuple[list[str], list[str]]:
        """(thing class names, stuff class names); see :func:`class_names`."""
        cfg = cfg if cfg is not None else self.cfg
        return class_names(cfg, self.resolved_metadata(cfg))

    def describe(self, cfg: Any, *, max_batch: int, max_image_mb: float) -> dict[str, Any]:
        """The body of ``GET /v1/model``; `cfg` is the config given to the app, if any."""
        from heron import __version__

        cfg = cfg if cfg is not None else self.cfg
        things, stuff = self.class_names(cfg)
        weights = _cfg_get(cfg, "MODEL", "WEIGHTS", default="") or ""
        architecture = _cfg_get(cfg, "MODEL", "META_ARCHITECTURE")
        return {
            "architecture": architecture or type(self.predictor).__name__,
            "classes": things,
            "stuff_classes": stuff,
            "input_format": getattr(self.predictor, "input_format", None)
            or _cfg_get(cfg, "INPUT", "FORMAT", default="BGR"),
            "heron_version": __version__,
            "weights": os.path.basename(weights),
            "device": str(_cfg_get(cfg, "MODEL", "DEVICE", default="cpu")),
            "max_batch": max_batch,
            "max_image_mb": max_image_mb,
            "tasks": model_tasks(cfg),
            "status": self.status,
        }
