"""Tests of heron/cli/train.py: `heron train` and `heron train-lazy` end to end, in process,
and tools/train_net.py as a script."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import pytest

from heron.cli.main import main
from heron.data.catalog import DatasetCatalog, MetadataCatalog
from heron.data.datasets import generate_shapes_dataset, register_coco_instances

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "modeling"))
from rcnn_fixtures import small_rcnn_cfg

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")


@pytest.fixture(scope="module")
def shapes_name(tmp_path_factory):
    info = generate_shapes_dataset(
        str(tmp_path_factory.mktemp("shapes")), num_images=4, image_size=(64, 96), split="train"
    )
    name = f"test_cli_train_{uuid.uuid4().hex[:8]}"
    register_coco_instances(name, {}, info["json_file"], info["image_root"])
    yield name
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


def _write_config(shapes_name, path):
    cfg = small_rcnn_cfg()
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 5
    cfg.MODEL.WEIGHTS = ""
    cfg.DATASETS.TRAIN = (shapes_name,)
    cfg.DATASETS.TEST = (shapes_name,)
    cfg.INPUT.MIN_SIZE_TRAIN = (64,)
    cfg.INPUT.MAX_SIZE_TRAIN = 128
    cfg.INPUT.MIN_SIZE_TEST = 64
    cfg.INPUT.MAX_SIZE_TEST = 128
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.SOLVER.IMS_PER_BATCH = 2
    cfg.SOLVER.BASE_LR = 0.01
    cfg.SOLVER.STEPS = ()
    cfg.SOLVER.WARMUP_ITERS = 1
    cfg.SEED = 0
    path.write_text(cfg.dump())
    return str(path)


def test_train_then_resume_then_eval_only(shapes_name, tmp_path):
    config = _write_config(shapes_name, tmp_path / "config.yaml")
    out = str(tmp_path / "out")
    common = ["--config-file", config]
    opts = ["OUTPUT_DIR", out, "SOLVER.CHECKPOINT_PERIOD", "2"]
    assert main(["train", *common, *opts, "SOLVER.MAX_ITER", "2"]) == 0
    assert os.path.isfile(os.path.join(out, "model_final.pth"))
    assert os.path.isfile(os.path.join(out, "config.yaml"))  # saved by default_setup
    # --resume continues from the saved iteration up to the new MAX_ITER
    # (flags come before the trailing overrides, which take the rest of the line)
    assert main(["train", *common, "--resume", *opts, "SOLVER.MAX_ITER", "3"]) == 0
    with open(os.path.join(out, "metrics.json")) as f:
        records = [json.loads(line) for line in f]
    # the writer logs the last iteration of each run (period 20): 1, then 2 after resuming
    assert [r["iteration"] for r in records if "total_loss" in r] == [1, 2]
    # --eval-only loads the weights and writes COCO results (evaluator_type "coco")
    weights = os.path.join(out, "model_final.pth")
    assert main(["train", *common, "--eval-only", *opts, "MODEL.WEIGHTS", weights]) == 0
    assert os.path.isfile(os.path.join(out, "inference", "coco_instances_results.json"))


def test_train_requires_a_config_file():
    with pytest.raises(SystemExit, match="--config-file is required"):
        main(["train"])


_LAZY_CONFIG = '''
import itertools

import torch
from torch import nn

from heron.config import LazyCall as L
from heron.solver import LRMultiplier, MultiStepParamScheduler


class Quadratic(nn.Module):
    """loss = (w * x - y)^2, mean over the batch."""

    def __init__(self, w=1.0):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(float(w)))

    def forward(self, batch):
        x, y = batch
        return {"loss_sq": ((self.w * x - y) ** 2).mean()}


def endless_batches():
    return itertools.cycle([(torch.tensor([2.0]), torch.tensor([1.0]))])


model = L(Quadratic)(w=1.0)
optimizer = L(torch.optim.SGD)(params=L(lambda model: model.parameters())(), lr=0.1)
dataloader = dict(train=L(endless_batches)())
lr_multiplier = L(MultiStepParamScheduler)(values=[1.0, 0.1], milestones=[2], num_updates=4)
train = dict(
    output_dir="",
    max_iter=4,
    init_checkpoint="",
    device="cpu",
    checkpointer=dict(period=2, max_to_keep=10),
    eval_period=0,
    log_period=1,
    amp=dict(enabled=False),
    seed=0,
)
'''


def test_train_lazy_runs_a_python_config_with_overrides(tmp_path):
    config = tmp_path / "quadratic.py"
    config.write_text(_LAZY_CONFIG)
    out = tmp_path / "out"
    assert main(["train-lazy", "--config-file", str(config), f"train.output_dir={out}"]) == 0
    with open(out / "metrics.json") as f:
        records = [json.loads(line) for line in f]
    # loss = (2w - 1)^2 with w = 1 at the start -> 1.0; lr 0.1 for iterations 0, 1 then 0.01
    assert records[0]["iteration"] == 0 and records[0]["total_loss"] == pytest.approx(1.0)
    assert [r["lr"] for r in records] == pytest.approx([0.1, 0.1, 0.01, 0.01])
    assert (out / "model_final.pth").is_file() and (out / "config.yaml").is_file()


def test_tools_train_net_is_the_train_verb():
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "tools", "train_net.py"), "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "--eval-only" in result.stdout and "--num-gpus" in result.stdout
