import pytest
import torch
from torch import nn
from torch.nn import functional as F

from heron.layers.deform_conv import DeformConv, ModulatedDeformConv


def _inputs(n=2, c=4, h=7, w=8, seed=0):
    return torch.randn(n, c, h, w, generator=torch.Generator().manual_seed(seed))


def test_deform_conv_parameters_use_detectron2_names():
    assert list(DeformConv(4, 6, 3).state_dict()) == ["weight"]
    modulated = ModulatedDeformConv(4, 6, 3)
    assert list(modulated.state_dict()) == ["weight", "bias"]
    torch.testing.assert_close(modulated.bias, torch.zeros(6))
    assert modulated.weight.shape == (6, 4, 3, 3)


@pytest.mark.parametrize(
    ("stride", "padding", "dilation", "groups"),
    [(1, 1, 1, 1), (2, 1, 1, 1), (1, 2, 2, 1), (1, 1, 1, 2)],
)
def test_deform_conv_with_zero_offset_is_plain_conv(stride, padding, dilation, groups):
    conv = DeformConv(4, 6, 3, stride=stride, padding=padding, dilation=dilation, groups=groups)
    x = _inputs()
    expected = F.conv2d(x, conv.weight, None, stride, padding, dilation, groups)
    offset = torch.zeros(2, 18, *expected.shape[-2:])
    torch.testing.assert_close(conv(x, offset), expected)


def test_deform_conv_with_two_deformable_groups_and_zero_offset_is_plain_conv():
    conv = DeformConv(4, 6, 3, padding=1, deformable_groups=2)
    x = _inputs()
    offset = torch.zeros(2, 2 * 2 * 9, 7, 8)
    torch.testing.assert_close(conv(x, offset), F.conv2d(x, conv.weight, padding=1))


def test_modulated_deform_conv_with_zero_offset_and_unit_mask_is_plain_conv():
    conv = ModulatedDeformConv(4, 6, 3, padding=1)
    with torch.no_grad():
        conv.bias.uniform_(-1, 1)
    x = _inputs()
    offset, mask = torch.zeros(2, 18, 7, 8), torch.ones(2, 9, 7, 8)
    torch.testing.assert_close(
        conv(x, offset, mask), F.conv2d(x, conv.weight, conv.bias, padding=1)
    )


def test_modulated_deform_conv_mask_scales_every_sample():
    conv = ModulatedDeformConv(4, 6, 3, padding=1)
    with torch.no_grad():
        conv.bias.fill_(1.0)
    x = _inputs()
    offset, mask = torch.zeros(2, 18, 7, 8), torch.full((2, 9, 7, 8), 0.5)
    # every tap weighted by 0.5, the bias added after: 0.5 * conv(x) + 1
    expected = 0.5 * F.conv2d(x, conv.weight, padding=1) + 1.0
    torch.testing.assert_close(conv(x, offset, mask), expected)


def test_deform_conv_offset_of_one_in_x_equals_conv_of_left_shifted_input():
    conv = DeformConv(4, 6, 3, padding=1)
    x = _inputs(w=8)
    offset = torch.zeros(2, 18, 7, 8)
    offset[:, 1::2] = 1.0  # channel 2k is the y offset of tap k, 2k + 1 the x offset
    shifted = torch.cat([x[..., 1:], torch.zeros_like(x[..., :1])], dim=-1)  # x[j + 1]
    expected = F.conv2d(shifted, conv.weight, padding=1)
    # Output column j reads input columns j..j+2 either way, except at column 0 (the
    # shifted conv reads padding where the deformable one reads x[0]) and at the last
    # two columns (x[j + 2] is past the edge).
    out = conv(x, offset)
    torch.testing.assert_close(out[..., 1:6], expected[..., 1:6])


def test_deform_conv_offset_of_one_in_y_equals_conv_of_upward_shifted_input():
    conv = DeformConv(4, 6, 3, padding=1)
    x = _inputs(h=7)
    offset = torch.zeros(2, 18, 7, 8)
    offset[:, 0::2] = 1.0
    shifted = torch.cat([x[..., 1:, :], torch.zeros_like(x[..., :1, :])], dim=-2)
    expected = F.conv2d(shifted, conv.weight, padding=1)
    torch.testing.assert_close(conv(x, offset)[..., 1:5, :], expected[..., 1:5, :])


def test_deform_conv_gradient_reaches_offsets_input_and_weight():
    conv = ModulatedDeformConv(4, 6, 3, padding=1)
    x = _inputs().requires_grad_()
    offset = torch.full((2, 18, 7, 8), 0.3, requires_grad=True)
    mask = torch.full((2, 9, 7, 8), 0.7, requires_grad=True)
    conv(x, offset, mask).square().sum().backward()
    for grad in (x.grad, offset.grad, mask.grad, conv.weight.grad, conv.bias.grad):
        assert torch.isfinite(grad).all()
        assert grad.abs().sum() > 0


@pytest.mark.parametrize("modulated", [False, True])
def test_deform_conv_empty_batch_gives_empty_output_connected_to_graph(modulated):
    cls = ModulatedDeformConv if modulated else DeformConv
    conv = cls(4, 6, 3, stride=2, padding=1)
    x = torch.zeros(0, 4, 9, 9, requires_grad=True)
    args = (torch.zeros(0, 18, 5, 5),) + ((torch.zeros(0, 9, 5, 5),) if modulated else ())
    out = conv(x, *args)
    # (9 + 2 - 3) // 2 + 1 = 5
    assert out.shape == (0, 6, 5, 5)
    out.sum().backward()
    assert x.grad.shape == x.shape
    torch.testing.assert_close(conv.weight.grad, torch.zeros_like(conv.weight))


def test_deform_conv_applies_norm_then_activation():
    conv = DeformConv(1, 1, 1, norm=nn.Identity(), activation=lambda t: t.clamp(min=0) + 1)
    with torch.no_grad():
        conv.weight.fill_(-2.0)
    out = conv(torch.ones(1, 1, 2, 2), torch.zeros(1, 2, 2, 2))
    # conv: -2; activation: clamp(min=0) + 1 -> 1
    torch.testing.assert_close(out, torch.ones(1, 1, 2, 2))


def test_deform_conv_can_have_bias():
    conv = DeformConv(1, 2, 1, bias=True)
    with torch.no_grad():
        conv.weight.zero_()
        conv.bias.copy_(torch.tensor([1.0, -1.0]))
    out = conv(torch.ones(1, 1, 2, 2), torch.zeros(1, 2, 2, 2))
    torch.testing.assert_close(out, torch.tensor([1.0, -1.0]).view(1, 2, 1, 1).expand(1, 2, 2, 2))


def test_deform_conv_extra_repr_lists_arguments():
    text = repr(ModulatedDeformConv(4, 6, 3, padding=1, deformable_groups=2))
    assert (
        "in_channels=4, out_channels=6, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1), "
        "dilation=(1, 1), groups=1, deformable_groups=2, bias=True" in text
    )


def test_deform_conv_rejects_offset_with_wrong_channel_count():
    conv = DeformConv(4, 6, 3, padding=1)
    with pytest.raises(
        ValueError, match=r"offset must be \(N, 18, H_out, W_out\).*got shape \(2, 9, 7, 8\)"
    ):
        conv(_inputs(), torch.zeros(2, 9, 7, 8))


def test_modulated_deform_conv_rejects_mask_with_wrong_channel_count():
    conv = ModulatedDeformConv(4, 6, 3, padding=1)
    with pytest.raises(ValueError, match=r"mask must be \(N, 9, H_out, W_out\)"):
        conv(_inputs(), torch.zeros(2, 18, 7, 8), torch.zeros(2, 18, 7, 8))


def test_deform_conv_rejects_non_4d_input():
    with pytest.raises(ValueError, match=r"4-D \(N, C, H, W\) input, got shape \(4, 7, 8\)"):
        DeformConv(4, 6, 3)(torch.zeros(4, 7, 8), torch.zeros(1, 18, 5, 6))


def test_deform_conv_rejects_channels_not_divisible_by_groups():
    with pytest.raises(ValueError, match="in_channels 5 is not divisible by groups 2"):
        DeformConv(5, 6, 3, groups=2)
    with pytest.raises(ValueError, match="out_channels 5 is not divisible by groups 2"):
        ModulatedDeformConv(4, 5, 3, groups=2)
