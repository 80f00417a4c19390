"""Memory helpers: retry a function after a CUDA out-of-memory error, and peak memory use."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

import torch

__all__ = ["peak_memory_mb", "retry_if_cuda_oom"]

logger = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])


def _is_cuda_oom(e: BaseException) -> bool:
    # torch.OutOfMemoryError is what PyTorch raises; older code paths raise a plain
    # RuntimeError whose message Detectron2 matches on.
    return isinstance(e, torch.OutOfMemoryError) or (
        isinstance(e, RuntimeError) and "CUDA out of memory. " in str(e)
    )


def _maybe_to_cpu(x: Any) -> Any:
    """Move ``x`` to the CPU if it is a CUDA tensor (anything with ``.device`` and ``.to``)."""
    device = getattr(x, "device", None)
    if getattr(device, "type", None) == "cuda" and hasattr(x, "to"):
        return x.to(device="cpu")
    return x


def retry_if_cuda_oom(func: F) -> F:
    """Wrap ``func`` so that a CUDA out-of-memory error leads to retries, as in Detectron2.

    On an OOM error the wrapper empties PyTorch's CUDA cache and calls ``func`` again; if
    that also runs out of memory, it calls ``func`` a third time with every CUDA tensor among
    the positional and keyword arguments (top level only) moved to the CPU, and logs a
    warning. The function must then cope with CPU inputs; its outputs may be on the CPU.
    Errors other than OOM, and an error on the CPU attempt, propagate. The CUDA cache is
    only touched when CUDA is available.

    Example::

        output = retry_if_cuda_oom(pairwise_iou)(boxes1, boxes2)
    """

    @wraps(func)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except Exception as e:
            if not _is_cuda_oom(e):
                raise

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        try:
            return func(*args, **kwargs)
        except Exception as e:
            if not _is_cuda_oom(e):
                raise

        # A CPU run is much slower, so say that it is happening.
        logger.warning("Attempting to copy inputs of %s to CPU due to CUDA OOM", func)
        cpu_args = [_maybe_to_cpu(x) for x in args]
        cpu_kwargs = {k: _maybe_to_cpu(v) for k, v in kwargs.items()}
        return func(*cpu_args, **cpu_kwargs)

    return wrapped  # type: ignore[return-value]


def _peak_rss_bytes() -> int:
    """Peak resident set size of this process, in bytes."""
    try:
        import resource
    except ImportError:  # Windows: no resource module
        return _windows_peak_working_set_bytes()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # ru_maxrss is in bytes on macOS and in KiB on Linux and the BSDs
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024


def _windows_peak_working_set_bytes() -> int:
    import ctypes
    from ctypes import wintypes

    class _Counters(ctypes.Structure):
        _fields_ = [
            ("cb", wintypes.DWORD),
            ("PageFaultCount", wintypes.DWORD),
            ("PeakWorkingSetSize", ctypes.c_size_t),
            ("WorkingSetSize", ctypes.c_size_t),
            ("QuotaPeakPagedPoolUsage", ctypes.c_size_t),
            ("QuotaPagedPoolUsage", ctypes.c_size_t),
            ("QuotaPeakNonPagedPoolUsage", ctypes.c_size_t),
            ("QuotaNonPagedPoolUsage", ctypes.c_size_t),
            ("PagefileUsage", ctypes.c_size_t),
            ("PeakPagefileUsage", ctypes.c_size_t),
        ]

    counters = _Counters()
    counters.cb = ctypes.sizeof(counters)
    process = ctypes.windll.kernel32.GetCurrentProcess()  # type: ignore[attr-defined]
    ok = ctypes.windll.psapi.GetProcessMemoryInfo(  # type: ignore[attr-defined]
        process, ctypes.byref(counters), counters.cb
    )
    if not ok:
        raise OSError("GetProcessMemoryInfo failed; cannot read the peak working set")
    return int(counters.PeakWorkingSetSize)


def peak_memory_mb(device: torch.device | str | None = None) -> float:
    """Return the peak memory use, in MiB (2**20 bytes).

    On a CUDA device: ``torch.cuda.max_memory_allocated(device)``, the peak of memory held
    by tensors since the start or the last ``torch.cuda.reset_peak_memory_stats``. On the CPU:
    the process's peak resident set size (``resource.getrusage(...).ru_maxrss``; the peak
    working set on Windows), which covers everything the process holds, not only tensors,
    and cannot be reset.

    Args:
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"`` or a ``torch.device``; default CUDA when
            available, else the CPU.

    Raises:
        ValueError: for other device types (e.g. ``"mps"``), which keep no peak statistic.
    """
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    if device.type == "cpu":
        return _peak_rss_bytes() / 2**20
    raise ValueError(f"peak_memory_mb supports 'cuda' and 'cpu' devices, got {str(device)!r}")
