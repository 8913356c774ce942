"""A literal, stacked implementation of XAttnRes written from the paper's equations (Eq. 4-8).

It resizes *then* projects every entry, stacks all values, materialises the RMS-normalised keys
and the weighted stack: the straightforward reading of the paper. The tests compare the
optimised block against it; ``benchmarks/xattnres_overhead.py`` measures the difference.
"""

from __future__ import annotations

from typing import List

import torch
import torch.nn.functional as F

from xattnres_monai.networks.blocks import XAttnRes


def resize(h: torch.Tensor, size: List[int]) -> torch.Tensor:
    """Eq. 4's Resize: adaptive max pooling to downsample, bilinear/trilinear to upsample."""
    source = list(h.shape[2:])
    if source == size:
        return h
    pool = F.adaptive_max_pool2d if h.dim() == 4 else F.adaptive_max_pool3d
    smaller = [min(s, t) for s, t in zip(source, size)]
    if smaller != source:
        h = pool(h, smaller)
    if smaller != size:
        h = F.interpolate(h, size=size, mode="bilinear" if h.dim() == 4 else "trilinear", align_corners=False)
    return h


def stacked_xattnres(block: XAttnRes, x: torch.Tensor, history: List[torch.Tensor], return_weights: bool = False):
    size = list(x.shape[2:])
    aligned = [proj(resize(h, size)) for proj, h in zip(block.projections, history)]  # Eq. 4
    values = torch.stack(aligned + [x], dim=0)  # Eq. 5: (K+1, B, C, *S)
    rms = torch.sqrt(values.pow(2).mean(dim=2, keepdim=True) + block.eps)
    gain = block.gain.view(1, 1, -1, *([1] * (x.dim() - 2)))
    keys = values / rms * gain  # RMSNorm over channels with learnable gain
    logits = torch.einsum("nbc...,c->nb...", keys, block.query)  # Eq. 6
    weights = torch.softmax(logits, dim=0)  # Eq. 7
    out = (weights.unsqueeze(2) * values).sum(dim=0)  # Eq. 8
    if return_weights:
        return out, weights.transpose(0, 1)
    return out
