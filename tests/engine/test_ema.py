"""Tests of heron/engine/ema.py: EMA arithmetic, weight swapping, state and the hook."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from heron.engine.ema import EMAHook, ModelEMA
from heron.engine.hooks import CallbackHook
from heron.engine.train_loop import SimpleTrainer


def _model(w: float = 1.0) -> nn.Sequential:
    """Linear(1, 1) with weight w and bias 0, then BatchNorm1d(1)."""
    model = nn.Sequential(nn.Linear(1, 1), nn.BatchNorm1d(1))
    with torch.no_grad():
        model[0].weight.fill_(w)
        model[0].bias.zero_()
    return model


def _set(model: nn.Module, w: float, running_mean: float, tracked: int) -> None:
    with torch.no_grad():
        model[0].weight.fill_(w)
        model[1].running_mean.fill_(running_mean)
        model[1].num_batches_tracked.fill_(tracked)


def test_two_updates_follow_the_ema_formula():
    model = _model(1.0)
    ema = ModelEMA(model, decay=0.9)
    _set(model, 3.0, running_mean=10.0, tracked=4)
    ema.update(model)
    # weight: 0.9 * 1 + 0.1 * 3 = 1.2; running_mean: 0.9 * 0 + 0.1 * 10 = 1.0
    _set(model, 5.0, running_mean=20.0, tracked=7)
    ema.update(model)
    # weight: 0.9 * 1.2 + 0.1 * 5 = 1.58; running_mean: 0.9 * 1 + 0.1 * 20 = 2.9
    state = ema.state_dict()
    torch.testing.assert_close(state["0.weight"], torch.tensor([[1.58]]))
    torch.testing.assert_close(state["0.bias"], torch.tensor([0.0]))
    torch.testing.assert_close(state["1.running_mean"], torch.tensor([2.9]))
    # integer buffers are copied, not averaged
    assert state["1.num_batches_tracked"].dtype == torch.int64
    assert int(state["1.num_batches_tracked"]) == 7
    assert ema.num_updates == 2


def test_decay_one_keeps_and_decay_zero_follows_the_model():
    model = _model(1.0)
    frozen, follower = ModelEMA(model, decay=1.0), ModelEMA(model, decay=0.0)
    _set(model, 4.0, running_mean=0.0, tracked=0)
    frozen.update(model)
    follower.update(model)
    torch.testing.assert_close(frozen.state["0.weight"], torch.tensor([[1.0]]))
    torch.testing.assert_close(follower.state["0.weight"], torch.tensor([[4.0]]))


def test_the_average_is_a_copy_not_a_view_of_the_model():
    model = _model(1.0)
    ema = ModelEMA(model)
    _set(model, 9.0, running_mean=0.0, tracked=0)
    torch.testing.assert_close(ema.state["0.weight"], torch.tensor([[1.0]]))


def test_apply_to_swaps_ema_weights_in_and_restores_the_originals():
    model = _model(1.0)
    ema = ModelEMA(model, decay=0.5)
    _set(model, 3.0, running_mean=4.0, tracked=1)
    ema.update(model)  # weight 0.5 * 1 + 0.5 * 3 = 2; running_mean 0.5 * 0 + 0.5 * 4 = 2
    weight = model[0].weight
    with ema.apply_to(model) as swapped:
        assert swapped is model
        assert model[0].weight is weight  # swapped in place
        torch.testing.assert_close(model[0].weight, torch.tensor([[2.0]]))
        torch.testing.assert_close(model[1].running_mean, torch.tensor([2.0]))
        # evaluation with the EMA weights: x = 1 -> 2 * 1 + 0 = 2
        torch.testing.assert_close(model[0](torch.ones(1, 1)), torch.tensor([[2.0]]))
    torch.testing.assert_close(model[0].weight, torch.tensor([[3.0]]))
    torch.testing.assert_close(model[1].running_mean, torch.tensor([4.0]))
    assert model[0].weight.requires_grad


def test_apply_to_restores_the_originals_when_the_block_raises():
    model = _model(1.0)
    ema = ModelEMA(model)
    _set(model, 3.0, running_mean=0.0, tracked=0)
    with pytest.raises(RuntimeError, match="boom"), ema.apply_to(model):
        raise RuntimeError("boom")
    torch.testing.assert_close(model[0].weight, torch.tensor([[3.0]]))


def test_state_dict_round_trip_and_loading_into_the_model():
    model = _model(1.0)
    ema = ModelEMA(model, decay=0.5)
    _set(model, 3.0, running_mean=0.0, tracked=0)
    ema.update(model)
    other = ModelEMA(_model(7.0))
    assert not other.restored
    other.load_state_dict(ema.state_dict())
    assert other.restored
    for k, v in ema.state_dict().items():
        torch.testing.assert_close(other.state[k], v)
    # the EMA state_dict is a model state_dict
    fresh = _model(0.0)
    fresh.load_state_dict(ema.state_dict())
    torch.testing.assert_close(fresh[0].weight, torch.tensor([[2.0]]))


def test_load_state_dict_names_wrong_keys_and_shapes():
    ema = ModelEMA(_model())
    state = ema.state_dict()
    with pytest.raises(KeyError, match=r"missing \['0\.bias'\], unexpected \['x'\]"):
        ema.load_state_dict({**{k: v for k, v in state.items() if k != "0.bias"}, "x": 1})
    with pytest.raises(ValueError, match=r"'0\.weight'.* shape \(2,\), the model's is \(1, 1\)"):
        ema.load_state_dict({**state, "0.weight": torch.zeros(2)})
    with pytest.raises(KeyError, match="the model does not match"):
        ema.update(nn.Linear(1, 1))


def test_decay_out_of_range_is_rejected():
    with pytest.raises(ValueError, match=r"decay must be in \[0, 1\], got 1\.5"):
        ModelEMA(_model(), decay=1.5)


def test_average_is_float32_for_a_half_model_and_on_the_given_device():
    model = _model(1.0).half()
    ema = ModelEMA(model, decay=0.5, device="cpu")
    assert ema.state["0.weight"].dtype == torch.float32
    assert ema.state["0.weight"].device == torch.device("cpu")
    with torch.no_grad():
        model[0].weight.fill_(2.0)
    ema.update(model)
    torch.testing.assert_close(ema.state["0.weight"], torch.tensor([[1.5]]))
    with ema.apply_to(model):
        assert model[0].weight.dtype == torch.float16
        torch.testing.assert_close(model[0].weight, torch.tensor([[1.5]], dtype=torch.float16))


class _Quadratic(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor(1.0))

    def forward(self, x):
        return {"loss": ((self.w * x - 2.0) ** 2).mean()}


def test_ema_hook_updates_after_every_step_from_the_weights_at_train_start():
    model = _Quadratic()
    ema = ModelEMA(model, decay=0.8)
    with torch.no_grad():
        model.w.fill_(0.5)  # e.g. pretrained weights loaded after the EMA was built
    trainer = SimpleTrainer(
        model, itertools.repeat(torch.tensor([1.0])), torch.optim.SGD(model.parameters(), lr=0.1)
    )
    weights = []
    recorder = CallbackHook(after_step=lambda t: weights.append(float(t.model.w.detach())))
    hook = EMAHook(model, ema)
    trainer.register_hooks([recorder, hook])
    trainer.train(0, 3)
    # the average restarts from w = 0.5, then ema = 0.8 * ema + 0.2 * w_k after each step
    expected = 0.5
    for w in weights:
        expected = 0.8 * expected + 0.2 * w
    torch.testing.assert_close(ema.state["w"], torch.tensor(expected))
    assert ema.num_updates == 3
    # the hook's state is the EMA's, so trainer checkpoints carry it
    torch.testing.assert_close(trainer.state_dict()["hooks"]["EMAHook"]["w"], ema.state["w"])


def test_ema_hook_keeps_an_average_restored_from_a_checkpoint():
    model = _Quadratic()
    ema = ModelEMA(model, decay=1.0)
    hook = EMAHook(model, ema)
    hook.load_state_dict({"w": torch.tensor(9.0)})
    trainer = SimpleTrainer(
        model, itertools.repeat(torch.tensor([1.0])), torch.optim.SGD(model.parameters(), lr=0.1)
    )
    trainer.register_hooks([hook])
    trainer.train(0, 1)
    torch.testing.assert_close(ema.state["w"], torch.tensor(9.0))  # decay 1: unchanged


def test_ema_hook_rejects_a_non_ema():
    with pytest.raises(TypeError, match="ema must be a ModelEMA, got dict"):
        EMAHook(_model(), {})
