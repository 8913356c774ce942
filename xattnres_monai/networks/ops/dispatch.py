"""The one place that chooses how the aggregation (Eq. 5-8) runs.

Rules, in order (:func:`implementation_for` names the result, a debug log line records each new choice):

1. TorchScript (scripting or tracing, hence also ONNX export): ``"pytorch_graph"``, the PyTorch formulation with
   plain autograd (:func:`.pytorch.aggregate`), the only one a graph can hold;
2. ``torch.compile`` / ``torch.export``, the switch off, CUDA or any other device, a dtype other than float32 /
   float64, or a kernel that could not be built: ``"pytorch"``, the PyTorch formulation in eager form
   (:class:`.pytorch.Aggregate` with autograd, streamed without);
3. otherwise (eager, CPU, float32 / float64): ``"fused_cpu"``, the fused kernel (:mod:`.fused_cpu`).

The switch: the environment variable ``XATTNRES_FUSED_CPU=0`` (read at import) turns the kernel off;
:func:`use_implementation` (a context manager) and :func:`set_fused_cpu` do the same from Python.
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from typing import Iterator, List

import torch

from . import fused_cpu, pytorch

__all__ = ["aggregate", "implementation_for", "use_implementation", "set_fused_cpu", "IMPLEMENTATIONS"]

IMPLEMENTATIONS = ("fused_cpu", "pytorch", "pytorch_graph")
logger = logging.getLogger(__name__)
_fused_enabled = os.environ.get("XATTNRES_FUSED_CPU", "1") != "0"
_logged = set()


def implementation_for(query: torch.Tensor, values: List[torch.Tensor]) -> str:
    """The implementation :func:`aggregate` runs for these tensors here and now, one of :data:`IMPLEMENTATIONS`."""
    if torch.jit.is_scripting() or torch.jit.is_tracing():
        return "pytorch_graph"
    if not torch.compiler.is_compiling() and _fused_enabled and fused_cpu.available(values[-1]):
        return "fused_cpu"
    return "pytorch"


def aggregate(query: torch.Tensor, values: List[torch.Tensor], eps: float) -> torch.Tensor:
    """Eq. 5-8: ``sum_n softmax_n(query . v_n / rms(v_n)) v_n`` over ``values`` (history entries, ``x`` last).

    ``query`` is ``w * g`` (pseudo-query times RMSNorm gain); entries smaller than ``x`` are upsampled to its size
    (bilinear / trilinear, ``align_corners=False``) inside, which lets the fast paths do it at low cost.
    """
    if not torch.jit.is_scripting() and not torch.jit.is_tracing():  # (TorchScript compiles none of this block)
        name = implementation_for(query, values)
        if not torch.compiler.is_compiling() and logger.isEnabledFor(logging.DEBUG):
            key = (name, values[-1].device.type, values[-1].dtype, torch.is_grad_enabled())
            if key not in _logged:
                _logged.add(key)
                logger.debug("XAttnRes aggregation: %s for %s %s (grad %s)", *key)
        if name == "fused_cpu":
            if torch.is_grad_enabled():
                return fused_cpu.FusedAggregate.apply(query, eps, *values)
            return fused_cpu.fused_forward(query, values, eps)
        if torch.is_grad_enabled():
            return pytorch.Aggregate.apply(query, eps, *values)
        return pytorch.aggregate(query, values, eps, stream=True)[0]
    return pytorch.aggregate(query, values, eps)[0]


def set_fused_cpu(enabled: bool) -> bool:
    """Allow the fused kernel where it applies (default unless ``XATTNRES_FUSED_CPU=0``) or never; returns the
    previous setting."""
    global _fused_enabled
    previous, _fused_enabled = _fused_enabled, bool(enabled)
    return previous


@contextmanager
def use_implementation(name: str) -> Iterator[None]:
    """Within the block, run ``"default"`` (the rules above, kernel allowed) or always ``"pytorch"``."""
    if name not in ("default", "pytorch"):
        raise ValueError(f"use_implementation: name must be 'default' or 'pytorch', got {name!r}.")
    previous = set_fused_cpu(name == "default")
    try:
        yield
    finally:
        set_fused_cpu(previous)
