"""Cross-Stage Attention Residual (XAttnRes) block (Eq. 4-8 of arXiv 2604.03297).

A stage reads from a global, causally growing history pool of earlier stage outputs through a zero-initialised
pseudo-query attention over channel-RMS-normalised keys. For a current feature ``x`` (B, C, *S) and history
entries ``h_1 .. h_K``::

    v_k   = Conv1x1_k(Resize(h_k, S))                 (Eq. 4; identity conv when channels match)
    V     = [v_1; ...; v_K; x]                         (Eq. 5)
    l_n   = w . RMSNorm(V_n)  per position             (Eq. 6; RMSNorm over channels, learnable gain g)
    a_n   = softmax_n(l_n)                              (Eq. 7)
    out   = sum_n a_n * V_n                             (Eq. 8; the unnormalised values)

This module does Eq. 4 and hands Eq. 5-8 to :func:`xattnres_monai.networks.ops.aggregate`, which picks a fused
CPU kernel or the PyTorch formulation (:mod:`xattnres_monai.networks.ops`; the literal equations are in
:mod:`xattnres_monai.networks.ops.reference`). Eq. 4 is ordered to keep the 1x1 projection at the lowest
resolution: pool (adaptive max) first, then project, and leave the upsampling (bilinear / trilinear) to
``aggregate``; a 1x1 convolution commutes exactly with that interpolation (its weights sum to one). Pooled entries
are kept in a per-forward cache shared by the blocks of a network, so each is pooled once per resolution.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from monai.networks.layers.factories import Conv
from torch import nn

from xattnres_monai.networks.ops import aggregate, reference
from xattnres_monai.networks.ops.pytorch import channels_last, compiling
from xattnres_monai.utils.options import as_choice, as_float, as_int, as_int_sequence

__all__ = ["XAttnRes", "QUERY_INITS"]

#: pseudo-query initialisations studied in Table 5 of the paper.
QUERY_INITS = ("zero", "normal", "kaiming_uniform", "xavier_uniform")


class XAttnRes(nn.Module):
    """Pseudo-query attention of one stage over the history pool of earlier stage outputs.

    Built for a fixed history layout (the channel counts of the entries it reads, in pool order); spatial sizes
    are taken from the tensors at run time, so any input size works.

    Args:
        spatial_dims: number of spatial dimensions, 2 or 3.
        channels: channel count ``C`` of the current feature ``x`` (the target of the alignment).
        history_channels: channel counts of the history entries this block reads, in pool order
            (the first ``len(history_channels)`` entries of the pool).
        query_init: pseudo-query initialisation, one of ``"zero"`` (default, the paper's choice:
            the block starts as the plain mean of its entries), ``"normal"`` (std 0.02),
            ``"kaiming_uniform"`` or ``"xavier_uniform"`` (``w`` viewed as a 1 x C matrix).
        eps: epsilon of the RMSNorm, ``rms(v) = sqrt(mean_c(v^2) + eps)``.
        dropped: indices (into ``history_channels``) of history entries this block does not read: a pruned
            routing (the connections a routing report finds unused, ``xattnres_monai.routing.weak_connections``).
            They get no projection and no weight; the softmax is over the entries read and ``x``.

    Example::

        >>> block = XAttnRes(spatial_dims=2, channels=32, history_channels=[16, 32])
        >>> history = [torch.randn(2, 16, 64, 64), torch.randn(2, 32, 32, 32)]
        >>> block(torch.randn(2, 32, 16, 16), history).shape
        torch.Size([2, 32, 16, 16])
    """

    def __init__(
        self,
        spatial_dims: int,
        channels: int,
        history_channels: Sequence[int],
        query_init: str = "zero",
        eps: float = 1e-6,
        dropped: Sequence[int] = (),
    ) -> None:
        super().__init__()
        dims = as_int(spatial_dims, "XAttnRes: spatial_dims")
        if dims not in (2, 3):
            raise ValueError(f"XAttnRes: spatial_dims must be 2 or 3, got {spatial_dims!r}.")
        spatial_dims = dims
        query_init = as_choice(query_init, "XAttnRes: query_init", QUERY_INITS)
        channels = as_int(channels, "XAttnRes: channels")
        history_channels = as_int_sequence(history_channels, "XAttnRes: history_channels")
        eps = as_float(eps, "XAttnRes: eps", min=0.0, min_open=True)
        if channels < 1 or any(c < 1 for c in history_channels):
            raise ValueError(
                f"XAttnRes: channel counts must be positive, got channels={channels}, "
                f"history_channels={list(history_channels)}."
            )
        self.spatial_dims = spatial_dims
        self.channels = channels
        self.history_channels: List[int] = [int(c) for c in history_channels]
        self.num_history = len(self.history_channels)
        dropped_set = set(as_int_sequence(list(dropped), "XAttnRes: dropped"))
        if any(not 0 <= i < self.num_history for i in dropped_set):
            raise ValueError(
                f"XAttnRes: dropped entries must index the {self.num_history} history entries, got {sorted(dropped_set)}."
            )
        #: the history entries read (indices into the pool, in pool order)
        self.read: List[int] = [i for i in range(self.num_history) if i not in dropped_set]
        self.eps = eps
        conv = Conv[Conv.CONV, spatial_dims]
        # Eq. 4: one 1x1 projection per history entry read, the identity when the channels already match
        self.projections = nn.ModuleList(
            [
                nn.Identity() if self.history_channels[i] == channels
                else conv(self.history_channels[i], channels, kernel_size=1, bias=False)
                for i in self.read
            ]
        )  # fmt: skip
        self.query = nn.Parameter(torch.zeros(channels))  # pseudo-query w
        self.gain = nn.Parameter(torch.ones(channels))  # RMSNorm gain g
        self.query_init = query_init
        self.reset_query()

    def reset_query(self) -> None:
        """(Re-)initialise the pseudo-query ``w`` according to ``query_init``."""
        with torch.no_grad():
            as_matrix = self.query.view(1, -1)  # fan_in = C, fan_out = 1
            if self.query_init == "zero":
                nn.init.zeros_(self.query)
            elif self.query_init == "normal":
                nn.init.normal_(self.query, std=0.02)
            elif self.query_init == "kaiming_uniform":
                nn.init.kaiming_uniform_(as_matrix, nonlinearity="relu")
            else:
                nn.init.xavier_uniform_(as_matrix)

    def _channels_last(self, i: int, h: torch.Tensor, cache: Dict[str, torch.Tensor]) -> torch.Tensor:
        """History entry ``i`` channels-last (oneDNN's 1x1 convolutions and CPU max pooling, forward and backward,
        are 2-4x faster in that layout), converted once per forward pass."""
        key = "channels_last" + str(i)
        if key not in cache:
            cache[key] = channels_last(h)
        return cache[key]

    def _pooled(self, i: int, h: torch.Tensor, size: List[int], cache: Dict[str, torch.Tensor]) -> torch.Tensor:
        """Eq. 4's downsampling: adaptive max pooling of history entry ``i`` to ``size``, once per forward pass."""
        key = "pool" + str(i)
        for s in size:
            key = key + "x" + str(s)
        if key not in cache:
            if self.spatial_dims == 2 or not compiling():  # (Inductor, torch 2.13: wrong channels-last 3D backward)
                h = self._channels_last(i, h, cache)
            source = list(h.shape[2:])
            if all(s % t == 0 for s, t in zip(source, size)):
                # sizes in whole ratios (every U-Net stride): adaptive max pooling's windows are exactly those of
                # max pooling with kernel = stride = ratio, and the result is bit-identical; measured on CPU,
                # channels-last 96^3 -> 48^3 x 32 channels: 0.07 s instead of 1.06 s (adaptive pooling has no
                # fast channels-last path), the largest cost of a 3D DynUNet + XAttnRes forward pass
                ratio = [s // t for s, t in zip(source, size)]
                pooled = F.max_pool2d(h, ratio, ratio) if self.spatial_dims == 2 else F.max_pool3d(h, ratio, ratio)
            else:
                pooled = F.adaptive_max_pool2d(h, size) if self.spatial_dims == 2 else F.adaptive_max_pool3d(h, size)
            cache[key] = pooled
        return cache[key]

    def _aligned_values(
        self, x: torch.Tensor, history: List[torch.Tensor], cache: Dict[str, torch.Tensor]
    ) -> List[torch.Tensor]:
        """Eq. 4-5: ``[v_1, ..., v_K, x]``, pooled and projected; entries still smaller than ``x`` are upsampled in
        :func:`~xattnres_monai.networks.ops.aggregate`."""
        if len(history) < self.num_history:
            raise ValueError(
                f"XAttnRes: expected a history pool of at least {self.num_history} entries, got {len(history)}."
            )
        target = list(x.shape[2:])
        values: List[torch.Tensor] = []
        for k, projection in enumerate(self.projections):  # (enumerate over a ModuleList: TorchScript-able)
            i = self.read[k]
            h = history[i]
            if h.shape[1] != self.history_channels[i]:
                raise ValueError(
                    f"XAttnRes: history entry {i} should have {self.history_channels[i]} channels, got {h.shape[1]}."
                )
            source = list(h.shape[2:])
            size = [min(s, t) for s, t in zip(source, target)]  # pool every axis larger than the target
            if size != source:
                h = self._pooled(i, h, size, cache)
            elif size != target and self.history_channels[i] != self.channels:
                h = self._channels_last(i, h, cache)  # projected then upsampled: both fastest channels-last
            v = projection(h)  # project at the lowest resolution
            values.append(v.contiguous() if size == target else v)  # the caller's layout where not upsampled
        return values + [x]

    def attention_weights(
        self, x: torch.Tensor, history: List[torch.Tensor], cache: Optional[Dict[str, torch.Tensor]] = None
    ) -> torch.Tensor:
        """Softmax weights ``(B, R+1, *S)`` over the history entries read (``R``: all ``K`` unless some are
        ``dropped``) and ``x`` (last), per position (Eq. 7).

        For inspection (:func:`xattnres_monai.networks.utils.capture_attention`), by the literal equations
        (:func:`xattnres_monai.networks.ops.reference.attention`); :meth:`forward` does not call it.
        """
        values = self._aligned_values(x, history, {} if cache is None else cache)
        return reference.attention(self.query, values, self.eps, gain=self.gain)[1]

    def forward(
        self, x: torch.Tensor, history: List[torch.Tensor], cache: Optional[Dict[str, torch.Tensor]] = None
    ) -> torch.Tensor:
        """Aggregate ``x`` with the first ``len(history_channels)`` entries of ``history`` (Eq. 8).

        Args:
            x: current feature ``(B, C, *S)``.
            history: the history pool; entries may have any spatial size and the channel counts
                given at construction.
            cache: pooled-entry cache shared by the blocks of one forward pass (optional).
        """
        if x.shape[1] != self.channels:
            raise ValueError(f"XAttnRes: expected x with {self.channels} channels, got {x.shape[1]}.")
        values = self._aligned_values(x, history, {} if cache is None else cache)
        return aggregate(self.query * self.gain, values, self.eps)  # Eq. 5-8

    def extra_repr(self) -> str:
        dropped = [i for i in range(self.num_history) if i not in self.read]
        return (
            f"spatial_dims={self.spatial_dims}, channels={self.channels}, "
            f"history_channels={self.history_channels}, query_init={self.query_init!r}"
            + (f", dropped={dropped}" if dropped else "")
        )
