"""Tests of heron/engine/defaults.py: DefaultTrainer end to end on the shapes dataset with a
small R-CNN, resuming, evaluation, Heron's config extensions, and the setup helpers."""

from __future__ import annotations

import json
import logging
import os
import sys
import uuid

import pytest
import torch

from heron.data.catalog import DatasetCatalog, MetadataCatalog
from heron.data.datasets import generate_shapes_dataset, register_coco_instances
from heron.engine import hooks
from heron.engine.defaults import (
    DefaultTrainer,
    create_ddp_model,
    default_argument_parser,
    default_setup,
)
from heron.evaluation import DatasetEvaluator

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "modeling"))
from rcnn_fixtures import small_rcnn_cfg


@pytest.fixture(scope="module")
def shapes_name(tmp_path_factory):
    info = generate_shapes_dataset(
        str(tmp_path_factory.mktemp("shapes")), num_images=4, image_size=(64, 96), split="train"
    )
    name = f"test_trainer_{uuid.uuid4().hex[:8]}"
    register_coco_instances(name, {}, info["json_file"], info["image_root"])
    yield name
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


def _cfg(shapes_name, out_dir, max_iter=4):
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
    cfg.SOLVER.MAX_ITER = max_iter
    cfg.SOLVER.STEPS = (3,)
    cfg.SOLVER.WARMUP_ITERS = 1
    cfg.SOLVER.CHECKPOINT_PERIOD = 2
    cfg.TEST.EVAL_PERIOD = 0
    cfg.OUTPUT_DIR = str(out_dir)
    cfg.SEED = 0
    return cfg


class _CountingEvaluator(DatasetEvaluator):
    def reset(self):
        self.n = 0

    def process(self, inputs, outputs):
        assert all("instances" in o for o in outputs)
        self.n += len(inputs)

    def evaluate(self):
        return {"count": {"images": float(self.n)}}


def test_default_trainer_trains_writes_metrics_and_checkpoints(shapes_name, tmp_path):
    cfg = _cfg(shapes_name, tmp_path)
    trainer = DefaultTrainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    assert trainer.iter == 4
    files = sorted(os.listdir(tmp_path))
    assert {"model_0000001.pth", "model_0000003.pth", "model_final.pth", "last_checkpoint"} <= set(
        files
    )
    with open(tmp_path / "metrics.json") as f:
        records = [json.loads(line) for line in f]
    # the evaluation after training (COCOEvaluator, from the dataset's evaluator_type) is
    # written last, at iteration max_iter
    assert records[-1]["iteration"] == 4 and "bbox/AP" in records[-1]
    lines = [r for r in records if "total_loss" in r]
    assert lines[-1]["iteration"] == 3
    assert all(torch.isfinite(torch.tensor(line["total_loss"])) for line in lines)
    assert "lr" in lines[-1] and "loss_cls" in lines[-1]
    # the lr at iteration 3 is after the step at 3: BASE_LR * GAMMA
    assert lines[-1]["lr"] == pytest.approx(0.001)


def test_resume_continues_from_the_saved_iteration(shapes_name, tmp_path):
    first = DefaultTrainer(_cfg(shapes_name, tmp_path, max_iter=2))
    first.resume_or_load(resume=False)
    first.train()
    saved_w = {k: v.clone() for k, v in first.model.state_dict().items()}

    second = DefaultTrainer(_cfg(shapes_name, tmp_path, max_iter=4))
    second.resume_or_load(resume=True)
    assert second.start_iter == 2  # model_final.pth holds iteration 1
    for k, v in second.model.state_dict().items():
        torch.testing.assert_close(v, saved_w[k], msg=k)
    assert second.scheduler.last_epoch == first.scheduler.last_epoch
    second.train()
    assert second.iter == 4


def test_test_runs_given_evaluators_and_skips_missing_ones(
    shapes_name, tmp_path, caplog, monkeypatch
):
    cfg = _cfg(shapes_name, tmp_path)
    trainer = DefaultTrainer(cfg)
    # setup_logger stops "heron" records at its own handlers; let caplog see them
    monkeypatch.setattr(logging.getLogger("heron"), "propagate", True)
    assert DefaultTrainer.test(cfg, trainer.model, _CountingEvaluator()) == {
        "count": {"images": 4.0}
    }
    # the dataset's evaluator_type ("coco") picks COCOEvaluator by default
    results = DefaultTrainer.test(cfg, trainer.model)
    assert set(results) == {"bbox"} and "AP" in results["bbox"]
    assert os.path.isfile(tmp_path / "inference" / "coco_instances_results.json")
    # the same images under a name without evaluator_type: reported and skipped
    other = shapes_name + "_no_evaluator"
    DatasetCatalog.register(other, lambda: DatasetCatalog.get(shapes_name))
    try:
        cfg2 = cfg.clone()
        cfg2.DATASETS.TEST = (other,)
        with caplog.at_level(logging.WARNING):
            assert DefaultTrainer.test(cfg2, trainer.model) == {}
        assert "No evaluator found" in caplog.text
    finally:
        DatasetCatalog.remove(other)
    with pytest.raises(ValueError, match="2 evaluators given for 1 test datasets"):
        DefaultTrainer.test(cfg, trainer.model, [_CountingEvaluator(), _CountingEvaluator()])


class _TrainerWithEvaluator(DefaultTrainer):
    @classmethod
    def build_evaluator(cls, cfg, dataset_name):
        return _CountingEvaluator()


def test_heron_extensions_from_config(shapes_name, tmp_path):
    cfg = _cfg(shapes_name, tmp_path, max_iter=4)
    cfg.SOLVER.OPTIMIZER = "AdamW"
    cfg.SOLVER.BASE_LR = 1e-4
    cfg.SOLVER.ACCUMULATION_STEPS = 2
    cfg.SOLVER.AMP.ENABLED = True
    cfg.SOLVER.AMP.PRECISION = "bfloat16"
    cfg.MODEL_EMA.ENABLED = True
    cfg.DATASETS.VAL = (shapes_name,)
    cfg.TEST.VAL_PERIOD = 1
    cfg.TEST.EVAL_PERIOD = 1
    for key in ("BEST_CHECKPOINT", "EARLY_STOPPING"):
        cfg.TEST[key].ENABLED = True
        cfg.TEST[key].METRIC = "count/images"
    cfg.TEST.EARLY_STOPPING.PATIENCE = 1
    trainer = _TrainerWithEvaluator(cfg)
    assert isinstance(trainer.optimizer, torch.optim.AdamW)
    assert trainer._trainer.accumulation_steps == 2
    assert trainer._trainer.precision == torch.bfloat16
    kinds = [type(h) for h in trainer._hooks]
    for kind in (hooks.ValidationLoss, hooks.BestCheckpointer, hooks.EarlyStopping):
        assert kind in kinds
    # evaluation, best checkpoint and early stopping come before the writer
    assert kinds.index(hooks.EvalHook) < kinds.index(hooks.BestCheckpointer)
    assert kinds.index(hooks.EarlyStopping) < kinds.index(hooks.PeriodicWriter)
    trainer.resume_or_load(resume=False)
    trainer.train()
    # "count/images" is 4 at every evaluation: the first sets the best, the second does not
    # improve, and patience 1 stops training after iteration 1.
    assert trainer.iter == 2 and trainer.stop_reason
    assert os.path.isfile(tmp_path / "model_best.pth")
    history = trainer.storage.history("val_total_loss")
    assert len(history.values()) == 2 and all(v > 0 for v, _ in history.values())
    checkpoint = torch.load(tmp_path / "model_final.pth", weights_only=False)
    assert "ema" in checkpoint and "trainer" in checkpoint
    assert "EMAHook" not in checkpoint["trainer"].get("hooks", {})  # saved once, as "ema"


def test_best_checkpoint_without_periodic_evaluation_is_a_config_error(shapes_name, tmp_path):
    cfg = _cfg(shapes_name, tmp_path)
    cfg.TEST.BEST_CHECKPOINT.ENABLED = True
    with pytest.raises(
        ValueError, match=r"TEST\.BEST_CHECKPOINT\.ENABLED needs periodic evaluation"
    ):
        DefaultTrainer(cfg)


def test_apply_epochs_converts_the_schedule():
    from heron.config import get_cfg

    cfg = get_cfg()
    cfg.SOLVER.MAX_EPOCHS = 3
    cfg.SOLVER.IMS_PER_BATCH = 4
    cfg.SOLVER.STEPS = (2,)
    cfg.SOLVER.CHECKPOINT_PERIOD = 1
    cfg.TEST.EVAL_PERIOD = 1
    cfg.freeze()
    # 10 images, 4 per batch: ceil(10 / 4) = 3 iterations per epoch
    out = DefaultTrainer.apply_epochs(cfg, 10)
    assert (out.SOLVER.MAX_ITER, out.SOLVER.STEPS) == (9, (6,))
    assert (out.SOLVER.CHECKPOINT_PERIOD, out.TEST.EVAL_PERIOD) == (3, 3)
    assert out.is_frozen() and cfg.SOLVER.MAX_ITER == 40000  # the input is untouched
    assert DefaultTrainer.apply_epochs(get_cfg(), 10).SOLVER.MAX_ITER == 40000
    with pytest.raises(ValueError, match="non-empty training set"):
        DefaultTrainer.apply_epochs(cfg, 0)


def test_auto_scale_workers_follows_the_linear_rule():
    from heron.config import get_cfg

    cfg = get_cfg()
    cfg.SOLVER.REFERENCE_WORLD_SIZE = 8
    cfg.SOLVER.IMS_PER_BATCH = 16
    cfg.SOLVER.BASE_LR = 0.02
    cfg.SOLVER.MAX_ITER = 90000
    cfg.SOLVER.STEPS = (60000, 80000)
    cfg.SOLVER.WARMUP_ITERS = 1000
    cfg.TEST.EVAL_PERIOD = 5000
    cfg.SOLVER.CHECKPOINT_PERIOD = 5000
    out = DefaultTrainer.auto_scale_workers(cfg, 4)  # half the workers: scale 0.5
    assert (out.SOLVER.IMS_PER_BATCH, out.SOLVER.BASE_LR) == (8, 0.01)
    assert (out.SOLVER.MAX_ITER, out.SOLVER.STEPS) == (180000, (120000, 160000))
    assert (out.SOLVER.WARMUP_ITERS, out.TEST.EVAL_PERIOD) == (2000, 10000)
    assert out.SOLVER.REFERENCE_WORLD_SIZE == 4
    assert DefaultTrainer.auto_scale_workers(cfg, 8) is cfg
    cfg.SOLVER.IMS_PER_BATCH = 12
    cfg.SOLVER.REFERENCE_WORLD_SIZE = 8
    with pytest.raises(ValueError, match="not divisible"):
        DefaultTrainer.auto_scale_workers(cfg, 4)


def test_argument_parser_and_setup_write_the_config(tmp_path):
    from heron.config import get_cfg

    args = default_argument_parser().parse_args(
        ["--config-file", "", "--num-gpus", "2", "--resume", "SOLVER.BASE_LR", "0.5"]
    )
    assert (args.num_gpus, args.resume, args.eval_only) == (2, True, False)
    assert args.opts == ["SOLVER.BASE_LR", "0.5"] and args.dist_url.startswith("tcp://")
    cfg = get_cfg()
    cfg.OUTPUT_DIR = str(tmp_path / "out")
    cfg.SEED = 3
    default_setup(cfg, args)
    saved = get_cfg()
    saved.merge_from_file(str(tmp_path / "out" / "config.yaml"))
    assert saved.SEED == 3
    a = torch.rand(1).item()
    default_setup(cfg, args)
    assert torch.rand(1).item() == a  # the same seed gives the same stream


def test_create_ddp_model_is_identity_in_one_process():
    model = torch.nn.Linear(2, 2)
    assert create_ddp_model(model) is model


class _Interrupted(Exception):
    pass


def _stop_after(iteration):
    def after_step(trainer):
        if trainer.iter == iteration:
            raise _Interrupted(f"simulated crash after iteration {iteration}")

    return hooks.CallbackHook(after_step=after_step)


def test_resume_is_exact(shapes_name, tmp_path):
    from heron.utils.env import seed_all_rng

    def cfg_in(folder):
        cfg = _cfg(shapes_name, tmp_path / folder, max_iter=4)
        cfg.MODEL.RPN.BATCH_SIZE_PER_IMAGE = 16  # random sampling of anchors and proposals
        cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 16
        return cfg

    seed_all_rng(0)
    straight = DefaultTrainer(cfg_in("straight"))
    straight.resume_or_load(resume=False)
    straight.train()

    seed_all_rng(0)
    first = DefaultTrainer(cfg_in("resumed"))
    first.register_hooks([_stop_after(1)])  # after the checkpoint of iteration 1
    first.resume_or_load(resume=False)
    with pytest.raises(_Interrupted):
        first.train()

    # A new process: default_setup seeds it with cfg.SEED again, which fixes the sampler's
    # order; the checkpoint then restores the generators' states of iteration 2.
    seed_all_rng(0)
    second = DefaultTrainer(cfg_in("resumed"))
    second.resume_or_load(resume=True)
    assert second.start_iter == 2
    second.train()

    for (name, a), (_, b) in zip(
        straight.model.state_dict().items(), second.model.state_dict().items()
    ):
        torch.testing.assert_close(b, a, rtol=0, atol=0, msg=name)
    # and the logged losses of iterations 2 and 3 are the same
    for key in ("loss_cls", "loss_rpn_cls"):
        a = [v for v, it in straight.storage.history(key).values() if it >= 2]
        b = [v for v, it in second.storage.history(key).values() if it >= 2]
        assert a == b
