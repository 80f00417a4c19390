"""``DetectionCheckpointer``: loads Detectron2, Detectron1/Caffe2 and torchvision weights.

On top of :class:`Checkpointer` it reads

- Detectron2 model-zoo ``.pkl`` files (``{"model": arrays, "__author__": ...}``) and
  Detectron1/Caffe2 ``.pkl`` files (renamed with :mod:`c2_model_loading`), through a
  restricted unpickler;
- pycls ``.pyth`` files and ``.pth`` files, including bare state_dicts;
- torchvision ResNet state_dicts, renamed to Detectron2's names on the fly;

and matches names by suffix ("matching heuristics") for Caffe2 files, files that ask for it,
and paths ending in ``?matching_heuristics=True``.
"""

from __future__ import annotations

import logging
import os
from typing import Any
from urllib.parse import ParseResult, parse_qs, urlparse

import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from heron.checkpoint.c2_model_loading import align_and_update_state_dicts
from heron.checkpoint.checkpointer import Checkpointer, _IncompatibleKeys, _strip_prefix_if_present
from heron.checkpoint.torchvision_conversion import (
    convert_torchvision_resnet,
    is_torchvision_resnet,
)
from heron.utils import comm
from heron.utils.file_io import PathManager
from heron.utils.safe_pickle import load_pickle

__all__ = ["DetectionCheckpointer"]

logger = logging.getLogger(__name__)


class DetectionCheckpointer(Checkpointer):
    """A :class:`Checkpointer` that also reads Detectron1/2 zoo and torchvision checkpoints.

    In distributed training, a checkpoint that only the main process can read is loaded
    there and broadcast to the other processes.

    Args:
        model: the model, possibly wrapped in DistributedDataParallel.
        save_dir: where checkpoints are saved; "" disables saving.
        save_to_disk: whether this process writes files; default: only the main process.
        checkpointables: as in :class:`Checkpointer`.
    """

    def __init__(
        self,
        model: nn.Module,
        save_dir: str = "",
        *,
        save_to_disk: bool | None = None,
        **checkpointables: Any,
    ) -> None:
        self._ddp_model = model if isinstance(model, DistributedDataParallel) else None
        super().__init__(
            model,
            save_dir,
            save_to_disk=comm.is_main_process() if save_to_disk is None else save_to_disk,
            **checkpointables,
        )
        self.logger = logger
        self.path_manager = PathManager
        self._parsed_url_during_load: ParseResult | None = None

    def load(self, path: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """Load ``path`` (a file, URL or zoo path, optionally with a query); see
        :meth:`Checkpointer.load` for the arguments and return value.

        Raises:
            FileNotFoundError: in distributed training, the main process cannot read
                ``path``.
            ValueError: the URL has a query other than ``matching_heuristics``.
        """
        assert self._parsed_url_during_load is None, "load() is not re-entrant"
        self.logger.info("[DetectionCheckpointer] Loading from %s ...", path)
        need_sync = False
        try:
            if path:
                self._parsed_url_during_load = urlparse(path)
                path = self._parsed_url_during_load._replace(query="").geturl()
                path = self.path_manager.get_local_path(path)
            if path and self._ddp_model is not None:
                need_sync, readable = self._check_readable_by_all(path)
                if not readable:
                    path = ""  # this process loads nothing and receives the weights below
            ret = super().load(path, *args, **kwargs)
        finally:
            self._parsed_url_during_load = None
        if need_sync:
            self.logger.info("Broadcasting model states from main worker ...")
            for tensor in self.model.state_dict().values():
                dist.broadcast(tensor, src=0)
        return ret

    def _check_readable_by_all(self, path: str) -> tuple[bool, bool]:
        """Return (some process cannot read ``path``, this process can)."""
        has_file = os.path.isfile(path)
        all_have_file = comm.all_gather(has_file)
        if not all_have_file[0]:
            raise FileNotFoundError(f"File {path} not found on main worker.")
        if not all(all_have_file):
            self.logger.warning(
                "Not all workers can read checkpoint %s; the main worker's copy is "
                "broadcast to the others, but checkpointables (optimizer, ...) will be "
                "restored only where the file is readable.",
                path,
            )
            return True, has_file
        return False, has_file

    def _load_file(self, filename: str) -> dict[str, Any]:
        """Read a ``.pkl``, ``.pyth`` or ``.pth`` checkpoint into a dict with "model".

        Raises:
            UnsafePickleError: a ``.pkl`` file holds anything but containers, numbers,
                strings and numpy arrays.
            ValueError: the file is corrupt or not a checkpoint; an unsupported URL query.
        """
        if filename.endswith(".pkl"):
            checkpoint = self._load_pkl(filename)
        elif filename.endswith(".pyth"):
            # pycls (no one else seems to use ".pyth")
            data = self._torch_load(filename)
            if "model_state" not in data:
                raise ValueError(
                    f"Cannot load .pyth file {filename}: pycls checkpoints must contain "
                    f"'model_state'; found keys {sorted(map(str, data))[:10]}"
                )
            model_state = {
                k: v
                for k, v in data["model_state"].items()
                if not k.endswith("num_batches_tracked")
            }
            checkpoint = {"model": model_state, "__author__": "pycls", "matching_heuristics": True}
        else:
            checkpoint = self._torch_load(filename)
            if "model" not in checkpoint:
                checkpoint = {"model": checkpoint}
        self._apply_url_query(checkpoint)
        return checkpoint

    def _load_pkl(self, filename: str) -> dict[str, Any]:
        data = load_pickle(filename)
        if not isinstance(data, dict):
            raise ValueError(
                f"{filename} holds a {type(data).__name__}; expected a dict of weights"
            )
        if "model" in data and "__author__" in data:
            # Detectron2 model-zoo format
            self.logger.info("Reading a file from '%s'", data["__author__"])
            return data
        # Caffe2 / Detectron1 model zoo: detection models wrap their weights in "blobs",
        # ImageNet models do not
        if "blobs" in data:
            data = data["blobs"]
        data = {k: v for k, v in data.items() if not k.endswith("_momentum")}
        return {"model": data, "__author__": "Caffe2", "matching_heuristics": True}

    def _apply_url_query(self, checkpoint: dict[str, Any]) -> None:
        """Honour ``?matching_heuristics=True`` on the path being loaded."""
        if self._parsed_url_during_load is None:  # _load_file called outside load()
            return
        queries = parse_qs(self._parsed_url_during_load.query)
        if queries.pop("matching_heuristics", ["False"]) == ["True"]:
            checkpoint["matching_heuristics"] = True
        if queries:
            raise ValueError(
                f"Unsupported query remaining: {queries}; the only supported query is "
                f"'matching_heuristics=True'. Original path: "
                f"{self._parsed_url_during_load.geturl()}"
            )

    def _torch_load(self, f: str) -> dict[str, Any]:
        return super()._load_file(f)

    def _load_model(self, checkpoint: dict[str, Any]) -> _IncompatibleKeys:
        """Load with name conversion and matching where the checkpoint needs them.

        Returns:
            As :meth:`Checkpointer._load_model`, leaving out missing ``pixel_mean`` /
            ``pixel_std`` (set from the config) and unexpected
            ``anchor_generator.cell_anchors`` (no longer saved).
        """
        state_dict = checkpoint.get("model")
        if isinstance(state_dict, dict):
            self._maybe_convert_torchvision(checkpoint)
            if checkpoint.get("matching_heuristics", False):
                self._convert_ndarray_to_tensor(checkpoint["model"])
                checkpoint["model"] = align_and_update_state_dicts(
                    self.model.state_dict(),
                    checkpoint["model"],
                    c2_conversion=checkpoint.get("__author__") == "Caffe2",
                )
        incompatible = super()._load_model(checkpoint)

        model_buffers = dict(self.model.named_buffers(recurse=False))
        for k in ("pixel_mean", "pixel_std"):
            # old checkpoints lack them; the model has them from its config anyway
            if k in model_buffers and k in incompatible.missing_keys:
                incompatible.missing_keys.remove(k)
        for k in list(incompatible.unexpected_keys):
            # saved by old Detectron2 versions; now a non-persistent buffer
            if "anchor_generator.cell_anchors" in k:
                incompatible.unexpected_keys.remove(k)
        return incompatible

    def _maybe_convert_torchvision(self, checkpoint: dict[str, Any]) -> None:
        """Rename a torchvision ResNet state_dict in place, unless the model uses its names."""
        state_dict = checkpoint["model"]
        _strip_prefix_if_present(state_dict, "module.")
        if not is_torchvision_resnet(state_dict):
            return
        model_keys = self.model.state_dict().keys()
        if any(k in model_keys for k in state_dict):
            return  # the model itself has torchvision names
        self.logger.info("Converting torchvision ResNet weights to Detectron2 names")
        checkpoint["model"] = convert_torchvision_resnet(state_dict)
        checkpoint["matching_heuristics"] = True
        checkpoint.setdefault("__author__", "torchvision")
