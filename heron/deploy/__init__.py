"""Deploy exported Heron models with onnxruntime, numpy and Pillow only (no PyTorch).

Export once (with PyTorch), then predict anywhere onnxruntime runs::

    # pip install onnxruntime numpy pillow    (no torch needed on the deploy machine)
    from heron.deploy import OnnxPredictor

    predictor = OnnxPredictor("mask_rcnn.onnx")        # a "heron-deploy-v1" model file
    out = predictor("street.jpg")                       # or a PIL.Image, or an RGB uint8 array
    # out = predictor(cv2.imread("street.jpg"), format="BGR")   # OpenCV arrays are BGR
    for box, score, name in zip(out["boxes"], out["scores"], out["class_names"]):
        print(f"{name:>12s} {score:.2f} {box.round(1)}")   # XYXY in original pixels
    masks = out.get("masks")                            # (N, H, W) bool, for mask models
    labels = out.get("sem_seg")                         # (H, W) labels, for semantic models

Importing this package never imports torch.
"""

from heron.deploy.postprocess import (
    combine_semantic_and_instance_outputs,
    detector_postprocess,
    get_output_shape,
    interpolate_bilinear,
    paste_masks_in_image,
    resize_shortest_edge,
    sem_seg_postprocess,
)
from heron.deploy.predictor import FORMAT_KEY, FORMAT_VERSION, OnnxPredictor, load_image

__all__ = [
    "FORMAT_KEY",
    "FORMAT_VERSION",
    "OnnxPredictor",
    "combine_semantic_and_instance_outputs",
    "detector_postprocess",
    "get_output_shape",
    "interpolate_bilinear",
    "load_image",
    "paste_masks_in_image",
    "resize_shortest_edge",
    "sem_seg_postprocess",
]
