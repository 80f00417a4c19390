import dataclasses

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from heron.layers.batch_norm import FrozenBatchNorm2d
from heron.layers.blocks import CNNBlockBase, DepthwiseSeparableConv2d
from heron.layers.shape_spec import ShapeSpec
from heron.layers.wrappers import Conv2d


class _Block(CNNBlockBase):
    def __init__(self):
        super().__init__(3, 4, stride=2)
        self.conv = Conv2d(3, 4, 3, stride=2, padding=1, bias=False, norm=nn.BatchNorm2d(4))
        self.inner = nn.Sequential(nn.BatchNorm2d(4))

    def forward(self, x):
        return self.inner(self.conv(x))


def test_cnn_block_base_records_channels_and_stride():
    block = _Block()
    assert (block.in_channels, block.out_channels, block.stride) == (3, 4, 2)


def test_freeze_stops_gradients_and_freezes_every_batchnorm():
    block = _Block()
    block.train()
    block(torch.randn(2, 3, 8, 8))  # give the BNs non-trivial statistics
    block.eval()
    x = torch.randn(1, 3, 8, 8)
    before = block(x)
    assert block.freeze() is block
    assert isinstance(block.conv.norm, FrozenBatchNorm2d)
    assert isinstance(block.inner[0], FrozenBatchNorm2d)
    assert all(not p.requires_grad for p in block.parameters())
    # Frozen statistics no longer change in training mode, and outputs are unchanged.
    block.train()
    torch.testing.assert_close(block(x), before)


def _identity_norm(channels):
    return nn.Identity()


def test_depthwise_separable_conv_is_depthwise_then_pointwise():
    conv = DepthwiseSeparableConv2d(4, 6, kernel_size=3, padding=2, dilation=2)
    assert conv.depthwise.groups == 4
    assert conv.depthwise.weight.shape == (4, 1, 3, 3)
    assert conv.pointwise.weight.shape == (6, 4, 1, 1)
    x = torch.randn(2, 4, 7, 7)
    mid = F.conv2d(x, conv.depthwise.weight, conv.depthwise.bias, padding=2, dilation=2, groups=4)
    expected = F.conv2d(mid, conv.pointwise.weight, conv.pointwise.bias)
    torch.testing.assert_close(conv(x), expected)
    assert conv(x).shape == (2, 6, 7, 7)


def test_depthwise_separable_conv_has_bias_only_without_norm():
    conv = DepthwiseSeparableConv2d(4, 6, norm1="BN", norm2="")
    assert conv.depthwise.bias is None and isinstance(conv.depthwise.norm, nn.BatchNorm2d)
    assert conv.pointwise.bias is not None and conv.pointwise.norm is None
    assert set(conv.state_dict()) >= {
        "depthwise.weight",
        "depthwise.norm.running_mean",
        "pointwise.weight",
        "pointwise.bias",
    }


def test_depthwise_separable_conv_applies_each_activation():
    conv = DepthwiseSeparableConv2d(
        1,
        1,
        kernel_size=1,
        padding=0,
        norm1=_identity_norm,
        norm2=_identity_norm,
        activation1=lambda t: t + 10,
        activation2=lambda t: t * 2,
    )
    with torch.no_grad():
        conv.depthwise.weight.fill_(1.0)
        conv.pointwise.weight.fill_(3.0)
    # ((1 * 1) + 10) * 3 * 2 = 66
    torch.testing.assert_close(conv(torch.ones(1, 1, 1, 1)), torch.full((1, 1, 1, 1), 66.0))


def test_shape_spec_defaults_to_unknown_and_is_frozen():
    spec = ShapeSpec(channels=256, stride=4)
    assert (spec.channels, spec.height, spec.width, spec.stride) == (256, None, None, 4)
    assert spec == ShapeSpec(256, None, None, 4)
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.channels = 3
    assert hash(spec) == hash(ShapeSpec(channels=256, stride=4))
