"""Heron's model zoo: Detectron2's model-zoo configs, shipped with the package, and the
published checkpoints' URLs (``detectron2.model_zoo``'s API).

The files under ``heron/model_zoo/configs`` keep Detectron2's relative paths and published
hyper-parameters (``COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml``, ``Base-RCNN-FPN.yaml``,
...), so the functions take the same names as ``detectron2.model_zoo``::

    cfg = get_cfg()
    cfg.merge_from_file(get_config_file("COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml"))
"""

from heron.model_zoo.model_zoo import (
    download_checkpoint,
    get,
    get_checkpoint_url,
    get_config,
    get_config_file,
    list_config_files,
)

__all__ = [
    "download_checkpoint",
    "get",
    "get_checkpoint_url",
    "get_config",
    "get_config_file",
    "list_config_files",
]
