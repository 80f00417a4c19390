"""Experiment-tracker writers: Weights & Biases and MLflow, both usable offline.

They are ``EventWriter``s like ``JSONWriter``: a trainer calls ``write()`` inside its
``EventStorage`` and ``close()`` at the end. Each logs the scalars put since its previous
write at ``step = iteration``, smoothed as ``EventStorage.latest_with_smoothing_hint``.
Detectron2 has neither writer; the names and arguments are Heron's.

The libraries are optional extras (``pip install 'heron[wandb]'``, ``'heron[mlflow]'``) and
are imported only when a writer is created.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from heron.utils.events import EventWriter, _scalars_since, get_event_storage

__all__ = ["MLflowWriter", "WandbWriter", "flatten_config"]

logger = logging.getLogger(__name__)


def flatten_config(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten a nested config into ``{"dotted.key": value}``.

    Args:
        config: a dict, ``CfgNode`` or omegaconf ``DictConfig``; nested mappings are
            descended into, every other value (lists included) is kept as it is.
        prefix: prepended to every key, e.g. ``"MODEL."``.

    Returns:
        e.g. ``{"MODEL.RPN.IOU_THRESHOLDS": [0.3, 0.7], "SOLVER.BASE_LR": 0.02}``.

    Raises:
        TypeError: if ``config`` is not a mapping.
    """
    if type(config).__name__ == "DictConfig":  # LazyConfig; keep "${...}" unresolved
        from omegaconf import OmegaConf

        config = OmegaConf.to_container(config, resolve=False)
    if not isinstance(config, Mapping):
        raise TypeError(f"config must be a dict, CfgNode or DictConfig, got {type(config)}")
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) or type(value).__name__ == "DictConfig":
            flat.update(flatten_config(value, prefix=name + "."))
        else:
            flat[name] = value
    return flat


def _to_hwc_uint8(img: Any) -> np.ndarray:
    """Convert a ``put_image`` image, (C, H, W) float in [0, 1] or uint8, to (H, W, C) uint8."""
    if isinstance(img, torch.Tensor):
        img = img.detach().cpu().numpy()
    img = np.asarray(img)
    if img.ndim == 3 and img.shape[0] in (1, 3, 4):  # channels first, as put_image documents
        img = img.transpose(1, 2, 0)
    if img.ndim == 3 and img.shape[-1] == 1:
        img = img[..., 0]
    if img.dtype != np.uint8:
        img = np.clip(np.rint(img.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)
    return img


class WandbWriter(EventWriter):
    """Log scalars and images to a Weights & Biases run.

    Works without a network with ``mode="offline"`` (or the environment variable
    ``WANDB_MODE=offline``, which wandb reads when ``mode`` is None): the run is kept under
    ``<dir>/wandb/offline-run-*`` and can be uploaded later with ``wandb sync``.

    Images queued with ``EventStorage.put_image`` are logged at the iteration they were put
    and then cleared from the storage. As with ``TensorboardXWriter``, one writer consumes
    them: with both writers, the first in the list gets the images (wandb can also mirror
    TensorBoard with ``sync_tensorboard=True``).
    """

    def __init__(
        self,
        project: str = "heron",
        config: Mapping[str, Any] | None = None,
        mode: str | None = None,
        dir: str | None = None,
        window_size: int = 20,
        **init_kwargs: Any,
    ) -> None:
        """Start the run (``wandb.init``).

        Args:
            project: the W&B project.
            config: a dict or ``CfgNode`` recorded as the run's config, flattened to dotted
                keys (``"SOLVER.BASE_LR"``).
            mode: ``"online"``, ``"offline"`` or ``"disabled"``; None lets wandb decide
                (``WANDB_MODE``, then its settings).
            dir: the directory that holds the ``wandb/`` folder; None for wandb's default.
            window_size: the median window, in iterations, of scalars with a smoothing hint.
            init_kwargs: passed to ``wandb.init`` (``name``, ``tags``, ``group``, ...).

        Raises:
            ImportError: if wandb is not installed.
        """
        try:
            import wandb
        except ImportError as e:
            raise ImportError("WandbWriter needs wandb: pip install 'heron[wandb]'") from e
        self._wandb = wandb
        self._window_size = window_size
        self._last_write = -1
        self._last_step = -1
        if dir is not None:
            os.makedirs(dir, exist_ok=True)
        self._run = wandb.init(
            project=project,
            config=flatten_config(config) if config is not None else None,
            mode=mode,
            dir=dir,
            **init_kwargs,
        )

    @property
    def run(self) -> Any:
        """The ``wandb`` run being written to."""
        return self._run

    def write(self) -> None:
        """Log the scalars put since the last write and the queued images."""
        storage = get_event_storage()
        rows = _scalars_since(storage, self._window_size, self._last_write)
        for itr in rows:
            self._last_write = max(self._last_write, itr)
        for img_name, img, step in storage._vis_data:
            image = self._wandb.Image(_to_hwc_uint8(img))
            rows.setdefault(int(step), {})[img_name] = image
        storage.clear_images()
        for step in sorted(rows):
            if step < self._last_step:
                # wandb ignores a step below one already logged; say so rather than lose it
                logger.warning(
                    "WandbWriter: dropping %s at iteration %d, after iteration %d was logged",
                    sorted(rows[step]),
                    step,
                    self._last_step,
                )
                continue
            self._run.log(rows[step], step=step)
            self._last_step = step

    def close(self) -> None:
        """Finish the run (flushes it to disk, or to the server when online)."""
        self._run.finish()


# MLflow accepts metric and param names made of these characters (it also allows ":" except
# on Windows; we leave it out so runs move between machines).
_MLFLOW_BAD_CHARS = re.compile(r"[^\w./\- ]")
_MLFLOW_MAX_KEY_LENGTH = 250
_MLFLOW_MAX_BATCH_METRICS = 1000
_MLFLOW_MAX_BATCH_PARAMS = 100


def _mlflow_key(name: str) -> str:
    """Turn a metric or param name into one MLflow accepts.

    Characters other than letters, digits, ``_ - . /`` and space become ``_``; empty path
    segments (a leading, trailing or doubled ``/``) are dropped and ``.``/``..`` segments
    become ``_`` (MLflow refuses names that change under path normalisation); the result is
    cut to 250 characters. ``"roi_head/[metric] acc:top1"`` becomes
    ``"roi_head/_metric_ acc_top1"``.
    """
    segments = [s for s in _MLFLOW_BAD_CHARS.sub("_", name).split("/") if s]
    segments = ["_" if s in (".", "..") else s for s in segments]
    return ("/".join(segments) or "_")[:_MLFLOW_MAX_KEY_LENGTH]


def _to_file_uri(tracking_uri: str) -> str:
    """Return ``tracking_uri``, with a plain directory path made a ``file://`` URI."""
    if "://" in tracking_uri or re.match(r"^[a-z][a-z0-9+.-]*:", tracking_uri):
        return tracking_uri  # file:, http(s):, databricks, sqlite:, ...
    return Path(tracking_uri).expanduser().resolve().as_uri()


class MLflowWriter(EventWriter):
    """Log scalars to an MLflow run, e.g. in a local directory with no server.

    ``tracking_uri`` can be a server, a database URI or a directory (``"file:///abs/path"`` or
    a plain path ``"./mlruns"``). MLflow 3 keeps its file store behind the environment variable
    ``MLFLOW_ALLOW_FILE_STORE``; when you pass a directory, this writer sets it to ``true``
    unless it is already set, since asking for a directory is asking for the file store.

    MLflow refuses some characters in names, so scalar and param names are sanitised: any
    character other than letters, digits, ``_ - . /`` and space becomes ``_``, empty or
    ``.``/``..`` path segments are removed or replaced, and names are cut to 250 characters
    (``"[metric] acc:top1"`` is logged as ``"_metric_ acc_top1"``). Two names that sanitise to
    the same key are logged under it both, with a warning.
    """

    def __init__(
        self,
        tracking_uri: str | None = None,
        experiment_name: str = "heron",
        run_name: str | None = None,
        params: Mapping[str, Any] | None = None,
        window_size: int = 20,
    ) -> None:
        """Create (or reuse) the experiment and start a run.

        Args:
            tracking_uri: where to log; None for MLflow's default (``MLFLOW_TRACKING_URI``).
            experiment_name: the experiment, created when missing.
            run_name: the run's name; None lets MLflow pick one.
            params: a dict or ``CfgNode`` logged as the run's params, flattened to dotted keys
                (``"SOLVER.BASE_LR"``); values are logged as strings.
            window_size: the median window, in iterations, of scalars with a smoothing hint.

        Raises:
            ImportError: if mlflow (or mlflow-skinny) is not installed.
        """
        try:
            import mlflow
            from mlflow.entities import Metric, Param
            from mlflow.tracking import MlflowClient
        except ImportError as e:
            raise ImportError("MLflowWriter needs mlflow: pip install 'heron[mlflow]'") from e
        self._metric_cls = Metric
        self._window_size = window_size
        self._last_write = -1
        self._keys: dict[str, str] = {}  # scalar name -> MLflow key
        uri = _to_file_uri(tracking_uri if tracking_uri is not None else mlflow.get_tracking_uri())
        if uri.startswith("file:"):
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self._client = MlflowClient(tracking_uri=uri)
        experiment = self._client.get_experiment_by_name(experiment_name)
        if experiment is not None:
            experiment_id = experiment.experiment_id
        else:
            experiment_id = self._client.create_experiment(experiment_name)
        self._run_id: str = self._client.create_run(experiment_id, run_name=run_name).info.run_id
        if params:
            flat = flatten_config(params)
            entries = [Param(_mlflow_key(k), str(v)) for k, v in flat.items()]
            for start in range(0, len(entries), _MLFLOW_MAX_BATCH_PARAMS):
                batch = entries[start : start + _MLFLOW_MAX_BATCH_PARAMS]
                self._client.log_batch(self._run_id, params=batch)

    @property
    def run_id(self) -> str:
        """The MLflow run id."""
        return self._run_id

    @property
    def client(self) -> Any:
        """The ``MlflowClient`` bound to the tracking URI."""
        return self._client

    def _key(self, name: str) -> str:
        key = self._keys.get(name)
        if key is None:
            key = _mlflow_key(name)
            clash = [other for other, k in self._keys.items() if k == key]
            if clash:
                logger.warning(
                    "MLflowWriter: scalars %r and %r are both logged as %r", clash[0], name, key
                )
            self._keys[name] = key
        return key

    def write(self) -> None:
        """Log the scalars put since the last write, at ``step = iteration``."""
        storage = get_event_storage()
        timestamp = int(time.time() * 1000)
        metrics = []
        for itr, scalars in _scalars_since(storage, self._window_size, self._last_write).items():
            for name, value in scalars.items():
                metrics.append(self._metric_cls(self._key(name), float(value), timestamp, itr))
            self._last_write = max(self._last_write, itr)
        for start in range(0, len(metrics), _MLFLOW_MAX_BATCH_METRICS):
            batch = metrics[start : start + _MLFLOW_MAX_BATCH_METRICS]
            self._client.log_batch(self._run_id, metrics=batch)

    def close(self) -> None:
        """Mark the run finished."""
        self._client.set_terminated(self._run_id)
