"""Tests of heron/engine/train_loop.py: hook order, iteration bookkeeping, losses, AMP,
gradient accumulation, NaN detection and trainer state."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

from heron.engine.train_loop import AMPTrainer, HookBase, SimpleTrainer, TrainerBase


class _Quadratic(nn.Module):
    """loss = mean((w * x - y)^2) with one scalar weight, so gradients are hand-computable."""

    def __init__(self, w: float = 1.0) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor(float(w)))

    def forward(self, batch):
        x, y = batch
        return {"loss_sq": ((self.w * x - y) ** 2).mean()}


def _loader(batches):
    return itertools.cycle(batches)


class _Recorder(HookBase):
    def __init__(self, log):
        self.log = log

    def before_train(self):
        self.log.append(("before_train", self.trainer.iter))

    def before_step(self):
        self.log.append(("before_step", self.trainer.iter, self.trainer.storage.iter))

    def after_backward(self):
        self.log.append(("after_backward", self.trainer.iter))

    def after_step(self):
        self.log.append(("after_step", self.trainer.iter))

    def after_train(self):
        self.log.append(("after_train", self.trainer.iter))


def _sgd(model, lr=0.1):
    return torch.optim.SGD(model.parameters(), lr=lr)


def test_hooks_run_in_order_and_iter_equals_max_iter_after_training():
    model = _Quadratic()
    batch = (torch.tensor([1.0]), torch.tensor([0.0]))
    trainer = SimpleTrainer(model, _loader([batch]), _sgd(model))
    log: list = []
    trainer.register_hooks([_Recorder(log), None])
    trainer.train(2, 4)
    assert log == [
        ("before_train", 2),
        ("before_step", 2, 2),
        ("after_backward", 2),
        ("after_step", 2),
        ("before_step", 3, 3),
        ("after_backward", 3),
        ("after_step", 3),
        ("after_train", 4),
    ]
    assert trainer.iter == 4


def test_sgd_step_follows_the_hand_computed_gradient():
    # loss = (w*2 - 1)^2 at w=1: 1; d/dw = 2*(2w-1)*2 = 4; w <- 1 - 0.1*4 = 0.6.
    model = _Quadratic(1.0)
    batch = (torch.tensor([2.0]), torch.tensor([1.0]))
    trainer = SimpleTrainer(model, _loader([batch]), _sgd(model, 0.1))
    trainer.train(0, 1)
    assert model.w.item() == pytest.approx(0.6)
    hist = trainer.storage.history("total_loss")
    assert hist.latest() == pytest.approx(1.0)
    assert "data_time" in trainer.storage.histories()


def test_gradient_accumulation_equals_one_step_on_the_mean_loss():
    # Two batches: loss1 = (w*1 - 0)^2, loss2 = (w*3 - 0)^2 at w=1 -> 1 and 9.
    # Mean-loss gradient: (2*1*1 + 2*3*3) / 2 = 10; w <- 1 - 0.01*10 = 0.9. Logged loss: 5.
    model = _Quadratic(1.0)
    batches = [
        (torch.tensor([1.0]), torch.tensor([0.0])),
        (torch.tensor([3.0]), torch.tensor([0.0])),
    ]
    trainer = SimpleTrainer(model, _loader(batches), _sgd(model, 0.01), accumulation_steps=2)
    trainer.train(0, 1)
    assert model.w.item() == pytest.approx(0.9)
    assert trainer.storage.history("total_loss").latest() == pytest.approx(5.0)


def test_zero_grad_before_forward_gives_the_same_update():
    results = []
    for flag in (False, True):
        model = _Quadratic(1.0)
        batch = (torch.tensor([2.0]), torch.tensor([1.0]))
        trainer = SimpleTrainer(model, _loader([batch]), _sgd(model), zero_grad_before_forward=flag)
        trainer.train(0, 3)
        results.append(model.w.item())
    assert results[0] == pytest.approx(results[1])


def test_nan_loss_raises_floating_point_error_naming_iteration_and_losses():
    model = _Quadratic(1.0)
    good = (torch.tensor([1.0]), torch.tensor([0.0]))
    bad = (torch.tensor([float("nan")]), torch.tensor([0.0]))
    trainer = SimpleTrainer(model, iter([good, good, bad]), _sgd(model, 0.0))
    log: list = []
    trainer.register_hooks([_Recorder(log)])
    with pytest.raises(FloatingPointError, match=r"(?s)iteration=2.*loss_sq.*nan"):
        trainer.train(0, 5)
    assert log[-1][0] == "after_train"  # after_train still ran


def test_exhausted_loader_raises_a_clear_error():
    model = _Quadratic()
    trainer = SimpleTrainer(model, [(torch.tensor([1.0]), torch.tensor([0.0]))], _sgd(model))
    with pytest.raises(RuntimeError, match="ran out at iteration 1"):
        trainer.train(0, 2)


def test_model_returning_a_tensor_is_logged_as_total_loss():
    class _Scalar(_Quadratic):
        def forward(self, batch):
            return super().forward(batch)["loss_sq"]

    model = _Scalar(1.0)
    trainer = SimpleTrainer(
        model, _loader([(torch.tensor([2.0]), torch.tensor([0.0]))]), _sgd(model)
    )
    trainer.train(0, 1)
    assert trainer.storage.history("total_loss").latest() == pytest.approx(4.0)


def test_wrong_model_output_type_is_rejected():
    class _Bad(nn.Module):
        def __init__(self):
            super().__init__()
            self.p = nn.Parameter(torch.zeros(()))

        def forward(self, batch):
            return [self.p]

    model = _Bad()
    trainer = SimpleTrainer(model, _loader([0]), _sgd(model))
    with pytest.raises(TypeError, match="dict of losses"):
        trainer.train(0, 1)


def test_request_stop_ends_after_the_current_iteration():
    class _StopAt(HookBase):
        def after_step(self):
            if self.trainer.iter == 2:
                self.trainer.request_stop("enough")

    model = _Quadratic()
    trainer = SimpleTrainer(
        model, _loader([(torch.tensor([1.0]), torch.tensor([0.0]))]), _sgd(model)
    )
    log: list = []
    trainer.register_hooks([_StopAt(), _Recorder(log)])
    trainer.train(0, 10)
    assert trainer.iter == 3 and trainer.stop_reason == "enough"
    assert [e for e in log if e[0] == "after_step"][-1] == ("after_step", 2)


def test_state_dict_round_trip_restores_iteration_optimizer_and_hook_state():
    class _Counter(HookBase):
        def __init__(self):
            self.n = 0

        def after_step(self):
            self.n += 1

        def state_dict(self):
            return {"n": self.n}

        def load_state_dict(self, state):
            self.n = state["n"]

    model = _Quadratic()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    batch = (torch.tensor([2.0]), torch.tensor([1.0]))
    trainer = SimpleTrainer(model, _loader([batch]), opt)
    trainer.register_hooks([_Counter()])
    trainer.train(0, 3)
    state = trainer.state_dict()
    # hooks are keyed by their class's qualified name, as in Detectron2
    assert state["iteration"] == 3 and state["hooks"] == {_Counter.__qualname__: {"n": 3}}

    model2 = _Quadratic()
    opt2 = torch.optim.SGD(model2.parameters(), lr=0.1, momentum=0.9)
    trainer2 = SimpleTrainer(model2, _loader([batch]), opt2)
    counter2 = _Counter()
    trainer2.register_hooks([counter2])
    trainer2.load_state_dict(state)
    assert trainer2.iter == 3 and counter2.n == 3
    buf = opt.state[model.w]["momentum_buffer"]
    torch.testing.assert_close(opt2.state_dict()["state"][0]["momentum_buffer"], buf)


def test_load_state_dict_without_iteration_names_the_missing_key():
    model = _Quadratic()
    trainer = SimpleTrainer(model, _loader([0]), _sgd(model))
    with pytest.raises(KeyError, match="iteration"):
        trainer.load_state_dict({"optimizer": {}})


def test_register_hooks_rejects_non_hooks():
    model = _Quadratic()
    trainer = SimpleTrainer(model, _loader([0]), _sgd(model))
    with pytest.raises(TypeError, match="HookBase"):
        trainer.register_hooks([object()])


def test_trainer_base_requires_run_step():
    with pytest.raises(TypeError):
        TrainerBase()


def test_async_metric_writing_puts_the_same_scalars():
    model = _Quadratic(1.0)
    batch = (torch.tensor([2.0]), torch.tensor([1.0]))
    trainer = SimpleTrainer(model, _loader([batch]), _sgd(model, 0.0), async_write_metrics=True)
    trainer.train(0, 3)
    values = [v for v, _ in trainer.storage.history("total_loss").values()]
    assert values == pytest.approx([1.0, 1.0, 1.0])


def test_gather_metric_period_writes_every_nth_iteration():
    model = _Quadratic(1.0)
    batch = (torch.tensor([2.0]), torch.tensor([1.0]))
    trainer = SimpleTrainer(model, _loader([batch]), _sgd(model, 0.0), gather_metric_period=2)
    trainer.train(0, 4)
    iters = [it for _, it in trainer.storage.history("total_loss").values()]
    assert iters == [1, 3]


def test_bad_arguments_are_rejected():
    model = _Quadratic()
    with pytest.raises(ValueError, match="accumulation_steps"):
        SimpleTrainer(model, [], _sgd(model), accumulation_steps=0)
    with pytest.raises(ValueError, match="precision"):
        AMPTrainer(model, [], _sgd(model), precision="int8")


def test_amp_bfloat16_on_cpu_trains_without_a_scaler():
    torch.manual_seed(0)
    model = nn.Linear(4, 1)

    class _Wrap(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = model

        def forward(self, batch):
            out = self.lin(batch[0])
            assert out.dtype == torch.bfloat16  # the forward ran under autocast
            return {"loss_mse": ((out.float() - batch[1]) ** 2).mean()}

    x = torch.randn(16, 4)
    y = x.sum(dim=1, keepdim=True)
    wrap = _Wrap()
    trainer = AMPTrainer(wrap, _loader([(x, y)]), _sgd(wrap, 0.05), precision="bfloat16")
    assert trainer.grad_scaler is None
    trainer.train(0, 30)
    # one loss only: Detectron2 logs it as total_loss alone
    losses = [v for v, _ in trainer.storage.history("total_loss").values()]
    assert losses[-1] < 0.5 * losses[0]
    assert "grad_scaler" not in trainer.state_dict()


def test_amp_float16_scaler_unscales_before_the_step():
    # With a GradScaler the update must equal plain SGD's on the true gradient:
    # loss = (w*2 - 1)^2 at w=1 -> grad 4 -> w = 1 - 0.1*4 = 0.6 (float16 represents it).
    model = _Quadratic(1.0)
    batch = (torch.tensor([2.0]), torch.tensor([1.0]))
    trainer = AMPTrainer(model, _loader([batch]), _sgd(model, 0.1), precision=torch.float16)
    assert trainer.grad_scaler is not None
    trainer.train(0, 1)
    assert model.w.item() == pytest.approx(0.6, abs=1e-3)
    state = trainer.state_dict()
    assert "grad_scaler" in state and math.isfinite(state["grad_scaler"]["scale"])
