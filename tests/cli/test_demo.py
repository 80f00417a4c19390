"""Tests of heron/cli/demo.py: `heron demo` end to end at a reduced schedule, its config,
and `heron eval` / `heron zoo list` on what it leaves behind."""

from __future__ import annotations

import json
import os

import pytest
from PIL import Image

from heron.cli.demo import DEMO_CONFIG, demo_config
from heron.cli.main import main
from heron.config import get_cfg
from heron.model_zoo import get_config_file


def test_demo_config_scales_the_schedule_with_max_iter():
    full = demo_config("out", device="cpu")
    assert full.MODEL.DEVICE == "cpu" and full.OUTPUT_DIR == "out"
    assert full.DATASETS.TRAIN == ("shapes_train",) and full.DATASETS.TEST == ("shapes_val",)
    (step,) = full.SOLVER.STEPS
    short = demo_config("out", device="cpu", max_iter=full.SOLVER.MAX_ITER // 10)
    # the LR step keeps its fraction of the schedule: step / MAX_ITER, to the iteration
    assert (int(step / full.SOLVER.MAX_ITER * short.SOLVER.MAX_ITER),) == short.SOLVER.STEPS
    assert short.SOLVER.WARMUP_ITERS <= short.SOLVER.MAX_ITER
    with pytest.raises(ValueError, match="max_iter"):
        demo_config("out", max_iter=0)


def test_demo_trains_evaluates_and_draws_then_eval_reads_its_outputs(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HERON_DATASETS", str(tmp_path / "datasets"))
    out = tmp_path / "demo"
    code = main(
        ["demo", "--output", str(out), "--device", "cpu", "--max-iter", "3", "--num-vis", "2"]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "box AP" in printed and "mask AP" in printed and "heron predict" in printed

    summary = json.loads((out / "summary.json").read_text())
    assert summary["iterations"] == 3 and summary["device"] == "cpu"
    assert set(summary["AP"]) == {"bbox", "segm"}
    assert all(0.0 <= ap <= 100.0 for ap in summary["AP"].values())
    assert os.path.isfile(summary["weights"])
    # metrics.json: one line per logged iteration, the last carries the final evaluation
    lines = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    assert any("total_loss" in line for line in lines)
    assert lines[-1]["bbox/AP"] == pytest.approx(summary["AP"]["bbox"])
    drawn = sorted((out / "visualizations").iterdir())
    assert len(drawn) == 2
    with Image.open(drawn[0]) as image:
        # predictions over ground truth: twice the 256-pixel-high shapes image
        assert image.size == (256, 512)

    # The saved config reproduces the demo's, and `heron eval` reads it with the weights.
    cfg = get_cfg()
    cfg.merge_from_file(str(out / "config.yaml"))
    assert cfg.SOLVER.MAX_ITER == 3 and cfg.MODEL.ROI_HEADS.NUM_CLASSES == 5
    metrics_file = tmp_path / "eval.json"
    code = main(
        [
            "eval",
            "--config-file",
            str(out / "config.yaml"),
            "--weights",
            summary["weights"],
            "--output",
            str(tmp_path / "eval"),
            "--json",
            str(metrics_file),
        ]
    )
    assert code == 0
    evaluated = json.loads(metrics_file.read_text())["shapes_val"]
    # same weights, same data, same evaluator: the same AP as the demo's own evaluation
    assert evaluated["bbox"]["AP"] == pytest.approx(summary["AP"]["bbox"])
    assert evaluated["segm"]["AP"] == pytest.approx(summary["AP"]["segm"])
    assert "shapes_val" in capsys.readouterr().out


def test_eval_refuses_a_dataset_without_an_evaluator(tiny_model, tmp_path, capsys):
    from heron.data.catalog import DatasetCatalog

    DatasetCatalog.register("test_cli_no_evaluator", lambda: [])
    try:
        config, weights = tiny_model
        code = main(
            [
                "eval",
                "--config-file",
                config,
                "--weights",
                weights,
                "--datasets",
                "test_cli_no_evaluator",
            ]
        )
    finally:
        DatasetCatalog.remove("test_cli_no_evaluator")
    assert code == 2
    assert "test_cli_no_evaluator" in capsys.readouterr().out


def test_zoo_list_prints_shipped_configs_and_filters(capsys):
    assert main(["zoo", "list"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert DEMO_CONFIG in listed
    assert "COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml" in listed
    for name in listed[:-2]:
        assert os.path.isfile(get_config_file(name))
    assert main(["zoo", "list", "COCO-Keypoints/*"]) == 0
    listed = [line for line in capsys.readouterr().out.splitlines() if line.endswith(".yaml")]
    assert listed and all(name.startswith("COCO-Keypoints/") for name in listed)
    assert main(["zoo", "list", "no-such-*"]) == 1


def test_missing_config_and_checkpoint_are_one_line_errors_naming_the_path(
    tiny_model, tmp_path, capsys
):
    code = main(["eval", "--config-file", str(tmp_path / "nope.yaml"), "--weights", "w.pth"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("heron eval: error:") and "nope.yaml" in err and "model zoo" in err
    config, _ = tiny_model
    missing = str(tmp_path / "missing.pth")
    assert main(["eval", "--config-file", config, "--weights", missing]) == 2
    err = capsys.readouterr().err
    assert missing in err and "existing .pth or .pkl" in err and "Traceback" not in err


def test_a_cuda_config_runs_on_the_cpu_when_cuda_is_missing(monkeypatch, tmp_path):
    import argparse

    import torch

    from heron.cli.common import load_config

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    config = tmp_path / "cuda.yaml"
    config.write_text("MODEL:\n  DEVICE: cuda\n")
    args = argparse.Namespace(config_file=str(config), weights=None, device=None, opts=[])
    assert load_config(args).MODEL.DEVICE == "cpu"
    args.device = "cuda:1"  # an explicit choice is kept
    assert load_config(args).MODEL.DEVICE == "cuda:1"
