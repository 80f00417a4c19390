"""heron.checkpoint: save, load and convert model weights (Detectron2's ``detectron2.checkpoint``).

``DetectionCheckpointer`` reads Detectron2 and Detectron1/Caffe2 model-zoo files, ``.pth``
files and torchvision ResNets; ``Checkpointer`` and ``PeriodicCheckpointer`` carry fvcore's
API. ``.pkl`` files go through a restricted unpickler and ``.pth`` files through
``torch.load(weights_only=True)``; saves are atomic.
"""

from heron.checkpoint.c2_model_loading import (
    align_and_update_state_dicts,
    convert_basic_c2_names,
    convert_c2_detectron_names,
)
from heron.checkpoint.checkpointer import Checkpointer, PeriodicCheckpointer
from heron.checkpoint.detection_checkpoint import DetectionCheckpointer
from heron.checkpoint.torchvision_conversion import convert_torchvision_resnet
from heron.utils.safe_pickle import UnsafePickleError, load_pickle

__all__ = [
    "Checkpointer",
    "DetectionCheckpointer",
    "PeriodicCheckpointer",
    "UnsafePickleError",
    "align_and_update_state_dicts",
    "convert_basic_c2_names",
    "convert_c2_detectron_names",
    "convert_torchvision_resnet",
    "load_pickle",
]
