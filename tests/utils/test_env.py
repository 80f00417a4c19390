from __future__ import annotations

import logging
import os
import random
import sys
import types
import uuid

import numpy as np
import pytest
import torch

import heron
from heron.utils.env import TORCH_VERSION, _import_file, collect_env_info, seed_all_rng


@pytest.fixture
def restore_rng(monkeypatch):
    """Keep the global generators and PYTHONHASHSEED as they were before the test."""
    monkeypatch.setenv("PYTHONHASHSEED", "0")
    py_state, np_state, torch_state = (
        random.getstate(),
        np.random.get_state(),
        torch.get_rng_state(),
    )
    yield
    random.setstate(py_state)
    np.random.set_state(np_state)
    torch.set_rng_state(torch_state)


def _draw() -> tuple[float, float, float]:
    return random.random(), float(np.random.rand()), float(torch.rand(1))


def _table(text: str) -> dict[str, str]:
    rows = {}
    for line in text.splitlines()[1:-1]:  # drop the tabulate rules above and below
        label, _, value = line.partition("  ")
        rows[label.strip()] = value.strip()
    return rows


# ---------------------------------------------------------------- seeding


def test_seed_all_rng_seeds_python_numpy_and_torch(restore_rng):
    assert seed_all_rng(42) == 42
    py, npv, tv = _draw()
    assert py == random.Random(42).random()
    assert npv == np.random.RandomState(42).rand()
    assert tv == float(torch.rand(1, generator=torch.Generator().manual_seed(42)))
    assert os.environ["PYTHONHASHSEED"] == "42"


def test_seed_all_rng_generated_seed_is_logged_and_reproduces_draws(restore_rng, caplog):
    caplog.set_level(logging.INFO, logger="heron.utils.env")
    seed = seed_all_rng()
    first = _draw()
    assert isinstance(seed, int) and 0 <= seed < 2**32
    assert f"Using a generated random seed {seed}" in caplog.text
    assert seed_all_rng(seed) == seed
    assert _draw() == first


def test_seed_all_rng_accepts_zero_and_rejects_out_of_range(restore_rng):
    assert seed_all_rng(0) == 0
    with pytest.raises(ValueError, match=r"seed must be in \[0, 2\*\*32\).*got -1"):
        seed_all_rng(-1)
    with pytest.raises(ValueError, match="got 4294967296"):
        seed_all_rng(2**32)


# ---------------------------------------------------------------- versions


def test_torch_version_is_major_minor_of_torch():
    major, minor = torch.__version__.split(".")[:2]
    assert (int(major), int(minor)) == TORCH_VERSION
    assert TORCH_VERSION >= (2, 4)


# ---------------------------------------------------------------- _import_file


def test_import_file_executes_the_file_as_a_module(tmp_path):
    name = f"heron_env_test_{uuid.uuid4().hex[:8]}"
    path = tmp_path / "plugin.py"
    path.write_text("VALUE = 6 * 7\ndef double(x):\n    return 2 * x\n")
    module = _import_file(name, str(path))
    assert module.__name__ == name
    assert module.VALUE == 42
    assert module.double(4) == 8
    assert name not in sys.modules


def test_import_file_make_importable_registers_in_sys_modules(tmp_path, monkeypatch):
    name = f"heron_env_test_{uuid.uuid4().hex[:8]}"
    path = tmp_path / "plugin.py"
    path.write_text("X = 'x'\n")
    monkeypatch.delitem(sys.modules, name, raising=False)  # undone after the test
    module = _import_file(name, str(path), make_importable=True)
    assert sys.modules[name] is module
    assert __import__(name).X == "x"


def test_import_file_missing_file_names_the_path(tmp_path):
    missing = tmp_path / "nope.py"
    with pytest.raises(FileNotFoundError, match=r"no file at .*nope\.py"):
        _import_file("nope", str(missing))


def test_import_file_propagates_errors_of_the_module(tmp_path):
    path = tmp_path / "bad.py"
    path.write_text("raise ValueError('bad plugin')\n")
    with pytest.raises(ValueError, match="bad plugin"):
        _import_file("bad_plugin_module", str(path))


# ---------------------------------------------------------------- collect_env_info


def test_collect_env_info_reports_platform_and_library_versions():
    rows = _table(collect_env_info())
    import fsspec
    import omegaconf
    import PIL
    import torchvision

    assert rows["sys.platform"] == sys.platform
    assert rows["Python"] == sys.version.replace("\n", "")
    assert rows["numpy"] == np.__version__
    assert rows["heron"].startswith(f"{heron.__version__} @")
    assert rows["PyTorch"].startswith(f"{torch.__version__} @")
    assert rows["PyTorch debug build"] == str(torch.version.debug)
    assert rows["CUDA available"] == str(torch.cuda.is_available())
    assert rows["MPS available"] == str(torch.backends.mps.is_available())
    assert rows["torchvision"].startswith(torchvision.__version__ + " @")
    assert rows["Pillow"].startswith(PIL.__version__ + " @")
    assert rows["fsspec"].startswith(fsspec.__version__ + " @")
    assert rows["omegaconf"].startswith(omegaconf.__version__ + " @")
    assert rows["pycocotools"] != "failed to import"
    if torch.cuda.is_available():
        assert any(k.startswith("GPU 0") for k in rows)
    else:
        assert not any(k.startswith("GPU") for k in rows)


def test_collect_env_info_lists_optional_libraries_only_when_importable(monkeypatch):
    fake_cv2 = types.ModuleType("cv2")
    fake_cv2.__version__ = "9.8.7"
    fake_cv2.__file__ = "/opt/fake/cv2/__init__.py"
    monkeypatch.setitem(sys.modules, "cv2", fake_cv2)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` fail
    rows = _table(collect_env_info())
    assert rows["cv2"] == "9.8.7 @/opt/fake/cv2"
    assert "onnxruntime" not in rows


def test_collect_env_info_marks_required_library_that_fails_to_import(monkeypatch):
    monkeypatch.setitem(sys.modules, "fsspec", None)
    assert _table(collect_env_info())["fsspec"] == "failed to import"
