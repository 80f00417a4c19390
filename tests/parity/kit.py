"""Helpers for the parity kit in ../shared/parity: weights, inputs, a traced forward.

The kit holds, per case, a Detectron2 config, a weights generator and the outputs
Detectron2 gave on two images; see its README for the procedure and the tolerances.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import zlib
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
PARITY_DIR = Path(os.environ.get("HERON_PARITY_DIR", ROOT.parent / "shared" / "parity"))
IMAGES = ("raccoon-1", "raccoon-12")


def require_kit() -> Path:
    if not (PARITY_DIR / "make_weights.py").is_file():
        pytest.skip(f"parity kit not found at {PARITY_DIR} (set HERON_PARITY_DIR)")
    return PARITY_DIR


@cache
def spec(case: str) -> dict[str, Any]:
    return json.loads((require_kit() / "specs" / f"{case}.json").read_text())


def golden(case: str, image: str) -> dict[str, np.ndarray]:
    with np.load(require_kit() / "cases" / case / f"{image}.npz") as data:
        return {k: data[k] for k in data.files}


def _weights_dir() -> Path:
    base = Path(os.environ.get("HERON_CACHE", Path.home() / ".cache" / "heron"))
    path = base / "parity-weights"
    path.mkdir(parents=True, exist_ok=True)
    return path


def weights_file(case: str) -> Path:
    """The case's weights as a Detectron2 model-zoo .pkl, generated once by the kit's
    make_weights.py and cached (keyed by the spec's content)."""
    kit = require_kit()
    spec_bytes = (kit / "specs" / f"{case}.json").read_bytes()
    tool_bytes = (kit / "make_weights.py").read_bytes()
    digest = f"{zlib.crc32(spec_bytes + tool_bytes):08x}"
    path = _weights_dir() / f"{case}-{digest}.pkl"
    if path.is_file():
        return path
    module_spec = importlib.util.spec_from_file_location(
        "parity_make_weights", kit / "make_weights.py"
    )
    make_weights = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(make_weights)
    state = make_weights.make_state(spec(case))
    payload = {"model": state, "__author__": "parity-kit", "matching_heuristics": False}
    import pickle

    tmp = path.with_suffix(f".tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        pickle.dump(payload, f, protocol=4)
    os.replace(tmp, path)  # atomic: parallel workers never see half a file
    return path


def build_cfg_without_weights(case: str):
    """Default config + the case's zoo file + its overrides (MODEL.WEIGHTS empty)."""
    from heron.config import get_cfg
    from heron.model_zoo import get_config_file

    s = spec(case)
    cfg = get_cfg()
    cfg.merge_from_file(get_config_file(s["config_file"]))
    cfg.merge_from_list(list(s["overrides"]))
    return cfg


def build_cfg(case: str):
    """The case's config with MODEL.WEIGHTS pointing at its generated weights."""
    cfg = build_cfg_without_weights(case)
    cfg.MODEL.WEIGHTS = str(weights_file(case))
    cfg.freeze()
    return cfg


def resize_shortest_edge(image: np.ndarray, short: int, long_max: int) -> np.ndarray:
    """The kit's test-time resize: Heron's ResizeShortestEdge, as DefaultPredictor uses it
    (the CRC32 check in compare.check_input pins it to Detectron2's bytes)."""
    from heron.data.transforms import ResizeShortestEdge

    return ResizeShortestEdge([short, short], long_max).get_transform(image).apply_image(image)


@dataclass
class Run:
    """Everything one forward produced: inputs, backbone features, proposals, outputs."""

    resized: np.ndarray
    features: dict[str, torch.Tensor] = field(default_factory=dict)
    proposals: list = field(default_factory=list)
    raw: Any = None  # instances before postprocessing (network input size)
    outputs: dict[str, Any] = field(default_factory=dict)


def run_case(model: torch.nn.Module, cfg, gold: dict[str, np.ndarray]) -> Run:
    """Preprocess the golden image as the kit says and run the model once, recording the
    backbone outputs and the proposals through forward hooks."""
    image = gold["image_bgr"]
    if cfg.INPUT.FORMAT == "RGB":
        image = image[:, :, ::-1]
    resized = resize_shortest_edge(
        np.ascontiguousarray(image), cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST
    )
    run = Run(resized=resized)
    hooks = [model.backbone.register_forward_hook(lambda m, i, o: run.features.update(o))]
    if getattr(model, "proposal_generator", None) is not None:
        hooks.append(
            # deep copy: postprocessing rescales proposal boxes in place
            model.proposal_generator.register_forward_hook(
                lambda m, i, o: run.proposals.extend(copy.deepcopy(o[0]))
            )
        )
    height, width = image.shape[:2]
    tensor = torch.as_tensor(resized.astype("float32").transpose(2, 0, 1))
    inputs = [{"image": tensor, "height": height, "width": width}]
    try:
        with torch.no_grad():
            run.outputs = model(inputs)[0]
    finally:
        for h in hooks:
            h.remove()
    return run


def crc32_of(array: np.ndarray) -> int:
    return zlib.crc32(np.ascontiguousarray(array).tobytes())


def feature_stats(t: torch.Tensor) -> np.ndarray:
    x = t.double()
    return np.array([x.mean().item(), x.std(unbiased=False).item(), x.abs().sum().item()])


def unpack_masks(gold: dict[str, np.ndarray]) -> np.ndarray:
    shape = tuple(int(s) for s in gold["pred_masks_shape"])
    bits = np.unpackbits(gold["pred_masks_packed"])[: int(np.prod(shape))]
    return bits.reshape(shape).astype(bool)
