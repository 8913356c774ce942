"""The attention weights of every XAttnRes block during forward passes, cheaply enough for a report over whole scans.

:func:`~xattnres_monai.networks.utils.capture_attention` recomputes each block's weights by the literal equations
(:mod:`xattnres_monai.networks.ops.reference`: every aligned value resized and stacked, then normalised), which
costs about three forward passes. :func:`capture_routing` records the same weights (equal to float rounding,
``tests/test_routing.py``) from forward hooks too, but computes them entry by entry, never stacking the values:

- Eq. 4: each history entry is max-pooled to the block's resolution once per forward pass (shared by the blocks, as
  the network's own cache does) and projected by the block's 1x1 convolution;
- Eq. 6: the logit of an entry is ``(w * g) . v / rms(v)`` per position, computed on the upsampled value and
  reduced at once to one map, so only one full-resolution value lives at a time;
- Eq. 7: softmax over the ``K+1`` logit maps.

Hooks only, eager mode: the network's forward path (and its scripted / exported form) is untouched.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from xattnres_monai.networks.blocks.xattnres import XAttnRes
from xattnres_monai.routing.layout import BlockLayout, routing_layout, unwrap

__all__ = ["capture_routing", "routing_weights"]

#: pooled history entries of one forward pass: (id of the entry, size) -> (the entry, kept alive; the pooled map)
PoolCache = Dict[Tuple[int, Tuple[int, ...]], Tuple[torch.Tensor, torch.Tensor]]


def _dot(value: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
    """``query . value`` over the channels, ``(B, *S)``: a matrix product in the tensor's own memory layout."""
    last = value.movedim(1, -1)
    if last.is_contiguous():  # channels-last
        return torch.matmul(last, query)
    flat = value.reshape(value.shape[0], value.shape[1], -1)
    return torch.matmul(query, flat).view(value.shape[:1] + value.shape[2:])


def _inner(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``sum_c a_c * b_c`` per position, ``(B, *S)``, accumulated channel by channel (no ``(B, C, *S)`` temporary;
    several times faster on CPU than a reduction along ``dim=1``)."""
    if a is b and a.movedim(1, -1).is_contiguous():  # channels-last: a reduction over the innermost axis
        return torch.linalg.vector_norm(a.movedim(1, -1), dim=-1).square_()
    total = a[:, 0] * b[:, 0]
    for c in range(1, a.shape[1]):
        total.addcmul_(a[:, c], b[:, c])
    return total


def _linear_weights(source: int, target: int, device: torch.device) -> Tuple[torch.Tensor, ...]:
    """The two source indices and weights of each target index of a linear interpolation ``source -> target``
    (``align_corners=False``, as ``F.interpolate`` computes them)."""
    scale = source / target
    position = ((torch.arange(target, device=device, dtype=torch.float32) + 0.5) * scale - 0.5).clamp_(min=0.0)
    first = position.floor().long().clamp_(max=source - 1)
    second = torch.where(first < source - 1, first + 1, first)
    weight = position - first.float()
    return first, second, 1.0 - weight, weight


def _upsampled_mean_square(value: torch.Tensor, size: List[int]) -> torch.Tensor:
    """``mean_c(Up(value)_c^2)`` per target position, ``(B, *size)``, without upsampling ``value`` fully.

    Bilinear (trilinear) interpolation is separable: interpolating the axes after the first one gives rows ``w_r``
    (``C`` channels, at the source's first-axis resolution only), and a target position between rows ``r0`` and
    ``r1`` with weights ``l0, l1`` has ``|v|^2 = l0^2 |w_r0|^2 + 2 l0 l1 <w_r0, w_r1> + l1^2 |w_r1|^2``: the norms
    and neighbour products are computed on the rows, then combined per target row on one-channel maps.
    """
    mode = "bilinear" if value.dim() == 4 else "trilinear"
    rows = value.shape[2]
    if list(value.shape[3:]) != list(size[1:]):
        value = F.interpolate(value, size=[rows] + list(size[1:]), mode=mode, align_corners=False)
    channels = value.shape[1]
    norms = _inner(value, value)  # (B, rows, *rest)
    if rows == size[0]:
        return norms / channels
    first, second, w0, w1 = _linear_weights(rows, size[0], value.device)
    shape = [1, -1] + [1] * (norms.dim() - 2)
    neighbours = torch.cat([_inner(value[:, :, :-1], value[:, :, 1:]), norms[:, -1:]], dim=1)  # <w_r, w_r+1>
    total = norms.index_select(1, first) * (w0 * w0).view(shape)
    total.addcmul_(norms.index_select(1, second), (w1 * w1).view(shape))
    total.addcmul_(neighbours.index_select(1, first), (2.0 * w0 * w1).view(shape))
    return total / channels


def _logit(value: torch.Tensor, query: torch.Tensor, eps: float, size: Optional[List[int]] = None) -> torch.Tensor:
    """Eq. 6 for one entry: ``query . v / rms(v)`` per position, ``(B, *S)``, where ``v`` is ``value`` or, with
    ``size``, its bilinear (trilinear) upsampling to ``size``.

    The upsampled value is never formed: the dot product commutes with the interpolation (upsample the one-channel
    map ``query . value``), and the mean square is :func:`_upsampled_mean_square`.
    """
    value = value.float()
    if size is None or list(value.shape[2:]) == list(size):
        return _dot(value, query) * torch.rsqrt(_inner(value, value) / value.shape[1] + eps)
    mode = "bilinear" if value.dim() == 4 else "trilinear"
    dot = F.interpolate(_dot(value, query).unsqueeze(1), size=list(size), mode=mode, align_corners=False)[:, 0]
    return dot * torch.rsqrt(_upsampled_mean_square(value, list(size)) + eps)


def _pooled(h: torch.Tensor, index: int, size: List[int], cache: Optional[PoolCache],
            network_cache: Optional[Dict[str, torch.Tensor]]) -> torch.Tensor:  # fmt: skip
    """Adaptive max pooling of history entry ``index`` to ``size`` (Eq. 4's downsampling), once per pass.

    The network's own per-forward cache (the third argument of an XAttnRes call) already holds the pooled entries
    it computed, under ``"pool<index>x<size>..."``; they are used when present (and of the expected shape), else the
    entry is pooled here once and kept in ``cache``.
    """
    expected = list(h.shape[:2]) + list(size)
    if network_cache:
        found = network_cache.get("pool" + str(index) + "".join("x" + str(s) for s in size))
        if isinstance(found, torch.Tensor) and list(found.shape) == expected:
            return found
    key = (id(h), tuple(size))
    if cache is not None and key in cache:
        return cache[key][1]
    pooled = (F.adaptive_max_pool2d if h.dim() == 4 else F.adaptive_max_pool3d)(h, size)
    if cache is not None:
        cache[key] = (h, pooled)  # h kept alive: its id stays unique during the pass
    return pooled


def routing_weights(
    block: XAttnRes,
    x: torch.Tensor,
    history: Sequence[torch.Tensor],
    cache: Optional[PoolCache] = None,
    network_cache: Optional[Dict[str, torch.Tensor]] = None,
) -> torch.Tensor:
    """The softmax weights ``(B, R+1, *S)`` of ``block`` for input ``x`` and pool ``history`` (Eq. 4-7), float32.

    The weights of :meth:`XAttnRes.attention_weights`, computed entry by entry (module docstring). Entry ``n < R`` is
    history entry ``block.read[n]`` (every entry unless the block is pruned), the last one ``x``.

    Args:
        block: the XAttnRes block.
        x: its current feature ``(B, C, *S)``.
        history: the history pool (at least ``block.num_history`` entries).
        cache: pooled entries shared by the blocks of one forward pass (optional).
        network_cache: the network's own per-forward cache given to the block (optional; pooled entries reused).

    Example::

        >>> block = XAttnRes(2, 8, [4, 8])
        >>> history = [torch.randn(1, 4, 32, 32), torch.randn(1, 8, 16, 16)]
        >>> routing_weights(block, torch.randn(1, 8, 16, 16), history).shape
        torch.Size([1, 3, 16, 16])
    """
    if len(history) < block.num_history:
        raise ValueError(f"routing_weights: expected at least {block.num_history} history entries, got {len(history)}")
    size = list(x.shape[2:])
    query = (block.query * block.gain).detach().float()
    logits = []
    for i, projection in zip(block.read, block.projections):  # the entries it reads (all unless pruned)
        h = history[i]
        source = list(h.shape[2:])
        smaller = [min(s, t) for s, t in zip(source, size)]
        if smaller != source:
            h = _pooled(h, i, smaller, cache, network_cache)
        logits.append(_logit(projection(h), query, block.eps, size))
    logits.append(_logit(x, query, block.eps))
    return torch.softmax(torch.stack(logits, dim=1), dim=1)


@contextmanager
def capture_routing(
    network: nn.Module, layouts: Optional[Sequence[BlockLayout]] = None
) -> Iterator[Dict[str, torch.Tensor]]:
    """Record the weights of every XAttnRes block during forward passes, keyed by stage name (eager mode only).

    Like :func:`~xattnres_monai.networks.utils.capture_attention` (same weights, ``(B, K+1, *S)``, last entry the
    stage input) but keyed by the block's stage name (:func:`~xattnres_monai.routing.layout.routing_layout`: ``"e2"``,
    ``"d4"`` ...) and about three times cheaper (module docstring). The dict is refilled on each forward pass.

    Args:
        network: the eager network (a wrapper is looked through).
        layouts: the block names (default: :func:`routing_layout` of ``network``).

    Example::

        >>> net = XAttnResUNet(spatial_dims=2, in_channels=1, out_channels=2).eval()
        >>> with torch.no_grad(), capture_routing(net) as weights:
        ...     logits = net(torch.randn(1, 1, 64, 64))
        >>> weights["d4"].shape  # e1..e5, d1..d3 and the stage input
        torch.Size([1, 9, 64, 64])
    """
    network = unwrap(network)
    layouts = list(layouts) if layouts is not None else routing_layout(network)
    modules = dict(network.named_modules())
    weights: Dict[str, torch.Tensor] = {}
    cache: PoolCache = {}
    handles = []

    def clear(module: nn.Module, args: Tuple) -> None:
        cache.clear()

    def make_hook(name: str):
        def hook(module: XAttnRes, args: Tuple, kwargs: Dict, output: torch.Tensor) -> None:
            x = args[0] if args else kwargs["x"]
            history = args[1] if len(args) > 1 else kwargs["history"]
            network_cache = args[2] if len(args) > 2 else kwargs.get("cache")
            with torch.no_grad():
                weights[name] = routing_weights(module, x, history, cache, network_cache)

        return hook

    handles.append(network.register_forward_pre_hook(clear))
    for layout in layouts:
        handles.append(modules[layout.module].register_forward_hook(make_hook(layout.name), with_kwargs=True))
    try:
        yield weights
    finally:
        for handle in handles:
            handle.remove()
        cache.clear()
