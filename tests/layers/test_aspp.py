import pytest
import torch
from torch import nn
from torch.nn import functional as F

from heron.layers.aspp import ASPP
from heron.layers.blocks import DepthwiseSeparableConv2d


def _isolate_pooling_branch(aspp: ASPP, channels: int) -> None:
    """Zero every branch but image pooling and make `project` copy that branch through."""
    with torch.no_grad():
        for conv in aspp.convs[:4]:
            conv.weight.zero_()
            conv.bias.zero_()
        aspp.project.weight.zero_()
        aspp.project.bias.zero_()
        for c in range(channels):
            aspp.project.weight[c, 4 * channels + c] = 1.0


@pytest.mark.parametrize("norm", ["", "BN", "GN"])
def test_aspp_output_keeps_spatial_size(norm):
    aspp = ASPP(8, 32, [1, 2, 3], norm=norm, activation=F.relu)
    assert aspp(torch.randn(2, 8, 9, 11)).shape == (2, 32, 9, 11)


def test_aspp_branch_structure_and_state_dict_names():
    aspp = ASPP(8, 4, [6, 12, 18], norm="BN", activation=nn.ReLU())
    assert len(aspp.convs) == 5
    assert aspp.convs[0].kernel_size == (1, 1)
    assert [aspp.convs[i].dilation for i in (1, 2, 3)] == [(6, 6), (12, 12), (18, 18)]
    assert [aspp.convs[i].padding for i in (1, 2, 3)] == [(6, 6), (12, 12), (18, 18)]
    # With a norm, convs have no bias; the pooling conv has a bias and no norm.
    assert aspp.convs[0].bias is None and isinstance(aspp.convs[0].norm, nn.BatchNorm2d)
    assert aspp.convs[4][1].bias is not None and aspp.convs[4][1].norm is None
    assert aspp.project.weight.shape == (4, 20, 1, 1)
    keys = set(aspp.state_dict())
    assert {
        "convs.0.weight",
        "convs.1.norm.running_mean",
        "convs.4.1.bias",
        "project.norm.weight",
    } <= keys
    # Each conv gets its own copy of the activation module.
    assert aspp.convs[0].activation is not aspp.project.activation


def test_aspp_without_norm_uses_biases():
    aspp = ASPP(4, 4, [1, 2, 3], norm="", activation=None)
    assert all(conv.bias is not None for conv in aspp.convs[:4])
    assert aspp.project.bias is not None


def test_aspp_pooling_branch_is_constant_over_space_and_is_the_global_mean():
    aspp = ASPP(3, 2, [1, 2, 3], norm="", activation=None)
    _isolate_pooling_branch(aspp, 2)
    pool_conv = aspp.convs[4][1]
    with torch.no_grad():
        pool_conv.weight.copy_(torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, -1.0]]).view(2, 3, 1, 1))
        pool_conv.bias.copy_(torch.tensor([0.5, 0.0]))
    x = torch.randn(1, 3, 6, 5)
    out = aspp(x)
    means = x.mean(dim=(2, 3))[0]
    # channel 0: mean_0 + 0.5; channel 1: 2 * mean_1 - mean_2, the same at every pixel
    expected = torch.stack([means[0] + 0.5, 2 * means[1] - means[2]]).view(1, 2, 1, 1)
    torch.testing.assert_close(out, expected.expand(1, 2, 6, 5))


def test_aspp_pool_kernel_of_input_size_equals_global_pooling():
    torch.manual_seed(0)
    global_pool = ASPP(3, 4, [1, 2, 3], norm="", activation=F.relu)
    fixed_pool = ASPP(3, 4, [1, 2, 3], norm="", activation=F.relu, pool_kernel_size=(4, 6))
    fixed_pool.load_state_dict(global_pool.state_dict())
    assert isinstance(fixed_pool.convs[4][0], nn.AvgPool2d)
    x = torch.randn(2, 3, 4, 6)
    torch.testing.assert_close(fixed_pool(x), global_pool(x))


def test_aspp_smaller_pool_kernel_is_not_constant_over_space():
    aspp = ASPP(1, 1, [1, 2, 3], norm="", activation=None, pool_kernel_size=(2, 2))
    _isolate_pooling_branch(aspp, 1)
    with torch.no_grad():
        aspp.convs[4][1].weight.fill_(1.0)
        aspp.convs[4][1].bias.zero_()
    x = torch.arange(16.0).view(1, 1, 4, 4)
    out = aspp(x)
    # 2x2 stride-1 average pool of the ramp: 3x3 map whose top-left is (0 + 1 + 4 + 5) / 4,
    # resized bilinearly to 4x4.
    pooled = F.avg_pool2d(x, 2, stride=1)
    assert pooled[0, 0, 0, 0] == 2.5
    torch.testing.assert_close(
        out, F.interpolate(pooled, size=(4, 4), mode="bilinear", align_corners=False)
    )


def test_aspp_rejects_input_not_divisible_by_pool_kernel():
    aspp = ASPP(2, 2, [1, 2, 3], norm="", activation=None, pool_kernel_size=(2, 2))
    with pytest.raises(ValueError, match=r"input size \(5, 4\) and pool_kernel_size \(2, 2\)"):
        aspp(torch.zeros(1, 2, 5, 4))


def test_aspp_rejects_wrong_number_of_dilations():
    with pytest.raises(ValueError, match=r"dilations must hold 3 values, got \[1, 2\]"):
        ASPP(2, 2, [1, 2], norm="", activation=None)


def test_aspp_depthwise_separable_branches():
    aspp = ASPP(4, 8, [1, 2, 3], norm="BN", activation=nn.ReLU(), use_depthwise_separable_conv=True)
    for i, dilation in zip((1, 2, 3), (1, 2, 3)):
        branch = aspp.convs[i]
        assert isinstance(branch, DepthwiseSeparableConv2d)
        assert branch.depthwise.dilation == (dilation, dilation)
        assert isinstance(branch.depthwise.norm, nn.BatchNorm2d)
        assert isinstance(branch.pointwise.norm, nn.BatchNorm2d)
    assert "convs.1.depthwise.weight" in aspp.state_dict()
    assert aspp(torch.randn(2, 4, 5, 5)).shape == (2, 8, 5, 5)


def test_aspp_dropout_only_in_training():
    aspp = ASPP(2, 4, [1, 2, 3], norm="", activation=F.relu, dropout=0.5).eval()
    x = torch.randn(1, 2, 5, 5)
    torch.testing.assert_close(aspp(x), aspp(x))
    aspp.train()
    torch.manual_seed(0)
    out = aspp(x)
    # dropout zeroes about half the outputs (relu may zero some more) and scales the rest by 2
    kept = out != 0
    eval_out = aspp.eval()(x)
    torch.testing.assert_close(out[kept], 2 * eval_out[kept])
    assert (~kept).sum() > 0
