"""Helpers of the ViT backbone: window attention, relative and absolute positions, patches.

Tokens are laid out channels-last, (B, H, W, C), as in Detectron2's ViTDet.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

__all__ = [
    "PatchEmbed",
    "add_decomposed_rel_pos",
    "get_abs_pos",
    "get_rel_pos",
    "window_partition",
    "window_unpartition",
]


def window_partition(x: Tensor, window_size: int) -> tuple[Tensor, tuple[int, int]]:
    """Cut a token map into non-overlapping square windows, zero-padding the bottom/right.

    Args:
        x: (B, H, W, C) tokens.
        window_size: side S of a window, > 0.

    Returns:
        windows: (B * nH * nW, S, S, C), windows in row-major order per image, where
            nH = ceil(H / S) and nW = ceil(W / S).
        (Hp, Wp): the padded height and width, nH * S and nW * S.
    """
    if window_size <= 0:
        raise ValueError(f"window_partition: window_size must be > 0, got {window_size}")
    B, H, W, C = x.shape
    pad_h = (window_size - H % window_size) % window_size
    pad_w = (window_size - W % window_size) % window_size
    if pad_h > 0 or pad_w > 0:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))  # pads C by (0, 0), W by (0, pad_w), H ...
    Hp, Wp = H + pad_h, W + pad_w
    # (B, Hp, Wp, C) -> (B, nH, S, nW, S, C) -> (B, nH, nW, S, S, C)
    nH, nW = Hp // window_size, Wp // window_size
    x = x.view(B, nH, window_size, nW, window_size, C)
    windows = x.permute(0, 1, 3, 2, 4, 5).reshape(B * nH * nW, window_size, window_size, C)
    return windows, (Hp, Wp)


def window_unpartition(
    windows: Tensor, window_size: int, pad_hw: tuple[int, int], hw: tuple[int, int]
) -> Tensor:
    """Reassemble windows from `window_partition` into token maps and drop the padding.

    Args:
        windows: (B * nH * nW, S, S, C) windows.
        window_size: side S of a window.
        pad_hw: padded size (Hp, Wp) returned by `window_partition`.
        hw: original size (H, W).

    Returns:
        (B, H, W, C) tokens.
    """
    Hp, Wp = pad_hw
    H, W = hw
    num_windows = (Hp // window_size) * (Wp // window_size)
    B = windows.shape[0] // num_windows
    C = windows.shape[-1]  # explicit, not -1: an empty batch has no size to infer
    x = windows.view(B, Hp // window_size, Wp // window_size, window_size, window_size, C)
    # (B, nH, nW, S, S, C) -> (B, nH, S, nW, S, C) -> (B, Hp, Wp, C)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(B, Hp, Wp, C)
    if Hp > H or Wp > W:
        x = x[:, :H, :W, :].contiguous()
    return x


def get_rel_pos(q_size: int, k_size: int, rel_pos: Tensor) -> Tensor:
    """Look up the embedding of every (query, key) offset along one axis.

    The table has one row per offset, from -(k_size - 1) to q_size - 1; a table of another
    length is first resized linearly to 2 * max(q_size, k_size) - 1 rows. When the query
    and key axes differ in length, the shorter one's coordinates are stretched to the
    longer's.

    Args:
        q_size: number of query positions along the axis.
        k_size: number of key positions along the axis.
        rel_pos: (L, C) embedding table.

    Returns:
        (q_size, k_size, C) embeddings; entry [i, j] belongs to the offset i - j.
    """
    max_rel_dist = int(2 * max(q_size, k_size) - 1)
    if rel_pos.shape[0] != max_rel_dist:
        # (L, C) -> (1, C, L) -> linear resize -> (max_rel_dist, C)
        resized = F.interpolate(
            rel_pos.reshape(1, rel_pos.shape[0], -1).permute(0, 2, 1),
            size=max_rel_dist,
            mode="linear",
        )
        resized = resized.reshape(-1, max_rel_dist).permute(1, 0)
    else:
        resized = rel_pos
    q_coords = torch.arange(q_size, device=rel_pos.device)[:, None] * max(k_size / q_size, 1.0)
    k_coords = torch.arange(k_size, device=rel_pos.device)[None, :] * max(q_size / k_size, 1.0)
    relative_coords = (q_coords - k_coords) + (k_size - 1) * max(q_size / k_size, 1.0)
    return resized[relative_coords.long()]


def add_decomposed_rel_pos(
    attn: Tensor,
    q: Tensor,
    rel_pos_h: Tensor,
    rel_pos_w: Tensor,
    q_size: tuple[int, int],
    k_size: tuple[int, int],
) -> Tensor:
    """Add decomposed relative-position terms to attention logits (MViTv2's scheme).

    The logit of query (y, x) for key (y', x') gains q . Rh[y - y'] + q . Rw[x - x'], so the
    tables are per axis rather than per 2-D offset.

    Args:
        attn: (B, q_h * q_w, k_h * k_w) attention logits.
        q: (B, q_h * q_w, C) queries.
        rel_pos_h: (Lh, C) table for the height axis.
        rel_pos_w: (Lw, C) table for the width axis.
        q_size: (q_h, q_w) query grid.
        k_size: (k_h, k_w) key grid.

    Returns:
        (B, q_h * q_w, k_h * k_w) logits with the position terms added.
    """
    q_h, q_w = q_size
    k_h, k_w = k_size
    Rh = get_rel_pos(q_h, k_h, rel_pos_h)  # (q_h, k_h, C)
    Rw = get_rel_pos(q_w, k_w, rel_pos_w)  # (q_w, k_w, C)

    B, _, dim = q.shape
    r_q = q.reshape(B, q_h, q_w, dim)
    rel_h = torch.einsum("bhwc,hkc->bhwk", r_q, Rh)  # (B, q_h, q_w, k_h)
    rel_w = torch.einsum("bhwc,wkc->bhwk", r_q, Rw)  # (B, q_h, q_w, k_w)
    attn = attn.view(B, q_h, q_w, k_h, k_w) + rel_h[:, :, :, :, None] + rel_w[:, :, :, None, :]
    return attn.view(B, q_h * q_w, k_h * k_w)


def get_abs_pos(abs_pos: Tensor, has_cls_token: bool, hw: tuple[int, int]) -> Tensor:
    """Fit pretraining absolute position embeddings to an (H, W) token grid.

    Drops the class-token entry if present; the remaining square grid is resized
    bicubically (align_corners=False) when it is not already H x W.

    Args:
        abs_pos: (1, num_positions, C) embeddings; num_positions is a square, plus one
            when has_cls_token.
        has_cls_token: whether the first entry belongs to a class token.
        hw: (H, W) target grid.

    Returns:
        (1, H, W, C) embeddings.
    """
    h, w = hw
    if has_cls_token:
        abs_pos = abs_pos[:, 1:]
    xy_num = abs_pos.shape[1]
    size = int(math.sqrt(xy_num))
    if size * size != xy_num:
        raise ValueError(
            f"get_abs_pos: abs_pos must hold a square grid of positions (plus a class token "
            f"when has_cls_token), got {xy_num} grid positions"
        )
    if size != h or size != w:
        # (1, S*S, C) -> (1, C, S, S) -> (1, C, H, W) -> (1, H, W, C)
        resized = F.interpolate(
            abs_pos.reshape(1, size, size, -1).permute(0, 3, 1, 2),
            size=(h, w),
            mode="bicubic",
            align_corners=False,
        )
        return resized.permute(0, 2, 3, 1)
    return abs_pos.reshape(1, h, w, -1)


class PatchEmbed(nn.Module):
    """Embed image patches with one strided convolution; output is channels-last.

    Args:
        kernel_size: patch size (h, w).
        stride: step between patches (h, w).
        padding: padding of the convolution (h, w).
        in_chans: channels of the image.
        embed_dim: channels of each token.

    forward: (B, in_chans, H, W) -> (B, H', W', embed_dim).
    """

    def __init__(
        self,
        kernel_size: tuple[int, int] = (16, 16),
        stride: tuple[int, int] = (16, 16),
        padding: tuple[int, int] = (0, 0),
        in_chans: int = 3,
        embed_dim: int = 768,
    ) -> None:
        super().__init__()
        self.proj = nn.Conv2d(
            in_chans, embed_dim, kernel_size=kernel_size, stride=stride, padding=padding
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).permute(0, 2, 3, 1)
