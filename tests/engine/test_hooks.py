"""Tests of heron/engine/hooks.py: Detectron2's hooks driven by a real SimpleTrainer."""

from __future__ import annotations

import itertools
import json
import logging
import os

import pytest
import torch
from torch import nn

from heron.checkpoint.checkpointer import Checkpointer
from heron.engine.hooks import (
    BestCheckpointer,
    CallbackHook,
    EvalHook,
    IterationTimer,
    LRScheduler,
    PeriodicCheckpointer,
    PeriodicWriter,
    PreciseBN,
    TorchMemoryStats,
    TorchProfiler,
)
from heron.engine.train_loop import SimpleTrainer
from heron.utils.events import get_event_storage


class _TinyModel(nn.Module):
    """BatchNorm1d(2) -> Linear(2, 1); returns {"loss_mse": mean((pred - y)^2)}."""

    def __init__(self) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(2)
        self.linear = nn.Linear(2, 1)

    def forward(self, batch):
        x, y = batch
        return {"loss_mse": ((self.linear(self.bn(x)).squeeze(1) - y) ** 2).mean()}


_BATCHES = [
    (torch.tensor([[1.0, 2.0], [3.0, 4.0]]), torch.tensor([0.0, 1.0])),
    (torch.tensor([[5.0, 6.0], [7.0, 8.0]]), torch.tensor([1.0, 0.0])),
]


def _trainer(model=None, lr=0.01):
    model = model if model is not None else _TinyModel()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    return SimpleTrainer(model, itertools.cycle(_BATCHES), optimizer)


class _RecordingCheckpointer:
    def __init__(self):
        self.saved = []

    def save(self, name, **kwargs):
        self.saved.append((name, kwargs))


def _scripted_eval(values, key="m"):
    """An eval function returning {key: v} for v in values, one per call."""
    it = iter(values)
    return lambda: {key: next(it)}


# ---------------------------------------------------------------------- CallbackHook


def test_callback_hook_calls_each_function_with_the_trainer():
    trainer = _trainer()
    calls = []
    hook = CallbackHook(
        before_train=lambda t: calls.append(("before_train", t.iter)),
        before_step=lambda t: calls.append(("before_step", t.iter)),
        after_step=lambda t: calls.append(("after_step", t.iter)),
        after_train=lambda t: calls.append(("after_train", t.iter)),
    )
    trainer.register_hooks([hook])
    trainer.train(0, 2)
    assert calls == [
        ("before_train", 0),
        ("before_step", 0),
        ("after_step", 0),
        ("before_step", 1),
        ("after_step", 1),
        ("after_train", 2),
    ]
    # the closures are dropped after training (they may hold the trainer)
    assert hook._before_train is None and hook._after_step is None


# ---------------------------------------------------------------------- IterationTimer


def test_iteration_timer_puts_time_after_the_warmup_iterations(caplog):
    trainer = _trainer()
    trainer.register_hooks([IterationTimer(warmup_iter=3)])
    with caplog.at_level(logging.INFO, logger="heron.engine.hooks"):
        trainer.train(0, 6)
    # iterations 0 and 1 warm up; from the 3rd finished step (iteration 2) on, "time" is put
    times = trainer.storage.history("time").values()
    assert [it for _, it in times] == [2, 3, 4, 5]
    assert all(t >= 0.0 for t, _ in times)
    assert "Overall training speed: 4 iterations" in caplog.text
    assert "Total training time" in caplog.text


def test_iteration_timer_skips_the_speed_line_when_all_iterations_are_warmup(caplog):
    trainer = _trainer()
    trainer.register_hooks([IterationTimer(warmup_iter=5)])
    with caplog.at_level(logging.INFO, logger="heron.engine.hooks"):
        trainer.train(0, 2)
    assert "time" not in trainer.storage.histories()
    assert "Overall training speed" not in caplog.text
    assert "Total training time" in caplog.text


# ---------------------------------------------------------------------- PeriodicWriter


class _RecordingWriter:
    def __init__(self, log):
        self.log = log

    def write(self):
        self.log.append(("write", get_event_storage().iter))

    def close(self):
        self.log.append(("close",))


def test_periodic_writer_writes_every_period_at_the_last_iteration_and_at_the_end():
    trainer = _trainer()
    log = []
    trainer.register_hooks([PeriodicWriter([_RecordingWriter(log)], period=3)])
    trainer.train(0, 7)
    # (iter + 1) % 3 == 0 -> iterations 2, 5; the last iteration 6; after_train at iter 7
    assert log == [("write", 2), ("write", 5), ("write", 6), ("write", 7), ("close",)]


def test_periodic_writer_rejects_objects_without_write_and_close():
    with pytest.raises(TypeError, match=r"write\(\) and close\(\).*int"):
        PeriodicWriter([3])
    with pytest.raises(ValueError, match="period must be a positive integer, got 0"):
        PeriodicWriter([], period=0)


# ---------------------------------------------------------------------- PeriodicCheckpointer


def test_periodic_checkpointer_saves_every_period_keeps_max_to_keep_and_final(tmp_path):
    trainer = _trainer()
    checkpointer = Checkpointer(trainer.model, str(tmp_path))
    trainer.register_hooks([PeriodicCheckpointer(checkpointer, period=2, max_to_keep=2)])
    trainer.train(0, 7)
    # saves at iterations 1, 3, 5 (the oldest deleted to keep 2) and the final at 6
    names = sorted(f for f in os.listdir(tmp_path) if f.endswith(".pth"))
    assert names == ["model_0000003.pth", "model_0000005.pth", "model_final.pth"]
    assert (tmp_path / "last_checkpoint").read_text() == "model_final.pth"
    final = torch.load(tmp_path / "model_final.pth", weights_only=True)
    assert final["iteration"] == 6
    torch.testing.assert_close(final["model"]["linear.weight"], trainer.model.linear.weight)


def test_periodic_checkpointer_saves_final_after_an_early_stop(tmp_path):
    trainer = _trainer()
    checkpointer = Checkpointer(trainer.model, str(tmp_path))
    stop = CallbackHook(after_step=lambda t: t.iter == 2 and t.request_stop("test"))
    trainer.register_hooks([stop, PeriodicCheckpointer(checkpointer, period=100)])
    trainer.train(0, 10)
    assert trainer.iter == 3
    final = torch.load(tmp_path / "model_final.pth", weights_only=True)
    assert final["iteration"] == 2  # the last iteration that ran


# ---------------------------------------------------------------------- BestCheckpointer


def test_best_checkpointer_saves_only_on_improvement():
    trainer = _trainer()
    ckpt = _RecordingCheckpointer()
    trainer.register_hooks(
        [
            EvalHook(2, _scripted_eval([1.0, 3.0, 2.0, 4.0])),
            BestCheckpointer(2, ckpt, "m", mode="max"),
        ]
    )
    trainer.train(0, 8)
    # evaluations after iterations 1, 3, 5 and after training (storage.iter == 8):
    # 1.0 first -> save; 3.0 > 1.0 -> save; 2.0 -> no; 4.0 > 3.0 -> save
    assert ckpt.saved == [
        ("model_best", {"iteration": 1}),
        ("model_best", {"iteration": 3}),
        ("model_best", {"iteration": 8}),
    ]
    best = trainer._hooks[1]
    assert (best.best_metric, best.best_iter) == (4.0, 8)


def test_best_checkpointer_min_mode_and_file_prefix():
    trainer = _trainer()
    ckpt = _RecordingCheckpointer()
    trainer.register_hooks(
        [
            EvalHook(2, _scripted_eval([5.0, 6.0, 4.0]), eval_after_train=False),
            BestCheckpointer(2, ckpt, "m", mode="min", file_prefix="best_loss"),
        ]
    )
    trainer.train(0, 7)
    # evaluations after iterations 1, 3, 5: 5.0 first, 6.0 worse, 4.0 better
    assert ckpt.saved == [("best_loss", {"iteration": 1}), ("best_loss", {"iteration": 5})]


def test_best_checkpointer_skips_nan_first_value_and_warns_when_metric_missing(caplog):
    trainer = _trainer()
    ckpt = _RecordingCheckpointer()
    trainer.register_hooks(
        [
            EvalHook(2, _scripted_eval([float("nan"), 2.0])),
            BestCheckpointer(2, ckpt, "m"),
            BestCheckpointer(2, _RecordingCheckpointer(), "other"),
        ]
    )
    with caplog.at_level(logging.WARNING, logger="heron.engine.hooks"):
        trainer.train(0, 4)
    assert ckpt.saved == [("model_best", {"iteration": 4})]
    assert "other does not seem to be computed" in caplog.text
    assert trainer._hooks[2]._checkpointer.saved == []


def test_best_checkpointer_state_dict_keeps_the_best_across_a_resume():
    first = BestCheckpointer(2, _RecordingCheckpointer(), "m")
    assert first.state_dict() == {}  # nothing evaluated yet
    first.best_metric, first.best_iter = 3.0, 5
    trainer = _trainer()
    ckpt = _RecordingCheckpointer()
    resumed = BestCheckpointer(2, ckpt, "m")
    resumed.load_state_dict(first.state_dict())
    trainer.register_hooks([EvalHook(2, _scripted_eval([2.0, 4.0])), resumed])
    trainer.train(6, 10)
    # after iteration 7: 2.0 < 3.0, no save; after training (iter 10): 4.0 > 3.0, save
    assert ckpt.saved == [("model_best", {"iteration": 10})]
    assert resumed.state_dict() == {"best_metric": 4.0, "best_iter": 10}


def test_best_checkpointer_rejects_unknown_mode():
    with pytest.raises(ValueError, match="mode must be 'max' or 'min', got 'best'"):
        BestCheckpointer(2, _RecordingCheckpointer(), "m", mode="best")


# ---------------------------------------------------------------------- LRScheduler


def test_lr_scheduler_puts_the_lr_of_each_step_and_steps_the_scheduler():
    trainer = _trainer(lr=0.01)
    scheduler = torch.optim.lr_scheduler.StepLR(trainer.optimizer, step_size=2, gamma=0.1)
    hook = LRScheduler(scheduler=scheduler)
    trainer.register_hooks([hook])
    trainer.train(0, 5)
    # StepLR(2, 0.1) from 0.01: iterations 0,1 -> 0.01; 2,3 -> 0.001; 4 -> 0.0001
    lrs = trainer.storage.history("lr").values()
    assert [it for _, it in lrs] == [0, 1, 2, 3, 4]
    assert [lr for lr, _ in lrs] == pytest.approx([0.01, 0.01, 1e-3, 1e-3, 1e-4])
    assert trainer.storage.smoothing_hints()["lr"] is False
    # five steps taken: the lr of the next iteration is 0.01 * 0.1**(5 // 2)
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(1e-4)
    assert hook.state_dict() == scheduler.state_dict()
    assert hook.state_dict()["last_epoch"] == 5


def test_lr_scheduler_state_dict_round_trip_restores_the_schedule():
    trainer = _trainer(lr=1.0)
    scheduler = torch.optim.lr_scheduler.StepLR(trainer.optimizer, step_size=2, gamma=0.1)
    hook = LRScheduler(trainer.optimizer, scheduler)
    trainer.register_hooks([hook])
    hook.load_state_dict({**scheduler.state_dict(), "last_epoch": 7})
    assert scheduler.last_epoch == 7


def test_lr_scheduler_reports_the_group_with_most_params():
    a, b, c = (nn.Parameter(torch.zeros(1)) for _ in range(3))
    opt = torch.optim.SGD([{"params": [a], "lr": 0.5}, {"params": [b, c], "lr": 0.1}], lr=0.1)
    assert LRScheduler.get_best_param_group_id(opt) == 1
    # all groups of one parameter: the first group with the most common lr
    opt = torch.optim.SGD(
        [{"params": [a], "lr": 0.5}, {"params": [b], "lr": 0.1}, {"params": [c], "lr": 0.1}],
        lr=0.1,
    )
    assert LRScheduler.get_best_param_group_id(opt) == 1


# ---------------------------------------------------------------------- EvalHook


@pytest.mark.parametrize(("eval_after_train", "expected"), [(True, [2, 5, 7]), (False, [2, 5])])
def test_eval_hook_runs_every_period_but_the_last_iteration_then_after_train(
    eval_after_train, expected
):
    trainer = _trainer()
    calls = []

    def evaluate():
        calls.append(trainer.iter)
        return {}

    trainer.register_hooks([EvalHook(3, evaluate, eval_after_train=eval_after_train)])
    trainer.train(0, 7)
    # next_iter = 3, 6 evaluate in after_step (iterations 2, 5); 7 == max_iter is left to
    # after_train, where trainer.iter == 7
    assert calls == expected


def test_eval_hook_at_last_iteration_runs_once():
    trainer = _trainer()
    calls = []
    trainer.register_hooks([EvalHook(3, lambda: calls.append(trainer.iter))])
    trainer.train(0, 6)
    assert calls == [2, 6]  # next_iter 6 == max_iter: only in after_train


def test_eval_hook_puts_flattened_results_without_smoothing():
    trainer = _trainer()
    results = {"bbox": {"AP": 40, "AP50": torch.tensor(60.5)}, "segm": {"AP": 30.0}}
    trainer.register_hooks([EvalHook(0, lambda: results)])
    trainer.train(0, 2)
    latest = trainer.storage.latest()
    assert latest["bbox/AP"] == (40.0, 2)
    assert latest["bbox/AP50"] == (60.5, 2)
    assert latest["segm/AP"] == (30.0, 2)
    assert trainer.storage.smoothing_hints()["bbox/AP"] is False


def test_eval_hook_names_the_key_of_a_non_float_value():
    trainer = _trainer()
    trainer.register_hooks([EvalHook(0, lambda: {"bbox": {"AP": "n/a"}})])
    with pytest.raises(ValueError, match="'bbox/AP': 'n/a'"):
        trainer.train(0, 1)


def test_eval_hook_rejects_non_dict_results():
    trainer = _trainer()
    trainer.register_hooks([EvalHook(0, lambda: [1.0])])
    with pytest.raises(TypeError, match="must return a dict, got list"):
        trainer.train(0, 1)


def test_eval_hook_skips_the_final_evaluation_after_an_early_stop():
    trainer = _trainer()
    calls = []
    stop = CallbackHook(after_step=lambda t: t.iter == 1 and t.request_stop("test"))
    hook = EvalHook(0, lambda: calls.append(trainer.iter))
    trainer.register_hooks([stop, hook])
    trainer.train(0, 10)
    assert calls == []
    assert hook._func is None  # dropped after training


# ---------------------------------------------------------------------- PreciseBN


def test_precise_bn_sets_running_mean_to_the_data_mean_at_the_last_iteration():
    model = _TinyModel()
    trainer = _trainer(model)
    hook = PreciseBN(0, model, itertools.cycle(_BATCHES), num_iter=2)
    trainer.register_hooks([hook])
    trainer.train(0, 3)
    # the BN input is the raw data: mean of the 4 rows of both batches
    # column 0: (1 + 3 + 5 + 7) / 4 = 4; column 1: (2 + 4 + 6 + 8) / 4 = 5
    torch.testing.assert_close(model.bn.running_mean, torch.tensor([4.0, 5.0]))
    # unbiased variance of each batch, e.g. (1 - 2)^2 + (3 - 2)^2 = 2, averaged: 2
    torch.testing.assert_close(model.bn.running_var, torch.tensor([2.0, 2.0]))
    assert model.bn.momentum == 0.1  # restored


def test_precise_bn_runs_every_period():
    model = _TinyModel()
    trainer = _trainer(model)
    hook = PreciseBN(2, model, itertools.cycle(_BATCHES), num_iter=2)
    calls = []
    original = hook.update_stats
    hook.update_stats = lambda: (calls.append(trainer.iter), original())
    trainer.register_hooks([hook])
    trainer.train(0, 5)
    assert calls == [1, 3, 4]  # (iter + 1) % 2 == 0, and the last iteration


def test_precise_bn_is_disabled_without_training_mode_bn(caplog):
    model = nn.Linear(2, 1)
    with caplog.at_level(logging.INFO, logger="heron.engine.hooks"):
        hook = PreciseBN(1, model, [], num_iter=2)
    assert "PreciseBN is disabled" in caplog.text
    hook.update_stats()  # no-op: the empty loader is never read


# ---------------------------------------------------------------------- TorchProfiler


def test_torch_profiler_writes_a_chrome_trace_for_each_profiled_iteration(tmp_path):
    trainer = _trainer()
    hook = TorchProfiler(lambda t: t.iter == 1, str(tmp_path), save_tensorboard=False)
    trainer.register_hooks([hook])
    trainer.train(0, 3)
    assert sorted(os.listdir(tmp_path)) == ["profiler-trace-iter1.json"]
    with open(tmp_path / "profiler-trace-iter1.json") as f:
        trace = json.load(f)
    assert "traceEvents" in trace


def test_torch_profiler_writes_tensorboard_traces_under_output_dir(tmp_path):
    trainer = _trainer()
    hook = TorchProfiler(lambda t: t.iter == 0, str(tmp_path))
    trainer.register_hooks([hook])
    trainer.train(0, 2)
    log_dir = tmp_path / "log" / "profiler-tensorboard-iter0"
    traces = [f for f in os.listdir(log_dir) if f.endswith(".json")]
    assert len(traces) == 1 and traces[0].startswith("worker0")


# ---------------------------------------------------------------------- TorchMemoryStats


@pytest.mark.skipif(torch.cuda.is_available(), reason="tests the CPU-only path")
def test_torch_memory_stats_logs_once_without_cuda(caplog):
    trainer = _trainer()
    trainer.register_hooks([TorchMemoryStats(period=1)])
    with caplog.at_level(logging.INFO, logger="heron.engine.hooks"):
        trainer.train(0, 3)
    assert caplog.text.count("CUDA is not available") == 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_torch_memory_stats_logs_at_most_max_runs_reports(caplog):
    trainer = _trainer()
    trainer.register_hooks([TorchMemoryStats(period=1, max_runs=2)])
    with caplog.at_level(logging.INFO, logger="heron.engine.hooks"):
        trainer.train(0, 4)
    assert caplog.text.count("max_reserved_mem") == 2
