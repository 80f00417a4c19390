"""Tests of heron/utils/analysis.py: FLOPs, activations and parameters counted by hand."""

from __future__ import annotations

import os
import sys

import pytest
import torch
from torch import nn

from heron.utils.analysis import (
    ActivationCountAnalysis,
    FlopCountAnalysis,
    activation_count_operators,
    flop_count_operators,
    parameter_count,
    parameter_count_table,
)


class ImageModel(nn.Module):
    """Wraps a module so it takes Detectron2's list[dict] input (images stacked)."""

    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body

    def forward(self, batch: list[dict]) -> torch.Tensor:
        return self.body(torch.stack([d["image"] for d in batch]))


def conv_then_linear() -> ImageModel:
    # body.0: conv 3->8, k3, pad 1 on 10x10 -> (8, 10, 10); body.1.1: linear 800 -> 4
    return ImageModel(
        nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Sequential(nn.Flatten(), nn.Linear(800, 4)))
    )


def one_image(h: int = 10, w: int = 10) -> list[dict]:
    return [{"image": torch.zeros(3, h, w)}]


def test_conv_flops_are_two_per_multiply_add():
    model = ImageModel(nn.Conv2d(3, 8, 3, padding=1))
    # 8 * 10 * 10 outputs, each 3 * 3 * 3 multiply-adds, 2 FLOPs each
    expected = 2 * 8 * 10 * 10 * 3 * 3 * 3
    assert flop_count_operators(model, one_image()) == pytest.approx({"conv": expected / 1e9})
    macs = flop_count_operators(model, one_image(), per_mac=True)
    assert macs == pytest.approx({"conv": expected / 2 / 1e9})


def test_linear_flops_count_the_matrix_product():
    model = ImageModel(nn.Sequential(nn.Flatten(), nn.Linear(12, 5)))
    # one row of 12 inputs times a (12, 5) weight: 12 * 5 multiply-adds = 120 FLOPs
    ops = flop_count_operators(model, [{"image": torch.zeros(3, 2, 2)}])
    assert ops == pytest.approx({"addmm": 2 * 12 * 5 / 1e9})


def test_flops_are_attributed_to_each_enclosing_module():
    analysis = FlopCountAnalysis(conv_then_linear(), one_image())
    conv, linear = 2 * 8 * 100 * 27, 2 * 800 * 4  # 43200, 6400
    by_module = analysis.by_module()
    assert by_module["body.0"] == conv
    assert by_module["body.1"] == by_module["body.1.1"] == linear
    assert by_module["body.1.0"] == 0  # Flatten does no counted work
    assert by_module[""] == by_module["body"] == conv + linear
    assert analysis.total() == conv + linear
    assert analysis.by_operator("body.1") == {"addmm": linear}


def test_flops_are_averaged_over_inputs_run_one_at_a_time():
    model = ImageModel(nn.Conv2d(3, 8, 3, padding=1))
    inputs = one_image(10, 10) + one_image(20, 10)
    # 10x10 -> 43200 FLOPs, 20x10 -> 86400; mean 64800
    assert FlopCountAnalysis(model, inputs).total() == pytest.approx(64800)


def test_counting_restores_training_mode():
    model = conv_then_linear().train()
    flop_count_operators(model, one_image())
    assert model.training
    model.eval()
    activation_count_operators(model, one_image())
    assert not model.training


def test_conv_activations_are_its_output_elements():
    model = ImageModel(nn.Conv2d(3, 8, 3, padding=1))
    # output (1, 8, 10, 10): 800 elements = 0.0008 M
    assert activation_count_operators(model, one_image()) == pytest.approx({"conv": 800 / 1e6})


def test_activations_per_module():
    analysis = ActivationCountAnalysis(conv_then_linear(), one_image())
    by_module = analysis.by_module()
    assert by_module["body.0"] == 800  # (1, 8, 10, 10)
    assert by_module["body.1.1"] == 4  # (1, 4)
    assert by_module[""] == 804
    assert analysis.by_operator() == {"conv": 800, "addmm": 4}


def test_einsum_and_matmul_activations_are_counted():
    class Products(nn.Module):
        def forward(self, batch):
            x = batch[0]["image"]  # (3, 4, 5)
            y = torch.einsum("bij,bjk->bik", x, x.transpose(1, 2))  # (3, 4, 4): 48
            return y @ torch.ones(4, 2)  # (3, 4, 2): 24

    total = ActivationCountAnalysis(Products(), [{"image": torch.ones(3, 4, 5)}]).total()
    assert total == 48 + 24


def test_parameter_count_per_prefix():
    counts = parameter_count(conv_then_linear())
    conv, linear = 8 * 3 * 3 * 3 + 8, 800 * 4 + 4  # 224, 3204
    assert counts[""] == counts["body"] == conv + linear
    assert counts["body.0"] == conv
    assert counts["body.0.weight"] == 216
    assert counts["body.1"] == counts["body.1.1"] == linear
    assert "body.1.0" not in counts  # Flatten has no parameters


def test_parameter_count_counts_shared_parameters_once():
    linear = nn.Linear(2, 2)  # 6 parameters
    assert parameter_count(nn.Sequential(linear, linear))[""] == 6


def test_parameter_count_of_a_model_without_parameters_is_empty():
    assert parameter_count(nn.ReLU()) == {}


def test_parameter_count_table_stops_at_max_depth():
    table = parameter_count_table(conv_then_linear(), max_depth=2)
    assert "3.4K" in table  # total 3428
    assert "body.0 " in table and "224" in table
    assert "body.1.1" not in table  # depth 3
    deeper = parameter_count_table(conv_then_linear(), max_depth=3)
    assert "(8, 3, 3, 3)" in deeper  # body.0.weight shown by its shape
    with pytest.raises(ValueError, match="max_depth must be >= 0, got -1"):
        parameter_count_table(conv_then_linear(), max_depth=-1)


@pytest.mark.parametrize(
    ("inputs", "error", "message"),
    [
        (torch.zeros(1, 3, 4, 4), TypeError, "inputs must be a list of dicts"),
        ([], ValueError, "inputs is empty"),
        ([torch.zeros(3, 4, 4)], TypeError, r"inputs\[0\] must be a dict"),
        ([{"img": torch.zeros(3, 4, 4)}], KeyError, r"inputs\[0\] has no 'image' key"),
        ([{"image": [1, 2]}], TypeError, r"inputs\[0\]\['image'\] must be a tensor"),
    ],
)
def test_bad_inputs_are_named(inputs, error, message):
    with pytest.raises(error, match=message):
        flop_count_operators(conv_then_linear(), inputs)


def test_unknown_module_name_is_a_key_error():
    analysis = FlopCountAnalysis(conv_then_linear(), one_image())
    with pytest.raises(KeyError, match="'head' is not a module"):
        analysis.total("head")


def test_rcnn_totals_are_the_sums_of_their_children():
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "modeling"))
    from rcnn_fixtures import small_rcnn_cfg

    from heron.modeling import build_model

    cfg = small_rcnn_cfg()
    cfg.MODEL.RPN.POST_NMS_TOPK_TEST = 10
    torch.manual_seed(0)
    model = build_model(cfg)
    inputs = [{"image": torch.randint(0, 256, (3, 64, 96), dtype=torch.uint8)}]
    flops = FlopCountAnalysis(model, inputs)
    acts = ActivationCountAnalysis(model, inputs)
    for analysis in (flops, acts):
        by_module = analysis.by_module()
        children = [n for n, _ in model.named_children()]
        assert by_module[""] > 0
        assert by_module[""] == pytest.approx(sum(by_module[c] for c in children))
        assert by_module["backbone"] > 0 and by_module["roi_heads"] > 0
        assert analysis.total() == pytest.approx(sum(analysis.by_operator().values()))
    assert parameter_count(model)[""] == sum(p.numel() for p in model.parameters())
