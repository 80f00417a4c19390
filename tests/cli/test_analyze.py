"""Tests of `heron analyze` (heron/cli/analyze.py) on the tiny Mask R-CNN of conftest.py."""

from __future__ import annotations

import argparse
import re

import pytest
import torch

from heron.cli import analyze


def run_analyze(argv: list[str]) -> int:
    """Parse `argv` with only the analyze verb registered and run it."""
    parser = argparse.ArgumentParser(prog="heron")
    analyze.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["analyze", *argv])
    return args.handler(args)


def printed_total(text: str, unit: str) -> float:
    match = re.search(rf"Total {unit}: ([0-9.e+-]+) ±", text)
    assert match, text
    return float(match.group(1))


# fewer detections keep the mask head, and so the test, fast
FEW = ["TEST.DETECTIONS_PER_IMAGE", "5"]


def build_tiny(config: str, weights: str):
    from heron.checkpoint import DetectionCheckpointer
    from heron.config import get_cfg
    from heron.modeling import build_model

    cfg = get_cfg()
    cfg.merge_from_file(config)
    cfg.merge_from_list(FEW)
    model = build_model(cfg)
    DetectionCheckpointer(model).load(weights)
    return cfg, model


def test_help_exits_zero(capsys):
    with pytest.raises(SystemExit) as e:
        run_analyze(["--help"])
    assert e.value.code == 0
    assert "--num-inputs" in capsys.readouterr().out


def test_flops_of_the_first_test_image_match_the_library(tiny_model, capsys):
    from heron.data.build import build_detection_test_loader
    from heron.utils.analysis import FlopCountAnalysis

    config, weights = tiny_model
    argv = ["--config-file", config, "--weights", weights, "--tasks", "flop", "parameter"]
    assert run_analyze([*argv, "--max-depth", "1", *FEW]) == 0
    out = capsys.readouterr().out
    cfg, model = build_tiny(config, weights)
    first = next(iter(build_detection_test_loader(cfg, cfg.DATASETS.TEST[0])))
    expected = FlopCountAnalysis(model, first)
    # the table prints 6 significant digits
    assert printed_total(out, "GFLOPs") == pytest.approx(expected.total() / 1e9, rel=1e-5)
    conv_row = re.search(r"\| conv +\| +([0-9.e+-]+) \| +([0-9.e+-]+) \|", out)
    gflops, gmacs = float(conv_row.group(1)), float(conv_row.group(2))
    assert gflops == pytest.approx(expected.by_operator()["conv"] / 1e9, rel=1e-5)
    assert gmacs == pytest.approx(gflops / 2, rel=1e-5)
    assert "| backbone " in out and "backbone.bottom_up" not in out.split("Parameters")[0]
    total_params = sum(p.numel() for p in model.parameters())
    assert f"{total_params / 1e6:.1f}M" in out.split("Parameters per module:")[1]


def test_random_images_of_image_size_need_no_dataset(tiny_model, capsys):
    config, _ = tiny_model
    argv = ["--config-file", config, "--tasks", "activation", "structure"]
    argv += ["--image-size", "32x48", "-n", "2", "DATASETS.TEST", "()"]
    assert run_analyze([*argv, "MODEL.RPN.POST_NMS_TOPK_TEST", "5", *FEW]) == 0
    out = capsys.readouterr().out
    assert "averaged over 2 input(s)" in out
    assert printed_total(out, "M activations") > 0
    assert "GeneralizedRCNN(" in out  # the structure


def test_no_test_dataset_and_no_image_size_is_an_error(tiny_model):
    config, _ = tiny_model
    with pytest.raises(ValueError, match="give --image-size"):
        # "--" ends the list of tasks before the overrides
        run_analyze(["--config-file", config, "--tasks", "flop", "--", "DATASETS.TEST", "()"])


def test_bad_image_size_is_rejected(tiny_model, capsys):
    config, _ = tiny_model
    with pytest.raises(SystemExit):
        run_analyze(["--config-file", config, "--image-size", "32by48"])
    assert "--image-size must be HxW" in capsys.readouterr().err


def test_random_inputs_keep_the_global_seed():
    torch.manual_seed(3)
    expected = torch.rand(1)
    torch.manual_seed(3)
    next(analyze._random_inputs((4, 6)))
    torch.testing.assert_close(torch.rand(1), expected)
