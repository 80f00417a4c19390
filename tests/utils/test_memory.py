from __future__ import annotations

import logging
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from heron.utils.memory import peak_memory_mb, retry_if_cuda_oom

OOM_MESSAGE = "CUDA out of memory. Tried to allocate 2.00 GiB"


class _FlakyOnGPU:
    """Raises a CUDA OOM on its first ``fail_times`` calls, then returns its arguments."""

    def __init__(self, fail_times: int, error: Exception | None = None) -> None:
        self.fail_times = fail_times
        self.error = error or torch.OutOfMemoryError(OOM_MESSAGE)
        self.calls: list[tuple[tuple, dict]] = []

    def __call__(self, *args, **kwargs):
        self.calls.append((args, kwargs))
        if len(self.calls) <= self.fail_times:
            raise self.error
        return args, kwargs


class _FakeCudaTensor:
    """Looks like a CUDA tensor to the retry logic: a ``device`` and a ``to`` method."""

    def __init__(self) -> None:
        self.device = SimpleNamespace(type="cuda")

    def to(self, device):
        return ("moved to", device)


@pytest.fixture
def count_empty_cache(monkeypatch):
    """Pretend CUDA is available and count calls to torch.cuda.empty_cache."""
    counter = {"n": 0}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(
        torch.cuda, "empty_cache", lambda: counter.__setitem__("n", counter["n"] + 1)
    )
    return counter


# ---------------------------------------------------------------- retry_if_cuda_oom


def test_retry_returns_result_without_retry_when_no_error():
    func = _FlakyOnGPU(fail_times=0)
    assert retry_if_cuda_oom(func)(1, b=2) == ((1,), {"b": 2})
    assert len(func.calls) == 1


def test_retry_after_one_oom_empties_cache_and_keeps_arguments(count_empty_cache):
    func = _FlakyOnGPU(fail_times=1)
    t = torch.ones(2)
    args, kwargs = retry_if_cuda_oom(func)(t, k=t)
    assert len(func.calls) == 2
    assert count_empty_cache["n"] == 1
    assert args[0] is t and kwargs["k"] is t  # second try uses the original inputs


def test_retry_after_two_ooms_moves_cuda_arguments_to_cpu_and_warns(count_empty_cache, caplog):
    caplog.set_level(logging.WARNING, logger="heron.utils.memory")
    func = _FlakyOnGPU(fail_times=2)
    cuda_like, cpu_tensor = _FakeCudaTensor(), torch.zeros(3)
    args, kwargs = retry_if_cuda_oom(func)(cuda_like, cpu_tensor, "text", key=_FakeCudaTensor())
    assert len(func.calls) == 3
    assert args[0] == ("moved to", "cpu")
    assert args[1] is cpu_tensor  # CPU tensors and non-tensors pass through unchanged
    assert args[2] == "text"
    assert kwargs == {"key": ("moved to", "cpu")}
    assert "to CPU due to CUDA OOM" in caplog.text


def test_retry_recognises_runtime_error_with_cuda_oom_message():
    func = _FlakyOnGPU(fail_times=1, error=RuntimeError(OOM_MESSAGE))
    retry_if_cuda_oom(func)()
    assert len(func.calls) == 2


def test_retry_propagates_third_oom():
    func = _FlakyOnGPU(fail_times=3)
    with pytest.raises(torch.OutOfMemoryError, match="CUDA out of memory"):
        retry_if_cuda_oom(func)()
    assert len(func.calls) == 3


@pytest.mark.parametrize("error", [ValueError("bad input"), RuntimeError("shape mismatch")])
def test_retry_propagates_other_errors_immediately(error):
    func = _FlakyOnGPU(fail_times=1, error=error)
    with pytest.raises(type(error), match=str(error)):
        retry_if_cuda_oom(func)()
    assert len(func.calls) == 1


def test_retry_propagates_other_error_on_second_attempt():
    calls = []

    def func():
        calls.append(1)
        raise torch.OutOfMemoryError(OOM_MESSAGE) if len(calls) == 1 else KeyError("later")

    with pytest.raises(KeyError, match="later"):
        retry_if_cuda_oom(func)()
    assert len(calls) == 2


def test_retry_does_not_touch_cuda_when_unavailable(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)

    def forbidden():
        raise AssertionError("empty_cache must not be called without CUDA")

    monkeypatch.setattr(torch.cuda, "empty_cache", forbidden)
    func = _FlakyOnGPU(fail_times=2)
    retry_if_cuda_oom(func)(torch.ones(1))
    assert len(func.calls) == 3


def test_retry_keeps_function_metadata():
    def area(boxes):
        """Docstring of area."""
        return boxes

    wrapped = retry_if_cuda_oom(area)
    assert wrapped.__name__ == "area"
    assert wrapped.__doc__ == "Docstring of area."


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_retry_moves_real_cuda_tensors_to_cpu():
    seen = []

    def func(x):
        seen.append(x.device.type)
        if x.device.type == "cuda":
            raise torch.OutOfMemoryError(OOM_MESSAGE)
        return x * 2

    out = retry_if_cuda_oom(func)(torch.ones(2, device="cuda"))
    assert seen == ["cuda", "cuda", "cpu"]
    torch.testing.assert_close(out, torch.full((2,), 2.0))


# ---------------------------------------------------------------- peak_memory_mb


# Linux keeps RSS in per-CPU counters and reads them approximately, so two readings of the
# peak can differ by a few hundred KiB, even backwards (seen: 519.63 then 519.50 MiB).
# The tolerance absorbs that slop; a unit mistake (KiB vs bytes) would be off by 1024x.
KERNEL_SLOP_MB = 2.0


def _vm_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith(field + ":"))
    return int(line.split()[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_peak_memory_cpu_matches_kernel_high_water_mark():
    hwm_mb = _vm_kib("VmHWM") / 1024  # the kernel's peak RSS, in KiB
    assert abs(peak_memory_mb("cpu") - hwm_mb) <= KERNEL_SLOP_MB
    assert abs(peak_memory_mb(torch.device("cpu")) - hwm_mb) <= KERNEL_SLOP_MB


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_peak_memory_cpu_covers_memory_held_now():
    block = np.ones(32 * 2**20 // 8)  # 32 MiB, written so it is resident
    rss_mb = _vm_kib("VmRSS") / 1024
    assert peak_memory_mb("cpu") >= rss_mb - KERNEL_SLOP_MB
    assert block.sum() == block.size


def test_peak_memory_default_device_is_cpu_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    value = peak_memory_mb()
    assert isinstance(value, float) and value > 0
    assert abs(value - peak_memory_mb("cpu")) <= KERNEL_SLOP_MB


def test_peak_memory_unsupported_device_raises():
    with pytest.raises(ValueError, match=r"supports 'cuda' and 'cpu' devices, got 'meta'"):
        peak_memory_mb("meta")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_peak_memory_cuda_counts_allocated_tensors():
    torch.cuda.reset_peak_memory_stats()
    base = peak_memory_mb("cuda")
    x = torch.empty(16 * 2**20, dtype=torch.uint8, device="cuda")  # 16 MiB
    assert peak_memory_mb("cuda") - base >= 16
    del x
