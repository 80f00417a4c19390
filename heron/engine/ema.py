"""Exponential moving average (EMA) of a model's weights, and the hook that keeps it.

Heron extension (Detectron2 has none; d2go has a similar hook). After every optimizer step
each averaged tensor becomes ``ema = decay * ema + (1 - decay) * weight``. Parameters and
floating-point buffers (BatchNorm statistics) are averaged; integer buffers (e.g.
``num_batches_tracked``) are copied. Averaged tensors are kept in float32 whatever the
model's dtype, so that small updates are not lost to rounding.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DataParallel, DistributedDataParallel

from heron.engine.train_loop import HookBase

__all__ = ["EMAHook", "ModelEMA"]

logger = logging.getLogger(__name__)


def _unwrap(model: nn.Module) -> nn.Module:
    if isinstance(model, (DistributedDataParallel, DataParallel)):
        return model.module
    return model


class ModelEMA:
    """An exponential moving average of a model's parameters and buffers.

    Attributes:
        decay: weight of the old average in each update, in [0, 1].
        device: where the average lives; None: where each model tensor is.
        num_updates: how many times :meth:`update` ran since the last reset or load.
    """

    def __init__(
        self, model: nn.Module, decay: float = 0.999, device: torch.device | str | None = None
    ) -> None:
        """
        Args:
            model: the model to average; a (Distributed)DataParallel wrapper is unwrapped.
                The average starts as a copy of its current weights.
            decay: see the attribute.
            device: see the attribute; "" means None (the config's default).
        """
        if not 0.0 <= float(decay) <= 1.0:
            raise ValueError(f"decay must be in [0, 1], got {decay}")
        self.decay = float(decay)
        self.device = torch.device(device) if device else None
        self.state: dict[str, torch.Tensor] = {}
        self.num_updates = 0
        self._restored = False
        self.reset(model)

    def _to_state(self, tensor: torch.Tensor) -> torch.Tensor:
        dtype = torch.float32 if tensor.is_floating_point() else tensor.dtype
        device = self.device if self.device is not None else tensor.device
        return tensor.detach().to(device=device, dtype=dtype, copy=True)

    def reset(self, model: nn.Module) -> None:
        """Restart the average from the model's current weights."""
        self.state = {k: self._to_state(v) for k, v in _unwrap(model).state_dict().items()}
        self.num_updates = 0
        self._restored = False

    @property
    def restored(self) -> bool:
        """Whether the average came from :meth:`load_state_dict` (not from a model)."""
        return self._restored

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the average towards the model's current weights: ``d * ema + (1 - d) * w``.

        Raises:
            KeyError: the model's state_dict keys differ from the average's.
        """
        model_state = _unwrap(model).state_dict()
        self._check_keys(model_state.keys(), "the model")
        d = self.decay
        for name, ema in self.state.items():
            w = model_state[name].detach().to(device=ema.device)
            if ema.is_floating_point():
                ema.mul_(d).add_(w.to(ema.dtype), alpha=1.0 - d)
            else:
                ema.copy_(w)
        self.num_updates += 1

    @contextlib.contextmanager
    def apply_to(self, model: nn.Module) -> Iterator[nn.Module]:
        """Put the averaged weights into ``model`` inside the block and restore them after.

        Use it to evaluate or save the EMA weights::

            with ema.apply_to(model):
                results = inference_on_dataset(model, loader, evaluator)

        The swap is in place (the model's tensors keep their identity and device), and the
        original weights come back even when the block raises.
        """
        model_state = _unwrap(model).state_dict()
        self._check_keys(model_state.keys(), "the model")
        backup = {k: v.detach().clone() for k, v in model_state.items()}
        try:
            with torch.no_grad():
                for name, target in model_state.items():
                    target.copy_(self.state[name])
            yield model
        finally:
            with torch.no_grad():
                for name, target in model_state.items():
                    target.copy_(backup[name])

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Return the averaged tensors by the model's state_dict keys.

        The result loads into the model itself (``model.load_state_dict``) to keep the EMA
        weights; the dict holds the live tensors, as ``nn.Module.state_dict`` does.
        """
        return dict(self.state)

    def load_state_dict(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        """Replace the average with ``state_dict`` (from :meth:`state_dict`).

        Raises:
            KeyError: the keys differ from the model's.
            ValueError: a tensor's shape differs from the model's.
        """
        self._check_keys(state_dict.keys(), "the EMA state_dict")
        for name, value in state_dict.items():
            current = self.state[name]
            if not isinstance(value, torch.Tensor):
                raise ValueError(
                    f"EMA state_dict[{name!r}] must be a tensor, got {type(value).__name__}"
                )
            if value.shape != current.shape:
                raise ValueError(
                    f"EMA state_dict[{name!r}] has shape {tuple(value.shape)}, the model's is "
                    f"{tuple(current.shape)}"
                )
            current.copy_(value.detach().to(device=current.device, dtype=current.dtype))
        self._restored = True

    def _check_keys(self, keys: Any, what: str) -> None:
        keys = set(keys)
        own = set(self.state)
        if keys != own:
            missing = sorted(own - keys)[:5]
            extra = sorted(keys - own)[:5]
            raise KeyError(
                f"{what} does not match the EMA's keys: missing {missing}, unexpected {extra} "
                "(first 5 of each)"
            )


class EMAHook(HookBase):
    """Updates a :class:`ModelEMA` after each training step.

    Its ``state_dict`` is the EMA's, so the trainer's checkpoints carry it with the hooks'
    states; pass ``save_state=False`` when the EMA is saved another way (DefaultTrainer
    saves it under the checkpoint's "ema" key). Before training, an average that was not restored from a checkpoint
    restarts from the model's current weights, which may have been loaded after the EMA was
    built (e.g. pretrained weights).
    """

    def __init__(self, model: nn.Module, ema: ModelEMA, *, save_state: bool = True) -> None:
        """
        Args:
            model: the trained model (possibly wrapped in DistributedDataParallel).
            ema: the average to update.
            save_state: include the average in the hook's ``state_dict``.
        """
        if not isinstance(ema, ModelEMA):
            raise TypeError(f"ema must be a ModelEMA, got {type(ema).__name__}")
        self.model = model
        self.ema = ema
        self.save_state = save_state

    def before_train(self) -> None:
        # an average that was neither restored nor updated yet is only a copy of the
        # weights at construction: refresh it
        if not self.ema.restored and self.ema.num_updates == 0:
            self.ema.reset(self.model)

    def after_step(self) -> None:
        self.ema.update(self.model)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.ema.state_dict() if self.save_state else {}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        self.ema.load_state_dict(state_dict)
