"""Cross-Stage Attention Residual (XAttnRes) block.

Implements Eq. 4-8 of "Cross-Stage Attention Residuals" (arXiv 2604.03297): a stage reads from a
global, causally growing history pool of earlier stage outputs through a zero-initialised
pseudo-query attention over channel-RMS-normalised keys.

For a current feature ``x`` (B, C, *S) and history entries ``h_1 .. h_K``::

    v_k   = Conv1x1_k(Resize(h_k, S))                 (Eq. 4; identity conv when channels match)
    V     = [v_1; ...; v_K; x]                         (Eq. 5)
    l_n   = w . RMSNorm(V_n)  per position             (Eq. 6; RMSNorm over channels, learnable gain g)
    a_n   = softmax_n(l_n)                              (Eq. 7)
    out   = sum_n a_n * V_n                             (Eq. 8; the unnormalised values)

The implementation is efficient by design:

* the normalised stack is never materialised: ``l_n = (w * g) . V_n / rms(V_n)``, one channel
  contraction and one channel norm per entry;
* the values are never stacked: the weighted sum is accumulated entry by entry;
* resizing is ordered to keep the 1x1 projection at the lowest resolution: pool (adaptive max)
  first, then project, then upsample (bilinear / trilinear). A 1x1 convolution commutes exactly
  with bilinear interpolation (interpolation weights sum to one), so projecting before upsampling
  computes the same values on far fewer positions;
* resized history entries are kept in a per-forward cache shared by all XAttnRes blocks of the
  network, so an entry is resized at most once per target resolution within a forward pass.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from monai.networks.layers.factories import Conv
from torch import nn

__all__ = ["XAttnRes", "QUERY_INITS"]

#: pseudo-query initialisations studied in Table 5 of the paper.
QUERY_INITS = ("zero", "normal", "kaiming_uniform", "xavier_uniform")


class XAttnRes(nn.Module):
    """Pseudo-query attention of one stage over the history pool of earlier stage outputs.

    The block is built for a fixed history layout (the channel counts of the entries it reads,
    in pool order); spatial sizes are taken from the tensors at run time, so any input size works.

    Args:
        spatial_dims: number of spatial dimensions, 2 or 3.
        channels: channel count ``C`` of the current feature ``x`` (the target of the alignment).
        history_channels: channel counts of the history entries this block reads, in pool order
            (the first ``len(history_channels)`` entries of the pool).
        query_init: pseudo-query initialisation, one of ``"zero"`` (default, the paper's choice:
            the block starts as the plain mean of its entries), ``"normal"`` (std 0.02),
            ``"kaiming_uniform"`` or ``"xavier_uniform"`` (``w`` viewed as a 1 x C matrix).
        eps: epsilon of the RMSNorm, ``rms(v) = sqrt(mean_c(v^2) + eps)``.

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
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"XAttnRes: spatial_dims must be 2 or 3, got {spatial_dims!r}.")
        if query_init not in QUERY_INITS:
            raise ValueError(f"XAttnRes: query_init must be one of {QUERY_INITS}, got {query_init!r}.")
        if channels < 1 or any(c < 1 for c in history_channels):
            raise ValueError(
                f"XAttnRes: channel counts must be positive, got channels={channels}, "
                f"history_channels={list(history_channels)}."
            )
        self.spatial_dims = spatial_dims
        self.channels = channels
        self.history_channels: List[int] = [int(c) for c in history_channels]
        self.num_history = len(self.history_channels)
        self.eps = eps
        self.upsample_mode = "bilinear" if spatial_dims == 2 else "trilinear"

        conv_type = Conv[Conv.CONV, spatial_dims]
        # one projection per history entry; identity when the channels already match (Eq. 4)
        self.projections = nn.ModuleList(
            [
                nn.Identity() if c == channels else conv_type(c, channels, kernel_size=1, bias=False)
                for c in self.history_channels
            ]
        )
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

    def _cached_pool(self, index: int, h: torch.Tensor, size: List[int], cache: Dict[str, torch.Tensor]) -> torch.Tensor:
        """Adaptive max pooling of history entry ``index`` to ``size``, computed once per forward pass."""
        key = "pool" + str(index)
        for s in size:
            key = key + "x" + str(s)
        pooled = cache.get(key)
        if pooled is None:
            if self.spatial_dims == 2:
                pooled = F.adaptive_max_pool2d(h, size)
            else:
                pooled = F.adaptive_max_pool3d(h, size)
            cache[key] = pooled
        return pooled

    def _aligned_values(
        self, x: torch.Tensor, history: List[torch.Tensor], cache: Dict[str, torch.Tensor]
    ) -> List[torch.Tensor]:
        """The value entries ``[v_1, ..., v_K, x]`` of Eq. 5, each aligned to ``x`` (Eq. 4)."""
        if len(history) < self.num_history:
            raise ValueError(
                "XAttnRes: expected a history pool of at least "
                + str(self.num_history)
                + " entries, got "
                + str(len(history))
                + "."
            )
        target = list(x.shape[2:])
        values: List[torch.Tensor] = []
        for i, projection in enumerate(self.projections):
            h = history[i]
            if h.shape[1] != self.history_channels[i]:
                raise ValueError(
                    "XAttnRes: history entry "
                    + str(i)
                    + " should have "
                    + str(self.history_channels[i])
                    + " channels, got "
                    + str(h.shape[1])
                    + "."
                )
            source = list(h.shape[2:])
            # pool every dimension that is larger than the target, at the entry's own channel count
            pooled_size = [min(s, t) for s, t in zip(source, target)]
            if pooled_size != source:
                h = self._cached_pool(i, h, pooled_size, cache)
            # project at the lowest resolution, then upsample what is still smaller than the target
            v = projection(h)
            if pooled_size != target:
                v = F.interpolate(v, size=target, mode=self.upsample_mode, align_corners=False)
            values.append(v)
        values.append(x)
        return values

    def _logits(self, values: List[torch.Tensor]) -> torch.Tensor:
        """Attention logits ``(B, K+1, *S)``: ``(w*g) . v / rms(v)`` per entry and position (Eq. 6)."""
        query = (self.query * self.gain).view([1, self.channels] + [1] * self.spatial_dims)
        logits: List[torch.Tensor] = []
        for v in values:
            # plain broadcast-multiply and channel reductions: on CPU several times faster than
            # einsum / matmul (whose backward yields channels-last gradients) or linalg.vector_norm
            dot = (v * query).sum(dim=1)
            rms = torch.sqrt(v.square().mean(dim=1) + self.eps)
            logits.append(dot / rms)
        return torch.stack(logits, dim=1)

    def attention_weights(
        self, x: torch.Tensor, history: List[torch.Tensor], cache: Optional[Dict[str, torch.Tensor]] = None
    ) -> torch.Tensor:
        """Softmax weights ``(B, K+1, *S)`` over the history entries and ``x`` (last), per position (Eq. 7).

        Meant for inspection (see :func:`xattnres_monai.networks.utils.capture_attention`);
        :meth:`forward` does not call it.
        """
        return torch.softmax(self._logits(self._aligned_values(x, history, {} if cache is None else cache)), dim=1)

    def forward(
        self, x: torch.Tensor, history: List[torch.Tensor], cache: Optional[Dict[str, torch.Tensor]] = None
    ) -> torch.Tensor:
        """Aggregate ``x`` with the first ``len(history_channels)`` entries of ``history`` (Eq. 8).

        Args:
            x: current feature ``(B, C, *S)``.
            history: the history pool; entries may have any spatial size and the channel counts
                given at construction.
            cache: resized-entry cache shared by the blocks of one forward pass (optional).
        """
        if x.shape[1] != self.channels:
            raise ValueError(
                "XAttnRes: expected x with " + str(self.channels) + " channels, got " + str(x.shape[1]) + "."
            )
        if cache is None:
            cache = {}
        values = self._aligned_values(x, history, cache)
        weights = torch.softmax(self._logits(values), dim=1)
        out = weights[:, 0:1] * values[0]
        for n in range(1, len(values)):
            out = torch.addcmul(out, weights[:, n : n + 1], values[n])
        return out

    def extra_repr(self) -> str:
        return (
            f"spatial_dims={self.spatial_dims}, channels={self.channels}, "
            f"history_channels={self.history_channels}, query_init={self.query_init!r}"
        )
