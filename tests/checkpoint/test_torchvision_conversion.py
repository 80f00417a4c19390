import logging
import re

import pytest
import torch
import torchvision

from heron.checkpoint.torchvision_conversion import (
    convert_torchvision_resnet,
    is_torchvision_resnet,
)


@pytest.fixture(scope="module")
def resnet18_state():
    return torchvision.models.resnet18(weights=None).state_dict()


def _expected_name(key):
    """The Detectron2 name of a torchvision ResNet key, spelled out case by case."""
    if key.startswith("conv1."):
        return "stem.conv1." + key[len("conv1.") :]
    if key.startswith("bn1."):
        return "stem.conv1.norm." + key[len("bn1.") :]
    m = re.fullmatch(r"layer(\d)\.(\d+)\.(.+)", key)
    assert m, key
    stage, block, rest = int(m.group(1)), m.group(2), m.group(3)
    head = f"res{stage + 1}.{block}."
    if m2 := re.fullmatch(r"conv(\d)\.(.+)", rest):
        return head + f"conv{m2.group(1)}.{m2.group(2)}"
    if m2 := re.fullmatch(r"bn(\d)\.(.+)", rest):
        return head + f"conv{m2.group(1)}.norm.{m2.group(2)}"
    if rest.startswith("downsample.0."):
        return head + "shortcut." + rest[len("downsample.0.") :]
    if rest.startswith("downsample.1."):
        return head + "shortcut.norm." + rest[len("downsample.1.") :]
    raise AssertionError(f"unexpected torchvision key {key}")


def test_resnet18_keys_convert_to_detectron2_names(resnet18_state):
    converted = convert_torchvision_resnet(resnet18_state)

    expected = {_expected_name(k): k for k in resnet18_state if not k.startswith("fc.")}
    assert set(converted) == set(expected)
    for new_key, old_key in expected.items():
        assert converted[new_key] is resnet18_state[old_key]  # the very same tensor
    # spot checks of each rule against Detectron2's ResNet layout
    assert "stem.conv1.weight" in converted
    assert "stem.conv1.norm.running_var" in converted
    assert "res2.1.conv2.norm.weight" in converted
    assert "res5.0.shortcut.weight" in converted
    assert "res3.0.shortcut.norm.running_mean" in converted
    assert converted["res5.0.shortcut.weight"].shape == (512, 256, 1, 1)


def test_classifier_is_dropped_with_a_log_line(resnet18_state):
    records = []
    handler = logging.Handler(level=logging.INFO)
    handler.emit = records.append
    log = logging.getLogger("heron.checkpoint.torchvision_conversion")
    old_level = log.level
    log.setLevel(logging.INFO)
    log.addHandler(handler)
    try:
        converted = convert_torchvision_resnet(resnet18_state)
    finally:
        log.removeHandler(handler)
        log.setLevel(old_level)
    assert not any("fc" in k.split(".") for k in converted)
    assert any("fc.weight" in r.getMessage() for r in records if r.levelno == logging.INFO)


def test_tensors_are_unchanged(resnet18_state):
    before = {k: v.clone() for k, v in resnet18_state.items()}
    converted = convert_torchvision_resnet(resnet18_state)
    for old_key, value in before.items():
        if not old_key.startswith("fc."):
            torch.testing.assert_close(converted[_expected_name(old_key)], value, rtol=0, atol=0)
    assert resnet18_state.keys() == before.keys()  # the input dict is not modified


def test_empty_state_dict_converts_to_empty():
    assert convert_torchvision_resnet({}) == {}


def test_is_torchvision_resnet(resnet18_state):
    assert is_torchvision_resnet(resnet18_state)
    assert not is_torchvision_resnet(convert_torchvision_resnet(resnet18_state))
    assert not is_torchvision_resnet({"backbone.bottom_up.stem.conv1.weight": torch.zeros(1)})
    assert not is_torchvision_resnet({})
