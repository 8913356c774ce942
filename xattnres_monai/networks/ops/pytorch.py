"""The PyTorch formulation of the aggregation (Eq. 6-8 with the upsampling of Eq. 4): any device and dtype.

What runs where no kernel does (no compiler, no Triton, ``XATTNRES_FUSED_CPU=0`` / ``XATTNRES_TRITON=0``, dtypes the
kernels do not take) and, with plain autograd, in TorchScript / traced / exported (ONNX) graphs and under
``torch.compile`` (where Inductor fuses it). Speed machinery, all of it measured on CPU and kept to the same values
as :mod:`.reference` by the tests:

* the normalised stack is never materialised: ``l_n = (w * g) . V_n / rms(V_n)``, one channel contraction and
  one channel norm per entry; for upsampled entries the contraction runs at the entry's low resolution
  (``(w*g) . Up(v) == Up((w*g) . v)``, both linear); the values are never stacked;
* upsampled entries are computed channels-last, temporaries without autograd go to reused scratch buffers and
  eager inference streams upsampled entries through one buffer (see :func:`aggregate`);
* in eager training :class:`Aggregate` replaces autograd's per-entry intermediates by a hand-written backward.

Mixed precision: entries may be float16 / bfloat16 (also mixed with float32, as ``torch.autocast`` leaves them):
the channel contractions, RMS, logits, softmax and the weighted sum are computed in float32
(:func:`compute_dtype`) and the output has the dtype of ``x``; the backward computes in float32 too and returns
each gradient in its input's dtype. The caller (:func:`.dispatch.aggregate`) runs this with autocast disabled.
"""

from __future__ import annotations

from typing import List, Optional

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

__all__ = ["aggregate", "Aggregate", "channels_last", "compiling", "upsample", "compute_dtype"]


def channels_last(v: torch.Tensor) -> torch.Tensor:
    if v.dim() == 4:
        return v.contiguous(memory_format=torch.channels_last)
    return v.contiguous(memory_format=torch.channels_last_3d)


def compiling() -> bool:
    """Whether ``torch.compile`` / ``torch.export`` is tracing (``False`` in TorchScript, which cannot ask)."""
    if not torch.jit.is_scripting():
        return torch.compiler.is_compiling()
    return False


def compute_dtype(values: List[torch.Tensor]) -> torch.dtype:
    """The dtype the reductions run in: float32 for float16 / bfloat16 entries, else their common dtype."""
    dtype = values[-1].dtype
    for v in values:
        dtype = torch.promote_types(dtype, v.dtype)
    if dtype == torch.float16 or dtype == torch.bfloat16:
        return torch.float32
    return dtype


def upsample(v: torch.Tensor, size: List[int]) -> torch.Tensor:
    """Bilinear (trilinear) upsampling to ``size`` (identity when the size already matches)."""
    if list(v.shape[2:]) == size:
        return v
    mode = "bilinear" if v.dim() == 4 else "trilinear"
    return F.interpolate(v, size=size, mode=mode, align_corners=False)


def _mean_square(v: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``mean_c(v^2)`` accumulated in ``dtype``: one pass, no temporary (channels-last: contiguous reductions)."""
    if v.dtype == dtype:
        norm = torch.linalg.vector_norm(v, dim=1, keepdim=True)
    else:
        norm = torch.linalg.vector_norm(v, dim=1, keepdim=True, dtype=dtype)
    return norm.square() / v.shape[1]


def _upsample_into(v: torch.Tensor, size: List[int], buffer: Optional[torch.Tensor]) -> torch.Tensor:
    """:func:`upsample` of a channels-last ``v`` into ``buffer`` (allocated when ``None``)."""
    if buffer is None:
        buffer = channels_last(v.new_empty(list(v.shape[:2]) + size))
    if not torch.jit.is_scripting():  # out= overloads are not scriptable; scripted blocks never stream
        if v.dim() == 4:
            return torch.ops.aten.upsample_bilinear2d.out(v, size, False, None, None, out=buffer)
        return torch.ops.aten.upsample_trilinear3d.out(v, size, False, None, None, None, out=buffer)
    return upsample(v, size)


def _upsample_adjoint(g: torch.Tensor, size: List[int]) -> torch.Tensor:
    """The adjoint (backward) of :func:`upsample` from ``g`` back to spatial ``size``."""
    input_size = list(g.shape[:2]) + size
    if g.dim() == 4:
        return torch.ops.aten.upsample_bilinear2d_backward(g, list(g.shape[2:]), input_size, False, None, None)
    return torch.ops.aten.upsample_trilinear3d_backward(g, list(g.shape[2:]), input_size, False, None, None, None)


def aggregate(
    query: torch.Tensor, values: List[torch.Tensor], eps: float, stream: bool = False, inplace: Optional[bool] = None
) -> List[torch.Tensor]:
    """Eq. 6-8 on the (not yet upsampled) entries ``values``; the last one, ``x``, sets the size.

    Returns ``[out, weights, dots, inv_rms]`` followed by the upsampled values (what the backward needs); ``out``
    has the dtype of ``x``, the others are in :func:`compute_dtype`.

    Args:
        query: ``w * g``, shape ``(C,)``.
        values: the entries, ``x`` last; smaller ones are upsampled to its size.
        eps: the RMSNorm epsilon.
        stream: eager inference only, see below.
        inplace: write temporaries into scratch buffers (default: when autograd is off); ``False`` for graphs that
            a compiler traces (``torch.compile``, ``torch.export``).

    Measured on CPU (2-core EPYC, batch 6 at 224^2), which shaped this code:

    * upsampled entries are computed channels-last: PyTorch's bilinear upsampling and its backward are
      ~4x faster in that layout, and channel reductions are contiguous there (``vector_norm`` is one
      pass without temporary). They are accumulated in a channels-last sum converted once at the end;
      entries that already have the target size keep the caller's layout (converting costs a pass);
    * without autograd (inference, or inside :class:`Aggregate`) the full-resolution temporaries go to
      one reused scratch buffer: a fresh 20 MB tensor per operation costs more in page faults than its
      arithmetic;
    * ``stream`` (eager inference only): the upsampled entries are not kept but upsampled twice (for the
      logits, then for the weighted sum) into one reused buffer. At batch 16 x 224^2 a full-resolution
      entry is 51 MB, above glibc's largest reuse threshold, so each fresh one is page-faulted in anew:
      that cost more than upsampling again.
    """
    x = values[-1]
    target = list(x.shape[2:])
    dtype = compute_dtype(values)
    q = query.to(dtype).view([1, x.shape[1]] + [1] * (x.dim() - 2))
    if inplace is None:
        inplace = not torch.is_grad_enabled()
    scratch = torch.empty_like(x, dtype=dtype) if inplace else x
    dots: List[torch.Tensor] = []
    squares: List[torch.Tensor] = []
    full: List[torch.Tensor] = []
    buffer: Optional[torch.Tensor] = None
    is_upsampled: List[bool] = []
    for v in values:
        is_upsampled.append(list(v.shape[2:]) != target)
        if is_upsampled[-1]:
            # (w*g) . Up(v) == Up((w*g) . v): the channel contraction runs at the entry's low resolution
            dots.append(upsample((v * q).sum(dim=1, keepdim=True), target))
            v = channels_last(v)
            if stream:
                buffer = _upsample_into(v, target, buffer)
                squares.append(_mean_square(buffer, dtype))
            else:
                v = upsample(v, target)
                squares.append(_mean_square(v, dtype))
        elif v.dtype != dtype:  # a float16 / bfloat16 entry: products and squares accumulated in float32
            dots.append((v * q).sum(dim=1, keepdim=True))
            squares.append(_mean_square(v, dtype))
        elif inplace:
            dots.append(torch.mul(v, q, out=scratch).sum(dim=1, keepdim=True))
            squares.append(torch.mul(v, v, out=scratch).mean(dim=1, keepdim=True))
        else:
            dots.append((v * q).sum(dim=1, keepdim=True))
            squares.append(v.square().mean(dim=1, keepdim=True))
        full.append(v)
    dot = torch.cat(dots, dim=1)
    inv_rms = torch.rsqrt(torch.cat(squares, dim=1) + eps)
    weights = torch.softmax(dot * inv_rms, dim=1)
    upsampled: Optional[torch.Tensor] = None
    out: Optional[torch.Tensor] = None
    for n, v in enumerate(full):
        w = weights[:, n : n + 1]
        if not is_upsampled[n]:
            if out is None:
                out = torch.mul(v, w, out=scratch) if inplace else v * w  # scratch is free by now
            else:
                out = out.addcmul_(w, v) if inplace else torch.addcmul(out, w, v)
        elif stream:
            buffer = _upsample_into(v, target, buffer)
            if upsampled is None:
                upsampled = buffer.mul_(w) if buffer.dtype == dtype else buffer * w
            else:
                upsampled = upsampled.addcmul_(w, buffer)
            buffer = None if upsampled is buffer else buffer
        elif upsampled is None:
            upsampled = v * w
        else:
            upsampled = upsampled.addcmul_(w, v) if inplace else torch.addcmul(upsampled, w, v)
    if upsampled is not None:
        if out is None:
            out = upsampled.contiguous()
        else:
            out = out.add_(upsampled) if inplace else out + upsampled
    assert out is not None
    return [out.to(x.dtype), weights, dot, inv_rms] + full


class Aggregate(torch.autograd.Function):
    """Eq. 6-8 with a hand-written backward that keeps no per-entry intermediates but the upsampled values.

    Autograd through the eager formulation stores, and allocates in the backward, several full-resolution
    tensors per entry (products, squares, broadcast gradients): on CPU those allocations and memory passes,
    not the arithmetic, dominated the training step. Here the backward reuses two scratch buffers. It computes in
    the forward's :func:`compute_dtype` with autocast disabled (on CPU the backward runs in the caller's thread,
    under the caller's autocast state) and returns each gradient in its input's dtype.
    """

    @staticmethod
    def forward(ctx, query, eps, *values):  # type: ignore[override]
        out, weights, dots, inv_rms, *full = aggregate(query, list(values), eps)
        ctx.num_values = len(values)
        ctx.save_for_backward(query, weights, dots, inv_rms, *values, *full)
        return out

    @staticmethod
    @once_differentiable  # double backward (e.g. gradient penalties) is not supported
    def backward(ctx, grad):  # type: ignore[override]
        if grad.device.type in ("cpu", "cuda") and torch.is_autocast_enabled(grad.device.type):
            with torch.autocast(grad.device.type, enabled=False):
                return Aggregate._backward(ctx, grad)
        return Aggregate._backward(ctx, grad)

    @staticmethod
    def _backward(ctx, grad: torch.Tensor) -> tuple:
        query, weights, dots, inv_rms, *rest = ctx.saved_tensors
        values, full = rest[: ctx.num_values], rest[ctx.num_values :]
        channels = grad.shape[1]
        reduce_dims = [0] + list(range(2, grad.dim()))
        dtype = weights.dtype  # the forward's compute dtype
        q = query.to(dtype).view([1, channels] + [1] * (grad.dim() - 2))
        grad = grad.to(dtype).contiguous()
        scratch = torch.empty_like(grad)
        upsampled = [v is not low for low, v in zip(values, full)]
        grad_cl = channels_last(grad) if any(upsampled) else grad
        scratch_cl = torch.empty_like(grad_cl) if any(upsampled) else scratch
        # d loss / d weight_n = grad . v_n, then the softmax backward
        dweights = torch.cat(
            [
                torch.mul(grad_cl, v, out=scratch_cl).sum(dim=1, keepdim=True)
                if up
                else torch.mul(grad, v, out=scratch).sum(dim=1, keepdim=True)
                for up, v in zip(upsampled, full)
            ],
            dim=1,
        )
        dlogits = weights * (dweights - (weights * dweights).sum(dim=1, keepdim=True))
        # logit = (q . v) * r with r = (mean_c(v^2) + eps)^-1/2:
        #   d logit / d v = r * q - (q . v) * r^3 / C * v,   d logit / d q = r * v
        coef_q = dlogits * inv_rms
        coef_v = coef_q * dots * inv_rms.square() / channels
        dquery = torch.zeros_like(query, dtype=dtype)
        grads: List[torch.Tensor] = []
        for n, (low, v) in enumerate(zip(values, full)):
            cq = coef_q[:, n : n + 1]
            if upsampled[n]:
                g = torch.mul(grad_cl, weights[:, n : n + 1], out=scratch_cl)
                g = g.addcmul_(coef_v[:, n : n + 1], v, value=-1)
                # the rank-one term cq * q goes through the upsampling adjoint at one channel
                size = list(low.shape[2:])
                g = _upsample_adjoint(g, size)
                cq = _upsample_adjoint(cq, size)
                dquery += (low * cq).sum(dim=reduce_dims)
            else:
                g = torch.mul(grad, weights[:, n : n + 1]).addcmul_(coef_v[:, n : n + 1], v, value=-1)
                dquery += torch.mul(v, cq, out=scratch).sum(dim=reduce_dims)
            grads.append(g.addcmul_(cq, q).to(low.dtype))
        return (dquery.to(query.dtype), None, *grads)
