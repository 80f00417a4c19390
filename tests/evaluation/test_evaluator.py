"""Tests of heron/evaluation/evaluator.py."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

from heron.evaluation.evaluator import (
    DatasetEvaluator,
    DatasetEvaluators,
    inference_context,
    inference_on_dataset,
)


class _Doubler(nn.Module):
    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm1d(1)
        self.seen_training = []
        self.seen_grad = []

    def forward(self, batch):
        self.seen_training.append(self.training)
        self.seen_grad.append(torch.is_grad_enabled())
        return [{"y": 2 * item["x"]} for item in batch]


class _SumEvaluator(DatasetEvaluator):
    def __init__(self, name="sum"):
        self.name = name
        self.resets = 0

    def reset(self):
        self.resets += 1
        self.pairs = []

    def process(self, inputs, outputs):
        self.pairs += [(i["x"], o["y"]) for i, o in zip(inputs, outputs)]

    def evaluate(self):
        return {self.name: {"n": len(self.pairs), "total": sum(y for _, y in self.pairs)}}


def _loader(n_batches=4, batch=2):
    return [[{"x": b * batch + i} for i in range(batch)] for b in range(n_batches)]


def test_inference_feeds_every_batch_and_restores_training_mode(caplog):
    model = _Doubler().train()
    evaluator = _SumEvaluator()
    with caplog.at_level(logging.INFO, logger="heron.evaluation.evaluator"):
        results = inference_on_dataset(model, _loader(), evaluator)
    # inputs 0..7 doubled: 2 * 28 = 56
    assert results == {"sum": {"n": 8, "total": 56}}
    assert evaluator.resets == 1
    assert model.seen_training == [False] * 4 and model.seen_grad == [False] * 4
    assert model.training  # restored
    assert "Start inference on 4 batches" in caplog.text
    assert "Total inference time" in caplog.text


def test_a_list_of_evaluators_is_merged_and_duplicate_tasks_are_rejected():
    results = inference_on_dataset(
        _Doubler(), _loader(2, 1), [_SumEvaluator("a"), _SumEvaluator("b")]
    )
    assert results == {"a": {"n": 2, "total": 2}, "b": {"n": 2, "total": 2}}
    with pytest.raises(ValueError, match="same key 'a'"):
        inference_on_dataset(_Doubler(), _loader(1, 1), [_SumEvaluator("a"), _SumEvaluator("a")])


def test_no_evaluator_and_a_plain_callable_model():
    calls = []

    def model(batch):
        calls.append(len(batch))
        return [{} for _ in batch]

    assert inference_on_dataset(model, _loader(3, 2), None) == {}
    assert calls == [2, 2, 2]


def test_callbacks_run_in_order_and_unknown_names_are_rejected():
    events = []
    cbs = {
        name: (lambda n=name: events.append(n))
        for name in ("on_start", "before_inference", "after_inference", "on_end")
    }
    inference_on_dataset(_Doubler(), _loader(2, 1), None, callbacks=cbs)
    assert events == [
        "on_start",
        "before_inference",
        "after_inference",
        "before_inference",
        "after_inference",
        "on_end",
    ]
    with pytest.raises(ValueError, match="before_forward"):
        inference_on_dataset(_Doubler(), _loader(1, 1), None, callbacks={"before_forward": print})


def test_inference_context_restores_mode_after_an_exception():
    model = nn.Linear(1, 1).train()
    with pytest.raises(RuntimeError), inference_context(model):
        assert not model.training
        raise RuntimeError("boom")
    assert model.training


def test_base_evaluator_returns_none_and_is_treated_as_empty():
    assert inference_on_dataset(_Doubler(), _loader(1, 1), DatasetEvaluator()) == {}


def test_dataset_evaluators_forwards_reset_and_process():
    a, b = _SumEvaluator("a"), _SumEvaluator("b")
    both = DatasetEvaluators([a, b])
    both.reset()
    both.process([{"x": 1}], [{"y": 5}])
    assert a.pairs == b.pairs == [(1, 5)]
    assert both.evaluate() == {"a": {"n": 1, "total": 5}, "b": {"n": 1, "total": 5}}
