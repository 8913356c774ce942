"""The Triton kernel of the aggregation (Eq. 6-8 with the upsampling of Eq. 4), forward and backward, for CUDA.

The GPU counterpart of ``fused_cpu.cpp``, with the same semantics: entries whose spatial size differs from ``x``
(the last entry) are linearly interpolated to it inside the kernel (bilinear / trilinear, PyTorch's
``align_corners=False`` source indices, clamped at the border), so nothing of full resolution is materialised
but the output. One program takes a tile of ``BLOCK_P`` target positions of one batch item and all channels
(``BLOCK_C``, the next power of two), and reads each entry once per pass (entries smaller than ``x`` as the
2 / 4 (3D: 4 / 8) source rows each position interpolates from):

* forward: per entry the (upsampled) values, their channel dot product with ``q = w * g`` and channel RMS, the
  logit, and an online softmax (running maximum and sum, as in flash attention) that accumulates the weighted
  sum in float32; stores the output (in the dtype of ``x``) and the log-sum-exp of the logits per position;
* backward: with the saved log-sum-exp the weights are ``a_n = exp(l_n - lse)``; a first pass over the entries
  sums ``sum_m a_m (g . v_m)`` (the softmax backward needs it before any entry's gradient), a second one
  computes the gradients: those of same-size entries are stored, those of upsampled entries scattered through
  the interpolation adjoint with float32 atomics, the query gradient reduced per program and summed afterwards.
  (Flash attention's ``g . out`` in place of the first pass would need ``out`` saved, and with a bfloat16 ``out``
  its rounding cancels in ``g . v_n - g . out``: measured, the query gradient 3e-2 from float64 instead of 1e-6.)

Entries may be channels-first or channels-last (any strides), float32 / float16 / bfloat16 (also mixed, as
autocast leaves them); everything is accumulated in float32. 2D and 3D.

Two entry points: :func:`aggregate` in eager mode (the autograd function :class:`TritonAggregate`) and, for
``torch.compile``, the custom operator ``torch.ops.xattnres.triton_aggregate(query, values, eps) -> (out, lse)``
(``torch.library.custom_op`` with fake and autograd registrations, calling
``torch.ops.xattnres.triton_aggregate_backward``).

Importing this module imports Triton; the dispatcher (:mod:`.dispatch`) does so on the first CUDA call only.
Tested without a GPU under Triton's interpreter (``TRITON_INTERPRET=1``, CPU tensors: ``tests/test_triton_kernel.py``).

Example::

    >>> values = [torch.randn(2, 16, 28, 28, device="cuda"), torch.randn(2, 16, 56, 56, device="cuda")]
    >>> aggregate(torch.randn(16, device="cuda"), values, 1e-6).shape
    torch.Size([2, 16, 56, 56])
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from typing import Any, List, Optional, Sequence, Tuple

import torch
import triton
import triton.language as tl
from torch.autograd.function import once_differentiable

__all__ = ["aggregate", "forward", "backward", "TritonAggregate", "interpreted"]

_FORWARD_TILE = 4096  # elements of a [BLOCK_C, BLOCK_P] tile (the backward holds more tiles: half of it)
_NUM_WARPS = 4


@triton.jit
def _source(dst, size_in, scale):
    """PyTorch's linear source index along one axis (``align_corners=False``; ``scale`` = in / out in float32, as
    PyTorch computes it, given by the host): ``i0``, ``i1`` and the weight of ``i1``."""
    src = tl.maximum(scale * (dst.to(tl.float32) + 0.5) - 0.5, 0.0)
    i0 = src.to(tl.int32)  # floor: src >= 0
    i1 = tl.where(i0 < size_in - 1, i0 + 1, i0)
    l1 = src - i0.to(tl.float32)
    return i0, i1, l1


@triton.jit
def _corner(K: tl.constexpr, d0, d1, ld, h0, h1, lh, w0, w1, lw, sd, sh, sw):
    """Offset and weight of interpolation corner ``K`` (bits: d, h, w) at every position."""
    if K & 4:
        dd = d1
        wd = ld
    else:
        dd = d0
        wd = 1.0 - ld
    if K & 2:
        hh = h1
        wh = lh
    else:
        hh = h0
        wh = 1.0 - lh
    if K & 1:
        ww = w1
        weight_w = lw
    else:
        ww = w0
        weight_w = 1.0 - lw
    return dd * sd + hh * sh + ww * sw, wd * wh * weight_w


@triton.jit
def _sources(d, h, w, D, H, W, scale_d, scale_h, scale_w, DIMS: tl.constexpr):
    """Per position, the source indices and weights of an upsampled entry along each axis (d: 0 in 2D)."""
    h0, h1, lh = _source(h, H, scale_h)
    w0, w1, lw = _source(w, W, scale_w)
    if DIMS == 3:
        d0, d1, ld = _source(d, D, scale_d)
    else:
        d0 = d
        d1 = d
        ld = lh * 0.0
    return d0, d1, ld, h0, h1, lh, w0, w1, lw


@triton.jit
def _load_entry(ptr, base, c_off, mask, d, h, w, D, H, W, scale_d, scale_h, scale_w, sd, sh, sw,
                UP: tl.constexpr, DIMS: tl.constexpr):  # fmt: skip
    """An entry's values at the tile's target positions, ``[BLOCK_C, BLOCK_P]`` float32 (upsampled if ``UP``)."""
    rows = ptr + base + c_off[:, None]
    if UP:
        d0, d1, ld, h0, h1, lh, w0, w1, lw = _sources(d, h, w, D, H, W, scale_d, scale_h, scale_w, DIMS)
        v = tl.zeros(mask.shape, tl.float32)
        for k in tl.static_range(4 * (DIMS - 1)):  # 4 corners in 2D, 8 in 3D
            offset, weight = _corner(k, d0, d1, ld, h0, h1, lh, w0, w1, lw, sd, sh, sw)
            v += weight[None, :] * tl.load(rows + offset[None, :], mask=mask, other=0.0).to(tl.float32)
    else:
        v = tl.load(rows + (d * sd + h * sh + w * sw)[None, :], mask=mask, other=0.0).to(tl.float32)
    return v


@triton.jit
def _entry(values, shapes, scales, strides, N: tl.constexpr, b, c, mask, d, h, w,
           UPSAMPLED: tl.constexpr, DIMS: tl.constexpr):  # fmt: skip
    """Entry ``N`` of the tuples (pointers; sizes (D, H, W); scales (D, H, W); strides (b, c, d, h, w)) at the
    tile, float32."""
    return _load_entry(values[N], b * strides[5 * N], c * strides[5 * N + 1], mask, d, h, w,
                       shapes[3 * N], shapes[3 * N + 1], shapes[3 * N + 2],
                       scales[3 * N], scales[3 * N + 1], scales[3 * N + 2],
                       strides[5 * N + 2], strides[5 * N + 3], strides[5 * N + 4],
                       (UPSAMPLED >> N) & 1, DIMS)  # fmt: skip


@triton.jit
def _logit(v, q, inv_c, eps):
    """``q . v``, ``1 / rms(v)`` and the logit per position."""
    dot = tl.sum(v * q[:, None], axis=0)
    inv_rms = 1.0 / tl.sqrt(tl.sum(v * v, axis=0) * inv_c + eps)
    return dot, inv_rms, dot * inv_rms


@triton.jit
def _forward_kernel(values, shapes, scales, strides, q_ptr, out_ptr, osb, osc, osd, osh, osw, lse_ptr,
                    C, TD, TH, TW, eps, NUM: tl.constexpr, UPSAMPLED: tl.constexpr, DIMS: tl.constexpr,
                    BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):  # fmt: skip
    pid = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    S = TD * TH * TW
    p = pid * BLOCK_P + tl.arange(0, BLOCK_P)
    pmask = p < S
    w = p % TW
    h = (p // TW) % TH
    d = p // (TW * TH)
    c = tl.arange(0, BLOCK_C)
    cmask = c < C
    mask = cmask[:, None] & pmask[None, :]
    q = tl.load(q_ptr + c, mask=cmask, other=0.0).to(tl.float32)
    inv_c = 1.0 / (C * 1.0)
    m = tl.zeros([BLOCK_P], tl.float32)  # running maximum of the logits
    s = tl.zeros([BLOCK_P], tl.float32)  # running sum of exp(logit - m)
    acc = tl.zeros([BLOCK_C, BLOCK_P], tl.float32)  # running weighted sum, scaled by exp(-m)
    for n in tl.static_range(NUM):
        v = _entry(values, shapes, scales, strides, n, b, c, mask, d, h, w, UPSAMPLED, DIMS)
        _, _, logit = _logit(v, q, inv_c, eps)
        if n == 0:
            m = logit
            s = tl.full([BLOCK_P], 1.0, tl.float32)
            acc = v
        else:
            peak = tl.maximum(m, logit)
            alpha = tl.exp(m - peak)
            beta = tl.exp(logit - peak)
            acc = acc * alpha[None, :] + v * beta[None, :]
            s = s * alpha + beta
            m = peak
    out = acc / s[None, :]
    offset = b * osb + c[:, None] * osc + (d * osd + h * osh + w * osw)[None, :]
    tl.store(out_ptr + offset, out.to(out_ptr.dtype.element_ty), mask=mask)
    tl.store(lse_ptr + b * S + p, m + tl.log(s), mask=pmask)


@triton.jit
def _backward_kernel(values, shapes, scales, strides, grads, grad_strides, q_ptr, g_ptr, gsb, gsc, gsd, gsh, gsw,
                     lse_ptr, dq_ptr, C, TD, TH, TW, eps, NUM: tl.constexpr, UPSAMPLED: tl.constexpr,
                     DIMS: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):  # fmt: skip
    pid = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    S = TD * TH * TW
    p = pid * BLOCK_P + tl.arange(0, BLOCK_P)
    pmask = p < S
    w = p % TW
    h = (p // TW) % TH
    d = p // (TW * TH)
    c = tl.arange(0, BLOCK_C)
    cmask = c < C
    mask = cmask[:, None] & pmask[None, :]
    q = tl.load(q_ptr + c, mask=cmask, other=0.0).to(tl.float32)
    inv_c = 1.0 / (C * 1.0)
    g = tl.load(g_ptr + b * gsb + c[:, None] * gsc + (d * gsd + h * gsh + w * gsw)[None, :], mask=mask, other=0.0)
    g = g.to(tl.float32)
    lse = tl.load(lse_ptr + b * S + p, mask=pmask, other=0.0)
    mean = tl.zeros([BLOCK_P], tl.float32)  # sum_n a_n (g . v_n): pass 1
    for n in tl.static_range(NUM):
        v = _entry(values, shapes, scales, strides, n, b, c, mask, d, h, w, UPSAMPLED, DIMS)
        _, _, logit = _logit(v, q, inv_c, eps)
        mean += tl.exp(logit - lse) * tl.sum(g * v, axis=0)
    dq = tl.zeros([BLOCK_C], tl.float32)
    for n in tl.static_range(NUM):  # pass 2: the gradients
        v = _entry(values, shapes, scales, strides, n, b, c, mask, d, h, w, UPSAMPLED, DIMS)
        dot, inv_rms, logit = _logit(v, q, inv_c, eps)
        a = tl.exp(logit - lse)
        # softmax backward, then logit = (q . v) r with r = (mean_c v^2 + eps)^-1/2:
        #   d logit / d v = r q - (q . v) r^3 / C v,   d logit / d q = r v
        dlogit = a * (tl.sum(g * v, axis=0) - mean)
        coef_q = dlogit * inv_rms
        coef_v = coef_q * dot * inv_rms * inv_rms * inv_c
        dv = a[None, :] * g - coef_v[None, :] * v + coef_q[None, :] * q[:, None]
        dq += tl.sum(v * coef_q[None, :], axis=1)
        rows = grads[n] + b * grad_strides[5 * n] + (c * grad_strides[5 * n + 1])[:, None]
        sd = grad_strides[5 * n + 2]
        sh = grad_strides[5 * n + 3]
        sw = grad_strides[5 * n + 4]
        if (UPSAMPLED >> n) & 1:  # the interpolation adjoint: float32 atomics into the low-resolution gradient
            d0, d1, ld, h0, h1, lh, w0, w1, lw = _sources(d, h, w, shapes[3 * n], shapes[3 * n + 1], shapes[3 * n + 2],
                                                          scales[3 * n], scales[3 * n + 1], scales[3 * n + 2], DIMS)
            for k in tl.static_range(4 * (DIMS - 1)):
                offset, weight = _corner(k, d0, d1, ld, h0, h1, lh, w0, w1, lw, sd, sh, sw)
                tl.atomic_add(rows + offset[None, :], dv * weight[None, :], mask=mask & (weight != 0.0)[None, :])
        else:
            tl.store(rows + (d * sd + h * sh + w * sw)[None, :], dv.to(grads[n].dtype.element_ty), mask=mask)
    tl.store(dq_ptr + (b * tl.num_programs(0) + pid) * BLOCK_C + c, dq, mask=cmask)


def interpreted() -> bool:
    """Whether the kernels run under Triton's interpreter (``TRITON_INTERPRET=1`` when this module was imported)."""
    return type(_forward_kernel).__name__ == "InterpretedFunction"


class _Geometry:
    """What both kernels take: the entries' sizes and strides as (D, H, W) / (b, c, d, h, w) tuples, 2D padded."""

    def __init__(self, values: Sequence[torch.Tensor]) -> None:
        x = values[-1]
        if x.dim() not in (4, 5) or any(v.dim() != x.dim() for v in values):
            raise ValueError("XAttnRes Triton kernel: entries must all be 4D (B, C, H, W) or all 5D (B, C, D, H, W).")
        if any(v.shape[:2] != x.shape[:2] for v in values):
            raise ValueError("XAttnRes Triton kernel: entries must share batch size and channel count with x.")
        self.dims = x.dim() - 2
        self.target = [1] * (5 - x.dim()) + list(x.shape[2:])
        self.batch, self.channels = x.shape[0], x.shape[1]
        self.positions = math.prod(self.target)
        self.upsampled = [list(v.shape[2:]) != list(x.shape[2:]) for v in values]
        self.mask = sum(1 << n for n, up in enumerate(self.upsampled) if up)
        self.shapes = tuple(s for v in values for s in [1] * (5 - v.dim()) + list(v.shape[2:]))
        # in / out per axis in float32, as PyTorch's upsampling computes it (area_pixel_compute_scale)
        ratios = torch.tensor(self.shapes, dtype=torch.float32).view(-1, 3) / torch.tensor(self.target)
        self.scales = tuple(float(r) for r in ratios.flatten())
        self.strides = _strides(values)
        self.block_c = triton.next_power_of_2(self.channels)

    def grid(self, block_p: int) -> Tuple[int, int]:
        return triton.cdiv(self.positions, block_p), self.batch

    def block_p(self, tile: int) -> int:
        return max(16, min(256, tile // self.block_c))


def _strides(tensors: Sequence[torch.Tensor]) -> Tuple[int, ...]:
    """(b, c, d, h, w) strides of each tensor, flattened (2D: d stride 0)."""
    out: List[int] = []
    for t in tensors:
        s = list(t.stride())
        out += s[:2] + ([0] if t.dim() == 4 else []) + s[2:]
    return tuple(out)


def forward(query: torch.Tensor, values: Sequence[torch.Tensor], eps: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """Eq. 6-8 on ``values`` (``x`` last): the output (dtype and layout of ``x``) and the log-sum-exp of the
    logits per position, ``(B, prod(S))`` float32 (what :func:`backward` needs)."""
    geometry = _Geometry(values)
    x = values[-1]
    out = torch.empty_like(x)
    lse = torch.empty(geometry.batch, geometry.positions, device=x.device, dtype=torch.float32)
    if out.numel() == 0:
        return out, lse
    block_p = geometry.block_p(_FORWARD_TILE)
    with torch.cuda.device(x.device) if x.is_cuda else nullcontext():
        _forward_kernel[geometry.grid(block_p)](
            tuple(values), geometry.shapes, geometry.scales, geometry.strides, query.detach().float().contiguous(), out,
            *_strides([out]), lse, geometry.channels, *geometry.target, float(eps), NUM=len(values),
            UPSAMPLED=geometry.mask, DIMS=geometry.dims, BLOCK_C=geometry.block_c, BLOCK_P=block_p,
            num_warps=_NUM_WARPS,
        )  # fmt: skip
    return out, lse


def _grad_buffers(values: Sequence[torch.Tensor], upsampled: Sequence[bool]) -> List[torch.Tensor]:
    """Same-size entries: their gradient (written once per element); upsampled ones: float32 zeros (atomics)."""
    return [torch.zeros(v.shape, device=v.device, dtype=torch.float32) if up else torch.empty_like(v)
            for v, up in zip(values, upsampled)]  # fmt: skip


def backward(
    grad: torch.Tensor, query: torch.Tensor, values: Sequence[torch.Tensor], lse: torch.Tensor, eps: float
) -> Tuple[torch.Tensor, List[torch.Tensor]]:
    """Gradients of :func:`forward` with respect to ``query`` and every entry (each in its input's dtype)."""
    geometry = _Geometry(values)
    buffers = _grad_buffers(values, geometry.upsampled)
    block_p = geometry.block_p(_FORWARD_TILE // 2)
    grid = geometry.grid(block_p)
    partial = torch.zeros(grid[0] * grid[1], geometry.block_c, device=grad.device, dtype=torch.float32)
    if grad.numel() > 0:
        with torch.cuda.device(grad.device) if grad.is_cuda else nullcontext():
            _backward_kernel[grid](
                tuple(values), geometry.shapes, geometry.scales, geometry.strides, tuple(buffers), _strides(buffers),
                query.detach().float().contiguous(), grad, *_strides([grad]), lse, partial,
                geometry.channels, *geometry.target, float(eps), NUM=len(values), UPSAMPLED=geometry.mask,
                DIMS=geometry.dims, BLOCK_C=geometry.block_c, BLOCK_P=block_p, num_warps=_NUM_WARPS,
            )  # fmt: skip
    grad_query = partial.sum(0)[: geometry.channels].to(query.dtype)
    return grad_query, [g.to(v.dtype) for g, v in zip(buffers, values)]


class TritonAggregate(torch.autograd.Function):
    """Eq. 6-8 by the Triton kernels (eager mode): saves the low-resolution inputs and the log-sum-exp only."""

    @staticmethod
    def forward(ctx, query, eps, *values):  # type: ignore[override]
        out, lse = forward(query, values, eps)
        ctx.eps = eps
        ctx.save_for_backward(query, lse, *values)
        return out

    @staticmethod
    @once_differentiable  # double backward (e.g. gradient penalties) is not supported
    def backward(ctx, grad):  # type: ignore[override]
        query, lse, *values = ctx.saved_tensors
        grad_query, grads = backward(grad, query, values, lse, ctx.eps)
        return (grad_query, None, *grads)


def aggregate(query: torch.Tensor, values: List[torch.Tensor], eps: float) -> torch.Tensor:
    """Eq. 6-8 by the Triton kernels in eager mode, with autograd when it is on (:class:`TritonAggregate`).

    Compiled code calls ``torch.ops.xattnres.triton_aggregate`` (same arguments; returns ``(out, lse)``) instead.
    """
    if torch.is_grad_enabled():
        return TritonAggregate.apply(query, eps, *values)
    return forward(query, values, eps)[0]


# --- the same kernels as custom operators, for torch.compile --------------------------------------------------


@torch.library.custom_op("xattnres::triton_aggregate", mutates_args=())
def _aggregate_op(query: torch.Tensor, values: List[torch.Tensor], eps: float) -> Tuple[torch.Tensor, torch.Tensor]:
    return forward(query, values, eps)


@_aggregate_op.register_fake
def _(query: torch.Tensor, values: List[torch.Tensor], eps: float) -> Tuple[torch.Tensor, torch.Tensor]:
    x = values[-1]
    return torch.empty_like(x), x.new_empty((x.shape[0], math.prod(x.shape[2:])), dtype=torch.float32)


@torch.library.custom_op("xattnres::triton_aggregate_backward", mutates_args=())
def _backward_op(
    grad: torch.Tensor, query: torch.Tensor, values: List[torch.Tensor], lse: torch.Tensor, eps: float
) -> Tuple[torch.Tensor, List[torch.Tensor]]:
    return backward(grad, query, values, lse, eps)


@_backward_op.register_fake
def _(
    grad: torch.Tensor, query: torch.Tensor, values: List[torch.Tensor], lse: torch.Tensor, eps: float
) -> Tuple[torch.Tensor, List[torch.Tensor]]:
    target = list(values[-1].shape[2:])
    grads = [torch.empty_like(v) if list(v.shape[2:]) == target else v.new_empty(v.shape) for v in values]
    return torch.empty_like(query, memory_format=torch.contiguous_format), grads


def _setup_context(ctx: Any, inputs: Tuple[Any, ...], output: Tuple[torch.Tensor, torch.Tensor]) -> None:
    query, values, eps = inputs
    _, lse = output
    ctx.eps = eps
    ctx.mark_non_differentiable(lse)
    ctx.save_for_backward(query, lse, *values)


def _backward(ctx: Any, grad: torch.Tensor, _grad_lse: Optional[torch.Tensor]) -> Tuple[Optional[torch.Tensor], ...]:
    query, lse, *values = ctx.saved_tensors
    grad_query, grads = torch.ops.xattnres.triton_aggregate_backward(grad, query, values, lse, ctx.eps)
    return grad_query, grads, None


_aggregate_op.register_autograd(_backward, setup_context=_setup_context)
