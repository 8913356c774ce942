"""The paper's equations (Eq. 4-8), literally: resize, stack, normalise, attend, sum. Slow, plain autograd.

The readable definition that the fast implementations are tested against (``tests/test_xattnres_block.py``),
measured against (``benchmarks/xattnres_overhead.py``) and that :meth:`XAttnRes.attention_weights` uses.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F

__all__ = ["resize", "attention", "aggregate", "stacked_xattnres"]


def resize(h: torch.Tensor, size: List[int]) -> torch.Tensor:
    """Eq. 4's Resize: adaptive max pooling to downsample, bilinear/trilinear to upsample."""
    source = list(h.shape[2:])
    smaller = [min(s, t) for s, t in zip(source, size)]
    if smaller != source:
        h = (F.adaptive_max_pool2d if h.dim() == 4 else F.adaptive_max_pool3d)(h, smaller)
    if smaller != size:
        h = F.interpolate(h, size=size, mode="bilinear" if h.dim() == 4 else "trilinear", align_corners=False)
    return h


def attention(
    query: torch.Tensor, values: List[torch.Tensor], eps: float, gain: Optional[torch.Tensor] = None
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Eq. 5-8 on the aligned entries ``values`` (``x`` last; smaller entries are resized to its size).

    ``query`` is the pseudo-query ``w``, ``gain`` the RMSNorm gain ``g`` (``None``: folded into ``query``,
    as ``w . (g * k) == (w * g) . k``). Returns the output ``(B, C, *S)`` and the weights ``(B, K+1, *S)``.
    """
    size = list(values[-1].shape[2:])
    stack = torch.stack([resize(v, size) for v in values], dim=0)  # Eq. 5: (K+1, B, C, *S)
    rms = torch.sqrt(stack.pow(2).mean(dim=2, keepdim=True) + eps)
    keys = stack / rms  # RMSNorm over channels ...
    if gain is not None:
        keys = keys * gain.view(1, 1, -1, *([1] * len(size)))  # ... with its learnable gain
    logits = torch.einsum("nbc...,c->nb...", keys, query)  # Eq. 6
    weights = torch.softmax(logits, dim=0)  # Eq. 7
    out = (weights.unsqueeze(2) * stack).sum(dim=0)  # Eq. 8: the unnormalised values
    return out, weights.transpose(0, 1)


def aggregate(query: torch.Tensor, values: List[torch.Tensor], eps: float) -> torch.Tensor:
    """Eq. 5-8 with the contract of :func:`xattnres_monai.networks.ops.aggregate` (``query = w * g``)."""
    return attention(query, values, eps)[0]


def stacked_xattnres(block, x: torch.Tensor, history: List[torch.Tensor], return_weights: bool = False):
    """The whole block of ``block`` (an :class:`XAttnRes`) read literally: resize *then* project (Eq. 4), Eq. 5-8."""
    size = list(x.shape[2:])
    aligned = [proj(resize(history[i], size)) for i, proj in zip(block.read, block.projections)]  # Eq. 4
    out, weights = attention(block.query, aligned + [x], block.eps, gain=block.gain)
    return (out, weights) if return_weights else out
