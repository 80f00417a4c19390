"""Plain ViT backbone and the simple feature pyramid of ViTDet (Detectron2's `vit.py`).

"Exploring Plain Vision Transformer Backbones for Object Detection" (Li et al., 2022): a
non-hierarchical ViT with windowed attention in most blocks, whose last feature map (stride
16) is turned into a pyramid by deconvolutions and pooling. Module names (``patch_embed.proj``,
``pos_embed``, ``blocks.0.attn.qkv``, ``blocks.0.mlp.fc1``, ``simfp_2.0``, ...) are
Detectron2's, so ViTDet checkpoints load unchanged.

Shapes: B images, H x W token grid, C embedding channels; tokens are channels-last
(B, H, W, C) inside the ViT and (B, C, H, W) at its output.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from heron.layers.batch_norm import get_norm
from heron.layers.blocks import CNNBlockBase
from heron.layers.weight_init import c2_msra_fill
from heron.layers.wrappers import Conv2d
from heron.modeling.backbone.backbone import Backbone
from heron.modeling.backbone.fpn import _pyramid_strides
from heron.modeling.backbone.utils import (
    PatchEmbed,
    add_decomposed_rel_pos,
    get_abs_pos,
    window_partition,
    window_unpartition,
)

__all__ = [
    "Attention",
    "Block",
    "DropPath",
    "Mlp",
    "ResBottleneckBlock",
    "SimpleFeaturePyramid",
    "ViT",
    "get_vit_lr_decay_rate",
]


class Attention(nn.Module):
    """Multi-head self-attention over a token grid, optionally with decomposed relative
    position terms.

    Args:
        dim: channels C of the tokens.
        num_heads: number of heads; each has C // num_heads channels.
        qkv_bias: whether the query/key/value projection has a bias.
        use_rel_pos: add `add_decomposed_rel_pos` terms to the logits.
        rel_pos_zero_init: start the position tables at zero (else truncated normal, 0.02).
        input_size: (H, W) grid the position tables are sized for; needed with use_rel_pos.

    forward: (B, H, W, C) -> (B, H, W, C).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        qkv_bias: bool = True,
        use_rel_pos: bool = False,
        rel_pos_zero_init: bool = True,
        input_size: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"Attention: dim={dim} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.scale = head_dim**-0.5

        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

        self.use_rel_pos = use_rel_pos
        if use_rel_pos:
            if input_size is None:
                raise ValueError("Attention: use_rel_pos=True needs input_size=(H, W), got None")
            # One row per offset along each axis: -(H - 1) .. H - 1.
            self.rel_pos_h = nn.Parameter(torch.zeros(2 * input_size[0] - 1, head_dim))
            self.rel_pos_w = nn.Parameter(torch.zeros(2 * input_size[1] - 1, head_dim))
            if not rel_pos_zero_init:
                nn.init.trunc_normal_(self.rel_pos_h, std=0.02)
                nn.init.trunc_normal_(self.rel_pos_w, std=0.02)

    def forward(self, x: Tensor) -> Tensor:
        B, H, W, C = x.shape
        head_dim = C // self.num_heads  # explicit sizes (not -1) keep empty batches working
        # (B, H, W, 3C) -> (3, B, heads, H*W, C/heads)
        qkv = self.qkv(x).reshape(B, H * W, 3, self.num_heads, head_dim).permute(2, 0, 3, 1, 4)
        # each (B*heads, H*W, C/heads)
        q, k, v = qkv.reshape(3, B * self.num_heads, H * W, head_dim).unbind(0)

        attn = (q * self.scale) @ k.transpose(-2, -1)  # (B*heads, H*W, H*W)
        if self.use_rel_pos:
            attn = add_decomposed_rel_pos(attn, q, self.rel_pos_h, self.rel_pos_w, (H, W), (H, W))
        attn = attn.softmax(dim=-1)
        # (B*heads, H*W, C/heads) -> (B, H, W, C)
        x = (attn @ v).view(B, self.num_heads, H, W, head_dim).permute(0, 2, 3, 1, 4)
        x = x.reshape(B, H, W, C)
        return self.proj(x)


class DropPath(nn.Module):
    """Stochastic depth: zero a residual branch for a random subset of samples in training.

    Kept samples are scaled by 1 / (1 - drop_prob), so the expectation is unchanged; in
    evaluation (or with drop_prob 0) it is the identity.
    """

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= drop_prob < 1.0:
            raise ValueError(f"DropPath: drop_prob must be in [0, 1), got {drop_prob}")
        self.drop_prob = drop_prob

    def forward(self, x: Tensor) -> Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep_prob = 1.0 - self.drop_prob
        # One draw per sample, broadcast over the other dimensions.
        mask_shape = (x.shape[0],) + (1,) * (x.dim() - 1)
        mask = x.new_empty(mask_shape).bernoulli_(keep_prob)
        return x * mask / keep_prob

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"


class Mlp(nn.Module):
    """Two linear layers with an activation between (timm's ``Mlp``, without dropout).

    forward: (..., in_features) -> (..., in_features).
    """

    def __init__(
        self, in_features: int, hidden_features: int, act_layer: Callable[[], nn.Module] = nn.GELU
    ) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = act_layer()
        self.fc2 = nn.Linear(hidden_features, in_features)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class ResBottleneckBlock(CNNBlockBase):
    """Residual 1x1 / 3x3 / 1x1 conv block without a final activation, placed after some
    ViT blocks to mix information across windows.

    The last norm starts at zero, so a new block is the identity.

    forward: (B, in_channels, H, W) -> (B, out_channels, H, W); in_channels must equal
    out_channels for the residual sum.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        bottleneck_channels: int,
        norm: str | Callable[[int], nn.Module] = "LN",
        act_layer: Callable[[], nn.Module] = nn.GELU,
    ) -> None:
        super().__init__(in_channels, out_channels, 1)
        self.conv1 = Conv2d(in_channels, bottleneck_channels, 1, bias=False)
        self.norm1 = get_norm(norm, bottleneck_channels)
        self.act1 = act_layer()
        self.conv2 = Conv2d(bottleneck_channels, bottleneck_channels, 3, padding=1, bias=False)
        self.norm2 = get_norm(norm, bottleneck_channels)
        self.act2 = act_layer()
        self.conv3 = Conv2d(bottleneck_channels, out_channels, 1, bias=False)
        self.norm3 = get_norm(norm, out_channels)

        for conv in (self.conv1, self.conv2, self.conv3):
            c2_msra_fill(conv)
        for norm_layer in (self.norm1, self.norm2):
            nn.init.ones_(norm_layer.weight)
            nn.init.zeros_(norm_layer.bias)
        nn.init.zeros_(self.norm3.weight)
        nn.init.zeros_(self.norm3.bias)

    def forward(self, x: Tensor) -> Tensor:
        out = x
        for layer in self.children():
            out = layer(out)
        return x + out


class Block(nn.Module):
    """Transformer block (pre-norm attention and MLP), with optional window attention and
    an optional residual conv block after it.

    Args:
        dim: channels C.
        num_heads: attention heads.
        mlp_ratio: hidden width of the MLP / C.
        qkv_bias: bias in the query/key/value projection.
        drop_path: stochastic depth rate of both residual branches.
        norm_layer: called with C to build each norm.
        act_layer: activation of the MLP (and of the residual block).
        use_rel_pos, rel_pos_zero_init: see `Attention`.
        window_size: attend within S x S windows when > 0, else globally.
        use_residual_block: append a `ResBottleneckBlock` with C // 2 bottleneck channels.
        input_size: (H, W) token grid, used to size global attention's position tables.

    forward: (B, H, W, C) -> (B, H, W, C).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path: float = 0.0,
        norm_layer: Callable[[int], nn.Module] = nn.LayerNorm,
        act_layer: Callable[[], nn.Module] = nn.GELU,
        use_rel_pos: bool = False,
        rel_pos_zero_init: bool = True,
        window_size: int = 0,
        use_residual_block: bool = False,
        input_size: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = Attention(
            dim,
            num_heads=num_heads,
            qkv_bias=qkv_bias,
            use_rel_pos=use_rel_pos,
            rel_pos_zero_init=rel_pos_zero_init,
            input_size=input_size if window_size == 0 else (window_size, window_size),
        )
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(in_features=dim, hidden_features=int(dim * mlp_ratio), act_layer=act_layer)
        self.window_size = window_size
        self.use_residual_block = use_residual_block
        if use_residual_block:
            self.residual = ResBottleneckBlock(
                in_channels=dim,
                out_channels=dim,
                bottleneck_channels=dim // 2,
                norm="LN",
                act_layer=act_layer,
            )

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x
        x = self.norm1(x)
        if self.window_size > 0:
            H, W = x.shape[1], x.shape[2]
            x, pad_hw = window_partition(x, self.window_size)
            x = self.attn(x)
            x = window_unpartition(x, self.window_size, pad_hw, (H, W))
        else:
            x = self.attn(x)
        x = shortcut + self.drop_path(x)
        x = x + self.drop_path(self.mlp(self.norm2(x)))
        if self.use_residual_block:
            # The conv block works channels-first.
            x = self.residual(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return x


class ViT(Backbone):
    """Plain Vision Transformer backbone of ViTDet: one feature map at stride patch_size.

    Args:
        img_size: input side the relative position tables of global blocks are sized for.
        patch_size: side of a patch, and the output stride.
        in_chans: image channels.
        embed_dim: token channels C (also the output channels).
        depth: number of blocks.
        num_heads: attention heads per block.
        mlp_ratio: MLP hidden width / C.
        qkv_bias: bias in the query/key/value projections.
        drop_path_rate: stochastic depth of the last block; rates grow linearly from 0.
        norm_layer: called with C to build each norm.
        act_layer: MLP activation.
        use_abs_pos: add absolute position embeddings (sized for pretrain_img_size and
            resized to the input).
        use_rel_pos: add decomposed relative position terms in every block.
        rel_pos_zero_init: start the relative position tables at zero.
        window_size: window side of the blocks listed in window_block_indexes.
        window_block_indexes: blocks that attend within windows; the others are global.
        residual_block_indexes: blocks followed by a residual conv block.
        use_act_checkpoint: recompute block activations in backward to save memory.
        pretrain_img_size: image side used in pretraining (sizes pos_embed).
        pretrain_use_cls_token: whether pos_embed has a class-token entry first.
        out_feature: name of the output feature.

    forward: (B, in_chans, H, W) -> {out_feature: (B, C, H // patch_size, W // patch_size)}.
    """

    def __init__(
        self,
        img_size: int = 1024,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path_rate: float = 0.0,
        norm_layer: Callable[[int], nn.Module] = nn.LayerNorm,
        act_layer: Callable[[], nn.Module] = nn.GELU,
        use_abs_pos: bool = True,
        use_rel_pos: bool = False,
        rel_pos_zero_init: bool = True,
        window_size: int = 0,
        window_block_indexes: tuple[int, ...] | list[int] = (),
        residual_block_indexes: tuple[int, ...] | list[int] = (),
        use_act_checkpoint: bool = False,
        pretrain_img_size: int = 224,
        pretrain_use_cls_token: bool = True,
        out_feature: str = "last_feat",
    ) -> None:
        super().__init__()
        self.pretrain_use_cls_token = pretrain_use_cls_token
        self.use_act_checkpoint = use_act_checkpoint
        self.patch_embed = PatchEmbed(
            kernel_size=(patch_size, patch_size),
            stride=(patch_size, patch_size),
            in_chans=in_chans,
            embed_dim=embed_dim,
        )
        if use_abs_pos:
            side = pretrain_img_size // patch_size
            num_positions = side * side + (1 if pretrain_use_cls_token else 0)
            self.pos_embed = nn.Parameter(torch.zeros(1, num_positions, embed_dim))
        else:
            self.pos_embed = None

        # Stochastic depth grows linearly with the block index (float32 values, as in
        # Detectron2; computed on the CPU so that building under torch.device("meta") works).
        dpr = torch.linspace(0, drop_path_rate, depth, device="cpu").tolist()
        self.blocks = nn.ModuleList(
            Block(
                dim=embed_dim,
                num_heads=num_heads,
                mlp_ratio=mlp_ratio,
                qkv_bias=qkv_bias,
                drop_path=dpr[i],
                norm_layer=norm_layer,
                act_layer=act_layer,
                use_rel_pos=use_rel_pos,
                rel_pos_zero_init=rel_pos_zero_init,
                window_size=window_size if i in window_block_indexes else 0,
                use_residual_block=i in residual_block_indexes,
                input_size=(img_size // patch_size, img_size // patch_size),
            )
            for i in range(depth)
        )

        self._out_feature_channels = {out_feature: embed_dim}
        self._out_feature_strides = {out_feature: patch_size}
        self._out_features = [out_feature]

        if self.pos_embed is not None:
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.zeros_(m.bias)
            nn.init.ones_(m.weight)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """Embed patches, add positions, run the blocks.

        Args:
            x: (B, in_chans, H, W) images.

        Returns:
            {out_feature: (B, embed_dim, H // patch_size, W // patch_size)}.
        """
        x = self.patch_embed(x)  # (B, h, w, C)
        if self.pos_embed is not None:
            x = x + get_abs_pos(
                self.pos_embed, self.pretrain_use_cls_token, (x.shape[1], x.shape[2])
            )
        for blk in self.blocks:
            if self.use_act_checkpoint and torch.is_grad_enabled():
                x = checkpoint(blk, x, use_reentrant=False)
            else:
                x = blk(x)
        return {self._out_features[0]: x.permute(0, 3, 1, 2)}


def _pyramid_layers(dim: int, scale: float, norm: str) -> tuple[list[nn.Module], int]:
    """The resampling layers that bring a stride-s map to stride s / scale, and their
    output channels: 2x2 deconvolutions up, a 2x2 max-pool down."""
    if scale == 4.0:
        layers = [
            nn.ConvTranspose2d(dim, dim // 2, kernel_size=2, stride=2),
            get_norm(norm, dim // 2),
            nn.GELU(),
            nn.ConvTranspose2d(dim // 2, dim // 4, kernel_size=2, stride=2),
        ]
        return layers, dim // 4
    if scale == 2.0:
        return [nn.ConvTranspose2d(dim, dim // 2, kernel_size=2, stride=2)], dim // 2
    if scale == 1.0:
        return [], dim
    if scale == 0.5:
        return [nn.MaxPool2d(kernel_size=2, stride=2)], dim
    raise ValueError(
        f"SimpleFeaturePyramid: scale_factors entries must be 4, 2, 1 or 0.5, got {scale}"
    )


class SimpleFeaturePyramid(Backbone):
    """Feature pyramid p2.. built from a single feature map (ViTDet's simple pyramid).

    Each scale factor gives one level: resample (4: two 2x2 deconvolutions, 2: one,
    1: nothing, 0.5: 2x2 max-pool), then a 1x1 and a 3x3 conv to out_channels, each with
    `norm`. Level modules are named ``simfp_<log2 stride>``.

    Args:
        net: the backbone producing ``in_feature``.
        in_feature: name of the feature of net to build on.
        out_channels: channels of every level.
        scale_factors: one per level, from {4, 2, 1, 0.5}, in order of decreasing
            resolution; the resulting strides must be consecutive powers of 2.
        top_block: optional module with ``num_levels`` and ``in_feature`` attributes that
            adds further levels (e.g. `LastLevelMaxPool` for p6).
        norm: normalization of the convs, as for `get_norm` ("" for none, then convs
            have biases).
        square_pad: if > 0, inputs are padded to this square size.

    forward: (B, 3, H, W) -> {"p<k>": (B, out_channels, H / 2**k, W / 2**k)}.
    """

    def __init__(
        self,
        net: Backbone,
        in_feature: str,
        out_channels: int,
        scale_factors: tuple[float, ...] | list[float],
        top_block: nn.Module | None = None,
        norm: str = "LN",
        square_pad: int = 0,
    ) -> None:
        super().__init__()
        if not isinstance(net, Backbone):
            raise TypeError(
                f"SimpleFeaturePyramid: net must be a Backbone, got {type(net).__name__}"
            )
        input_shapes = net.output_shape()
        if in_feature not in input_shapes:
            raise KeyError(
                f"SimpleFeaturePyramid: in_feature {in_feature!r} is not an output of net "
                f"({', '.join(input_shapes)})"
            )
        self.scale_factors = scale_factors
        strides = [int(input_shapes[in_feature].stride / scale) for scale in scale_factors]
        _check_log2_contiguous(strides)

        dim = input_shapes[in_feature].channels
        use_bias = norm == ""
        # A plain list: the levels are registered once, as simfp_<k>.
        self.stages: list[nn.Sequential] = []
        for scale, stride in zip(scale_factors, strides):
            layers, out_dim = _pyramid_layers(dim, scale, norm)
            layers += [
                Conv2d(
                    out_dim,
                    out_channels,
                    kernel_size=1,
                    bias=use_bias,
                    norm=get_norm(norm, out_channels),
                ),
                Conv2d(
                    out_channels,
                    out_channels,
                    kernel_size=3,
                    padding=1,
                    bias=use_bias,
                    norm=get_norm(norm, out_channels),
                ),
            ]
            level = nn.Sequential(*layers)
            self.add_module(f"simfp_{int(math.log2(stride))}", level)
            self.stages.append(level)

        self.net = net
        self.in_feature = in_feature
        self.top_block = top_block
        self._out_feature_strides = _pyramid_strides(strides, top_block)
        self._out_features = list(self._out_feature_strides)
        self._out_feature_channels = {k: out_channels for k in self._out_features}
        self._size_divisibility = strides[-1]
        self._square_pad = square_pad

    @property
    def padding_constraints(self) -> dict[str, int]:
        """Pad to a multiple of the coarsest pyramid stride, and to square_pad if set.

        Detectron2 spells the first key "size_divisiblity", which `ImageList.from_tensors`
        never reads; Heron uses the spelling it reads. Zoo configs set square_pad=1024,
        which is a multiple of 32, so their padding is the same either way.
        """
        return {"size_divisibility": self._size_divisibility, "square_size": self._square_pad}

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """Build the pyramid from ``net(x)[in_feature]``.

        Args:
            x: (B, C, H, W) images; H and W should be multiples of the coarsest stride.

        Returns:
            the levels "p<k>" in order of decreasing resolution, top-block levels last.
        """
        bottom_up_features = self.net(x)
        features = bottom_up_features[self.in_feature]
        results = [stage(features) for stage in self.stages]
        if self.top_block is not None:
            if self.top_block.in_feature in bottom_up_features:
                top_in = bottom_up_features[self.top_block.in_feature]
            else:
                top_in = results[self._out_features.index(self.top_block.in_feature)]
            results.extend(self.top_block(top_in))
        assert len(self._out_features) == len(results)
        return dict(zip(self._out_features, results))


def _check_log2_contiguous(strides: list[int]) -> None:
    for i in range(1, len(strides)):
        if strides[i] != 2 * strides[i - 1]:
            raise ValueError(
                "SimpleFeaturePyramid: scale_factors must give strides that double from level "
                f"to level, got strides {strides}"
            )


def get_vit_lr_decay_rate(name: str, lr_decay_rate: float = 1.0, num_layers: int = 12) -> float:
    """Layer-wise learning-rate decay factor of one parameter of a ViT backbone.

    Layers are numbered 0 (patch and position embeddings), 1 .. num_layers (blocks) and
    num_layers + 1 (everything else: residual conv blocks, pyramid, heads); a parameter on
    layer i gets ``lr_decay_rate ** (num_layers + 1 - i)``. Only names starting with
    "backbone" are placed below the top.

    Args:
        name: full parameter name, e.g. "backbone.net.blocks.3.attn.qkv.weight".
        lr_decay_rate: decay per layer.
        num_layers: number of ViT blocks.

    Returns:
        the multiplier of the base learning rate.
    """
    layer_id = num_layers + 1
    if name.startswith("backbone"):
        if ".pos_embed" in name or ".patch_embed" in name:
            layer_id = 0
        elif ".blocks." in name and ".residual." not in name:
            layer_id = int(name[name.find(".blocks.") :].split(".")[2]) + 1
    return lr_decay_rate ** (num_layers + 1 - layer_id)
