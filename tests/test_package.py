"""The package itself: version, the `heron` command, and the packaging metadata."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import tomllib

import heron
from heron.cli.main import main

ROOT = Path(__file__).resolve().parents[1]


def test_version_is_the_packaged_version():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert meta["project"]["dynamic"] == ["version"]
    parts = heron.__version__.split(".")
    assert len(parts) == 3 and all(p.isdigit() for p in parts), heron.__version__


def test_python_dash_m_heron_prints_the_version():
    out = subprocess.run(
        [sys.executable, "-m", "heron", "--version"], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == f"heron {heron.__version__}"


def test_heron_without_a_verb_prints_help_and_fails(capsys):
    assert main([]) == 2
    assert "env" in capsys.readouterr().out


def test_heron_env_prints_the_torch_version(capsys):
    import torch

    assert main(["env"]) == 0
    assert torch.__version__ in capsys.readouterr().out


def test_extras_named_by_the_foundation_issue_exist():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    extras = meta["project"]["optional-dependencies"]
    assert {"dev", "export", "video", "tb", "albumentations"} <= set(extras)
    assert meta["project"]["requires-python"] == ">=3.10"
