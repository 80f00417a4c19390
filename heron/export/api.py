"""Export Heron models to ONNX, `torch.export` ExportedProgram and traced TorchScript.

Every format exports the same function of one image: a (3, H, W) float32 tensor, already
resized for testing, in the model's INPUT.FORMAT, 0..255. Normalization and padding to the
backbone's size divisibility happen inside. The outputs are plain tensors with names:

- postprocess="outside" (the deployment form, contract "heron-deploy-v1"): "boxes" (N, 4)
  XYXY, "scores" (N,), "classes" (N,) int64, "mask_probs" (N, 1, M, M), "keypoints"
  (N, K, 3), "sem_seg" (C, H, W) logits cropped to the input, whichever the model has.
  Rescaling to the original image, mask pasting and panoptic merging are left to the
  caller (`heron.deploy`).
- postprocess="inside": Detectron2's `detector_postprocess` to the input's own size runs in
  the graph: boxes are clipped and empty boxes dropped, and masks are pasted into (N, H, W)
  bool "masks" (over the whole image, see `paste_masks_in_image`). PanopticFPN has no
  inside form: its panoptic merge loops over detections in Python.

Which exporter does what, with torch 2.14:

- ONNX uses the TorchScript-based exporter (``torch.onnx.export(..., dynamo=False)``) on a
  trace of `TracingAdapter`, as Detectron2 does. torchvision's `nms` and `roi_align`
  become the standard ONNX NonMaxSuppression and RoiAlign.
- `torch.export.export` (non-strict) captures every supported model. Model code that
  validates data (non-finite boxes, matching Instances lengths, empty inputs) filters
  unconditionally or skips the check while exporting, so that the number of detections is
  a data-dependent size, not a guard. Keypoint decoding (`heatmaps_to_keypoints`) resizes
  each detection's heatmap to its own box size; torch.export has no loop over a
  data-dependent count, so the loop is unrolled TEST.DETECTIONS_PER_IMAGE times
  (`heron.structures.keypoints.export_region_bound`; an uncapped model raises
  `ExportError`).
- Keypoint decoding is scripted while tracing, so the ONNX graph holds a Loop over the
  detections.
- A torch.export program holds for the sizes that share the sample's special cases:
  measured, a coarsest feature map of 1 x 1 (H or W <= 64 with P6, <= 128 with P7) and a
  height that is a multiple of the size divisibility are specialized. Use a sample whose
  sides are not multiples of 32 and whose coarsest map is at least 2 x 2; other sizes then
  raise a guard error when run.
- TorchScript: `torch.jit.trace` (`torch.jit.script` is deprecated; only the keypoint
  decoding loop is scripted, by `torch.jit.script_if_tracing`). A trace records the
  branches taken for the sample image; Heron's inference has no branch on the image size
  or the number of detections once traced (sizes stay tensors), so the traced module runs
  on other sizes, but a branch that depends on the data (e.g. a detector whose sample
  produced no detection at all) is frozen to the sample's path.
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from heron.export.flatten import TracingAdapter
from heron.modeling.postprocessing import detector_postprocess
from heron.structures.image_list import ImageList
from heron.structures.keypoints import export_region_bound

__all__ = [
    "DEPLOY_FORMAT",
    "ExportError",
    "export_model_outputs",
    "export_onnx",
    "export_torch_export",
    "export_torchscript",
    "load_exported",
    "run_exported",
]

DEPLOY_FORMAT = "heron-deploy-v1"
_SUPPORTED = ("GeneralizedRCNN", "RetinaNet", "FCOS", "SemanticSegmentor", "PanopticFPN")
_NAMES_FILE = "heron_outputs.json"


class ExportError(RuntimeError):
    """A model cannot be exported to a format with the installed exporter."""


def _is_tracing() -> bool:
    return torch.jit.is_tracing()


def _meta_architecture(model: nn.Module) -> str:
    """The name of the first supported meta-architecture in the model's class hierarchy."""
    for cls in type(model).__mro__:
        if cls.__name__ in _SUPPORTED:
            return cls.__name__
    raise ExportError(
        f"cannot export a {type(model).__name__}: supported meta-architectures are "
        f"{list(_SUPPORTED)} and their subclasses"
    )


def _preprocess(model: nn.Module, image: Tensor) -> ImageList:
    """Normalize one (C, H, W) image and pad it for the backbone, with traceable sizes.

    The same arithmetic as the models' `preprocess_image` (bottom/right zero padding to a
    multiple of the size divisibility), but the sizes stay tensors while tracing, so that
    the exported graph pads images of any size correctly.
    """
    if image.dim() != 3 or image.shape[0] != model.pixel_mean.shape[0]:
        raise ValueError(
            f"image must be ({model.pixel_mean.shape[0]}, H, W), got {tuple(image.shape)}"
        )
    x = (image.to(model.pixel_mean) - model.pixel_mean) / model.pixel_std  # dtype and device
    h, w = image.shape[-2], image.shape[-1]
    stride = model.backbone.padding_constraints.get(
        "size_divisibility", model.backbone.size_divisibility
    )
    if model.backbone.padding_constraints.get("square_size", 0) > 0:
        raise ExportError("export: backbones with a square_size padding constraint are fixed-size")
    if stride > 1:
        pad_h = (h + (stride - 1)) // stride * stride - h
        pad_w = (w + (stride - 1)) // stride * stride - w
        x = F.pad(x, [0, pad_w, 0, pad_h], value=0.0)
    return ImageList(x.unsqueeze(0), [(h, w)])


def _instance_outputs(instances: Any, postprocess: str) -> dict[str, Tensor]:
    """Named tensors of one image's detections (see the module docstring)."""
    if postprocess == "inside":
        h, w = instances.image_size
        instances = detector_postprocess(instances, h, w)
    out = {
        "boxes": instances.pred_boxes.tensor,
        "scores": instances.scores,
        "classes": instances.pred_classes,
    }
    if instances.has("pred_masks"):
        out["masks" if postprocess == "inside" else "mask_probs"] = instances.pred_masks
    if instances.has("pred_keypoints"):
        out["keypoints"] = instances.pred_keypoints
    return out


def export_model_outputs(model: nn.Module, image: Tensor, postprocess: str) -> dict[str, Tensor]:
    """Run `model` on one image the traceable way and return its named output tensors.

    This is the function every format exports; comparing an exported model with it
    compares with eager mode.

    Args:
        model: a GeneralizedRCNN, RetinaNet, FCOS, SemanticSegmentor or PanopticFPN in eval
            mode.
        image: (C, H, W) image after the test-time resize, model's channel order, 0..255.
        postprocess: "outside" or "inside" (see the module docstring).
    """
    if postprocess not in ("outside", "inside"):
        raise ValueError(f"postprocess must be 'outside' or 'inside', got {postprocess!r}")
    arch = _meta_architecture(model)
    if arch == "PanopticFPN" and postprocess == "inside":
        raise ExportError(
            "PanopticFPN cannot be exported with postprocess='inside': the panoptic merge "
            "(combine_semantic_and_instance_outputs) is a Python loop over detections; "
            "export with postprocess='outside' and merge outside the graph"
        )
    images = _preprocess(model, image)
    features = model.backbone(images.tensor)
    out: dict[str, Tensor] = {}
    if arch in ("GeneralizedRCNN", "PanopticFPN"):
        proposals, _ = model.proposal_generator(images, features, None)
        results, _ = model.roi_heads(images, features, proposals, None)
        out.update(_instance_outputs(results[0], postprocess))
    elif arch in ("RetinaNet", "FCOS"):
        level_features = [features[f] for f in model.head_in_features]
        predictions = model.head(level_features)
        results = model.forward_inference(images, level_features, predictions)
        out.update(_instance_outputs(results[0], postprocess))
    if arch in ("SemanticSegmentor", "PanopticFPN"):
        sem_seg, _ = model.sem_seg_head(features, None)
        h, w = images.image_sizes[0]
        out["sem_seg"] = sem_seg[0, :, :h, :w]
    return out


def _adapter(model: nn.Module, image: Tensor, postprocess: str) -> tuple[TracingAdapter, list]:
    """A TracingAdapter (image) -> tuple of outputs, and the outputs' names in order."""
    if model.training:
        raise ValueError("export needs a model in eval mode: call model.eval() first")
    with torch.no_grad():
        names = list(export_model_outputs(model, image, postprocess))

    def inference(model: nn.Module, inputs: list[dict[str, Tensor]]) -> tuple[Tensor, ...]:
        return tuple(export_model_outputs(model, inputs[0]["image"], postprocess).values())

    return TracingAdapter(model, [{"image": image}], inference_func=inference), names


def _check_sample(image: Tensor) -> Tensor:
    if not isinstance(image, Tensor) or image.dim() != 3:
        shape = tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__
        raise ValueError(f"sample_inputs must be a (3, H, W) image tensor, got {shape}")
    return image.float()


def _sample_image(sample_inputs: Any) -> Tensor:
    """The image of `sample_inputs`: a (3, H, W) tensor or Detectron2's [{"image": ...}]."""
    if isinstance(sample_inputs, (list, tuple)):
        if len(sample_inputs) != 1 or not isinstance(sample_inputs[0], dict):
            raise ValueError("sample_inputs must be an image tensor or [{'image': tensor}]")
        sample_inputs = sample_inputs[0].get("image")
    return _check_sample(sample_inputs)


def _deploy_metadata(cfg: Any, arch: str, names: list[str]) -> dict[str, str]:
    """metadata_props of the deploy contract; MetadataCatalog supplies class names."""
    thing, stuff = [], []
    if cfg is not None and len(cfg.DATASETS.TEST):
        from heron.data.catalog import MetadataCatalog

        meta = MetadataCatalog.get(cfg.DATASETS.TEST[0])
        thing = list(getattr(meta, "thing_classes", []) or [])
        stuff = list(getattr(meta, "stuff_classes", []) or [])
    props = {
        "heron.format": DEPLOY_FORMAT,
        "meta_architecture": arch,
        "input_format": cfg.INPUT.FORMAT if cfg is not None else "BGR",
        "min_size_test": str(cfg.INPUT.MIN_SIZE_TEST) if cfg is not None else "",
        "max_size_test": str(cfg.INPUT.MAX_SIZE_TEST) if cfg is not None else "",
        "thing_classes": json.dumps(thing),
        "stuff_classes": json.dumps(stuff),
        "mask_threshold": "0.5",
        "outputs": json.dumps(names),
    }
    if arch == "PanopticFPN" and cfg is not None:
        combine = cfg.MODEL.PANOPTIC_FPN.COMBINE
        props["panoptic_overlap_thresh"] = str(combine.OVERLAP_THRESH)
        props["panoptic_stuff_area_limit"] = str(combine.STUFF_AREA_LIMIT)
        props["panoptic_instances_score_thresh"] = str(combine.INSTANCES_CONFIDENCE_THRESH)
    return props


def export_onnx(
    model: nn.Module,
    sample_inputs: Any,
    path: str,
    *,
    opset: int = 17,
    postprocess: str = "outside",
    dynamic: bool = True,
    cfg: Any = None,
) -> str:
    """Export `model` to an ONNX file, checked by `onnx.checker`.

    Args:
        model: a supported meta-architecture in eval mode.
        sample_inputs: a (3, H, W) image (or ``[{"image": image}]``) to trace with.
        path: the .onnx file to write.
        opset: ONNX opset, >= 17.
        postprocess: "outside" (deployment form) or "inside" (see the module docstring).
        dynamic: make H, W and the number of detections dynamic axes.
        cfg: the model's config, for the deploy metadata (input format, test sizes, class
            names from DATASETS.TEST[0], panoptic thresholds); without it the format is
            "BGR" and the sizes are empty.

    Returns:
        `path`.
    """
    import onnx

    if opset < 17:
        raise ValueError(f"opset must be >= 17, got {opset}")
    arch = _meta_architecture(model)
    image = _sample_image(sample_inputs)
    adapter, names = _adapter(model, image, postprocess)
    axes: dict[str, dict[int, str]] = {}
    if dynamic:
        axes["image"] = {1: "height", 2: "width"}
        for name in names:
            axes[name] = {1: "height", 2: "width"} if name == "sem_seg" else {0: "detections"}
            if name == "masks":
                axes[name] = {0: "detections", 1: "height", 2: "width"}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            # torchvision scripts its batched NMS helper while tracing (not our call)
            warnings.filterwarnings("ignore", message=".*torch.jit.script.* is deprecated")
            torch.onnx.export(
                adapter,
                (image,),
                path,
                dynamo=False,
                opset_version=opset,
                input_names=["image"],
                output_names=names,
                dynamic_axes=axes or None,
            )
    except Exception as e:
        raise ExportError(f"{arch} cannot be exported to ONNX: {type(e).__name__}: {e}") from e
    finally:
        model.eval()  # the exporter may leave the module in another mode
    proto = onnx.load(path)
    del proto.metadata_props[:]
    for key, value in _deploy_metadata(cfg, arch, names).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(proto)
    onnx.save(proto, path)
    return path


def export_torchscript(
    model: nn.Module, sample_inputs: Any, path: str, *, postprocess: str = "outside"
) -> str:
    """Trace `model` with `torch.jit.trace` and save it with its output names.

    See the module docstring for what a trace fixes to the sample.

    Returns:
        `path`.
    """
    arch = _meta_architecture(model)
    image = _sample_image(sample_inputs)
    adapter, names = _adapter(model, image, postprocess)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", message=".*torch.jit.script.* is deprecated")
            traced = torch.jit.trace(adapter, (image,), check_trace=False)
    except Exception as e:
        raise ExportError(f"{arch} cannot be traced to TorchScript: {type(e).__name__}: {e}") from e
    torch.jit.save(traced, path, _extra_files={_NAMES_FILE: json.dumps(names)})
    return path


def _keypoint_export_bound(model: nn.Module) -> Any:
    """A context in which torch.export can capture the model's keypoint decoding.

    The decoding is unrolled for the most detections the box predictor keeps per image
    (TEST.DETECTIONS_PER_IMAGE); see `heron.structures.keypoints.export_region_bound`.
    """
    roi_heads = getattr(model, "roi_heads", None)
    if not getattr(roi_heads, "keypoint_on", False):
        return contextlib.nullcontext()
    predictor = roi_heads.box_predictor
    if isinstance(predictor, nn.ModuleList):  # cascade: the last stage keeps the detections
        predictor = predictor[-1]
    bound = predictor.test_topk_per_image
    if bound < 0:
        raise ExportError(
            "a keypoint model with TEST.DETECTIONS_PER_IMAGE < 0 (no limit) cannot be exported "
            "with torch.export: its keypoint decoding is unrolled once per possible detection; "
            "set TEST.DETECTIONS_PER_IMAGE"
        )
    return export_region_bound(bound)


def export_torch_export(
    model: nn.Module,
    sample_inputs: Any,
    path: str,
    *,
    postprocess: str = "outside",
    dynamic: bool = True,
) -> str:
    """Export with `torch.export.export` (dynamic H and W) and save with `torch.export.save`.

    Raises:
        ExportError: a keypoint model without a detection cap (see the module docstring),
            or the exporter cannot capture the model (its reason is included).

    Returns:
        `path`.
    """
    arch = _meta_architecture(model)
    image = _sample_image(sample_inputs)
    adapter, names = _adapter(model, image, postprocess)
    shapes = None
    if dynamic:
        # forward(*args): the varargs are one tuple, hence the extra nesting
        shapes = (({1: torch.export.Dim.AUTO, 2: torch.export.Dim.AUTO},),)
    try:
        with _keypoint_export_bound(model):
            program = torch.export.export(adapter, (image,), dynamic_shapes=shapes, strict=False)
    except Exception as e:
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        # the exporter names the model line it stopped at in a 'File "..."' line
        where = [line for line in lines if line.startswith("File ") and "heron" in line]
        raise ExportError(
            f"{arch} cannot be exported with torch.export: {type(e).__name__}: "
            + " ".join(lines[:2])
            + (f" at {where[-1]}" if where else "")
        ) from e
    finally:
        model.eval()
    torch.export.save(program, path, extra_files={_NAMES_FILE: json.dumps(names)})
    return path


def load_exported(path: str) -> tuple[Any, list[str]]:
    """Load an exported file by its extension: (runner, output names).

    .onnx gives an onnxruntime InferenceSession, .pt2 an ExportedProgram's module, and
    anything else a TorchScript module.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no exported model at {path!r}")
    if path.endswith(".onnx"):
        import onnxruntime as ort

        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        return session, [o.name for o in session.get_outputs()]
    extra = {_NAMES_FILE: ""}
    if path.endswith(".pt2"):
        program = torch.export.load(path, extra_files=extra)
        return program.module(), json.loads(extra[_NAMES_FILE])
    module = torch.jit.load(path, _extra_files=extra)
    return module, json.loads(extra[_NAMES_FILE])


def run_exported(path: str, image: Tensor | np.ndarray) -> dict[str, Tensor]:
    """Run an exported model on one (3, H, W) image and return its named outputs.

    Args:
        path: a file written by `export_onnx` (.onnx), `export_torch_export` (.pt2) or
            `export_torchscript` (other extensions).
        image: (3, H, W) float32 image as the exported model expects.
    """
    runner, names = load_exported(path)
    image = torch.as_tensor(image, dtype=torch.float32)
    if path.endswith(".onnx"):
        values = runner.run(None, {"image": image.numpy()})
        return {n: torch.from_numpy(np.asarray(v)) for n, v in zip(names, values)}
    with torch.no_grad():
        values = runner(image)
    return dict(zip(names, values))
