"""The fused CPU kernel of the aggregation (``fused_cpu.cpp``): build, cache, load, run on threads.

Why a kernel of our own: on CPU the aggregation is memory-bound element-wise work (upsampling, channel RMS,
logits, softmax, weighted sum and their backward) on up to 9 entries at full resolution. Composed from
PyTorch operations it makes a dozen passes over full-resolution tensors in the forward and more in the
backward; the kernel makes one pass per row and keeps nothing of full resolution but its output
(``python benchmarks/xattnres_overhead.py`` prints the two side by side). The dispatcher
(:mod:`.dispatch`) runs it for float32 / float64 CPU tensors (all entries of one dtype), eager or compiled.

Two entry points to the same two kernel calls (:func:`fused_forward`, :func:`fused_backward`): in eager mode
:func:`aggregate` (the autograd function :class:`FusedAggregate`: a custom operator's Python dispatch costs
~0.5 ms a call more, measured here); for ``torch.compile`` (fullgraph) the custom operator
``torch.ops.xattnres.fused_cpu_aggregate(query, values, eps)`` (``torch.library.custom_op``, with a fake
implementation and an autograd formula calling ``torch.ops.xattnres.fused_cpu_aggregate_backward``), which a
compiled graph calls as an opaque kernel.

Build: the kernel is plain C++ without PyTorch headers, compiled on first use with the system compiler
(``$CXX``, else ``c++`` / ``g++`` / ``clang++``) and loaded with ctypes. Kept over
``torch.utils.cpp_extension.load`` (is_python_module=False) on measurements of this very source (2-core machine
under load, torch 2.13, g++): first build 4.0 s CPU here against 8.2 s for cpp_extension (wall 25 s vs 45-51 s);
a cached library loads in 0.2 ms here against 90 ms, and cpp_extension needs ninja on PATH even then (it runs
ninja and its compiler checks in every new process: "Ninja is required to load C++ extensions" with a
compiler-less PATH), while a cached build here is loaded without looking for a compiler at all.

Cache: ``$XATTNRES_KERNEL_CACHE``, else ``$XDG_CACHE_HOME/xattnres_monai``, else ``~/.cache/xattnres_monai``;
one file per (source, flags, ``$CXX``, CPU instruction sets), written under a temporary name and renamed
(concurrent builders, e.g. torchrun ranks, never load a half-written file), mode ``0o755`` so that a cache
shared between users (a group-writable ``$XATTNRES_KERNEL_CACHE``) is loadable by all of them. If the file
exists it is loaded as is: no compiler lookup, no subprocess. Without a compiler the build fails once
with a warning and the PyTorch formulation runs instead.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, List, NamedTuple, Optional, Sequence, Tuple

import torch
from torch.autograd.function import once_differentiable

__all__ = ["available", "ready", "fused_forward", "fused_backward", "aggregate", "FusedAggregate"]

_SOURCE = Path(__file__).with_name("fused_cpu.cpp")
_FLAGS = ["-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", "-fno-math-errno"]
_ABI_VERSION = 2
_MODE = 0o755  # the library holds no secret; other users of a shared cache must be able to load it
_lock = threading.Lock()
_library: Optional[ctypes.CDLL] = None
_failed = False
_executor: Optional[Tuple[int, int, ThreadPoolExecutor]] = None  # (pid, threads, executor)

_P = ctypes.c_void_p
_I64 = ctypes.c_int64


def _cache_dir() -> Path:
    root = os.environ.get("XATTNRES_KERNEL_CACHE")
    if root:
        return Path(root)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "xattnres_monai"


def _cpu_fingerprint() -> str:
    """-march=native code runs only on CPUs with the same instruction sets: key the build by them."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith(("flags", "Features"))), "")
    except OSError:
        flags = ""
    return platform.machine() + flags


def _cached_path() -> Path:
    """Where the build for this source, these flags, ``$CXX`` and this CPU lives (found without a compiler)."""
    key = [_SOURCE.read_bytes(), " ".join(_FLAGS).encode(), os.environ.get("CXX", "").encode()]
    key.append(_cpu_fingerprint().encode())
    return _cache_dir() / ("xattnres_cpu_" + hashlib.sha256(b"\0".join(key)).hexdigest()[:16] + ".so")


def _build(target: Path) -> None:
    compiler = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")
    if compiler is None:
        raise RuntimeError("no C++ compiler found (set CXX)")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, partial = tempfile.mkstemp(prefix=target.stem + ".", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        subprocess.run(
            [compiler, *_FLAGS, str(_SOURCE), "-o", partial], check=True, capture_output=True, text=True, timeout=300
        )
        os.chmod(partial, _MODE)  # mkstemp creates 0o600: readable by its owner only
        os.replace(partial, target)  # atomic within the folder
    finally:
        if os.path.exists(partial):
            os.unlink(partial)


def _load() -> Optional[ctypes.CDLL]:
    global _library, _failed
    if _library is not None or _failed:
        return _library
    with _lock:
        if _library is not None or _failed:
            return _library
        try:
            target = _cached_path()
            if not target.exists():
                _build(target)
            library = ctypes.CDLL(str(target))
            if library.xattnres_abi_version() != _ABI_VERSION:
                raise RuntimeError("stale kernel library")
        except (OSError, RuntimeError, subprocess.SubprocessError) as error:
            detail = getattr(error, "stderr", "") or str(error)
            warnings.warn(
                "XAttnRes: the fused CPU kernel could not be built, using the PyTorch formulation (slower on CPU): "
                + detail.strip()[-2000:],
                RuntimeWarning,
            )
            _failed = True
            return None
        for suffix, real in (("f32", ctypes.c_float), ("f64", ctypes.c_double)):
            forward = getattr(library, "xattnres_forward_" + suffix)
            forward.argtypes = [ctypes.c_int, _I64, _I64, _I64, _I64, _P, _P, _P, real, _P, _I64, _I64]
            forward.restype = None
            backward = getattr(library, "xattnres_backward_" + suffix)
            backward.argtypes = [ctypes.c_int, _I64, _I64, _I64, _I64, _P, _P, _P, real, _P, _P, _P, _I64, _I64]
            backward.restype = None
        _library = library
        return library


@torch.compiler.assume_constant_result  # torch.compile: evaluated once while tracing (no ctypes in the graph)
def ready() -> bool:
    """Whether the kernel library is built and loaded here (builds or loads it on the first call)."""
    return _load() is not None


def available(tensor: torch.Tensor) -> bool:
    """Whether the kernel handles ``tensor``'s device and dtype here (builds or loads it on the first call)."""
    return tensor.device.type == "cpu" and tensor.dtype in (torch.float32, torch.float64) and ready()


def _threads() -> Tuple[ThreadPoolExecutor, int]:
    """A pool of ``torch.get_num_threads()`` threads (recreated after a fork or a thread-count change) and its size."""
    global _executor
    threads = max(1, torch.get_num_threads())
    if _executor is None or _executor[0] != os.getpid() or _executor[1] != threads:
        _executor = (os.getpid(), threads, ThreadPoolExecutor(max_workers=threads, thread_name_prefix="xattnres"))
    return _executor[2], threads


def _is_channels_last(v: torch.Tensor) -> bool:
    return v.is_contiguous(memory_format=torch.channels_last if v.dim() == 4 else torch.channels_last_3d)


def _layout_flags(values: Sequence[torch.Tensor]) -> List[bool]:
    """Per entry, whether the kernel reads it channels-last (see :func:`_layout`)."""
    return [_is_channels_last(v) and not v.is_contiguous() for v in values[:-1]] + [False]


def _layout(values: Sequence[torch.Tensor]) -> Tuple[List[torch.Tensor], List[bool]]:
    """The entries as the kernel reads them: channels-first contiguous, or channels-last contiguous (the layout the
    1x1 projections and the pooling produce fastest; the kernel transposes those at low resolution). ``x`` (last)
    and the output are channels-first."""
    layouts = _layout_flags(values)
    return [v if cl else v.contiguous() for v, cl in zip(values, layouts)], layouts


def _geometry(values: Sequence[torch.Tensor], layouts: Sequence[bool]) -> Tuple[List[int], torch.Tensor]:
    """Target size as (D, H, W) (D = 1 in 2D) and, per entry, (D, H, W, channels-last) as the kernel takes it."""
    sizes = [[1] * (5 - v.dim()) + list(v.shape[2:]) for v in values]
    return sizes[-1], torch.tensor([s + [int(cl)] for s, cl in zip(sizes, layouts)], dtype=torch.int64)


def _pointers(tensors: Sequence[torch.Tensor]) -> ctypes.Array:
    """A C array of the data pointers of ``tensors`` (the caller keeps it alive during the call)."""
    return (ctypes.c_void_p * len(tensors))(*[t.data_ptr() for t in tensors])


def _split(batch: int, rows: int, threads: int) -> List[Tuple[int, int, int, int]]:
    """Work items (batch index, chunk index, first row, end row): whole batch items when there are enough of
    them for the threads, otherwise each item cut into ``ceil(threads / batch)`` row chunks."""
    chunks = 1 if batch >= threads or batch == 0 else min(rows, -(-threads // batch))
    bounds = [rows * k // chunks for k in range(chunks + 1)]
    return [(b, k, bounds[k], bounds[k + 1]) for b in range(batch) for k in range(chunks)]


class _Launch(NamedTuple):
    """What a forward or backward call of the kernel needs, shared by both."""

    kernels: Tuple[Any, Any]  # (forward, backward) of the dtype
    values: List[torch.Tensor]
    layouts: List[bool]
    size: List[int]  # target (D, H, W)
    sizes: torch.Tensor
    query: torch.Tensor
    executor: ThreadPoolExecutor
    threads: int
    items: List[Tuple[int, int, int, int]]

    def arguments(self, batch: int, entries: ctypes.Array, eps: float) -> tuple:
        """The leading kernel arguments for batch item ``batch`` (``entries``: its pointers, kept alive by the caller)."""
        x = self.values[-1]
        return (len(self.values), x.shape[1], *self.size, ctypes.addressof(entries), self.sizes.data_ptr(),
                self.query.data_ptr(), eps)  # fmt: skip

    def run(self, fn: Callable[[int], None]) -> None:
        """``fn(index)`` for every work item, on the pool's threads (inline with one thread or one item)."""
        if self.threads == 1 or len(self.items) == 1:
            for index in range(len(self.items)):
                fn(index)
        else:
            list(self.executor.map(fn, range(len(self.items))))


def _launch(query: torch.Tensor, values: Sequence[torch.Tensor]) -> _Launch:
    library = _load()
    assert library is not None
    values, layouts = _layout(values)
    x = values[-1]
    size, sizes = _geometry(values, layouts)
    suffix = "f32" if x.dtype == torch.float32 else "f64"
    executor, threads = _threads()
    return _Launch(
        kernels=(getattr(library, "xattnres_forward_" + suffix), getattr(library, "xattnres_backward_" + suffix)),
        values=values, layouts=layouts, size=size, sizes=sizes, query=query.detach().to(x.dtype).contiguous(),
        executor=executor, threads=threads, items=_split(x.shape[0], size[0] * size[1], threads),
    )  # fmt: skip


def fused_forward(query: torch.Tensor, values: Sequence[torch.Tensor], eps: float) -> torch.Tensor:
    """Eq. 6-8 (with the upsampling of Eq. 4) on ``values`` (entries not yet upsampled, ``x`` last)."""
    launch = _launch(query, values)
    out = torch.empty_like(launch.values[-1], memory_format=torch.contiguous_format)

    def run(index: int) -> None:
        b, _, begin, end = launch.items[index]
        entries = _pointers([v[b] for v in launch.values])
        launch.kernels[0](*launch.arguments(b, entries, eps), out[b].data_ptr(), begin, end)

    launch.run(run)
    return out


def fused_backward(
    query: torch.Tensor, values: Sequence[torch.Tensor], eps: float, grad: torch.Tensor
) -> Tuple[torch.Tensor, List[torch.Tensor]]:
    """Gradients of :func:`fused_forward` with respect to ``query`` and every entry of ``values``."""
    launch = _launch(query, values)
    x, grad = launch.values[-1], grad.contiguous()
    chunks = max((k for _, k, _, _ in launch.items), default=0) + 1
    same = [v.shape == x.shape and not cl for v, cl in zip(launch.values, launch.layouts)]
    # same-size channels-first entries: every row written by exactly one item; the others: accumulated (in their
    # own layout), one buffer per row chunk (chunks of one batch item scatter into overlapping source rows)
    grads = [
        [torch.empty_like(v)] if s else [torch.zeros_like(v) for _ in range(chunks)] for v, s in zip(launch.values, same)
    ]
    grad_query = torch.zeros(len(launch.items), x.shape[1], dtype=torch.float64)

    def run(index: int) -> None:
        b, k, begin, end = launch.items[index]
        entries = _pointers([v[b] for v in launch.values])
        targets = _pointers([g[0][b] if s else g[k][b] for g, s in zip(grads, same)])
        launch.kernels[1](
            *launch.arguments(b, entries, eps), grad[b].data_ptr(), ctypes.addressof(targets),
            grad_query[index].data_ptr(), begin, end,
        )  # fmt: skip

    launch.run(run)
    return grad_query.sum(0).to(query.dtype), [g[0] if len(g) == 1 else torch.stack(g).sum(0) for g in grads]


class FusedAggregate(torch.autograd.Function):
    """Eq. 6-8 by the kernel: saves only its (low-resolution) inputs and recomputes the upsampled rows in the
    backward."""

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


# --- the same kernel calls as custom operators, for torch.compile ---------------------------------------------


def _grad_formats(values: Sequence[torch.Tensor]) -> List[torch.memory_format]:
    """The memory format of each entry's gradient: the layout the kernel reads the entry in (:func:`_layout`)."""
    cl = [torch.channels_last if v.dim() == 4 else torch.channels_last_3d for v in values]
    return [fmt if layout else torch.contiguous_format for fmt, layout in zip(cl, _layout_flags(values))]


@torch.library.custom_op("xattnres::fused_cpu_aggregate", mutates_args=(), device_types="cpu")
def _aggregate_op(query: torch.Tensor, values: List[torch.Tensor], eps: float) -> torch.Tensor:
    return fused_forward(query, values, eps)


@_aggregate_op.register_fake
def _(query: torch.Tensor, values: List[torch.Tensor], eps: float) -> torch.Tensor:
    return torch.empty_like(values[-1], memory_format=torch.contiguous_format)


@torch.library.custom_op("xattnres::fused_cpu_aggregate_backward", mutates_args=(), device_types="cpu")
def _backward_op(
    grad: torch.Tensor, query: torch.Tensor, values: List[torch.Tensor], eps: float
) -> Tuple[torch.Tensor, List[torch.Tensor]]:
    grad_query, grads = fused_backward(query, values, eps, grad)
    return grad_query, [g.contiguous(memory_format=fmt) for g, fmt in zip(grads, _grad_formats(values))]


@_backward_op.register_fake
def _(
    grad: torch.Tensor, query: torch.Tensor, values: List[torch.Tensor], eps: float
) -> Tuple[torch.Tensor, List[torch.Tensor]]:
    grads = [torch.empty_like(v, memory_format=fmt) for v, fmt in zip(values, _grad_formats(values))]
    return torch.empty_like(query, memory_format=torch.contiguous_format), grads


def _setup_context(ctx: Any, inputs: Tuple[Any, ...], output: torch.Tensor) -> None:
    query, values, eps = inputs
    ctx.eps = eps
    ctx.save_for_backward(query, *values)


def _backward(ctx: Any, grad: torch.Tensor) -> Tuple[Optional[torch.Tensor], ...]:
    # the saved low-resolution inputs only: the kernel recomputes the upsampled rows (double backward unsupported)
    query, *values = ctx.saved_tensors
    grad_query, grads = torch.ops.xattnres.fused_cpu_aggregate_backward(grad, query, values, ctx.eps)
    return grad_query, grads, None


_aggregate_op.register_autograd(_backward, setup_context=_setup_context)


def aggregate(query: torch.Tensor, values: List[torch.Tensor], eps: float) -> torch.Tensor:
    """Eq. 6-8 by the kernel in eager mode, with autograd when it is on (:class:`FusedAggregate`).

    ``values``: entries of one dtype (float32 or float64), ``x`` last; the output is channels-first contiguous.
    Compiled code calls ``torch.ops.xattnres.fused_cpu_aggregate`` (same arguments) instead.

    Example::

        >>> values = [torch.randn(2, 8, 16, 16), torch.randn(2, 8, 32, 32, requires_grad=True)]
        >>> aggregate(torch.zeros(8), values, 1e-6).shape
        torch.Size([2, 8, 32, 32])
    """
    if torch.is_grad_enabled():
        return FusedAggregate.apply(query, eps, *values)
    return fused_forward(query, values, eps)
