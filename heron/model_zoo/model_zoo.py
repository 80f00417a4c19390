"""Heron's model zoo API, with detectron2.model_zoo's names: configs shipped with the
package, and the URLs of Detectron2's published checkpoints.

    cfg = get_config("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml", trained=True)
    model = get("COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml", trained=True, device="cpu")

Checkpoints download once into ``$HERON_CACHE`` (default ``~/.cache/heron``), resuming a cut
download; ``download_checkpoint`` fetches one without building a model (``heron zoo
download``). Without network access, the error names the URL and the file to create.
"""

from __future__ import annotations

import difflib
import os
from typing import Any

from heron.model_zoo.urls import CHECKPOINT_SUFFIXES, zoo_base_url

__all__ = [
    "download_checkpoint",
    "get",
    "get_checkpoint_url",
    "get_config",
    "get_config_file",
    "list_config_files",
]

_CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")


def list_config_files() -> list[str]:
    """Names (paths relative to the configs folder, with "/") of every shipped YAML or
    Python config, sorted; each is a valid argument of :func:`get_config_file`."""
    found = []
    for folder, _dirs, files in os.walk(_CONFIG_DIR):
        for name in files:
            if name.endswith((".yaml", ".yml", ".py")) and name != "__init__.py":
                rel = os.path.relpath(os.path.join(folder, name), _CONFIG_DIR)
                found.append(rel.replace(os.sep, "/"))
    return sorted(found)


def get_config_file(config_path: str) -> str:
    """Return the absolute path of a config shipped with Heron.

    Args:
        config_path: path relative to the zoo's ``configs/`` folder, as in Detectron2,
            e.g. ``"COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml"``.

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


def _entry_name(config_path: str) -> str:
    for ext in (".yaml", ".yml", ".py"):
        if config_path.endswith(ext):
            return config_path[: -len(ext)]
    return config_path


def get_checkpoint_url(config_path: str) -> str:
    """The URL of the checkpoint Detectron2 published for a zoo config.

    Args:
        config_path: e.g. "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml" (the
            extension may be left out).

    Returns:
        ``<base>/<config name>/<model id>/model_final_<suffix>.pkl``, with base
        ``$HERON_MODEL_ZOO_URL`` or Detectron2's server.

    Raises:
        KeyError: no trained model is published for that config (close names listed).
    """
    name = _entry_name(config_path)
    suffix = CHECKPOINT_SUFFIXES.get(name)
    if suffix is None:
        close = difflib.get_close_matches(name, list(CHECKPOINT_SUFFIXES), n=5, cutoff=0.5)
        hint = f" Close matches: {', '.join(close)}." if close else ""
        raise KeyError(f"No trained model is published for {config_path!r}.{hint}")
    return f"{zoo_base_url()}{name}/{suffix}"


def download_checkpoint(config_path: str, *, force: bool = False) -> str:
    """Download the published checkpoint of `config_path` into the cache (resuming a
    partial download) and return its local path; a cached copy is returned as it is."""
    from heron.utils.file_io import PathManager

    return PathManager.get_local_path(get_checkpoint_url(config_path), force=force)


def get_config(config_path: str, trained: bool = False) -> Any:
    """The config of a zoo entry: a CfgNode for ``.yaml``, a LazyConfig for ``.py``.

    Args:
        config_path: a name as for :func:`get_config_file`.
        trained: set the weights to the published checkpoint's URL (MODEL.WEIGHTS, or
            ``train.init_checkpoint`` of a lazy config).

    Raises:
        KeyError: `trained` is set and no checkpoint is published for the config.
        ValueError: `trained` is set for a lazy config without ``train.init_checkpoint``.
    """
    path = get_config_file(config_path)
    if path.endswith(".py"):
        from heron.config import LazyConfig

        cfg = LazyConfig.load(path)
        if trained:
            url = get_checkpoint_url(config_path)
            if "train" not in cfg or "init_checkpoint" not in cfg.train:
                raise ValueError(
                    f"{config_path}: a lazy config needs train.init_checkpoint to take the "
                    f"trained weights {url}"
                )
            cfg.train.init_checkpoint = url
        return cfg
    from heron.config import get_cfg

    cfg = get_cfg()
    cfg.merge_from_file(path)
    if trained:
        cfg.MODEL.WEIGHTS = get_checkpoint_url(config_path)
    return cfg


def get(config_path: str, trained: bool = False, device: str | None = None) -> Any:
    """A model of the zoo, built and with its weights loaded (in training mode, as
    Detectron2's ``model_zoo.get``).

    Args:
        config_path: a name as for :func:`get_config_file`.
        trained: load the published checkpoint (downloaded once into the cache); else the
            config's own MODEL.WEIGHTS / ``train.init_checkpoint``.
        device: where the model lives; default the config's, or "cpu" when CUDA is
            missing.
    """
    import torch

    from heron.checkpoint import DetectionCheckpointer
    from heron.config import CfgNode

    cfg = get_config(config_path, trained)
    if device is None and not torch.cuda.is_available():
        device = "cpu"
    if isinstance(cfg, CfgNode):
        from heron.modeling import build_model

        if device is not None:
            cfg.MODEL.DEVICE = device
        model = build_model(cfg)
        DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
        return model
    from heron.config import instantiate

    model = instantiate(cfg.model)
    if device is not None:
        model = model.to(device)
    if "train" in cfg and cfg.train.get("init_checkpoint"):
        DetectionCheckpointer(model).load(cfg.train.init_checkpoint)
    return model
