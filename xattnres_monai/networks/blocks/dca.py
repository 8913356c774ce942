"""Dual Cross-Attention (DCA) over the encoder skip connections of a U-Net.

Implements "Dual Cross Attention for Medical Image Segmentation" (Ates, Mohan and Celik, 2023): the
skip maps of all scales are embedded as tokens on one shared grid, refined by a channel
cross-attention and then a spatial cross-attention across the scales, and fused back into each skip.

For skip maps ``s_1 .. s_S`` (finest first) with channels ``C_1 .. C_S`` and ``C = sum_i C_i``::

    x_i = DW_i(AvgPool(s_i, P))                              patch embedding, tokens (B, N, C_i), N = |P|
    z_i = LN_i(x_i),  Z = [z_1; ...; z_S]                   (B, N, C), concatenated over channels
    x_i = x_i + O_i(softmax(Q_i(z_i)^T K_i(Z) / sqrt(C)) V_i(Z)^T)^T        channel cross-attention
    z_i = LN'_i(x_i), Z = [z_1; ...; z_S]
    x_i = x_i + O'_i(MHA_h(Q'_i(Z), K'_i(Z), V'_i(z_i)))                   spatial cross-attention
    s_i = ReLU(BN(Up(Conv1x1(x_i), size(s_i)) + s_i))                      back to the skip

``DW``, ``Q``, ``K``, ``V`` and ``O`` are depthwise (per-channel) 1x1 projections, the channel attention
has one head (attention over channels, keys and values are all ``C`` channels), the spatial attention
``h`` heads (attention over the ``N`` tokens, head width ``C / h`` for queries and keys and
``C_i / h`` for values, scaled by ``(C / h)^-0.5``).

Design decisions (they reproduce the published parameter overhead exactly: 110,560 parameters on
skips of 32, 64, 128 and 256 channels, the paper's U-Net going from 8.64M to 8.75M):

* every depthwise projection has a weight and a bias per channel, and each scale has its own
  projections in both attentions: two on ``C_i`` channels (``Q_i``, ``O_i`` and ``V'_i``, ``O'_i``)
  and two on all ``C`` channels (``K_i``, ``V_i`` and ``Q'_i``, ``K'_i``): ``8 C_i + 8 C`` per scale;
* one LayerNorm (with affine weight and bias, eps 1e-6) per scale before each attention: ``4 C_i``;
* the patch embedding is parameter-free average pooling followed by a depthwise projection: ``2 C_i``;
* back to the skip: a full 1x1 convolution with bias and a batch norm: ``C_i^2 + C_i + 2 C_i``;

in all ``sum_i (C_i^2 + 17 C_i + 8 C)``. The spatial attention's key biases (``C`` per scale) are kept
for parity with the published block although they are redundant: a key bias adds ``q_n . b`` to
every logit of query row ``n``, which the softmax over the keys cancels, so their gradient is zero
(up to rounding). As in the published block, the per-channel constants added after the last
attention (the spatial value and output biases, the 1x1 convolution bias) are removed again by the
batch norm in training mode.

Differences from the published code, all parameter-neutral:

* the token grid follows the input: ``P = round(size(s_1) / patch_size)`` per dimension, so
  non-square and non-multiple-of-patch inputs work; every scale is pooled (adaptive average
  pooling) to that same grid, so the tokens of all scales can be concatenated;
* the grid is capped at ``max_tokens`` tokens (the spatial attention holds ``N^2`` weights per head
  and scale): past the cap the patch size grows, by the same factor in every dimension;
* tokens are upsampled to the skip's exact size (bilinear or trilinear, ``align_corners=False``
  as elsewhere in this package) instead of by a fixed stride, and the 1x1 convolution is applied
  before upsampling, on the token grid: a 1x1 convolution commutes exactly with interpolation
  (its weights sum to one), so this computes the same values on far fewer positions;
* the depthwise projections act on the ``(B, N, C)`` tokens directly (``x * w + b``), without the
  round trip through an image layout; they are initialised as PyTorch initialises a depthwise
  1x1 convolution (fan-in 1: weight and bias uniform in [-1, 1]).
"""

from __future__ import annotations

import math
from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F
from monai.networks.blocks import ADN
from monai.networks.layers.factories import Conv
from monai.utils import InterpolateMode
from torch import nn

from xattnres_monai.utils.options import as_bool, as_float, as_int, as_int_sequence

__all__ = ["DualCrossAttention", "ChannelCrossAttention", "SpatialCrossAttention", "DepthwiseProjection"]


class DepthwiseProjection(nn.Module):
    """Depthwise (per-channel) 1x1 projection of tokens ``(B, N, C)``: ``y = x * w + b`` over the last dimension.

    Equivalent to a depthwise 1x1 convolution (``groups=C``) on the tokens laid out as an image,
    and initialised like one (fan-in 1: ``w`` and ``b`` uniform in [-1, 1]).

    Args:
        channels: number of channels ``C`` (the last dimension of the tokens).
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        channels = as_int(channels, "DepthwiseProjection: channels", min=1)
        self.channels = channels
        self.weight = nn.Parameter(torch.empty(channels))
        self.bias = nn.Parameter(torch.empty(channels))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.uniform_(self.weight, -1.0, 1.0)
        nn.init.uniform_(self.bias, -1.0, 1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(self.bias, x, self.weight)

    def extra_repr(self) -> str:
        return f"channels={self.channels}"


class _AttentionProjections(nn.Module):
    """The depthwise query, key, value and output projections of one scale's cross-attention."""

    def __init__(self, query_channels: int, key_channels: int, value_channels: int, out_channels: int) -> None:
        super().__init__()
        self.query = DepthwiseProjection(query_channels)
        self.key = DepthwiseProjection(key_channels)
        self.value = DepthwiseProjection(value_channels)
        self.out = DepthwiseProjection(out_channels)


def _check_channels(name: str, channels: Sequence[int]) -> List[int]:
    channels = as_int_sequence(channels, f"{name}: channels")
    if not channels or min(channels) < 1:
        raise ValueError(f"{name}: channels must be a non-empty sequence of positive counts, got {channels}.")
    return channels


class ChannelCrossAttention(nn.Module):
    """Channel cross-attention (CCA) of DCA: each scale's channels attend over the channels of all scales.

    For tokens ``x_i`` ``(B, N, C_i)``, ``z_i = LN_i(x_i)`` and ``Z = [z_1; ...; z_S]`` ``(B, N, C)``::

        x_i + O_i( softmax(Q_i(z_i)^T K_i(Z) / sqrt(C)) V_i(Z)^T )^T

    one head; the attention matrix is ``(C_i, C)`` per sample. ``Q_i``, ``O_i`` act on ``C_i`` channels,
    ``K_i``, ``V_i`` on ``C`` channels; all are :class:`DepthwiseProjection`.

    Args:
        channels: channels ``C_1 .. C_S`` of the scales.
        eps: LayerNorm epsilon.

    Example::

        >>> cca = ChannelCrossAttention([8, 16])
        >>> out = cca([torch.randn(2, 49, 8), torch.randn(2, 49, 16)])
        >>> [o.shape for o in out]
        [torch.Size([2, 49, 8]), torch.Size([2, 49, 16])]
    """

    def __init__(self, channels: Sequence[int], eps: float = 1e-6) -> None:
        super().__init__()
        eps = as_float(eps, "ChannelCrossAttention: eps", min=0.0, min_open=True)
        self.channels = _check_channels("ChannelCrossAttention", channels)
        total = sum(self.channels)
        self.scale = total**-0.5
        self.norms = nn.ModuleList([nn.LayerNorm(c, eps=eps) for c in self.channels])
        self.projections = nn.ModuleList([_AttentionProjections(c, total, total, c) for c in self.channels])

    def forward(self, tokens: List[torch.Tensor]) -> List[torch.Tensor]:
        normed: List[torch.Tensor] = []
        for i, norm in enumerate(self.norms):
            normed.append(norm(tokens[i]))
        context = torch.cat(normed, dim=2)  # (B, N, C)
        out: List[torch.Tensor] = []
        for i, proj in enumerate(self.projections):
            query = proj.query(normed[i]).transpose(1, 2)  # (B, C_i, N)
            key = proj.key(context)  # (B, N, C)
            value = proj.value(context).transpose(1, 2)  # (B, C, N)
            weights = torch.softmax(torch.bmm(query, key) * self.scale, dim=-1)  # (B, C_i, C)
            attended = torch.bmm(weights, value).transpose(1, 2)  # (B, N, C_i)
            out.append(tokens[i] + proj.out(attended))
        return out

    def extra_repr(self) -> str:
        return f"channels={self.channels}"


class SpatialCrossAttention(nn.Module):
    """Spatial cross-attention (SCA) of DCA: multi-head attention over the tokens, queries and keys from all scales.

    For tokens ``x_i`` ``(B, N, C_i)``, ``z_i = LN_i(x_i)`` and ``Z = [z_1; ...; z_S]`` ``(B, N, C)``::

        x_i + O_i( MHA(Q_i(Z), K_i(Z), V_i(z_i)) )

    ``num_heads`` heads over contiguous channel groups: head width ``C / h`` for queries and keys and
    ``C_i / h`` for values, logits scaled by ``(C / h)^-0.5``; the attention matrix is ``(N, N)`` per
    head. ``Q_i``, ``K_i`` act on ``C`` channels, ``V_i``, ``O_i`` on ``C_i``; all are
    :class:`DepthwiseProjection`.

    Args:
        channels: channels ``C_1 .. C_S`` of the scales; each, and their sum, divisible by ``num_heads``.
        num_heads: number of attention heads.
        eps: LayerNorm epsilon.

    Example::

        >>> sca = SpatialCrossAttention([8, 16], num_heads=4)
        >>> out = sca([torch.randn(2, 49, 8), torch.randn(2, 49, 16)])
        >>> [o.shape for o in out]
        [torch.Size([2, 49, 8]), torch.Size([2, 49, 16])]
    """

    def __init__(self, channels: Sequence[int], num_heads: int = 4, eps: float = 1e-6) -> None:
        super().__init__()
        num_heads = as_int(num_heads, "SpatialCrossAttention: num_heads", min=1)
        eps = as_float(eps, "SpatialCrossAttention: eps", min=0.0, min_open=True)
        self.channels = _check_channels("SpatialCrossAttention", channels)
        total = sum(self.channels)
        if num_heads < 1 or any(c % num_heads for c in self.channels):
            raise ValueError(
                f"SpatialCrossAttention: every scale's channels must be divisible by num_heads={num_heads}, "
                f"got channels={self.channels}."
            )
        self.num_heads = num_heads
        self.head_dim = total // num_heads
        self.scale = self.head_dim**-0.5
        self.norms = nn.ModuleList([nn.LayerNorm(c, eps=eps) for c in self.channels])
        self.projections = nn.ModuleList([_AttentionProjections(total, total, c, c) for c in self.channels])

    def forward(self, tokens: List[torch.Tensor]) -> List[torch.Tensor]:
        normed: List[torch.Tensor] = []
        for i, norm in enumerate(self.norms):
            normed.append(norm(tokens[i]))
        context = torch.cat(normed, dim=2)  # (B, N, C)
        batch, num_tokens = context.shape[0], context.shape[1]
        heads = [batch, num_tokens, self.num_heads, -1]
        out: List[torch.Tensor] = []
        for i, proj in enumerate(self.projections):
            query = (proj.query(context) * self.scale).reshape(heads).transpose(1, 2)  # (B, h, N, C/h)
            key = proj.key(context).reshape(heads).permute(0, 2, 3, 1)  # (B, h, C/h, N)
            value = proj.value(normed[i]).reshape(heads).transpose(1, 2)  # (B, h, N, C_i/h)
            weights = torch.softmax(torch.matmul(query, key), dim=-1)  # (B, h, N, N)
            attended = torch.matmul(weights, value).transpose(1, 2).reshape(batch, num_tokens, -1)  # (B, N, C_i)
            out.append(tokens[i] + proj.out(attended))
        return out

    def extra_repr(self) -> str:
        return f"channels={self.channels}, num_heads={self.num_heads}"


class _PatchEmbedding(nn.Module):
    """Adaptive average pooling of one skip map to the token grid, then a depthwise projection: ``(B, N, C_i)``."""

    def __init__(self, spatial_dims: int, channels: int) -> None:
        super().__init__()
        self.spatial_dims = spatial_dims
        self.projection = DepthwiseProjection(channels)

    def forward(self, x: torch.Tensor, grid: List[int]) -> torch.Tensor:
        if list(x.shape[2:]) != grid:
            if self.spatial_dims == 2:
                x = F.adaptive_avg_pool2d(x, grid)
            else:
                x = F.adaptive_avg_pool3d(x, grid)
        return self.projection(x.flatten(2).transpose(1, 2))


class _SkipFusion(nn.Module):
    """Tokens back to one skip: 1x1 convolution on the grid, upsampling to the skip's size, residual add, BN + ReLU."""

    def __init__(self, spatial_dims: int, channels: int) -> None:
        super().__init__()
        self.upsample_mode: str = (InterpolateMode.BILINEAR if spatial_dims == 2 else InterpolateMode.TRILINEAR).value
        self.conv = Conv[Conv.CONV, spatial_dims](channels, channels, kernel_size=1, bias=True)
        self.norm_act = ADN(ordering="NA", in_channels=channels, act="RELU", norm="BATCH", norm_dim=spatial_dims)

    def forward(self, tokens: torch.Tensor, skip: torch.Tensor, grid: List[int]) -> torch.Tensor:
        size = list(skip.shape[2:])
        x = tokens.transpose(1, 2).reshape([tokens.shape[0], tokens.shape[2]] + grid)
        x = self.conv(x)  # on the grid: a 1x1 convolution commutes with interpolation
        if size != grid:
            x = F.interpolate(x, size=size, mode=self.upsample_mode, align_corners=False)
        return self.norm_act(x + skip)


class DualCrossAttention(nn.Module):
    """Dual Cross-Attention (DCA) over a list of encoder skip maps, finest first.

    Every skip is average-pooled to one shared token grid and projected depthwise
    (patch embedding), the tokens of all scales pass a :class:`ChannelCrossAttention` and then a
    :class:`SpatialCrossAttention`, and each scale's tokens are brought back to its skip: reshaped
    to the grid, 1x1 convolution, bilinear (trilinear) upsampling to the skip's exact size, added
    to the raw skip, then batch norm and ReLU. The outputs have the shapes of the inputs.

    The token grid is computed from the input at run time: ``P = round(size(skips[0]) / patch_size)``
    per spatial dimension (at least 1), the same grid for every scale (coarser scales are pooled,
    or adaptively stretched, to it), so non-square and non-multiple-of-patch sizes work. When that
    grid would hold more than ``max_tokens`` tokens, the patch size grows (the grid shrinks by
    the same factor in every dimension) until at most ``max_tokens`` remain: the spatial attention
    stores ``N^2`` weights per head, scale and sample, so its memory stays bounded at any input size.

    With the paper's U-Net skips (32, 64, 128, 256 channels) the block has 110,560 parameters, the
    published overhead (8.64M -> 8.75M); in general ``sum_i (C_i^2 + 17 C_i + 8 C)`` with
    ``C = sum_i C_i`` (see the module docstring for the breakdown).

    Args:
        spatial_dims: number of spatial dimensions, 2 or 3.
        channels: channels of the skip maps, finest first (the order of :meth:`forward`'s input).
            Each, and hence their sum, must be divisible by ``num_heads``.
        patch_size: patch size on the finest skip (8: a 28 x 28 grid at 224 x 224).
        num_heads: heads of the spatial cross-attention (the channel cross-attention has one).
        max_tokens: upper bound on the number of tokens ``N`` (default 784 = 28 x 28, the paper's grid).
        channel_attention: include the channel cross-attention.
        spatial_attention: include the spatial cross-attention.
        eps: LayerNorm epsilon.

    Example::

        >>> dca = DualCrossAttention(spatial_dims=2, channels=[32, 64, 128, 256])
        >>> skips = [torch.randn(2, c, 224 // s, 224 // s) for c, s in zip([32, 64, 128, 256], [1, 2, 4, 8])]
        >>> [o.shape[1:] for o in dca(skips)]
        [torch.Size([32, 224, 224]), torch.Size([64, 112, 112]), torch.Size([128, 56, 56]), torch.Size([256, 28, 28])]
        >>> dca.token_grid([1000, 600])  # 125 x 75 patches of 8 would exceed max_tokens
        [36, 21]
    """

    def __init__(
        self,
        spatial_dims: int,
        channels: Sequence[int],
        patch_size: int = 8,
        num_heads: int = 4,
        max_tokens: int = 784,
        channel_attention: bool = True,
        spatial_attention: bool = True,
        eps: float = 1e-6,
    ) -> None:
        super().__init__()
        # every option is checked (and parsed from the strings a command line gives) first: one-line ValueError
        dims = as_int(spatial_dims, "DualCrossAttention: spatial_dims")
        if dims not in (2, 3):
            raise ValueError(f"DualCrossAttention: spatial_dims must be 2 or 3, got {spatial_dims!r}.")
        spatial_dims = dims
        patch_size = as_int(patch_size, "DualCrossAttention: patch_size", min=1)
        num_heads = as_int(num_heads, "DualCrossAttention: num_heads", min=1)
        max_tokens = as_int(max_tokens, "DualCrossAttention: max_tokens", min=1)
        channel_attention = as_bool(channel_attention, "DualCrossAttention: channel_attention")
        spatial_attention = as_bool(spatial_attention, "DualCrossAttention: spatial_attention")
        eps = as_float(eps, "DualCrossAttention: eps", min=0.0, min_open=True)
        if patch_size < 1 or max_tokens < 1:
            raise ValueError(
                f"DualCrossAttention: patch_size and max_tokens must be positive, got {patch_size}, {max_tokens}."
            )
        self.spatial_dims = spatial_dims
        self.channels = _check_channels("DualCrossAttention", channels)
        self.num_scales = len(self.channels)
        self.patch_size = int(patch_size)
        self.num_heads = num_heads
        self.max_tokens = int(max_tokens)
        self.embeddings = nn.ModuleList([_PatchEmbedding(spatial_dims, c) for c in self.channels])
        self.channel_attention: Optional[ChannelCrossAttention] = (
            ChannelCrossAttention(self.channels, eps=eps) if channel_attention else None
        )
        self.spatial_attention: Optional[SpatialCrossAttention] = (
            SpatialCrossAttention(self.channels, num_heads=num_heads, eps=eps) if spatial_attention else None
        )
        self.fusions = nn.ModuleList([_SkipFusion(spatial_dims, c) for c in self.channels])

    def token_grid(self, size: List[int]) -> List[int]:
        """Token grid for a finest skip of spatial ``size``: ``round(size / patch_size)``, at most ``max_tokens``."""
        grid = [max(1, int(math.floor(s / self.patch_size + 0.5))) for s in size]
        total = 1
        for g in grid:
            total *= g
        if total > self.max_tokens:
            # grow the patch size by one factor in every dimension, then trim what rounding left over
            shrink = (float(self.max_tokens) / float(total)) ** (1.0 / float(len(grid)))
            grid = [max(1, int(math.floor(g * shrink))) for g in grid]
            total = 1
            for g in grid:
                total *= g
            while total > self.max_tokens:
                largest = 0
                for d in range(1, len(grid)):
                    if grid[d] > grid[largest]:
                        largest = d
                total = total // grid[largest] * (grid[largest] - 1)
                grid[largest] = grid[largest] - 1
        return grid

    def forward(self, skips: List[torch.Tensor]) -> List[torch.Tensor]:
        """Refine the skip maps ``(B, C_i, *S_i)``, finest first; returns maps of the same shapes."""
        if len(skips) != self.num_scales:
            raise ValueError(
                "DualCrossAttention: expected " + str(self.num_scales) + " skip maps, got " + str(len(skips)) + "."
            )
        for i, c in enumerate(self.channels):
            if skips[i].dim() != self.spatial_dims + 2 or skips[i].shape[1] != c:
                raise ValueError(
                    "DualCrossAttention: skip map "
                    + str(i)
                    + " should be (batch, "
                    + str(c)
                    + ", spatial x "
                    + str(self.spatial_dims)
                    + "), got shape "
                    + str(list(skips[i].shape))
                    + "."
                )
        grid = self.token_grid(list(skips[0].shape[2:]))
        tokens: List[torch.Tensor] = []
        for i, embedding in enumerate(self.embeddings):
            tokens.append(embedding(skips[i], grid))
        channel_attention = self.channel_attention
        if channel_attention is not None:
            tokens = channel_attention(tokens)
        spatial_attention = self.spatial_attention
        if spatial_attention is not None:
            tokens = spatial_attention(tokens)
        out: List[torch.Tensor] = []
        for i, fusion in enumerate(self.fusions):
            out.append(fusion(tokens[i], skips[i], grid))
        return out

    def extra_repr(self) -> str:
        return (
            f"spatial_dims={self.spatial_dims}, channels={self.channels}, patch_size={self.patch_size}, "
            f"num_heads={self.num_heads}, max_tokens={self.max_tokens}"
        )
