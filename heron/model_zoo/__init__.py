"""Heron's model zoo: Detectron2's model-zoo YAML configs, shipped with the package.

The files under ``heron/model_zoo/configs`` keep Detectron2's relative paths and published
hyper-parameters (``COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml``, ``Base-RCNN-FPN.yaml``,
...), so ``get_config_file`` takes the same names as ``detectron2.model_zoo``::

    cfg = get_cfg()
    cfg.merge_from_file(get_config_file("COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml"))
"""

from __future__ import annotations

import difflib
import os

__all__ = ["get_config_file", "list_config_files"]

_CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")


def list_config_files() -> list[str]:
    """Names (paths relative to the configs folder, with "/") of every shipped YAML config,
    sorted; each is a valid argument of :func:`get_config_file`."""
    found = []
    for folder, _dirs, files in os.walk(_CONFIG_DIR):
        for name in files:
            if name.endswith((".yaml", ".yml")):
                rel = os.path.relpath(os.path.join(folder, name), _CONFIG_DIR)
                found.append(rel.replace(os.sep, "/"))
    return sorted(found)


def get_config_file(config_path: str) -> str:
    """Return the absolute path of a config shipped with Heron.

    Args:
        config_path: path relative to the zoo's ``configs/`` folder, as in Detectron2,
            e.g. ``"COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml"``.

    Returns:
        The absolute path of the file.

    Raises:
        FileNotFoundError: naming ``config_path`` and listing close matches, if Heron does
            not ship that config (or the path leaves the configs folder).
    """
    rel = os.path.normpath(config_path)
    path = os.path.join(_CONFIG_DIR, rel)
    inside = not os.path.isabs(rel) and not rel.startswith(os.pardir)
    if inside and os.path.isfile(path):
        return path
    close = difflib.get_close_matches(config_path, list_config_files(), n=5, cutoff=0.5)
    hint = f" Close matches: {', '.join(close)}." if close else ""
    raise FileNotFoundError(
        f"{config_path!r} is not available in Heron's model zoo (looked in {_CONFIG_DIR}).{hint}"
    )
