"""``torch.compile`` of XAttnRes networks: one graph (``fullgraph=True``), same values as eager.

The dispatcher (:mod:`xattnres_monai.networks.ops.dispatch`), the per-forward pooled-entry cache and the kernels
must not break the graph: the fused CPU kernel is a custom operator (``torch.ops.xattnres.fused_cpu_aggregate``,
with fake and autograd registrations) that compiled graphs call, the PyTorch formulation is traced with plain
autograd. Tolerances (float32, compiled vs eager): outputs and gradients ``rtol=1e-4, atol=1e-5``; the aggregation
itself runs the same kernel in both, the difference is Inductor's own code for the convolutions and norms.

Fast: the custom operators pass ``torch.library.opcheck`` (schema, fake tensors with the real strides, autograd,
AOT dispatch), and one configuration compiles to one graph through AOTAutograd (``backend="aot_eager"``) calling
the kernel's forward and backward operators. Slow (``-m slow``): every configuration through Inductor's C++
backend (a cold Inductor compile of one U-Net takes ~2 minutes on 2 loaded cores), the PyTorch formulation,
bfloat16 autocast, and ``torch.export`` (standard operators only, for the dynamo ONNX exporter).
"""

from __future__ import annotations

import itertools
from typing import List

import pytest
import torch
from torch._dynamo.backends.common import aot_autograd

from xattnres_monai.networks import ops
from xattnres_monai.networks.nets import XAttnResUNet
from xattnres_monai.networks.ops import fused_cpu

RTOL, ATOL = 1e-4, 1e-5
PLACEMENTS = ("none", "encoder", "decoder", "full")
CONFIGURATIONS = [dict(skip=s, xattnres=w) for s, w in itertools.product((True, False), PLACEMENTS)]
CONFIGURATIONS += [dict(skip=True, xattnres="none", dca=True), dict(skip=True, xattnres="full", dca=True)]
SMALL = {2: {"encoder_channels": (8, 16, 32), "decoder_channels": (16, 8)},
         3: {"encoder_channels": (4, 8, 16), "decoder_channels": (8, 4)}}  # fmt: skip


def _name(config: dict) -> str:
    return f"skip{int(config['skip'])}-{config['xattnres']}" + ("-dca" if config.get("dca") else "")


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    """Every test compiles afresh (the networks share ``forward`` code objects: no recompilation limit)."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _network(spatial_dims: int, **config) -> XAttnResUNet:
    torch.manual_seed(0)
    net = XAttnResUNet(spatial_dims, 1, 3, **SMALL[spatial_dims], **config)
    with torch.no_grad():  # a trained-looking pseudo-query: attention far from uniform
        for name, p in net.named_parameters():
            if name.endswith("query"):
                p.normal_()
    return net


def _step(net: torch.nn.Module, model, x: torch.Tensor, autocast: bool = False):
    net.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = model(x)
    out.float().square().mean().backward()
    return out.detach(), [p.grad.clone() for p in net.parameters()]


def _compare_with_eager(spatial_dims: int, config: dict, backend, autocast: bool = False, tolerance=(RTOL, ATOL)):
    net = _network(spatial_dims, **config)
    x = torch.randn(2, 1, *([32, 32] if spatial_dims == 2 else [16, 16, 16]))
    compiled = torch.compile(net, fullgraph=True, backend=backend)
    out, grads = _step(net, compiled, x, autocast)
    expected, expected_grads = _step(net, net, x, autocast)
    assert out.dtype == expected.dtype
    rtol, atol = tolerance
    torch.testing.assert_close(out, expected, rtol=rtol, atol=atol)
    for name, g, e in zip([n for n, _ in net.named_parameters()], grads, expected_grads):
        torch.testing.assert_close(g, e, rtol=rtol, atol=atol, msg=lambda m, name=name: f"{name}: {m}")


def _recording_backend(graphs: List[torch.fx.GraphModule]):
    """AOTAutograd with the forward and backward graphs recorded and run as they are (no code generation)."""
    from functorch.compile import make_boxed_func

    def compiler(gm: torch.fx.GraphModule, example_inputs):
        graphs.append(gm)
        return make_boxed_func(gm.forward)

    return aot_autograd(fw_compiler=compiler, bw_compiler=compiler)


def _targets(gm: torch.fx.GraphModule) -> List[str]:
    return [str(n.target) for n in gm.graph.nodes if n.op == "call_function"]


def test_fused_kernel_operators_pass_opcheck():
    """Schema, fake implementation (strides included: a channels-last entry), autograd registration, AOT dispatch."""
    if not fused_cpu.ready():
        pytest.fail("the fused CPU kernel did not build here (a C++ compiler is needed)")
    torch.manual_seed(0)
    cl = torch.channels_last
    values = [torch.randn(2, 4, 3, 5), torch.randn(2, 4, 6, 10).contiguous(memory_format=cl), torch.randn(2, 4, 6, 10)]
    values = [v.requires_grad_() for v in values]
    query = torch.randn(4, requires_grad=True)
    torch.library.opcheck(torch.ops.xattnres.fused_cpu_aggregate.default, (query, values, 1e-6))
    grad = torch.randn(2, 4, 6, 10)
    detached = [v.detach() for v in values]
    arguments = (grad, query.detach(), detached, 1e-6)
    torch.library.opcheck(torch.ops.xattnres.fused_cpu_aggregate_backward.default, arguments)
    values3d = [torch.randn(1, 3, 2, 3, 2, requires_grad=True), torch.randn(1, 3, 4, 5, 3, requires_grad=True)]
    torch.library.opcheck(torch.ops.xattnres.fused_cpu_aggregate.default, (query[:3].detach(), values3d, 1e-6))


def test_network_compiles_to_one_graph_calling_the_kernel():
    """XAttnRes + skips (every block kind) through Dynamo (fullgraph) and AOTAutograd: the dispatcher picks the
    kernel, the graphs call its forward and backward operators, values and gradients equal eager."""
    graphs: List[torch.fx.GraphModule] = []
    _compare_with_eager(2, dict(skip=True, xattnres="full"), _recording_backend(graphs))
    assert len(graphs) == 2, "one forward and one backward graph expected (no graph break)"
    forward, backward = (_targets(g) for g in graphs)
    assert forward.count("xattnres.fused_cpu_aggregate.default") == 4  # 2 encoder + 2 decoder blocks
    assert backward.count("xattnres.fused_cpu_aggregate_backward.default") == 4


@pytest.mark.slow
@pytest.mark.parametrize("config", CONFIGURATIONS, ids=_name)
def test_every_configuration_compiles_with_inductor(config):
    _compare_with_eager(2, config, "inductor")


@pytest.mark.slow
def test_3d_network_compiles_with_inductor():
    _compare_with_eager(3, dict(skip=True, xattnres="full"), "inductor")


@pytest.mark.slow
def test_pytorch_formulation_compiles_with_inductor():
    """The PyTorch formulation (CUDA without Triton, dtypes the kernels do not take) is traced with plain autograd."""
    graphs: List[torch.fx.GraphModule] = []
    with ops.use_implementation("pytorch"):
        _compare_with_eager(2, dict(skip=True, xattnres="full"), _recording_backend(graphs))
        assert not any("xattnres" in t for g in graphs for t in _targets(g))
        torch._dynamo.reset()
        _compare_with_eager(2, dict(skip=False, xattnres="full"), "inductor")


@pytest.mark.slow
def test_bfloat16_autocast_compiles_with_inductor():
    """bfloat16 autocast, compiled: the same dtypes as eager, values within bfloat16 rounding of eager."""
    _compare_with_eager(2, dict(skip=True, xattnres="full"), "inductor", autocast=True, tolerance=(5e-2, 5e-2))


@pytest.mark.slow
def test_export_holds_standard_operators_only():
    """``torch.export`` (what the dynamo ONNX exporter runs) gets the PyTorch formulation, not the kernel."""
    net = _network(2, skip=True, xattnres="full").eval()
    x = torch.randn(1, 1, 32, 32)
    exported = torch.export.export(net, (x,))
    assert not any("xattnres" in t for t in _targets(exported.graph_module))
    with torch.no_grad():
        torch.testing.assert_close(exported.module()(x), net(x), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("bundle", ["synapse_ct_segmentation", "clinicdb_polyp_segmentation",
                                    "synapse_ct_3d_segmentation"])  # fmt: skip
def test_bundle_compile_flag_compiles_the_network_in_place(bundle):
    """``--compile true`` (train.json; multi_gpu_train.json wraps the same expression in DDP): the network's forward
    is compiled in place (``nn.Module.compile``), its state dict keys stay the eager network's, so checkpoints and
    ``ckpt_export`` are unchanged; off by default."""
    from pathlib import Path

    from monai.bundle import ConfigParser

    configs = Path(__file__).resolve().parents[1] / "bundles" / bundle / "configs"
    for config_files, network_id in ((["train.json"], "network"),
                                     (["train.json", "multi_gpu_train.json"], "network#module")):  # fmt: skip
        parser = ConfigParser()
        parser.read_config([str(configs / f) for f in config_files])
        parser["bundle_root"] = str(configs.parent)
        parser["device"] = "$torch.device('cpu')"
        assert parser["compile"] is False
        eager = parser.get_parsed_content(network_id, instantiate=True)
        assert getattr(eager, "_compiled_call_impl", None) is None
        parser["compile"] = True
        parser.parse(True)
        compiled = parser.get_parsed_content(network_id, instantiate=True)
        assert compiled._compiled_call_impl is not None
        assert list(compiled.state_dict()) == list(eager.state_dict())
