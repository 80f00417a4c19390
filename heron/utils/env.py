"""Environment helpers: seeding, an environment report, versions and file imports."""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import logging
import os
import random
import sys
from collections import defaultdict
from datetime import datetime
from types import ModuleType
from typing import Any

import numpy as np
import torch
from tabulate import tabulate

__all__ = ["TORCH_VERSION", "collect_env_info", "get_rng_state", "seed_all_rng", "set_rng_state"]

# (major, minor) of the installed PyTorch, e.g. (2, 4), for version checks.
TORCH_VERSION: tuple[int, ...] = tuple(int(x) for x in torch.__version__.split(".")[:2])

logger = logging.getLogger(__name__)


def seed_all_rng(seed: int | None = None) -> int:
    """Seed Python's ``random``, NumPy's and PyTorch's global generators.

    Also sets ``PYTHONHASHSEED`` in the environment (it affects only child processes), as
    Detectron2 does.

    Args:
        seed: an int in [0, 2**32); None to derive one from the process id, the clock and
            ``os.urandom`` (logged, so a run can be repeated).

    Returns:
        The seed used.

    Raises:
        ValueError: if ``seed`` is outside [0, 2**32).
    """
    if seed is None:
        seed = (
            os.getpid()
            + int(datetime.now().strftime("%S%f"))
            + int.from_bytes(os.urandom(2), "big")
        )
        logger.info("Using a generated random seed %d", seed)
    elif not 0 <= int(seed) < 2**32:
        raise ValueError(f"seed must be in [0, 2**32) (NumPy's limit), got {seed}")
    seed = int(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    random.seed(seed)
    os.environ["PYTHONHASHSEED"] = str(seed)
    return seed


def get_rng_state() -> dict[str, Any]:
    """The states of Python's ``random``, NumPy's and PyTorch's (CPU and CUDA) global
    generators, as containers of ints, floats, strings and tensors (so that they load with
    ``torch.load(weights_only=True)``)."""
    version, internal, gauss_next = random.getstate()
    name, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    state: dict[str, Any] = {
        "python": [version, list(internal), gauss_next],
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached_gaussian],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore generator states saved by :func:`get_rng_state`.

    Raises:
        KeyError: ``state`` lacks the "python", "numpy" or "torch" entry.
    """
    missing = [k for k in ("python", "numpy", "torch") if k not in state]
    if missing:
        raise KeyError(f"RNG state lacks {missing}; it has {sorted(state)}")
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    name, keys, pos, has_gauss, cached_gaussian = state["numpy"]
    np.random.set_state(
        (name, np.asarray(keys, dtype=np.int64).astype(np.uint32), pos, has_gauss, cached_gaussian)
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _import_file(module_name: str, file_path: str, make_importable: bool = False) -> ModuleType:
    """Execute a Python file as a module named ``module_name`` and return the module.

    Args:
        module_name: the module's ``__name__``.
        file_path: path to the ``.py`` file.
        make_importable: also register it in ``sys.modules`` so ``import module_name`` works.

    Raises:
        FileNotFoundError: if ``file_path`` does not exist.
        ImportError: if no module can be made from it.
    """
    if not os.path.isfile(file_path):
        raise FileNotFoundError(f"_import_file: no file at {file_path!r} (module {module_name!r})")
    spec = importlib.util.spec_from_file_location(module_name, file_path)
    if spec is None or spec.loader is None:
        raise ImportError(f"_import_file: cannot load {file_path!r} as a Python module")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if make_importable:
        sys.modules[module_name] = module
    return module


def _distribution_version(dist_names: tuple[str, ...]) -> str:
    for dist_name in dist_names:
        try:
            return importlib.metadata.version(dist_name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return "unknown version"


def _version_and_path(module_name: str, dist_names: tuple[str, ...] = ()) -> str | None:
    """``"<version> @<package dir>"`` of an importable module; None if it cannot be imported.

    The version is the module's ``__version__``, else that of the first installed
    distribution in ``dist_names`` (pycocotools has no ``__version__``).
    """
    try:
        module = importlib.import_module(module_name)
    except Exception:  # any failure means "not usable here"; the report must not crash
        return None
    version = getattr(module, "__version__", None) or _distribution_version(dist_names)
    location = os.path.dirname(getattr(module, "__file__", None) or "") or "unknown location"
    return f"{version} @{location}"


def _gpu_rows() -> list[tuple[str, str]]:
    """One row per distinct GPU model: ("GPU 0,1", "<name> (arch=<major>.<minor>)")."""
    devices: dict[str, list[str]] = defaultdict(list)
    for k in range(torch.cuda.device_count()):
        major, minor = torch.cuda.get_device_capability(k)
        devices[f"{torch.cuda.get_device_name(k)} (arch={major}.{minor})"].append(str(k))
    return [("GPU " + ",".join(ids), name) for name, ids in devices.items()]


def collect_env_info() -> str:
    """Return a table describing the platform, Python, PyTorch, devices and libraries.

    Required libraries that fail to import show "failed to import"; optional ones (OpenCV,
    onnxruntime) appear only when importable.
    """
    import heron

    data: list[tuple[str, str]] = [
        ("sys.platform", sys.platform),
        ("Python", sys.version.replace("\n", "")),
        ("numpy", np.__version__),
        ("heron", f"{heron.__version__} @{os.path.dirname(heron.__file__)}"),
        ("PyTorch", f"{torch.__version__} @{os.path.dirname(torch.__file__)}"),
        ("PyTorch debug build", str(torch.version.debug)),
    ]
    cuda_available = torch.cuda.is_available()
    data.append(("CUDA available", str(cuda_available)))
    if cuda_available:
        data.append(("PyTorch built with CUDA", str(torch.version.cuda)))
        data.extend(_gpu_rows())
    mps = getattr(torch.backends, "mps", None)
    data.append(("MPS available", str(bool(mps is not None and mps.is_available()))))

    for label, module_name, dist_names in [
        ("torchvision", "torchvision", ()),
        ("Pillow", "PIL", ("pillow",)),
        ("fsspec", "fsspec", ()),
        ("omegaconf", "omegaconf", ()),
        ("pycocotools", "pycocotools", ("pycocotools",)),
    ]:
        info = _version_and_path(module_name, dist_names)
        data.append((label, info or "failed to import"))
    for label, module_name, dist_names in [
        ("cv2", "cv2", ("opencv-python-headless", "opencv-python")),
        ("onnxruntime", "onnxruntime", ("onnxruntime", "onnxruntime-gpu")),
    ]:
        info = _version_and_path(module_name, dist_names)
        if info is not None:
            data.append((label, info))
    return tabulate(data)
