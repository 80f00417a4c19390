import pytest
import torch

from heron.config import get_cfg
from heron.layers.batch_norm import FrozenBatchNorm2d
from heron.layers.shape_spec import ShapeSpec
from heron.modeling.backbone import (
    FPN,
    BottleneckBlock,
    DeformBottleneckBlock,
    LastLevelMaxPool,
    ResNet,
    build_backbone,
    build_resnet_backbone,
)
from heron.modeling.backbone.resnet_blocks import BasicStem


def _cfg(**overrides):
    cfg = get_cfg()
    cfg.MODEL.RESNETS.DEPTH = 18
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.FPN.IN_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.FPN.OUT_CHANNELS = 32
    for key, value in overrides.items():
        node = cfg
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return cfg


def test_resnet18_outputs_named_strided_features():
    backbone = build_resnet_backbone(_cfg(), ShapeSpec(channels=3))
    shapes = backbone.output_shape()
    assert {k: (v.channels, v.stride) for k, v in shapes.items()} == {
        "res2": (64, 4),
        "res3": (128, 8),
        "res4": (256, 16),
        "res5": (512, 32),
    }
    out = backbone(torch.zeros(1, 3, 64, 96))
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "res2": (1, 64, 16, 24),
        "res3": (1, 128, 8, 12),
        "res4": (1, 256, 4, 6),
        "res5": (1, 512, 2, 3),
    }


def test_freeze_at_two_freezes_stem_and_res2_only():
    backbone = build_resnet_backbone(
        _cfg(**{"MODEL.BACKBONE.FREEZE_AT": 2, "MODEL.RESNETS.NORM": "BN"}), ShapeSpec(channels=3)
    )
    frozen = {n.split(".")[0] for n, p in backbone.named_parameters() if not p.requires_grad}
    trainable = {n.split(".")[0] for n, p in backbone.named_parameters() if p.requires_grad}
    assert frozen == {"stem", "res2"} and trainable == {"res3", "res4", "res5"}
    assert isinstance(backbone.stem.conv1.norm, FrozenBatchNorm2d)


def test_c4_backbone_stops_at_res4_and_dc5_keeps_stride_16():
    c4 = build_resnet_backbone(
        _cfg(**{"MODEL.RESNETS.OUT_FEATURES": ["res4"]}), ShapeSpec(channels=3)
    )
    assert not hasattr(c4, "res5")
    cfg = _cfg(
        **{
            "MODEL.RESNETS.DEPTH": 50,
            "MODEL.RESNETS.RES2_OUT_CHANNELS": 256,
            "MODEL.RESNETS.RES5_DILATION": 2,
        }
    )
    dc5 = build_resnet_backbone(cfg, ShapeSpec(channels=3))
    assert dc5.output_shape()["res5"].stride == 16


def test_fpn_levels_strides_and_divisibility():
    backbone = build_backbone(_cfg(**{"MODEL.BACKBONE.NAME": "build_resnet_fpn_backbone"}))
    assert isinstance(backbone, FPN)
    assert backbone.size_divisibility == 32
    assert {k: v.stride for k, v in backbone.output_shape().items()} == {
        "p2": 4,
        "p3": 8,
        "p4": 16,
        "p5": 32,
        "p6": 64,
    }
    out = backbone(torch.zeros(1, 3, 64, 64))
    assert [tuple(v.shape[-2:]) for v in out.values()] == [(16, 16), (8, 8), (4, 4), (2, 2), (1, 1)]
    assert all(v.shape[1] == 32 for v in out.values())


def test_retinanet_fpn_has_p3_to_p7():
    cfg = _cfg(
        **{
            "MODEL.BACKBONE.NAME": "build_retinanet_resnet_fpn_backbone",
            "MODEL.FPN.IN_FEATURES": ["res3", "res4", "res5"],
        }
    )
    backbone = build_backbone(cfg)
    assert list(backbone.output_shape()) == ["p3", "p4", "p5", "p6", "p7"]
    assert backbone.top_block.p6.in_channels == 512  # from res5 of R18


def test_fpn_avg_fusion_halves_the_sum():
    torch.manual_seed(0)
    bottom_up = build_resnet_backbone(_cfg(), ShapeSpec(channels=3))
    fpn_sum = FPN(bottom_up, ["res4", "res5"], 8, top_block=LastLevelMaxPool(), fuse_type="sum")
    fpn_avg = FPN(bottom_up, ["res4", "res5"], 8, top_block=LastLevelMaxPool(), fuse_type="avg")
    fpn_avg.load_state_dict(fpn_sum.state_dict())
    x = torch.randn(1, 3, 64, 64)
    # p4 = output(lateral4 + up(lateral5)) vs output((lateral4 + up(lateral5)) / 2): the
    # 3x3 output conv is affine, so output_avg = (output_sum - b) / 2 + b
    bias = fpn_sum.fpn_output4.bias.view(1, -1, 1, 1)
    torch.testing.assert_close(
        fpn_avg(x)["p4"], (fpn_sum(x)["p4"] - bias) / 2 + bias, rtol=1e-4, atol=1e-5
    )


def test_deformable_block_with_zero_offsets_equals_the_plain_block():
    torch.manual_seed(0)
    kwargs = {"bottleneck_channels": 4, "stride": 1, "norm": "FrozenBN"}
    plain = BottleneckBlock(8, 16, **kwargs).eval()
    deform = DeformBottleneckBlock(8, 16, deform_modulated=True, **kwargs).eval()
    missing, unexpected = deform.load_state_dict(plain.state_dict(), strict=False)
    assert sorted(missing) == ["conv2_offset.bias", "conv2_offset.weight"] and not unexpected
    x = torch.randn(2, 8, 9, 9)
    # zero offsets and mask sigmoid(0) = 0.5: the modulated conv is half the plain conv,
    # so compare the unmodulated variant for equality
    deform_v1 = DeformBottleneckBlock(8, 16, deform_modulated=False, **kwargs).eval()
    deform_v1.load_state_dict(plain.state_dict(), strict=False)
    torch.testing.assert_close(deform_v1(x), plain(x), rtol=1e-4, atol=1e-5)
    assert deform(x).shape == plain(x).shape


def test_resnet_rejects_bad_input_and_bad_config():
    stem = BasicStem(3, 8, norm="FrozenBN")
    stages = ResNet.make_default_stages(18, norm="FrozenBN")
    with pytest.raises(ValueError, match="out_features"):
        ResNet(stem, stages, out_features=["res7"])
    net = ResNet(BasicStem(3, 64, norm="FrozenBN"), stages, out_features=["res2"])
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        net(torch.zeros(3, 32, 32))
    with pytest.raises(ValueError, match="DEPTH"):
        build_resnet_backbone(_cfg(**{"MODEL.RESNETS.DEPTH": 42}), ShapeSpec(channels=3))


def test_unknown_backbone_name_lists_the_registered_ones():
    with pytest.raises(KeyError, match="build_resnet_fpn_backbone"):
        build_backbone(_cfg(**{"MODEL.BACKBONE.NAME": "build_nothing"}))
