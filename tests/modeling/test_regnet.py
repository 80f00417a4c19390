import pytest
import torch
from torch import nn
from torchvision.models.regnet import BlockParams
from torchvision.models.regnet import RegNet as TorchvisionRegNet

from heron.layers.batch_norm import FrozenBatchNorm2d
from heron.modeling.backbone.regnet import (
    SE,
    AnyNet,
    RegNet,
    ResBasicBlock,
    ResBottleneckBlock,
    ResStem,
    SimpleStem,
    VanillaBlock,
    adjust_block_compatibility,
    generate_regnet_parameters,
)

# Detectron2's new_baselines settings (configs/new_baselines/*regnet*_4gf*).
X_4GF = dict(depth=23, w_a=38.65, w_0=96, w_m=2.43, group_width=40)
Y_4GF = dict(depth=22, w_a=31.41, w_0=96, w_m=2.24, group_width=64, se_ratio=0.25)
STAGES = ["s1", "s2", "s3", "s4"]

# Published stage depths and widths of pycls's RegNetX-4.0GF and RegNetY-4.0GF, which the
# hand arithmetic in the first two tests derives from the width rule.
X_4GF_DEPTHS, X_4GF_WIDTHS = [2, 5, 14, 2], [80, 240, 560, 1360]
Y_4GF_DEPTHS, Y_4GF_WIDTHS = [2, 6, 12, 2], [128, 192, 512, 1088]


def _regnet(settings, **kwargs):
    kwargs.setdefault("out_features", STAGES)
    return RegNet(
        stem_class=SimpleStem,
        stem_width=32,
        block_class=ResBottleneckBlock,
        **settings,
        **kwargs,
    )


def test_generate_regnet_parameters_quantizes_x_4gf_widths():
    ws, ds, num_stages, total_stages, ws_all, ws_cont = generate_regnet_parameters(
        38.65, 96, 2.43, 23
    )
    # u_j = 96 + 38.65 j; k_j = round(log(u_j / 96) / log 2.43) changes where
    # u_j / 96 crosses 2.43**0.5 = 1.559 (j = 2), 2.43**1.5 = 3.788 (j = 7) and
    # 2.43**2.5 = 9.205 (j = 21): stages of 2, 5, 14 and 2 blocks.
    # Widths 96 * 2.43**k rounded to multiples of 8: 96, 233.3 -> 232, 566.9 -> 568,
    # 1377.5 -> 1376.
    assert ws == [96, 232, 568, 1376]
    assert ds == [2, 5, 14, 2]
    assert num_stages == 4 and total_stages == 4
    assert len(ws_all) == len(ws_cont) == 23
    assert ws_cont[1] == pytest.approx(134.65)
    # Group width 40: 96 / 40 = 2.4 -> 80, 5.8 -> 240, 14.2 -> 560, 34.4 -> 1360.
    widths, _, groups = adjust_block_compatibility(ws, [1.0] * 4, [40] * 4)
    assert widths == X_4GF_WIDTHS
    assert groups == [40] * 4


def test_generate_regnet_parameters_quantizes_y_4gf_widths():
    ws, ds = generate_regnet_parameters(31.41, 96, 2.24, 22)[:2]
    # u_j = 96 + 31.41 j crosses 96 * 2.24**0.5 = 143.7 at j = 2, 96 * 2.24**1.5 = 321.9
    # at j = 8 and 96 * 2.24**2.5 = 720.9 at j = 20: stages of 2, 6, 12, 2 blocks.
    # 96 * 2.24**k to multiples of 8: 96, 215.0 -> 216, 481.7 -> 480, 1079.0 -> 1080.
    assert ws == [96, 216, 480, 1080]
    assert ds == Y_4GF_DEPTHS
    # Group width 64: 1.5 -> 2 (128), 3.375 -> 3 (192), 7.5 -> 8 (512), 16.875 -> 17 (1088).
    assert adjust_block_compatibility(ws, [1.0] * 4, [64] * 4)[0] == Y_4GF_WIDTHS


def test_adjust_block_compatibility_shrinks_group_to_bottleneck():
    # width 24 with ratio 0.5 gives a 12-channel bottleneck: the group width 16 shrinks to
    # 12, and the width stays 12 / 0.5 = 24.
    assert adjust_block_compatibility([24], [0.5], [16]) == ([24], [0.5], [12])


@pytest.mark.parametrize(
    "settings, depths, widths",
    [(X_4GF, X_4GF_DEPTHS, X_4GF_WIDTHS), (Y_4GF, Y_4GF_DEPTHS, Y_4GF_WIDTHS)],
    ids=["X-4GF", "Y-4GF"],
)
def test_regnet_4gf_outputs_published_widths_at_strides_4_to_32(settings, depths, widths):
    model = _regnet(settings).eval()
    shapes = model.output_shape()
    assert {k: (v.channels, v.stride) for k, v in shapes.items()} == {
        name: (w, s) for name, w, s in zip(STAGES, widths, [4, 8, 16, 32])
    }
    assert [len(list(stage.children())) for stage, _ in model.stages_and_names] == depths
    with torch.no_grad():
        out = model(torch.rand(1, 3, 64, 96))
    # 64 x 96 / stride: 16 x 24, 8 x 12, 4 x 6, 2 x 3.
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "s1": (1, widths[0], 16, 24),
        "s2": (1, widths[1], 8, 12),
        "s3": (1, widths[2], 4, 6),
        "s4": (1, widths[3], 2, 3),
    }


def _torchvision_body(depths, widths, group_width, se_ratio):
    """Stem and stages of torchvision's RegNet with the given stage shapes."""
    params = BlockParams(
        depths=depths,
        widths=widths,
        group_widths=[group_width] * 4,
        bottleneck_multipliers=[1.0] * 4,
        strides=[2] * 4,
        se_ratio=se_ratio,
    )
    model = TorchvisionRegNet(params, stem_width=32)
    return nn.Sequential(model.stem, model.trunk_output)


def _randomize_(model):
    # Random weights and BN statistics so that a wrong layer order or width would show.
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if not t.is_floating_point():
                continue
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=gen) + 0.5)
            else:
                t.copy_(torch.randn(t.shape, generator=gen) * 0.1)


@pytest.mark.parametrize(
    "settings, depths, widths, se_ratio",
    [
        (X_4GF, X_4GF_DEPTHS, X_4GF_WIDTHS, None),
        (Y_4GF, Y_4GF_DEPTHS, Y_4GF_WIDTHS, 0.25),
    ],
    ids=["X-4GF", "Y-4GF"],
)
def test_regnet_4gf_body_has_torchvision_regnet_parameters(settings, depths, widths, se_ratio):
    # torchvision's RegNet, given the same stage depths / widths / groups, is an independent
    # implementation of the same body (stem + four stages), listing its tensors in the
    # same order.
    with torch.device("meta"):  # shapes only: skip the cost of initializing 2 x 20M weights
        ours = _regnet(settings, out_features=["s4"])
        reference = _torchvision_body(depths, widths, settings["group_width"], se_ratio)
    count = sum(p.numel() for p in ours.parameters())
    assert count == sum(p.numel() for p in reference.parameters())
    assert [tuple(t.shape) for t in ours.state_dict().values()] == [
        tuple(t.shape) for t in reference.state_dict().values()
    ]
    # pycls's published totals include the 1000-way classifier: 22.1M (X) / 20.6M (Y).
    total = count + widths[-1] * 1000 + 1000
    assert round(total / 1e6, 1) == (22.1 if se_ratio is None else 20.6)


@pytest.mark.parametrize("se_ratio", [0.0, 0.25], ids=["X", "Y"])
def test_regnet_body_computes_what_torchvision_computes_with_the_same_weights(se_ratio):
    # A small RegNet: u = 16, 24, 32, 40 -> k = round(log2(u / 16)) = 0, 1, 1, 1
    # (log2 2.5 = 1.32) -> stages of widths 16 (1 block) and 32 (3 blocks).
    settings = dict(depth=4, w_a=8.0, w_0=16, w_m=2.0, group_width=8, se_ratio=se_ratio)
    ours = _regnet(settings, out_features=["s2"]).eval()
    assert [len(list(s.children())) for s, _ in ours.stages_and_names] == [1, 3]
    params = BlockParams(
        depths=[1, 3],
        widths=[16, 32],
        group_widths=[8, 8],
        bottleneck_multipliers=[1.0, 1.0],
        strides=[2, 2],
        se_ratio=se_ratio or None,
    )
    tv = TorchvisionRegNet(params, stem_width=32)
    reference = nn.Sequential(tv.stem, tv.trunk_output).eval()

    _randomize_(ours)
    ours_state = list(ours.state_dict().values())
    ref_state = reference.state_dict()
    assert [tuple(t.shape) for t in ours_state] == [tuple(t.shape) for t in ref_state.values()]
    reference.load_state_dict(dict(zip(ref_state, ours_state)))
    x = torch.rand(2, 3, 32, 48)
    with torch.no_grad():
        torch.testing.assert_close(ours(x)["s2"], reference(x))


def test_regnet_y_state_dict_uses_detectron2_names():
    with torch.device("meta"):
        keys = set(_regnet(Y_4GF).state_dict())
    for key in [
        "stem.conv.weight",
        "stem.bn.running_var",
        "s1.b1.proj.weight",
        "s1.b1.bn.weight",
        "s1.b1.f.a.weight",
        "s1.b1.f.a_bn.bias",
        "s1.b1.f.b.weight",
        "s1.b1.f.se.f_ex.0.weight",
        "s1.b1.f.se.f_ex.2.bias",
        "s1.b1.f.c_bn.weight",
        "s4.b2.f.c.weight",
    ]:
        assert key in keys
    assert "s1.b2.proj.weight" not in keys  # same width and stride 1: identity shortcut


def test_regnet_freeze_at_2_freezes_stem_and_s1_only():
    model = _regnet(X_4GF, freeze_at=2)
    assert isinstance(model.stem.bn, FrozenBatchNorm2d)
    assert isinstance(model.s1.b2.f.c_bn, FrozenBatchNorm2d)
    assert isinstance(model.s2.b1.bn, nn.BatchNorm2d)
    for name, p in model.named_parameters():
        assert p.requires_grad == (not name.startswith(("stem.", "s1."))), name


def test_regnet_freeze_at_0_keeps_everything_trainable():
    model = _regnet(X_4GF, freeze_at=0)
    assert all(p.requires_grad for p in model.parameters())
    assert not any(isinstance(m, FrozenBatchNorm2d) for m in model.modules())


def test_regnet_default_output_is_last_stage_and_stem_is_available():
    small = dict(depth=3, w_a=8.0, w_0=8, w_m=2.0, group_width=8)
    # u = 8, 16, 24 -> k = round(log2(u / 8)) = 0, 1, 2 (log2 3 = 1.58) -> widths 8, 16, 32.
    model = _regnet(small, out_features=None)
    assert list(model.output_shape()) == ["s3"]
    model = _regnet(small, out_features=["stem", "s3"]).eval()
    shapes = model.output_shape()
    assert (shapes["stem"].channels, shapes["stem"].stride) == (32, 2)
    assert (shapes["s3"].channels, shapes["s3"].stride) == (32, 16)
    out = model(torch.rand(2, 3, 32, 32))
    assert tuple(out["stem"].shape) == (2, 32, 16, 16)
    assert tuple(out["s3"].shape) == (2, 32, 2, 2)


@pytest.mark.parametrize("block_class", [VanillaBlock, ResBasicBlock, ResBottleneckBlock])
def test_anynet_with_res_stem_builds_each_block_type(block_class):
    model = AnyNet(
        stem_class=ResStem,
        stem_width=8,
        block_class=block_class,
        depths=[1, 2],
        widths=[8, 16],
        group_widths=[4, 4],
        strides=[1, 2],
        bottleneck_ratios=[1.0, 0.5],
        se_ratio=0.0,
        activation_class=nn.ReLU,
        out_features=["s1", "s2"],
    )
    # ResStem has stride 4; s1 keeps it, s2 halves again.
    assert {k: (v.channels, v.stride) for k, v in model.output_shape().items()} == {
        "s1": (8, 4),
        "s2": (16, 8),
    }
    out = model(torch.rand(1, 3, 32, 24))
    assert tuple(out["s2"].shape) == (1, 16, 4, 3)
    out["s2"].sum().backward()
    assert model.stem.conv.weight.grad is not None


def test_se_with_zero_weights_halves_the_input():
    se = SE(4, 2, nn.ReLU)
    for p in se.parameters():
        nn.init.zeros_(p)
    x = torch.rand(2, 4, 3, 3)
    # The gate is sigmoid(0) = 0.5 for every channel.
    torch.testing.assert_close(se(x), x * 0.5)


def test_regnet_keeps_channels_on_an_empty_batch():
    model = _regnet(dict(depth=2, w_a=8.0, w_0=8, w_m=2.0, group_width=8), out_features=["s2"])
    model = model.eval()
    out = model(torch.zeros(0, 3, 32, 32))
    assert tuple(out["s2"].shape) == (0, 16, 4, 4)


def test_regnet_rejects_unknown_out_feature():
    with pytest.raises(ValueError, match="'res5' is not one of stem, s1"), torch.device("meta"):
        _regnet(X_4GF, out_features=["res5"])


def test_generate_regnet_parameters_rejects_width_off_quantum():
    with pytest.raises(ValueError, match="w_0=100"):
        generate_regnet_parameters(10.0, 100, 2.0, 4)


def test_anynet_rejects_mismatched_stage_lists():
    with pytest.raises(ValueError, match=r"lengths \[2, 1, 2, 2, 2\]"):
        AnyNet(
            stem_class=SimpleStem,
            stem_width=8,
            block_class=VanillaBlock,
            depths=[1, 1],
            widths=[8],
            group_widths=[8, 8],
            strides=[2, 2],
            bottleneck_ratios=[1.0, 1.0],
            se_ratio=0.0,
            activation_class=nn.ReLU,
        )


def test_anynet_rejects_non_4d_input():
    model = _regnet(dict(depth=1, w_a=0.0, w_0=8, w_m=2.0, group_width=8), out_features=["s1"])
    with pytest.raises(ValueError, match=r"got shape \(3, 8, 8\)"):
        model(torch.zeros(3, 8, 8))
