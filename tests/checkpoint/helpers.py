"""Shared pieces of the checkpoint tests: log capture and Detectron2-shaped tiny modules."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import torch
from torch import nn


@contextlib.contextmanager
def captured_records(logger_name: str) -> Iterator[list[logging.LogRecord]]:
    """All records of one logger at DEBUG and above, independent of propagation."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler(level=logging.DEBUG)
    handler.emit = records.append
    log = logging.getLogger(logger_name)
    old_level = log.level
    log.setLevel(logging.DEBUG)
    log.addHandler(handler)
    try:
        yield records
    finally:
        log.removeHandler(handler)
        log.setLevel(old_level)


class FrozenBN(nn.Module):
    """Buffers named like Detectron2's FrozenBatchNorm2d."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.register_buffer("weight", torch.ones(channels))
        self.register_buffer("bias", torch.zeros(channels))
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))


class ConvNorm(nn.Conv2d):
    """Detectron2's Conv2d layout: the norm is a child named "norm"."""

    def __init__(self, cin: int, cout: int, k: int) -> None:
        super().__init__(cin, cout, k, bias=False)
        self.norm = FrozenBN(cout)
