"""`heron export` on the small Mask R-CNN of the CLI fixtures."""

from __future__ import annotations

import argparse
import re

from heron.cli import export


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    export.add_parser(sub)
    args = parser.parse_args(["export", *argv])
    return args.handler(args)


def test_export_onnx_prints_small_differences_per_output(tiny_model, tmp_path, capsys):
    config, weights = tiny_model
    out = tmp_path / "out"
    argv = ["--config-file", config, "--weights", weights, "--format", "onnx"]
    code = _run([*argv, "--output", str(out), "INPUT.MIN_SIZE_TEST", "48"])
    assert code == 0
    assert (out / "model.onnx").is_file()
    printed = capsys.readouterr().out
    # the generated 480x640 image resized to a short side of 48: 48 x 64
    assert "(48, 64)" in printed
    diffs = dict(re.findall(r"  (\w+) \(.*\): max abs difference (\S+)", printed))
    assert set(diffs) == {"boxes", "scores", "classes", "mask_probs"}
    assert float(diffs["boxes"]) < 1e-3 and float(diffs["scores"]) < 1e-4
    assert float(diffs["classes"]) == 0 and float(diffs["mask_probs"]) < 1e-3


def test_export_torch_export_writes_a_program_equal_to_eager(tiny_model, tmp_path, capsys):
    config, weights = tiny_model
    argv = ["--config-file", config, "--weights", weights, "--format", "torch-export"]
    code = _run([*argv, "--output", str(tmp_path), "INPUT.MIN_SIZE_TEST", "48"])
    assert code == 0
    assert (tmp_path / "model.pt2").is_file()
    diffs = dict(re.findall(r"  (\w+) \(.*\): max abs difference (\S+)", capsys.readouterr().out))
    assert set(diffs) == {"boxes", "scores", "classes", "mask_probs"}
    assert float(diffs["boxes"]) < 1e-3 and float(diffs["classes"]) == 0


def test_export_torch_export_of_an_uncapped_keypoint_model_exits_1_with_the_reason(
    tiny_model, tmp_path, capsys
):
    config, weights = tiny_model
    argv = ["--config-file", config, "--weights", weights, "--format", "torch-export"]
    overrides = ["INPUT.MIN_SIZE_TEST", "48", "MODEL.KEYPOINT_ON", "True"]
    overrides += ["TEST.DETECTIONS_PER_IMAGE", "-1"]
    code = _run([*argv, "--output", str(tmp_path), *overrides])
    assert code == 1
    err = capsys.readouterr().err
    assert "keypoint model with TEST.DETECTIONS_PER_IMAGE < 0" in err
    assert not (tmp_path / "model.pt2").exists()
