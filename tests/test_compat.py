"""Tests of heron/compat.py and the opt-in detectron2 shim: `import detectron2.X` resolves to
Heron's modules, and a Detectron2-style training script runs unchanged."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import textwrap

import pytest

import heron
import heron.compat
from heron.data.datasets import generate_shapes_dataset

ROOT = os.path.join(os.path.dirname(__file__), "..")
SHIM = os.path.join(ROOT, "compat", "detectron2-shim")


@pytest.fixture
def aliased():
    heron.compat.alias_detectron2()
    yield
    heron.compat.unalias_detectron2()


def test_detectron2_names_are_herons_own_modules(aliased):
    import detectron2
    import detectron2.modeling
    from detectron2.modeling import ROI_HEADS_REGISTRY
    from detectron2.structures import Boxes

    import heron.modeling
    import heron.structures

    assert detectron2 is heron
    assert detectron2.modeling is heron.modeling
    assert ROI_HEADS_REGISTRY is heron.modeling.ROI_HEADS_REGISTRY  # one registry, shared
    assert Boxes is heron.structures.Boxes
    assert importlib.import_module("detectron2.utils.events") is importlib.import_module(
        "heron.utils.events"
    )
    heron.compat.alias_detectron2()  # idempotent
    assert sum(isinstance(f, heron.compat._AliasFinder) for f in sys.meta_path) == 1


def test_a_module_heron_lacks_names_both(aliased):
    with pytest.raises(ModuleNotFoundError, match=r"detectron2.projects.*heron.projects"):
        import detectron2.projects  # noqa: F401


def test_unalias_forgets_the_names(aliased):
    import detectron2.config  # noqa: F401

    heron.compat.unalias_detectron2()
    assert not heron.compat.is_aliased()
    assert not any(n == "detectron2" or n.startswith("detectron2.") for n in sys.modules)


# A training script as a Detectron2 user writes it: only detectron2 names.
D2_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import torch
    from detectron2.config import get_cfg
    from detectron2.data.datasets import register_coco_instances
    from detectron2.engine import DefaultTrainer
    from detectron2.modeling import ROI_HEADS_REGISTRY, StandardROIHeads

    calls = []

    @ROI_HEADS_REGISTRY.register()
    class CountingROIHeads(StandardROIHeads):
        def forward(self, images, features, proposals, targets=None):
            calls.append(self.training)
            return super().forward(images, features, proposals, targets)

    json_file, image_root, out = sys.argv[1:4]
    register_coco_instances("my_shapes", {}, json_file, image_root)
    cfg = get_cfg()
    cfg.merge_from_list([
        "MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "",
        "MODEL.BACKBONE.NAME", "build_resnet_fpn_backbone",
        "MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64",
        "MODEL.RESNETS.NORM", "BN", "MODEL.BACKBONE.FREEZE_AT", "0",
        "MODEL.RESNETS.OUT_FEATURES", "['res2', 'res3', 'res4', 'res5']",
        "MODEL.FPN.IN_FEATURES", "['res2', 'res3', 'res4', 'res5']",
        "MODEL.FPN.OUT_CHANNELS", "32",
        "MODEL.RPN.IN_FEATURES", "['p2', 'p3', 'p4', 'p5', 'p6']",
        "MODEL.ANCHOR_GENERATOR.SIZES", "[[16], [32], [64], [128], [256]]",
        "MODEL.ROI_HEADS.NAME", "CountingROIHeads",
        "MODEL.ROI_HEADS.IN_FEATURES", "['p2', 'p3', 'p4', 'p5']",
        "MODEL.ROI_HEADS.NUM_CLASSES", "5", "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "32",
        "MODEL.ROI_BOX_HEAD.NAME", "FastRCNNConvFCHead", "MODEL.ROI_BOX_HEAD.NUM_FC", "2",
        "MODEL.ROI_BOX_HEAD.FC_DIM", "64",
        "DATASETS.TRAIN", "('my_shapes',)", "DATASETS.TEST", "('my_shapes',)",
        "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "128",
        "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "128",
        "DATALOADER.NUM_WORKERS", "0", "SOLVER.IMS_PER_BATCH", "2",
        "SOLVER.BASE_LR", "0.01", "SOLVER.MAX_ITER", "2", "SOLVER.STEPS", "()",
        "SOLVER.WARMUP_ITERS", "1", "OUTPUT_DIR", out, "SEED", "0",
    ])

    class Trainer(DefaultTrainer):
        @classmethod
        def build_evaluator(cls, cfg, dataset_name):
            from detectron2.evaluation import COCOEvaluator
            return COCOEvaluator(dataset_name, output_dir=out)

    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    results = trainer.train()
    print(json.dumps({"calls": calls, "bbox_keys": sorted(results["bbox"])[:3],
                      "detectron2_is": __import__("detectron2").__name__}))
    """
)


def test_a_detectron2_training_script_runs_unchanged_with_the_shim(tmp_path):
    info = generate_shapes_dataset(
        str(tmp_path / "shapes"), num_images=2, image_size=(64, 96), split="train"
    )
    script = tmp_path / "train_net.py"
    script.write_text(D2_SCRIPT)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([SHIM, os.path.abspath(ROOT)]))
    env.pop("HERON_DEBUG", None)
    out = subprocess.run(
        [sys.executable, str(script), info["json_file"], info["image_root"], str(tmp_path / "o")],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["detectron2_is"] == "heron"
    # the custom head ran in the 2 training steps and in evaluation (2 images, batch 1)
    assert result["calls"] == [True, True, False, False]
    assert result["bbox_keys"] == ["AP", "AP-circle", "AP-ellipse"]
