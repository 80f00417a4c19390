"""Export to ONNX, torch.export and TorchScript (Detectron2's ``detectron2.export``)."""

from heron.export.api import (
    DEPLOY_FORMAT,
    ExportError,
    export_model_outputs,
    export_onnx,
    export_torch_export,
    export_torchscript,
    load_exported,
    run_exported,
)
from heron.export.flatten import (
    DictSchema,
    IdentitySchema,
    InstancesSchema,
    ListSchema,
    TensorWrapSchema,
    TracingAdapter,
    TupleSchema,
    flatten_to_tuple,
)

__all__ = [
    "DEPLOY_FORMAT",
    "DictSchema",
    "ExportError",
    "IdentitySchema",
    "InstancesSchema",
    "ListSchema",
    "TensorWrapSchema",
    "TracingAdapter",
    "TupleSchema",
    "export_model_outputs",
    "export_onnx",
    "export_torch_export",
    "export_torchscript",
    "flatten_to_tuple",
    "load_exported",
    "run_exported",
]
