"""The Triton kernel of the aggregation (``networks/ops/triton_kernel.py``) against the literal equations, no GPU.

The kernel runs under Triton's interpreter (``TRITON_INTERPRET=1``, CPU tensors). The variable must be set before
the kernels are defined, and it must not leak into other tests (on a GPU machine it would turn every Triton kernel
of the session, Inductor's included, into the slow interpreter), so the kernel tests run in a fresh process:
``test_kernel_under_the_interpreter`` (slow) runs this module there with the variable set; with
``TRITON_INTERPRET=1`` set by hand, ``python -m pytest -m slow tests/test_triton_kernel.py`` runs them directly.

Checked (float32, against :mod:`xattnres_monai.networks.ops.reference` evaluated in float64 on the same inputs,
``rtol = atol = 1e-5``), forward and backward, 2D and 3D, channels-first and channels-last: entries upsampled
along every axis or some, entries of the target size, and, through the XAttnRes block, history entries the block
pools (adaptive max pooling) before the kernel. Also: float16 / bfloat16 entries mixed with float32 (output in the
dtype of ``x``, gradients in their inputs' dtypes; within twice the unit roundoff ``u``: the interpreter converts
float32 to bfloat16 by truncation, a GPU rounds to nearest), the custom operators (``torch.library.opcheck``:
fake tensors with the real strides, autograd registration, AOT dispatch), an empty batch. Fast, in this process:
the dispatcher picks ``"triton"`` for CUDA tensors (fake ones, ``FakeTensorMode``), and ``XATTNRES_TRITON=0``
turns it off.
"""

from __future__ import annotations

import copy
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from xattnres_monai.networks import ops
from xattnres_monai.networks.blocks import XAttnRes
from xattnres_monai.networks.ops import reference
from xattnres_monai.networks.ops.reference import stacked_xattnres

ROOT = Path(__file__).resolve().parents[1]
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
TOLERANCE = dict(rtol=1e-5, atol=1e-5)
UNIT_ROUNDOFF = {torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11, torch.float32: 2.0**-24}

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("triton") is None,
    reason="Triton is not installed (pip install triton; requirements-test.txt pins the version)",
)


def _cuda_fakes(*dtypes: torch.dtype):
    """Fake CUDA tensors (no GPU needed) of these dtypes, for the dispatcher's choice."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    mode = FakeTensorMode()
    with mode:
        values = [torch.empty(2, 4, 8, 8, device="cuda", dtype=d) for d in dtypes]
        query = torch.empty(4, device="cuda")
    return mode, query, values


def test_dispatcher_picks_triton_for_cuda_tensors():
    mode, query, values = _cuda_fakes(torch.bfloat16, torch.float32)
    with mode:
        assert ops.implementation_for(query, values) == "triton"  # autocast mixes bfloat16 and float32 entries
        assert ops.implementation_for(query, [v.half() for v in values]) == "triton"
        assert ops.implementation_for(query, [v.double() for v in values]) == "pytorch"  # float64: not the kernel's
        with ops.use_implementation("pytorch"):
            assert ops.implementation_for(query, values) == "pytorch"
        previous = ops.set_triton(False)
        try:
            assert ops.implementation_for(query, values) == "pytorch"
        finally:
            ops.set_triton(previous)


def test_environment_variable_turns_triton_off():
    code = (
        "import torch\n"
        "from torch._subclasses.fake_tensor import FakeTensorMode\n"
        "from xattnres_monai.networks import ops\n"
        "with FakeTensorMode():\n"
        "    x = torch.empty(1, 4, 8, 8, device='cuda')\n"
        "    print(ops.implementation_for(torch.empty(4, device='cuda'), [x]))\n"
    )
    env = {**os.environ, "XATTNRES_TRITON": "0"}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=str(ROOT))
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "pytorch"


if not INTERPRETED:

    @pytest.mark.slow
    def test_kernel_under_the_interpreter():
        """The kernel tests below, in a fresh process with ``TRITON_INTERPRET=1``."""
        env = {**os.environ, "TRITON_INTERPRET": "1"}
        command = [sys.executable, "-m", "pytest", __file__, "-m", "slow", "-q", "-p", "no:cacheprovider"]
        run = subprocess.run(command, capture_output=True, text=True, env=env, cwd=str(ROOT), timeout=1800)
        assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-3000:]
        assert " passed" in run.stdout and " skipped" not in run.stdout, run.stdout[-3000:]

else:

    @pytest.fixture(scope="module")
    def triton_kernel():
        from xattnres_monai.networks.ops import triton_kernel

        if not triton_kernel.interpreted():
            pytest.skip(
                "the Triton kernel module was imported before TRITON_INTERPRET=1 was set in this process: run "
                "this module on its own (python -m pytest -m slow tests/test_triton_kernel.py)"
            )
        return triton_kernel

    # (channels, batch, target size, entry sizes): entries upsampled along every axis or some, and of target size
    CASES = {
        "2d": (6, 2, (7, 9), [(3, 4), (7, 4), (5, 9), (7, 9)]),
        "3d": (5, 2, (4, 5, 3), [(2, 3, 2), (4, 2, 3), (1, 5, 3), (4, 5, 3)]),
    }

    def _channels_last(t: torch.Tensor) -> torch.Tensor:
        return t.contiguous(memory_format=torch.channels_last if t.dim() == 4 else torch.channels_last_3d)

    def _exact(query, values, grad):
        """The literal equations in float64 on the same inputs: output and gradients."""
        query = query.detach().double().requires_grad_()
        values = [v.detach().double().requires_grad_() for v in values]
        out = reference.aggregate(query, values, 1e-6)
        return out, torch.autograd.grad(out, [query] + values, grad.double())

    @pytest.mark.slow
    @pytest.mark.parametrize("layout", ["channels_first", "channels_last", "mixed"])
    @pytest.mark.parametrize("name", sorted(CASES))
    def test_matches_the_equations(triton_kernel, name, layout):
        channels, batch, target, sizes = CASES[name]
        torch.manual_seed(0)
        values = [torch.randn(batch, channels, *s) for s in sizes + [target]]
        if layout != "channels_first":  # "mixed": x channels-first, the history entries channels-last
            last = layout == "channels_last"
            values = [_channels_last(v) if last or n < len(sizes) else v for n, v in enumerate(values)]
        values = [v.requires_grad_() for v in values]
        query = (2 * torch.randn(channels)).requires_grad_()  # far from uniform weights
        out = triton_kernel.aggregate(query, values, 1e-6)
        assert out.stride() == torch.empty_like(values[-1]).stride()  # the layout of x
        grad = torch.randn_like(out)
        grads = torch.autograd.grad(out, [query] + values, grad)
        expected, expected_grads = _exact(query, values, grad)
        torch.testing.assert_close(out.double(), expected, **TOLERANCE)
        for ours, exact in zip(grads, expected_grads):
            torch.testing.assert_close(ours.double(), exact, **TOLERANCE)
        weights = reference.attention(query.detach(), [v.detach() for v in values], 1e-6)[1]
        assert weights.std(dim=1).mean() > 0.05  # the weights really vary over entries and positions
        with torch.no_grad():  # inference: the forward alone
            torch.testing.assert_close(triton_kernel.aggregate(query, values, 1e-6), out.detach())

    @pytest.mark.slow
    @pytest.mark.parametrize("spatial_dims", [2, 3])
    def test_block_with_pooled_upsampled_and_same_size_entries(triton_kernel, spatial_dims, monkeypatch):
        """The whole XAttnRes block with the kernel (chosen through the dispatcher as on CUDA): history entries
        larger than x (pooled by the block), smaller (upsampled in the kernel) and of x's size, with 1x1 projections."""
        torch.manual_seed(0)
        if spatial_dims == 2:
            target, entries = (6, 5), [(4, (12, 10)), (6, (3, 3)), (8, (6, 5)), (6, (13, 4))]
        else:
            target, entries = (4, 3, 4), [(4, (8, 6, 8)), (6, (2, 3, 2)), (8, (4, 3, 4))]
        block = XAttnRes(spatial_dims, 6, [c for c, _ in entries])
        with torch.no_grad():
            block.query.normal_(std=2.0)
            block.gain.uniform_(0.5, 1.5)
        history = [torch.randn(2, c, *s, requires_grad=True) for c, s in entries]
        x = torch.randn(2, 6, *target, requires_grad=True)
        chosen = []
        monkeypatch.setattr(ops.dispatch, "implementation_for", lambda q, v: chosen.append("triton") or "triton")
        out = block(x, history)
        assert chosen == ["triton"]
        grad = torch.randn_like(out)
        inputs = [x, *history, *block.parameters()]
        grads = torch.autograd.grad(out, inputs, grad)
        monkeypatch.undo()
        exact_block = copy.deepcopy(block).double()
        exact_inputs = [t.detach().double().requires_grad_() for t in [x, *history]]
        expected = stacked_xattnres(exact_block, exact_inputs[0], exact_inputs[1:])
        expected_grads = torch.autograd.grad(expected, exact_inputs + list(exact_block.parameters()), grad.double())
        torch.testing.assert_close(out.double(), expected, **TOLERANCE)
        for ours, exact in zip(grads, expected_grads):
            torch.testing.assert_close(ours.double(), exact, **TOLERANCE)

    @pytest.mark.slow
    def test_low_precision_entries(triton_kernel):
        torch.manual_seed(0)
        dtypes = [torch.bfloat16, torch.float32, torch.float16, torch.bfloat16]
        sizes = [(3, 4), (7, 9), (7, 9), (7, 9)]
        values = [torch.randn(2, 5, *s).to(d).requires_grad_() for s, d in zip(sizes, dtypes)]
        query = (2 * torch.randn(5)).requires_grad_()
        out = triton_kernel.aggregate(query, values, 1e-6)
        grad = torch.randn_like(out)
        grads = torch.autograd.grad(out, [query] + values, grad)
        assert out.dtype == values[-1].dtype and [g.dtype for g in grads] == [query.dtype] + dtypes
        expected, expected_grads = _exact(query, values, grad)

        def relative(a, b):
            return float((a.detach().double() - b.detach()).norm() / b.detach().norm())

        assert relative(out, expected) < 2 * UNIT_ROUNDOFF[out.dtype]
        for ours, exact in zip(grads, expected_grads):
            assert torch.isfinite(ours).all() and relative(ours, exact) < max(2 * UNIT_ROUNDOFF[ours.dtype], 1e-5)

    @pytest.mark.slow
    def test_compiled_block_calls_the_custom_operator(triton_kernel, monkeypatch):
        """``torch.compile`` (fullgraph, AOTAutograd) of the block with the dispatcher choosing the kernel, as on
        CUDA: one graph calling ``xattnres.triton_aggregate`` and its backward, values and gradients as eager."""
        from functorch.compile import make_boxed_func
        from torch._dynamo.backends.common import aot_autograd

        graphs = []

        def compiler(gm, example_inputs):
            graphs.append([str(n.target) for n in gm.graph.nodes if n.op == "call_function"])
            return make_boxed_func(gm.forward)

        torch.manual_seed(0)
        block = XAttnRes(2, 4, [4, 8])
        with torch.no_grad():
            block.query.normal_(std=2.0)
        history = [torch.randn(2, 4, 12, 10, requires_grad=True), torch.randn(2, 8, 3, 5, requires_grad=True)]
        x = torch.randn(2, 4, 6, 5, requires_grad=True)
        monkeypatch.setattr(ops.dispatch, "implementation_for", lambda q, v: "triton")
        torch._dynamo.reset()
        try:
            backend = aot_autograd(fw_compiler=compiler, bw_compiler=compiler)
            compiled = torch.compile(block, fullgraph=True, backend=backend)
            inputs = [x, *history, *block.parameters()]
            out = compiled(x, history)
            grad = torch.randn_like(out)
            grads = torch.autograd.grad(out, inputs, grad)
        finally:
            torch._dynamo.reset()
        assert len(graphs) == 2
        assert "xattnres.triton_aggregate.default" in graphs[0]
        assert "xattnres.triton_aggregate_backward.default" in graphs[1]
        eager = block(x, history)
        torch.testing.assert_close(out, eager, **TOLERANCE)
        for ours, expected in zip(grads, torch.autograd.grad(eager, inputs, grad)):
            torch.testing.assert_close(ours, expected, **TOLERANCE)

    @pytest.mark.slow
    def test_custom_operators_pass_opcheck(triton_kernel):
        torch.manual_seed(0)
        values = [torch.randn(1, 3, 2, 2), _channels_last(torch.randn(1, 3, 3, 4)), torch.randn(1, 3, 3, 4)]
        values = [v.requires_grad_() for v in values]
        query = torch.randn(3, requires_grad=True)
        torch.library.opcheck(torch.ops.xattnres.triton_aggregate.default, (query, values, 1e-6))
        _, lse = triton_kernel.forward(query, values, 1e-6)
        detached = [v.detach() for v in values]
        arguments = (torch.randn(1, 3, 3, 4), query.detach(), detached, lse, 1e-6)
        torch.library.opcheck(torch.ops.xattnres.triton_aggregate_backward.default, arguments)
        values3d = [torch.randn(1, 2, 1, 2, 2, requires_grad=True), torch.randn(1, 2, 2, 3, 2, requires_grad=True)]
        torch.library.opcheck(torch.ops.xattnres.triton_aggregate.default, (query[:2].detach(), values3d, 1e-6))

    @pytest.mark.slow
    def test_empty_batch(triton_kernel):
        values = [torch.randn(0, 4, 4, 4, requires_grad=True), torch.randn(0, 4, 8, 8, requires_grad=True)]
        query = torch.randn(4, requires_grad=True)
        out = triton_kernel.aggregate(query, values, 1e-6)
        out.sum().backward()
        assert out.shape == (0, 4, 8, 8) and values[0].grad.shape == values[0].shape
        assert query.grad.abs().sum() == 0
