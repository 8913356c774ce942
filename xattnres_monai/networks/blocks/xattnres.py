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
  contraction and one channel norm per entry; for upsampled entries the contraction runs before
  upsampling, on one channel (``(w*g) . Up(v) == Up((w*g) . v)``, both linear);
* the values are never stacked: the weighted sum is accumulated entry by entry;
* resizing is ordered to keep the 1x1 projection at the lowest resolution: pool (adaptive max)
  first, then project, then upsample (bilinear / trilinear). A 1x1 convolution commutes exactly
  with bilinear interpolation (interpolation weights sum to one), so projecting before upsampling
  computes the same values on far fewer positions;
* resized history entries are kept in a per-forward cache shared by all XAttnRes blocks of the
  network, so an entry is resized at most once per target resolution within a forward pass;
* on CPU (float32 / float64, eager), the upsampling and Eq. 6-8 run in one fused kernel, forward and
  backward (:mod:`xattnres_monai.networks.blocks.xattnres_cpu`, compiled on first use): one pass per
  output row, nothing of full resolution kept but the output, the backward recomputing the rows;
* elsewhere (CUDA, no compiler, ``XATTNRES_FUSED_CPU=0``) Eq. 6-8 run in one autograd function
  (:class:`_Aggregate`) whose hand-written backward reuses scratch buffers instead of storing
  per-entry intermediates; pooling and upsampling run channels-last; in eager inference upsampled
  entries are streamed through one buffer (see :func:`_aggregate`). The scripted / traced / exported
  path (TorchScript, ONNX) uses the same :func:`_aggregate` with plain autograd. The tests hold both
  implementations to the literal equations.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from monai.networks.layers.factories import Conv
from torch import nn
from torch.autograd.function import once_differentiable

from xattnres_monai.networks.blocks.xattnres_cpu import fused_backward, fused_cpu_available, fused_forward
from xattnres_monai.utils.options import as_choice, as_float, as_int, as_int_sequence

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
        """Adaptive max pooling of history entry ``index`` to ``size``, computed once per forward pass.

        Pooling runs channels-last (the entry is converted once and the copy cached): PyTorch's CPU
        adaptive max pooling, forward and backward, is 3-4x faster in that layout (same windows, same
        first-maximum tie-breaking, so the same values and gradients).
        """
        key = "pool" + str(index)
        for s in size:
            key = key + "x" + str(s)
        pooled = cache.get(key)
        if pooled is None:
            source = self._cached_channels_last(index, h, cache)
            if self.spatial_dims == 2:
                pooled = F.adaptive_max_pool2d(source, size)
            else:
                pooled = F.adaptive_max_pool3d(source, size)
            cache[key] = pooled
        return pooled

    def _cached_channels_last(self, index: int, h: torch.Tensor, cache: Dict[str, torch.Tensor]) -> torch.Tensor:
        """History entry ``index`` in channels-last layout, converted once per forward pass."""
        key = "channels_last" + str(index)
        converted = cache.get(key)
        if converted is None:
            converted = _channels_last(h)
            cache[key] = converted
        return converted

    def _aligned_values(
        self, x: torch.Tensor, history: List[torch.Tensor], cache: Dict[str, torch.Tensor]
    ) -> List[torch.Tensor]:
        """The value entries ``[v_1, ..., v_K, x]`` of Eq. 5, pooled and projected (Eq. 4) but not yet
        upsampled: entries smaller than ``x`` are upsampled by :func:`_upsample`."""
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
            elif pooled_size != target and self.history_channels[i] != self.channels:
                # an entry to upsample is projected channels-last (oneDNN's 1x1 convolution and its backward are
                # 2-4x faster there on CPU; both aggregation paths read that layout without a copy)
                h = self._cached_channels_last(i, h, cache)
            # project at the lowest resolution; upsampling (if still smaller than the target) is left
            # to _aggregate, which upsamples channels-last
            v = projection(h)
            if pooled_size == target:
                v = v.contiguous()  # the caller's layout for entries that are not upsampled
            values.append(v)
        values.append(x)
        return values

    def _logits(self, values: List[torch.Tensor], target: List[int]) -> torch.Tensor:
        """Attention logits ``(B, K+1, *S)``: ``(w*g) . v / rms(v)`` per entry and position (Eq. 6)."""
        query = (self.query * self.gain).view([1, self.channels] + [1] * self.spatial_dims)
        logits: List[torch.Tensor] = []
        for v in values:
            v = _upsample(v, target)
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
        values = self._aligned_values(x, history, {} if cache is None else cache)
        return torch.softmax(self._logits(values, list(x.shape[2:])), dim=1)

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
        query = self.query * self.gain
        if not torch.jit.is_scripting() and not torch.jit.is_tracing():
            # not under torch.compile / torch.export (ONNX): they trace operations and cannot see into the kernel
            if not torch.compiler.is_compiling() and fused_cpu_available(x):
                if torch.is_grad_enabled():
                    return _FusedAggregate.apply(query, self.eps, *values)
                return fused_forward(query, values, self.eps)
            if torch.is_grad_enabled():
                return _Aggregate.apply(query, self.eps, *values)
            return _aggregate(query, values, self.eps, stream=True)[0]
        return _aggregate(query, values, self.eps)[0]

    def extra_repr(self) -> str:
        return (
            f"spatial_dims={self.spatial_dims}, channels={self.channels}, "
            f"history_channels={self.history_channels}, query_init={self.query_init!r}"
        )


def _channels_last(v: torch.Tensor) -> torch.Tensor:
    if v.dim() == 4:
        return v.contiguous(memory_format=torch.channels_last)
    return v.contiguous(memory_format=torch.channels_last_3d)


def _upsample(v: torch.Tensor, size: List[int]) -> torch.Tensor:
    """Bilinear (trilinear) upsampling to ``size`` (identity when the size already matches)."""
    if list(v.shape[2:]) == size:
        return v
    mode = "bilinear" if v.dim() == 4 else "trilinear"
    return F.interpolate(v, size=size, mode=mode, align_corners=False)


def _upsample_into(v: torch.Tensor, size: List[int], buffer: Optional[torch.Tensor]) -> torch.Tensor:
    """:func:`_upsample` of a channels-last ``v`` into ``buffer`` (allocated when ``None``)."""
    if buffer is None:
        buffer = _channels_last(v.new_empty(list(v.shape[:2]) + size))
    if not torch.jit.is_scripting():  # out= overloads are not scriptable; scripted blocks never stream
        if v.dim() == 4:
            return torch.ops.aten.upsample_bilinear2d.out(v, size, False, None, None, out=buffer)
        return torch.ops.aten.upsample_trilinear3d.out(v, size, False, None, None, None, out=buffer)
    return _upsample(v, size)


def _upsample_adjoint(g: torch.Tensor, size: List[int]) -> torch.Tensor:
    """The adjoint (backward) of :func:`_upsample` from ``g`` back to spatial ``size``."""
    input_size = list(g.shape[:2]) + size
    if g.dim() == 4:
        return torch.ops.aten.upsample_bilinear2d_backward(g, list(g.shape[2:]), input_size, False, None, None)
    return torch.ops.aten.upsample_trilinear3d_backward(g, list(g.shape[2:]), input_size, False, None, None, None)


def _aggregate(query: torch.Tensor, values: List[torch.Tensor], eps: float, stream: bool = False) -> List[torch.Tensor]:
    """Eq. 6-8 on the (not yet upsampled) entries ``values``; the last one, ``x``, sets the size.

    Returns ``[out, weights, dots, inv_rms]`` followed by the upsampled values (what the backward needs).

    Measured on CPU (2-core EPYC, batch 6 at 224^2), which shaped this code:

    * upsampled entries are computed channels-last: PyTorch's bilinear upsampling and its backward are
      ~4x faster in that layout, and channel reductions are contiguous there (``vector_norm`` is one
      pass without temporary). They are accumulated in a channels-last sum converted once at the end;
      entries that already have the target size keep the caller's layout (converting costs a pass);
    * without autograd (inference, or inside :class:`_Aggregate`) the full-resolution temporaries go to
      one reused scratch buffer: a fresh 20 MB tensor per operation costs more in page faults than its
      arithmetic;
    * ``stream`` (eager inference only): the upsampled entries are not kept but upsampled twice (for the
      logits, then for the weighted sum) into one reused buffer. At batch 16 x 224^2 a full-resolution
      entry is 51 MB, above glibc's largest reuse threshold, so each fresh one is page-faulted in anew:
      that cost more than upsampling again.
    """
    x = values[-1]
    target = list(x.shape[2:])
    q = query.view([1, x.shape[1]] + [1] * (x.dim() - 2))
    inplace = not torch.is_grad_enabled()
    scratch = torch.empty_like(x) if inplace else x
    dots: List[torch.Tensor] = []
    squares: List[torch.Tensor] = []
    full: List[torch.Tensor] = []
    buffer: Optional[torch.Tensor] = None
    is_upsampled: List[bool] = []
    for v in values:
        is_upsampled.append(list(v.shape[2:]) != target)
        if is_upsampled[-1]:
            # (w*g) . Up(v) == Up((w*g) . v): the channel contraction runs at the entry's low resolution
            dots.append(_upsample((v * q).sum(dim=1, keepdim=True), target))
            v = _channels_last(v)
            if stream:
                buffer = _upsample_into(v, target, buffer)
                squares.append(torch.linalg.vector_norm(buffer, dim=1, keepdim=True).square() / x.shape[1])
            else:
                v = _upsample(v, target)
                squares.append(torch.linalg.vector_norm(v, dim=1, keepdim=True).square() / x.shape[1])
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
            upsampled = buffer.mul_(w) if upsampled is None else upsampled.addcmul_(w, buffer)
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
    return [out, weights, dot, inv_rms] + full


class _FusedAggregate(torch.autograd.Function):
    """Eq. 6-8 by the fused CPU kernel (:mod:`.xattnres_cpu`): saves only its (low-resolution) inputs and
    recomputes the upsampled rows in the backward."""

    @staticmethod
    def forward(ctx, query, eps, *values):  # type: ignore[override]
        ctx.eps = eps
        ctx.save_for_backward(query, *values)
        return fused_forward(query, values, eps)

    @staticmethod
    @once_differentiable  # double backward (e.g. gradient penalties) is not supported
    def backward(ctx, grad):  # type: ignore[override]
        query, *values = ctx.saved_tensors
        grad_query, grads = fused_backward(query, values, ctx.eps, grad)
        return (grad_query, None, *grads)


class _Aggregate(torch.autograd.Function):
    """Eq. 6-8 with a hand-written backward that keeps no per-entry intermediates but the upsampled values.

    Autograd through the eager formulation stores, and allocates in the backward, several full-resolution
    tensors per entry (products, squares, broadcast gradients): on CPU those allocations and memory passes,
    not the arithmetic, dominated the training step. Here the backward reuses two scratch buffers.
    """

    @staticmethod
    def forward(ctx, query, eps, *values):  # type: ignore[override]
        out, weights, dots, inv_rms, *full = _aggregate(query, list(values), eps)
        ctx.num_values = len(values)
        ctx.save_for_backward(query, weights, dots, inv_rms, *values, *full)
        return out

    @staticmethod
    @once_differentiable  # double backward (e.g. gradient penalties) is not supported
    def backward(ctx, grad):  # type: ignore[override]
        query, weights, dots, inv_rms, *rest = ctx.saved_tensors
        values, full = rest[: ctx.num_values], rest[ctx.num_values :]
        channels = grad.shape[1]
        reduce_dims = [0] + list(range(2, grad.dim()))
        q = query.view([1, channels] + [1] * (grad.dim() - 2))
        grad = grad.contiguous()
        scratch = torch.empty_like(grad)
        upsampled = [v is not low for low, v in zip(values, full)]
        grad_cl = _channels_last(grad) if any(upsampled) else grad
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
        dquery = torch.zeros_like(query)
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
            grads.append(g.addcmul_(cq, q))
        return (dquery, None, *grads)
