"""Tests of heron/engine/hooks_extra.py: ValidationLoss and EarlyStopping."""

from __future__ import annotations

import itertools
import logging
import math

import pytest
import torch
from torch import nn

from heron.engine.hooks import EvalHook
from heron.engine.hooks_extra import EarlyStopping, ValidationLoss
from heron.engine.train_loop import SimpleTrainer

_EPS = 1e-5  # BatchNorm1d's default eps


class _BNRegressor(nn.Module):
    """BatchNorm1d(1) (affine 1, 0) -> Linear(1, 1) with weight 2, bias 0.

    Returns {"loss_mse": mean((pred - y)^2), "loss_l1": mean(|pred - y|)}.
    """

    def __init__(self) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(1)
        self.linear = nn.Linear(1, 1)
        with torch.no_grad():
            self.linear.weight.fill_(2.0)
            self.linear.bias.zero_()

    def forward(self, batch):
        x, y = batch
        pred = self.linear(self.bn(x)).squeeze(1)
        return {"loss_mse": ((pred - y) ** 2).mean(), "loss_l1": (pred - y).abs().mean()}


# In training mode BN uses the batch statistics (biased variance):
#   batch 1: x = [1, 3], mean 2, var 1 -> normalized ±1/sqrt(1 + eps) -> pred ±2/sqrt(1 + eps)
#   batch 2: x = [0, 4], mean 2, var 4 -> normalized ±2/sqrt(4 + eps) -> pred ±4/sqrt(4 + eps)
# with targets 0: mse = pred^2, l1 = |pred|
_VAL_BATCHES = [
    (torch.tensor([[1.0], [3.0]]), torch.zeros(2)),
    (torch.tensor([[0.0], [4.0]]), torch.zeros(2)),
]
_MSE = (4 / (1 + _EPS) + 16 / (4 + _EPS)) / 2
_L1 = (2 / math.sqrt(1 + _EPS) + 4 / math.sqrt(4 + _EPS)) / 2
_TRAIN_BATCHES = [(torch.tensor([[5.0], [9.0]]), torch.tensor([1.0, -1.0]))]


def _trainer(model, lr=0.0):
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    return SimpleTrainer(model, itertools.cycle(_TRAIN_BATCHES), optimizer)


def _scripted_eval(values, key="m"):
    it = iter(values)
    return lambda: {key: next(it)}


# ---------------------------------------------------------------------- ValidationLoss


def test_validation_loss_is_the_mean_loss_over_the_loader_and_leaves_bn_stats_unchanged():
    model = _BNRegressor()
    with torch.no_grad():
        model.bn.running_mean.fill_(0.5)
        model.bn.running_var.fill_(2.0)
    before = {k: v.clone() for k, v in model.bn.named_buffers()}
    losses = ValidationLoss(1, model, _VAL_BATCHES).compute_losses()
    assert losses.keys() == {"val_loss_mse", "val_loss_l1", "val_total_loss"}
    assert losses["val_loss_mse"] == pytest.approx(_MSE, rel=1e-6)
    assert losses["val_loss_l1"] == pytest.approx(_L1, rel=1e-6)
    assert losses["val_total_loss"] == pytest.approx(_MSE + _L1, rel=1e-6)
    for k, v in model.bn.named_buffers():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)
    assert model.training


def test_validation_loss_runs_in_training_mode_and_restores_eval_mode():
    model = _BNRegressor().eval()
    losses = ValidationLoss(1, model, _VAL_BATCHES).compute_losses()
    # batch statistics were used (eval-mode BN with mean 0, var 1 would give other losses)
    assert losses["val_loss_mse"] == pytest.approx(_MSE, rel=1e-6)
    assert not model.training


def test_validation_loss_of_a_model_returning_one_tensor():
    class Scalar(nn.Module):
        def forward(self, batch):
            return batch.mean()

    losses = ValidationLoss(1, Scalar(), [torch.tensor([1.0, 3.0]), torch.tensor([6.0])])
    # (2 + 6) / 2 = 4
    assert losses.compute_losses() == {"val_total_loss": pytest.approx(4.0)}


def test_validation_loss_puts_values_every_period_and_at_the_last_iteration():
    model = _BNRegressor()
    trainer = _trainer(model)  # lr 0: the weights stay those of the hand computation
    trainer.register_hooks([ValidationLoss(2, model, _VAL_BATCHES)])
    trainer.train(0, 5)
    history = trainer.storage.history("val_total_loss").values()
    assert [it for _, it in history] == [1, 3, 4]  # (iter + 1) % 2 == 0, and the last
    assert [v for v, _ in history] == pytest.approx([_MSE + _L1] * 3, rel=1e-6)
    assert trainer.storage.smoothing_hints()["val_loss_mse"] is False
    # the training batches still move the running mean: x = [5, 9] has mean 7;
    # after 5 steps of momentum 0.1 from 0: 7 * (1 - 0.9**5)
    torch.testing.assert_close(model.bn.running_mean, torch.tensor([7 * (1 - 0.9**5)]))


def test_validation_loss_restores_bn_stats_when_the_model_raises():
    class Failing(_BNRegressor):
        def forward(self, batch):
            self.bn(batch[0])
            raise RuntimeError("broken batch")

    model = Failing()
    with pytest.raises(RuntimeError, match="broken batch"):
        ValidationLoss(1, model, _VAL_BATCHES).compute_losses()
    torch.testing.assert_close(model.bn.running_mean, torch.zeros(1))
    assert int(model.bn.num_batches_tracked) == 0


def test_validation_loss_rejects_an_empty_loader_and_bad_outputs():
    with pytest.raises(ValueError, match="yielded no batch"):
        ValidationLoss(1, _BNRegressor(), []).compute_losses()

    class ListModel(nn.Module):
        def forward(self, batch):
            return [batch]

    with pytest.raises(TypeError, match="got list"):
        ValidationLoss(1, ListModel(), [torch.zeros(1)]).compute_losses()
    with pytest.raises(ValueError, match="period must be >= 0, got -1"):
        ValidationLoss(-1, _BNRegressor(), [])


# ---------------------------------------------------------------------- EarlyStopping


def _train_with_early_stopping(values, max_iter=20, **kwargs):
    trainer = _trainer(_BNRegressor())
    stopper = EarlyStopping(2, "m", **kwargs)
    trainer.register_hooks([EvalHook(2, _scripted_eval(values)), stopper])
    trainer.train(0, max_iter)
    return trainer, stopper


def test_early_stopping_stops_after_patience_evaluations_without_improvement():
    # evaluations after iterations 1, 3, 5, 7: 1 best, 2 best, 2 (bad 1), 1.5 (bad 2): stop
    trainer, stopper = _train_with_early_stopping([1.0, 2.0, 2.0, 1.5], patience=2)
    assert trainer.iter == 8  # stopped after iteration 7
    assert "m has not improved" in trainer.stop_reason
    assert (stopper.best_metric, stopper.best_iter, stopper.num_bad_evals) == (2.0, 3, 2)


def test_early_stopping_counter_resets_on_improvement():
    # 1 best; 0 bad 1; 3 best (reset); 2 bad 1; 2 bad 2: stop after iteration 9
    trainer, _ = _train_with_early_stopping([1.0, 0.0, 3.0, 2.0, 2.0], patience=2)
    assert trainer.iter == 10


def test_early_stopping_min_delta_and_min_mode():
    # max: 1 best; 1.05 is not > 1 + 0.1 (bad 1); 1.08 (bad 2): stop after iteration 5
    trainer, _ = _train_with_early_stopping([1.0, 1.05, 1.08], patience=2, min_delta=0.1)
    assert trainer.iter == 6
    # min: 3 best; 2 best; 2.5 bad 1; 2.1 bad 2: stop after iteration 7
    trainer, stopper = _train_with_early_stopping([3.0, 2.0, 2.5, 2.1], mode="min", patience=2)
    assert trainer.iter == 8
    assert stopper.best_metric == 2.0


def test_early_stopping_counts_nan_as_no_improvement():
    trainer, _ = _train_with_early_stopping([1.0, float("nan")], patience=1)
    assert trainer.iter == 4


def test_early_stopping_does_not_count_a_missing_or_stale_metric(caplog):
    trainer = _trainer(_BNRegressor())
    results = iter([{}, {"m": 1.0}, {}, {}, {}])  # the last one after training
    stopper = EarlyStopping(2, "m", patience=1)
    trainer.register_hooks([EvalHook(2, lambda: next(results)), stopper])
    with caplog.at_level(logging.WARNING, logger="heron.engine.hooks_extra"):
        trainer.train(0, 9)
    assert trainer.iter == 9 and trainer.stop_reason is None  # ran to the end
    assert "not in the event storage" in caplog.text
    assert "not updated since iteration 3" in caplog.text
    assert stopper.num_bad_evals == 0


def test_early_stopping_state_dict_round_trip_resumes_the_count():
    # evaluations after iterations 1 (1.0 best) and 3 (0.5, bad 1); the one after training
    # (0.0) is not checked by EarlyStopping
    _, stopper = _train_with_early_stopping([1.0, 0.5, 0.0], max_iter=5, patience=3)
    state = stopper.state_dict()
    assert state == {"best_metric": 1.0, "best_iter": 1, "num_bad_evals": 1, "last_iter": 3}
    resumed = EarlyStopping(2, "m", patience=2)
    resumed.load_state_dict(state)
    assert resumed.state_dict() == state
    # resumed at iteration 4: one more bad evaluation (after iteration 5) exhausts patience 2
    trainer = _trainer(_BNRegressor())
    trainer.register_hooks([EvalHook(2, _scripted_eval([0.9])), resumed])
    trainer.train(4, 20)
    assert trainer.iter == 6


def test_early_stopping_rejects_bad_arguments():
    with pytest.raises(ValueError, match="patience must be a positive integer, got 0"):
        EarlyStopping(2, "m", patience=0)
    with pytest.raises(ValueError, match="mode must be 'max' or 'min', got 'up'"):
        EarlyStopping(2, "m", mode="up")
    with pytest.raises(ValueError, match=r"min_delta must be >= 0, got -0\.1"):
        EarlyStopping(2, "m", min_delta=-0.1)
    with pytest.raises(ValueError, match="eval_period must be a positive integer, got 0"):
        EarlyStopping(0, "m")
    with pytest.raises(KeyError, match="lacks \\['num_bad_evals'\\]"):
        EarlyStopping(2, "m").load_state_dict({"best_metric": 1.0, "best_iter": 1})
