"""Operations behind the XAttnRes block: the aggregation of Eq. 5-8, its implementations and their dispatcher.

The block (:mod:`xattnres_monai.networks.blocks.xattnres`) reads as the paper does: it aligns the history
(Eq. 4) and makes one call to :func:`aggregate` (Eq. 5-8). Everything that makes that call fast lives here, apart
from the block, the way timm keeps its fused attention beside the reference path and MONAI keeps its compiled
``_extensions`` out of ``networks/blocks``. A package of its own under ``networks/`` (not inside ``blocks/``)
because it holds operations, not modules, and a C++ source that is package data.

* :mod:`.reference`: the equations literally (stack, RMSNorm, softmax, sum); what tests, benchmarks and
  :meth:`XAttnRes.attention_weights` use;
* :mod:`.pytorch`: the PyTorch formulation (any device and dtype; custom autograd in eager training; TorchScript /
  ONNX; traced by ``torch.compile``);
* :mod:`.fused_cpu` (+ ``fused_cpu.cpp``): the fused CPU kernel, its build cache, its loader and its custom
  operators (``torch.ops.xattnres.fused_cpu_aggregate``);
* :mod:`.triton_kernel`: the Triton kernel for CUDA (forward and backward, imported on the first CUDA call;
  ``torch.ops.xattnres.triton_aggregate``);
* :mod:`.dispatch`: :func:`aggregate`, which picks one of them (rules in its docstring),
  :func:`implementation_for`, which says which one, and the switches (``XATTNRES_FUSED_CPU=0``,
  ``XATTNRES_TRITON=0``, :func:`use_implementation`, :func:`set_fused_cpu`, :func:`set_triton`).

Example::

    >>> from xattnres_monai.networks import ops
    >>> values = [torch.randn(2, 8, 16, 16), torch.randn(2, 8, 32, 32)]  # history entries, x last
    >>> ops.implementation_for(torch.zeros(8), values)
    'fused_cpu'
    >>> ops.aggregate(torch.zeros(8), values, 1e-6).shape
    torch.Size([2, 8, 32, 32])
"""

from . import reference
from .dispatch import (
    IMPLEMENTATIONS,
    aggregate,
    implementation_for,
    set_fused_cpu,
    set_triton,
    use_implementation,
)

__all__ = [
    "aggregate",
    "implementation_for",
    "use_implementation",
    "set_fused_cpu",
    "set_triton",
    "IMPLEMENTATIONS",
    "reference",
]
