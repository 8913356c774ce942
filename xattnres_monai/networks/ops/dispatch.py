"""The one place that chooses how the aggregation (Eq. 5-8) runs.

Rules, in order (:func:`implementation_for` names the result, a debug log line records each new choice):

1. TorchScript (scripting or tracing, hence the TorchScript ONNX exporter) and ``torch.export`` (the dynamo ONNX
   exporter): ``"pytorch_graph"``, the PyTorch formulation with plain autograd (:func:`.pytorch.aggregate`), all of
   it standard operators that a graph can hold;
2. :func:`use_implementation` ``("pytorch")`` / ``("reference")``: that one;
3. CUDA, Triton importable, ``XATTNRES_TRITON`` not ``0``, float32 / float16 / bfloat16 entries: ``"triton"``, the
   Triton kernel (:mod:`.triton_kernel`);
4. CPU, the kernel built, ``XATTNRES_FUSED_CPU`` not ``0``, all entries float32 or all float64: ``"fused_cpu"``, the
   fused CPU kernel (:mod:`.fused_cpu`);
5. otherwise: ``"pytorch"``, the PyTorch formulation (:mod:`.pytorch`; in eager mode :class:`.pytorch.Aggregate`
   with its hand-written backward, streamed without autograd).

The same rules hold under ``torch.compile``: the kernels are also custom operators (``torch.ops.xattnres.*``,
``torch.library.custom_op`` with fake and autograd registrations) that compiled graphs call without a graph break
(eager mode calls them through plain autograd functions: less Python per call), and ``"pytorch"`` is traced with
plain autograd, which Inductor fuses.

Mixed precision: under ``torch.autocast`` (or with float16 / bfloat16 entries) the RMS, logits, softmax and the
weighted sum are computed in float32 by every implementation, autocast is disabled inside, and the output has the
dtype of ``x`` (the last entry); gradients come back in each input's dtype.

The switches: the environment variables ``XATTNRES_FUSED_CPU=0`` and ``XATTNRES_TRITON=0`` (read at import) turn a
kernel off; :func:`use_implementation` (a context manager), :func:`set_fused_cpu` and :func:`set_triton` do the
same from Python.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import warnings
from contextlib import contextmanager
from typing import Any, Iterator, List, Optional

import torch

from . import fused_cpu, pytorch, reference

__all__ = ["aggregate", "implementation_for", "use_implementation", "set_fused_cpu", "set_triton", "IMPLEMENTATIONS"]

#: the names :func:`implementation_for` returns.
IMPLEMENTATIONS = ("fused_cpu", "triton", "pytorch", "pytorch_graph", "reference")
logger = logging.getLogger(__name__)
_fused_enabled = os.environ.get("XATTNRES_FUSED_CPU", "1") != "0"
_triton_enabled = os.environ.get("XATTNRES_TRITON", "1") != "0"
_forced: Optional[str] = None  # "pytorch" / "reference" within use_implementation
_triton_state: Optional[bool] = None
_logged = set()
_TRITON_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_FUSED_DTYPES = (torch.float32, torch.float64)


@torch.compiler.assume_constant_result  # torch.compile: evaluated once while tracing
def _triton_ready() -> bool:
    """Whether Triton is importable and the kernel module loads (imported on the first CUDA call, not before)."""
    global _triton_state
    if _triton_state is None:
        _triton_state = False
        if importlib.util.find_spec("triton") is not None:
            try:
                from . import triton_kernel  # noqa: F401  (registers torch.ops.xattnres.triton_aggregate)

                _triton_state = True
            except Exception as error:  # a broken Triton install: say so once, run the PyTorch formulation
                warnings.warn(f"XAttnRes: the Triton kernel did not load, using the PyTorch formulation: {error}")
    return _triton_state


def _triton_kernel() -> Any:
    """The module :mod:`.triton_kernel` (eager mode, after :func:`_triton_ready`)."""
    from . import triton_kernel

    return triton_kernel


def implementation_for(query: torch.Tensor, values: List[torch.Tensor]) -> str:
    """The implementation :func:`aggregate` runs for these tensors here and now, one of :data:`IMPLEMENTATIONS`.

    Args:
        query: ``w * g`` (pseudo-query times RMSNorm gain).
        values: the entries, ``x`` last.

    Example::

        >>> implementation_for(torch.zeros(8), [torch.randn(2, 8, 16, 16)])  # CPU float32, kernel built
        'fused_cpu'
    """
    if torch.jit.is_scripting() or torch.jit.is_tracing():
        return "pytorch_graph"
    if torch.compiler.is_exporting():
        return "pytorch_graph"
    if _forced is not None:
        return _forced
    x = values[-1]
    if x.device.type == "cuda":
        if _triton_enabled and all(v.dtype in _TRITON_DTYPES for v in values) and _triton_ready():
            return "triton"
    elif x.device.type == "cpu":
        if _fused_enabled and x.dtype in _FUSED_DTYPES and all(v.dtype == x.dtype for v in values):
            if fused_cpu.ready():
                return "fused_cpu"
    return "pytorch"


def aggregate(query: torch.Tensor, values: List[torch.Tensor], eps: float) -> torch.Tensor:
    """Eq. 5-8: ``sum_n softmax_n(query . v_n / rms(v_n)) v_n`` over ``values`` (history entries, ``x`` last).

    ``query`` is ``w * g`` (pseudo-query times RMSNorm gain); entries smaller than ``x`` are upsampled to its size
    (bilinear / trilinear, ``align_corners=False``) inside, which lets the fast paths do it at low cost. The output
    has the dtype of ``x``; reductions run in float32 at least (see the module docstring).

    Args:
        query: ``w * g``, shape ``(C,)``.
        values: the aligned entries ``(B, C, *S_n)`` with ``S_n <= S`` per axis, ``x`` (``(B, C, *S)``) last.
        eps: the RMSNorm epsilon.

    Example::

        >>> values = [torch.randn(2, 8, 16, 16), torch.randn(2, 8, 32, 32)]
        >>> aggregate(torch.zeros(8), values, 1e-6).shape  # the plain mean of the upsampled entries
        torch.Size([2, 8, 32, 32])
    """
    if not torch.jit.is_scripting() and not torch.jit.is_tracing():  # (TorchScript compiles none of this block)
        name = implementation_for(query, values)
        if not torch.compiler.is_compiling() and logger.isEnabledFor(logging.DEBUG):
            key = (name, values[-1].device.type, values[-1].dtype, torch.is_grad_enabled())
            if key not in _logged:
                _logged.add(key)
                logger.debug("XAttnRes aggregation: %s for %s %s (grad %s)", *key)
        # the kernels: plain autograd functions in eager mode (lower Python overhead), custom operators when compiled
        if name == "fused_cpu":
            if torch.compiler.is_compiling():
                return torch.ops.xattnres.fused_cpu_aggregate(query, values, eps)
            return fused_cpu.aggregate(query, values, eps)
        if name == "triton":
            if torch.compiler.is_compiling():
                return torch.ops.xattnres.triton_aggregate(query, values, eps)[0]
            return _triton_kernel().aggregate(query, values, eps)
        device = values[-1].device.type
        if device in ("cpu", "cuda") and torch.is_autocast_enabled(device):
            with torch.autocast(device, enabled=False):  # float32 reductions as written, not as autocast lists them
                return _formulation(name, query, values, eps)
        return _formulation(name, query, values, eps)
    return pytorch.aggregate(query, values, eps)[0]


def _formulation(name: str, query: torch.Tensor, values: List[torch.Tensor], eps: float) -> torch.Tensor:
    """The PyTorch formulation (or the literal equations) in the form this context runs best."""
    if name == "reference":
        dtype = pytorch.compute_dtype(values)
        return reference.aggregate(query.to(dtype), [v.to(dtype) for v in values], eps).to(values[-1].dtype)
    if name == "pytorch_graph" or torch.compiler.is_compiling():  # a graph to trace: plain autograd, no scratch
        return pytorch.aggregate(query, values, eps, inplace=False)[0]
    if torch.is_grad_enabled():
        return pytorch.Aggregate.apply(query, eps, *values)
    return pytorch.aggregate(query, values, eps, stream=True)[0]


def set_fused_cpu(enabled: bool) -> bool:
    """Allow the fused CPU kernel where it applies (default unless ``XATTNRES_FUSED_CPU=0``) or never; returns the
    previous setting."""
    global _fused_enabled
    previous, _fused_enabled = _fused_enabled, bool(enabled)
    return previous


def set_triton(enabled: bool) -> bool:
    """Allow the Triton kernel where it applies (default unless ``XATTNRES_TRITON=0``) or never; returns the
    previous setting."""
    global _triton_enabled
    previous, _triton_enabled = _triton_enabled, bool(enabled)
    return previous


@contextmanager
def use_implementation(name: str) -> Iterator[None]:
    """Within the block, run ``"default"`` (the rules above, kernels allowed), always ``"pytorch"`` (the PyTorch
    formulation) or always ``"reference"`` (the literal equations of :mod:`.reference`, slow).

    Example::

        >>> with use_implementation("pytorch"):
        ...     implementation_for(torch.zeros(8), [torch.randn(2, 8, 16, 16)])
        'pytorch'
    """
    global _forced
    if name not in ("default", "pytorch", "reference"):
        raise ValueError(f"use_implementation: name must be 'default' or 'pytorch' (or 'reference'), got {name!r}.")
    previous = _forced
    _forced = None if name == "default" else name
    try:
        yield
    finally:
        _forced = previous
