import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from heron.modeling.backbone.fpn import LastLevelMaxPool
from heron.modeling.backbone.utils import (
    PatchEmbed,
    add_decomposed_rel_pos,
    get_abs_pos,
    get_rel_pos,
    window_partition,
    window_unpartition,
)
from heron.modeling.backbone.vit import (
    Attention,
    Block,
    DropPath,
    ResBottleneckBlock,
    SimpleFeaturePyramid,
    ViT,
    get_vit_lr_decay_rate,
)


def _tiny_vit(**kwargs):
    settings = dict(
        img_size=64,
        patch_size=16,
        embed_dim=64,
        depth=2,
        num_heads=4,
        window_size=3,
        window_block_indexes=[0],
        use_rel_pos=True,
    )
    settings.update(kwargs)
    return ViT(**settings)


def _tiny_pyramid(**vit_kwargs):
    return SimpleFeaturePyramid(
        net=_tiny_vit(**vit_kwargs),
        in_feature="last_feat",
        out_channels=16,
        scale_factors=(4.0, 2.0, 1.0, 0.5),
        top_block=LastLevelMaxPool(),
        norm="LN",
        square_pad=64,
    )


def test_simple_feature_pyramid_outputs_p2_to_p6():
    model = _tiny_pyramid()
    assert {k: (v.channels, v.stride) for k, v in model.output_shape().items()} == {
        "p2": (16, 4),
        "p3": (16, 8),
        "p4": (16, 16),
        "p5": (16, 32),
        "p6": (16, 64),
    }
    assert model.padding_constraints == {"size_divisibility": 32, "square_size": 64}
    out = model(torch.rand(2, 3, 64, 96))
    # 64 x 96 image -> 4 x 6 tokens (stride 16); p6 is a stride-2 1x1 max-pool of 2 x 3.
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "p2": (2, 16, 16, 24),
        "p3": (2, 16, 8, 12),
        "p4": (2, 16, 4, 6),
        "p5": (2, 16, 2, 3),
        "p6": (2, 16, 1, 2),
    }


def test_vit_outputs_embedding_at_patch_stride():
    model = _tiny_vit(out_feature="feat")
    shape = model.output_shape()["feat"]
    assert (shape.channels, shape.stride) == (64, 16)
    assert tuple(model(torch.rand(1, 3, 48, 80))["feat"].shape) == (1, 64, 3, 5)


def test_vit_keeps_channels_on_an_empty_batch():
    out = _tiny_pyramid().eval()(torch.zeros(0, 3, 64, 64))
    assert tuple(out["p2"].shape) == (0, 16, 16, 16)
    assert tuple(out["p6"].shape) == (0, 16, 1, 1)


def test_simple_feature_pyramid_parameters_have_detectron2_names():
    model = _tiny_pyramid(residual_block_indexes=[1])
    vit_keys = {"net.pos_embed", "net.patch_embed.proj.weight", "net.patch_embed.proj.bias"}
    for i in range(2):
        b = f"net.blocks.{i}."
        vit_keys |= {
            b + name
            for name in [
                "norm1.weight",
                "norm1.bias",
                "attn.qkv.weight",
                "attn.qkv.bias",
                "attn.proj.weight",
                "attn.proj.bias",
                "attn.rel_pos_h",
                "attn.rel_pos_w",
                "norm2.weight",
                "norm2.bias",
                "mlp.fc1.weight",
                "mlp.fc1.bias",
                "mlp.fc2.weight",
                "mlp.fc2.bias",
            ]
        }
    vit_keys |= {f"net.blocks.1.residual.conv{i}.weight" for i in (1, 2, 3)}
    vit_keys |= {
        f"net.blocks.1.residual.norm{i}.{p}" for i in (1, 2, 3) for p in ("weight", "bias")
    }

    def conv_with_norm(prefix):
        return {prefix + ".weight", prefix + ".norm.weight", prefix + ".norm.bias"}

    pyramid_keys = {
        # scale 4: deconv, LN, GELU, deconv, then the 1x1 and 3x3 convs at indexes 4 and 5
        "simfp_2.0.weight",
        "simfp_2.0.bias",
        "simfp_2.1.weight",
        "simfp_2.1.bias",
        "simfp_2.3.weight",
        "simfp_2.3.bias",
        *conv_with_norm("simfp_2.4"),
        *conv_with_norm("simfp_2.5"),
        # scale 2: one deconv
        "simfp_3.0.weight",
        "simfp_3.0.bias",
        *conv_with_norm("simfp_3.1"),
        *conv_with_norm("simfp_3.2"),
        # scale 1: convs only
        *conv_with_norm("simfp_4.0"),
        *conv_with_norm("simfp_4.1"),
        # scale 0.5: max-pool (no parameters) at index 0
        *conv_with_norm("simfp_5.1"),
        *conv_with_norm("simfp_5.2"),
    }
    assert set(model.state_dict()) == vit_keys | pyramid_keys
    # The rel-pos tables of the windowed block are sized for its 3 x 3 window, those of the
    # global block for the 64 / 16 = 4 token grid: 2 * side - 1 rows of 64 / 4 channels.
    assert tuple(model.net.blocks[0].attn.rel_pos_h.shape) == (5, 16)
    assert tuple(model.net.blocks[1].attn.rel_pos_w.shape) == (7, 16)
    # pos_embed: 224 / 16 = 14, so 14 * 14 + 1 class token positions.
    assert tuple(model.net.pos_embed.shape) == (1, 197, 64)


def test_simple_feature_pyramid_without_norm_gives_convs_biases():
    model = SimpleFeaturePyramid(_tiny_vit(), "last_feat", 8, (1.0,), norm="")
    assert set(model.state_dict()) >= {"simfp_4.0.weight", "simfp_4.0.bias", "simfp_4.1.bias"}
    assert not any(".norm." in k for k in model.state_dict())


def test_pyramid_backward_reaches_every_parameter():
    model = _tiny_pyramid(drop_path_rate=0.1, residual_block_indexes=[1])
    out = model(torch.rand(2, 3, 64, 64))
    sum(v.square().mean() for v in out.values()).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name


def test_activation_checkpointing_gives_the_same_output_and_gradients():
    torch.manual_seed(0)
    plain = _tiny_vit()
    checkpointed = _tiny_vit(use_act_checkpoint=True)
    checkpointed.load_state_dict(plain.state_dict())
    x = torch.rand(1, 3, 64, 64)
    outs = [m(x)["last_feat"] for m in (plain, checkpointed)]
    torch.testing.assert_close(outs[0], outs[1])
    for out in outs:
        out.sum().backward()
    torch.testing.assert_close(
        checkpointed.blocks[0].attn.qkv.weight.grad, plain.blocks[0].attn.qkv.weight.grad
    )


def test_window_partition_pads_and_unpartition_restores():
    x = torch.randn(2, 5, 7, 3)
    windows, pad_hw = window_partition(x, 3)
    # 5 x 7 pads to 6 x 9: 2 x 3 windows per image.
    assert pad_hw == (6, 9)
    assert tuple(windows.shape) == (2 * 2 * 3, 3, 3, 3)
    torch.testing.assert_close(windows[0], x[0, 0:3, 0:3])
    # Window 4 (second row, second column) covers rows 3..5; row 5 is padding.
    torch.testing.assert_close(windows[4][:2], x[0, 3:5, 3:6])
    assert windows[4][2].abs().sum() == 0
    # The third window of the first row covers columns 6..8; only column 6 is real.
    torch.testing.assert_close(windows[2][:, :1], x[0, 0:3, 6:7])
    assert windows[2][:, 1:].abs().sum() == 0
    torch.testing.assert_close(window_unpartition(windows, 3, pad_hw, (5, 7)), x)


def test_window_partition_without_padding_and_on_an_empty_batch():
    x = torch.randn(1, 4, 4, 2)
    windows, pad_hw = window_partition(x, 2)
    assert pad_hw == (4, 4)
    torch.testing.assert_close(windows[1], x[0, 0:2, 2:4])
    empty, pad_hw = window_partition(torch.zeros(0, 5, 5, 2), 2)
    assert tuple(empty.shape) == (0, 2, 2, 2)
    assert tuple(window_unpartition(empty, 2, pad_hw, (5, 5)).shape) == (0, 5, 5, 2)


def test_window_partition_rejects_non_positive_window():
    with pytest.raises(ValueError, match="window_size must be > 0, got 0"):
        window_partition(torch.zeros(1, 2, 2, 1), 0)


def test_windowed_block_equals_global_block_on_each_window():
    torch.manual_seed(0)
    windowed = Block(8, 2, window_size=2, use_rel_pos=True, rel_pos_zero_init=False)
    global_ = Block(8, 2, use_rel_pos=True, input_size=(2, 2))
    global_.load_state_dict(windowed.state_dict())
    x = torch.randn(1, 4, 4, 8)
    out = windowed(x)
    # Attention never crosses windows; norms and MLP act per token.
    for r in (0, 2):
        for c in (0, 2):
            torch.testing.assert_close(
                out[:, r : r + 2, c : c + 2], global_(x[:, r : r + 2, c : c + 2])
            )


def test_get_abs_pos_resizes_14x14_grid_bicubically():
    grid = torch.randn(1, 14, 14, 6)
    cls_token = torch.full((1, 1, 6), 100.0)
    abs_pos = torch.cat([cls_token, grid.reshape(1, 196, 6)], dim=1)
    out = get_abs_pos(abs_pos, has_cls_token=True, hw=(7, 10))
    expected = F.interpolate(
        grid.permute(0, 3, 1, 2), size=(7, 10), mode="bicubic", align_corners=False
    ).permute(0, 2, 3, 1)
    torch.testing.assert_close(out, expected)
    # Bicubic weights sum to 1, so a constant grid stays constant.
    constant = torch.full((1, 196, 2), 3.0)
    torch.testing.assert_close(get_abs_pos(constant, False, (5, 9)), torch.full((1, 5, 9, 2), 3.0))


def test_get_abs_pos_same_size_drops_class_token_only():
    grid = torch.randn(1, 4, 4, 3)
    abs_pos = torch.cat([torch.zeros(1, 1, 3), grid.reshape(1, 16, 3)], dim=1)
    torch.testing.assert_close(get_abs_pos(abs_pos, True, (4, 4)), grid)


def test_get_abs_pos_rejects_non_square_grid():
    with pytest.raises(ValueError, match="got 12 grid positions"):
        get_abs_pos(torch.zeros(1, 13, 2), True, (3, 4))


def test_attention_without_rel_pos_is_scaled_dot_product_softmax():
    torch.manual_seed(0)
    attn = Attention(dim=4, num_heads=2)
    x = torch.randn(1, 2, 3, 4)
    tokens = x.reshape(6, 4)
    q, k, v = (tokens @ attn.qkv.weight.T + attn.qkv.bias).split(4, dim=1)  # each (6, 4)
    heads = []
    for h in range(2):
        cols = slice(2 * h, 2 * h + 2)  # head h owns channels 2h, 2h + 1
        logits = q[:, cols] @ k[:, cols].T / math.sqrt(2)  # head dim 2
        heads.append(torch.softmax(logits, dim=1) @ v[:, cols])
    expected = torch.cat(heads, dim=1) @ attn.proj.weight.T + attn.proj.bias
    torch.testing.assert_close(attn(x), expected.reshape(1, 2, 3, 4))


def test_zero_initialized_rel_pos_leaves_attention_unchanged():
    torch.manual_seed(0)
    with_rel = Attention(dim=8, num_heads=2, use_rel_pos=True, input_size=(3, 4))
    # One row per offset: 2 * 3 - 1 along the height, 2 * 4 - 1 along the width.
    assert tuple(with_rel.rel_pos_h.shape) == (5, 4)
    assert tuple(with_rel.rel_pos_w.shape) == (7, 4)
    assert with_rel.rel_pos_h.abs().sum() == 0
    plain = Attention(dim=8, num_heads=2)
    plain.load_state_dict(with_rel.state_dict(), strict=False)
    x = torch.randn(2, 3, 4, 8)
    torch.testing.assert_close(with_rel(x), plain(x))


def test_attention_with_rel_pos_needs_input_size():
    with pytest.raises(ValueError, match="needs input_size"):
        Attention(dim=8, num_heads=2, use_rel_pos=True)


def test_add_decomposed_rel_pos_adds_offset_embeddings_by_hand():
    # Grid of 2 x 1 queries and keys, one channel: q = (2, 3).
    q = torch.tensor([[[2.0], [3.0]]])  # (B=1, 2, C=1)
    rel_pos_h = torch.tensor([[10.0], [20.0], [30.0]])  # offsets -1, 0, +1
    rel_pos_w = torch.tensor([[1.0]])  # the only width offset, 0
    out = add_decomposed_rel_pos(torch.zeros(1, 2, 2), q, rel_pos_h, rel_pos_w, (2, 1), (2, 1))
    # logit[i, j] = q_i * (Rh[i - j] + Rw[0]):
    #   i=0: 2 * (20 + 1), 2 * (10 + 1);  i=1: 3 * (30 + 1), 3 * (20 + 1)
    torch.testing.assert_close(out, torch.tensor([[[42.0, 22.0], [93.0, 63.0]]]))


def test_get_rel_pos_resizes_table_linearly():
    table = torch.tensor([[0.0], [1.0], [2.0]])  # sized for 2 positions; 3 need 5 rows
    # Linear resize 3 -> 5 (align_corners=False) samples at (i + 0.5) * 3 / 5 - 0.5 =
    # -0.2, 0.4, 1.0, 1.6, 2.2, clamped to [0, 2]: values 0, 0.4, 1, 1.6, 2.
    # Entry [i, j] is row i - j + 2.
    resized = torch.tensor([0.0, 0.4, 1.0, 1.6, 2.0])
    expected = torch.stack([resized[torch.arange(3) - j + 2] for j in range(3)], dim=1)
    torch.testing.assert_close(get_rel_pos(3, 3, table)[..., 0], expected)


def test_res_bottleneck_block_starts_as_identity():
    block = ResBottleneckBlock(8, 8, 4)
    x = torch.randn(2, 8, 3, 3)
    torch.testing.assert_close(block(x), x)


def test_drop_path_drops_whole_samples_and_rescales():
    torch.manual_seed(0)
    drop = DropPath(0.5)
    x = torch.ones(64, 3, 2)
    out = drop(x)
    per_sample = out.reshape(64, -1)
    # Every sample is either dropped (all 0) or kept and scaled by 1 / 0.5.
    assert all(set(row.tolist()) in ({0.0}, {2.0}) for row in per_sample)
    assert 0 < (per_sample[:, 0] == 0).sum() < 64
    torch.testing.assert_close(drop.eval()(x), x)


def test_vit_drop_path_rates_grow_linearly():
    model = _tiny_vit(depth=3, drop_path_rate=0.2, window_block_indexes=[])
    assert isinstance(model.blocks[0].drop_path, nn.Identity)
    assert model.blocks[1].drop_path.drop_prob == pytest.approx(0.1)
    assert model.blocks[2].drop_path.drop_prob == pytest.approx(0.2)


def test_patch_embed_is_channels_last():
    embed = PatchEmbed(kernel_size=(4, 4), stride=(4, 4), in_chans=1, embed_dim=1)
    nn.init.ones_(embed.proj.weight)
    nn.init.zeros_(embed.proj.bias)
    x = torch.arange(64.0).reshape(1, 1, 8, 8)
    # Each token sums its 4 x 4 patch: the top-left patch holds rows 0-3, columns 0-3.
    out = embed(x)
    assert tuple(out.shape) == (1, 2, 2, 1)
    assert out[0, 0, 0, 0].item() == sum(8 * r + c for r in range(4) for c in range(4))


@pytest.mark.parametrize(
    "name, expected",
    [
        # num_layers = 12, rate 0.5: layer i gets 0.5 ** (13 - i)
        ("backbone.net.pos_embed", 0.5**13),
        ("backbone.net.patch_embed.proj.weight", 0.5**13),
        ("backbone.net.blocks.0.norm1.weight", 0.5**12),
        ("backbone.net.blocks.3.attn.qkv.weight", 0.5**9),
        ("backbone.net.blocks.11.mlp.fc2.bias", 0.5**1),
        ("backbone.net.blocks.3.residual.conv1.weight", 1.0),
        ("backbone.simfp_2.0.weight", 1.0),
        ("roi_heads.box_head.fc1.weight", 1.0),
    ],
)
def test_get_vit_lr_decay_rate_by_layer(name, expected):
    assert get_vit_lr_decay_rate(name, lr_decay_rate=0.5, num_layers=12) == pytest.approx(expected)


def test_simple_feature_pyramid_rejects_bad_arguments():
    vit = _tiny_vit()
    with pytest.raises(ValueError, match=r"must be 4, 2, 1 or 0\.5, got 3\.0"):
        SimpleFeaturePyramid(vit, "last_feat", 8, (3.0,))
    with pytest.raises(ValueError, match=r"got strides \[4, 16\]"):
        SimpleFeaturePyramid(vit, "last_feat", 8, (4.0, 1.0))
    with pytest.raises(KeyError, match="'res5' is not an output of net"):
        SimpleFeaturePyramid(vit, "res5", 8, (1.0,))
    with pytest.raises(TypeError, match="net must be a Backbone, got Linear"):
        SimpleFeaturePyramid(nn.Linear(2, 2), "last_feat", 8, (1.0,))


def test_vit_base_trunk_has_torchvision_vit_b_16_parameters():
    from torchvision.models import vit_b_16

    with torch.device("meta"):  # shapes only
        ours = ViT(img_size=224, window_size=14, window_block_indexes=[0, 1])
        reference = vit_b_16()
    ours_count = sum(p.numel() for p in ours.parameters())
    # torchvision's ViT-B/16 also holds a class token (768), a final LayerNorm (2 * 768)
    # and a 1000-way head (768 * 1000 + 1000), which the detection trunk does not.
    extra = 768 + 2 * 768 + 768 * 1000 + 1000
    assert ours_count == sum(p.numel() for p in reference.parameters()) - extra


def test_vitdet_base_rel_pos_tables_match_window_and_global_blocks():
    with torch.device("meta"):
        vit = ViT(use_rel_pos=True, window_size=14, window_block_indexes=[0, 1, 3])
    # 1024 / 16 = 64 tokens per side for global blocks: 2 * 64 - 1 = 127 rows of 768 / 12.
    assert tuple(vit.blocks[0].attn.rel_pos_h.shape) == (2 * 14 - 1, 64)
    assert tuple(vit.blocks[2].attn.rel_pos_w.shape) == (127, 64)
