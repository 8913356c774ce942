"""XAttnRes as a plug-in for MONAI's DynUNet and BasicUNet, and the anisotropic alignment of Eq. 4.

* Eq. 4 per axis: history entries larger along some axes and smaller along others are pooled (adaptive max) along
  the larger axes and interpolated (linear) along the smaller ones, projected by the 1x1 convolution in between;
  compared with a hand-wired, axis-by-axis reference (1D pooling / 1D interpolation, one axis at a time) and the
  literal Eq. 5-8, forward and backward, with the fused CPU kernel and the PyTorch formulation.
* The plug-in networks against a hand-wired reference of Eq. 10-11 (which pool entries each block reads, what it
  reads them into), 2D and 3D, anisotropic strides, every placement, skip on / off.
* Plain MONAI weights load with exactly the XAttnRes parameters missing; ``xattnres="none"`` is the plain network;
  zero pseudo-queries make every block the mean of its aligned entries; ``skip=False`` means zeros in place of the
  skip tensor; TorchScript and ``torch.export`` reproduce eager; deep supervision in training mode.
"""

from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import pytest
import torch
import torch.nn.functional as F
from monai.networks.nets import BasicUNet, DynUNet

from xattnres_monai.networks import ops
from xattnres_monai.networks.blocks import XAttnRes
from xattnres_monai.networks.definition import network_definition
from xattnres_monai.networks.ops.reference import resize, stacked_xattnres
from xattnres_monai.networks.plugins import (
    NoRouting,
    Stage,
    XAttnResBasicUNet,
    XAttnResDynUNet,
    build_routing,
    load_plain_state_dict,
)
from xattnres_monai.networks.utils import capture_attention, strict_network

# ------------------------------------------------------------------------------------ anisotropic alignment (Eq. 4)

# (spatial_dims, target channels, target size, history [(channels, size)]): every entry is larger along some axis
# and smaller along another (one also equal along a third), sizes not multiples of the target's
ANISOTROPIC = {
    "2d": (2, 6, (8, 10), [(6, (16, 5)), (3, (3, 23)), (12, (13, 4)), (6, (8, 10))]),
    "3d": (3, 4, (6, 8, 5), [(4, (12, 4, 5)), (2, (3, 17, 9)), (8, (11, 3, 2)), (4, (2, 8, 14))]),
}


def _along(h: torch.Tensor, axis: int, fn) -> torch.Tensor:
    """Apply a 1D operation ``fn((N, 1, L)) -> (N, 1, L')`` along spatial ``axis`` of ``h`` (B, C, *S)."""
    moved = h.movedim(axis + 2, -1)
    flat = moved.reshape(-1, 1, moved.shape[-1])
    out = fn(flat)
    return out.reshape(*moved.shape[:-1], out.shape[-1]).movedim(-1, axis + 2)


def align_per_axis(block: XAttnRes, i: int, h: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Eq. 4 for entry ``i``, one axis at a time: 1D adaptive max pooling along each axis where ``h`` is larger,
    the 1x1 projection (an explicit channel contraction), then 1D linear interpolation along each axis where ``h``
    is smaller. Pooling comes first (reduce before projecting and upsampling, as the block does); a box max and a
    multilinear interpolation are separable, so the axis order within each step does not matter."""
    for axis, target in enumerate(size):
        if h.shape[axis + 2] > target:
            h = _along(h, axis, lambda v, t=target: F.adaptive_max_pool1d(v, t))
    projection = block.projections[i]
    if isinstance(projection, torch.nn.Conv2d) or isinstance(projection, torch.nn.Conv3d):
        weight = projection.weight.reshape(projection.weight.shape[0], projection.weight.shape[1])
        h = torch.einsum("oc,bc...->bo...", weight, h)
    for axis, target in enumerate(size):
        if h.shape[axis + 2] < target:
            h = _along(h, axis, lambda v, t=target: F.interpolate(v, size=t, mode="linear", align_corners=False))
    return h


def eq_5_to_8(block: XAttnRes, values: List[torch.Tensor]) -> torch.Tensor:
    """Eq. 5-8 by hand: RMSNorm keys with gain, logits with the pseudo-query, softmax over entries, weighted sum."""
    stack = torch.stack(values)  # (N, B, C, *S)
    shape = [1, 1, -1] + [1] * (stack.dim() - 3)
    keys = stack / torch.sqrt(stack.pow(2).mean(dim=2, keepdim=True) + block.eps) * block.gain.view(shape)
    logits = (keys * block.query.view(shape)).sum(dim=2, keepdim=True)
    return (torch.softmax(logits, dim=0) * stack).sum(dim=0)


def _anisotropic_case(name: str, seed: int = 0):
    spatial_dims, channels, size, entries = ANISOTROPIC[name]
    torch.manual_seed(seed)
    block = XAttnRes(spatial_dims, channels, [c for c, _ in entries])
    history = [torch.randn(2, c, *s) for c, s in entries]
    x = torch.randn(2, channels, *size)
    for (_, s) in entries[:-1]:
        assert any(a > b for a, b in zip(s, size)) and any(a < b for a, b in zip(s, size)), "not anisotropic"
    return block, x, history


@pytest.fixture(params=["fused_cpu", "pytorch"])
def implementation(request):
    with ops.use_implementation("default" if request.param == "fused_cpu" else "pytorch"):
        if ops.implementation_for(torch.zeros(1), [torch.zeros(1)]) != request.param:
            pytest.skip(f"{request.param} does not run here")
        yield request.param


@pytest.mark.parametrize("name", sorted(ANISOTROPIC))
def test_anisotropic_entries_aligned_per_axis_as_eq_4(name, implementation):
    block, x, history = _anisotropic_case(name)
    with torch.no_grad():
        block.query.normal_(std=2.0)
        block.gain.uniform_(0.5, 1.5)
    size = list(x.shape[2:])
    aligned = [align_per_axis(block, i, h, size) for i, h in enumerate(history)]
    assert all(list(v.shape) == list(x.shape) for v in aligned)
    expected = eq_5_to_8(block, aligned + [x])
    torch.testing.assert_close(block(x, history), expected, rtol=1e-5, atol=1e-5)
    # the literal equations of the package (ops.reference) align the same way
    torch.testing.assert_close(stacked_xattnres(block, x, history), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", sorted(ANISOTROPIC))
def test_anisotropic_backward_matches_the_per_axis_reference(name, implementation):
    block, x, history = _anisotropic_case(name, seed=1)
    with torch.no_grad():
        block.query.normal_(std=1.0)
    inputs = [t.clone().requires_grad_() for t in history + [x]]
    grad = torch.randn_like(x)
    out = block(inputs[-1], inputs[:-1])
    got = torch.autograd.grad(out, inputs + [block.query], grad)
    size = list(x.shape[2:])
    ref_inputs = [t.clone().requires_grad_() for t in history + [x]]
    aligned = [align_per_axis(block, i, h, size) for i, h in enumerate(ref_inputs[:-1])]
    expected = torch.autograd.grad(eq_5_to_8(block, aligned + [ref_inputs[-1]]), ref_inputs + [block.query], grad)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", sorted(ANISOTROPIC))
def test_anisotropic_zero_query_is_the_mean_of_the_per_axis_aligned_entries(name):
    block, x, history = _anisotropic_case(name, seed=2)
    size = list(x.shape[2:])
    aligned = [align_per_axis(block, i, h, size) for i, h in enumerate(history)]
    torch.testing.assert_close(block(x, history), torch.stack(aligned + [x]).mean(0), rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------------------- the networks

DYNUNET_CONFIGS = {
    # 2D, anisotropic strides, 4 levels
    "2d": dict(spatial_dims=2, in_channels=2, out_channels=3, kernel_size=[3, 3, 3, 3],
               strides=[1, [2, 1], 2, [1, 2]], upsample_kernel_size=[[2, 1], 2, [1, 2]], filters=[4, 6, 8, 10]),
    # 3D, nnU-Net-like anisotropic first levels ((1, 2, 2) in-plane only) and anisotropic kernels, deep supervision
    "3d": dict(spatial_dims=3, in_channels=1, out_channels=2, kernel_size=[[1, 3, 3], 3, 3, 3],
               strides=[1, [1, 2, 2], [2, 2, 1], 2], upsample_kernel_size=[[1, 2, 2], [2, 2, 1], 2],
               filters=[4, 6, 8, 8], deep_supervision=True, deep_supr_num=2, res_block=True),
}  # fmt: skip
DYNUNET_INPUTS = {"2d": (2, 2, 16, 12), "3d": (2, 1, 8, 16, 16)}
BASIC_FEATURES = (4, 4, 6, 8, 8, 4)
BASIC_INPUTS = {2: (2, 1, 32, 18), 3: (1, 1, 32, 18, 16)}  # 18: odd sizes below, UpCat's padding


def _perturb_queries(net: torch.nn.Module, std: float = 1.0) -> None:
    """Non-zero pseudo-queries and gains, so that the routing weights matter."""
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, XAttnRes):
                module.query.normal_(std=std)
                module.gain.uniform_(0.5, 1.5)


def _route(block: torch.nn.Module, x: torch.Tensor, pool: List[torch.Tensor]) -> torch.Tensor:
    """One block of the hand-wired reference: it must read the whole pool so far, into ``x``."""
    if isinstance(block, NoRouting):
        return x
    assert isinstance(block, XAttnRes)
    assert block.num_history == len(pool) and block.channels == x.shape[1]
    assert block.history_channels == [h.shape[1] for h in pool]
    return stacked_xattnres(block, x, list(pool))  # the literal Eq. 4-8


def reference_dynunet(net: XAttnResDynUNet, x: torch.Tensor) -> torch.Tensor:
    """Eq. 3, 10, 11 wired by hand on the DynUNet's modules (pool e_1..e_S, d_1.. ; Down inside the stage)."""
    e = [net.input_block(x)]
    for k, down in enumerate(net.downsamples):
        e.append(down(_route(net.routing.downsamples[k], e[-1], e)))
    e.append(net.bottleneck(_route(net.routing.bottleneck, e[-1], e)))
    d: List[torch.Tensor] = []
    h = e[-1]
    for j, up in enumerate(net.upsamples):
        skip = e[len(e) - 2 - j]
        u = _route(net.routing.upsamples[j], up.transp_conv(h), e + d)  # Eq. 11: XAttnRes(H, Up(x))
        h = up.conv_block(torch.cat([u, skip if net.skip else torch.zeros_like(skip)], dim=1))
        d.append(h)
    out = net.output_block(h)
    if net.training and net.deep_supervision:
        heads = [F.interpolate(head(d[-2 - k]), out.shape[2:]) for k, head in enumerate(net.deep_supervision_heads)]
        return torch.stack([out] + heads, dim=1)
    return out


def reference_basic_unet(net: XAttnResBasicUNet, x: torch.Tensor) -> torch.Tensor:
    """Eq. 3, 10, 11 wired by hand on the BasicUNet's modules (Down = max pooling, Up = upsample + pad)."""
    e = [net.conv_0(x)]
    for i in range(1, 5):
        down = getattr(net, f"down_{i}")
        e.append(down.convs(_route(getattr(net.routing, f"down_{i}"), down.max_pooling(e[-1]), e)))
    d: List[torch.Tensor] = []
    h = e[-1]
    for i in (4, 3, 2, 1):
        upcat, skip = getattr(net, f"upcat_{i}"), e[i - 1]
        u = upcat.upsample(h)
        pads = [p for k in range(u.dim() - 1, 1, -1) for p in (0, int(u.shape[k] != skip.shape[k]))]
        u = F.pad(u, pads, mode="replicate")
        u = _route(getattr(net.routing, f"upcat_{i}"), u, e + d)
        h = upcat.convs(torch.cat([skip if net.skip else torch.zeros_like(skip), u], dim=1))
        d.append(h)
    return net.final_conv(h)


@pytest.mark.parametrize("skip", [True, False])
@pytest.mark.parametrize("xattnres", ["full", "encoder", "decoder", "none"])
@pytest.mark.parametrize("dims", ["2d", "3d"])
def test_dynunet_plugin_matches_hand_wired_eq_10_11(dims, xattnres, skip):
    torch.manual_seed(0)
    net = XAttnResDynUNet(**DYNUNET_CONFIGS[dims], xattnres=xattnres, skip=skip)
    _perturb_queries(net)
    x = torch.randn(*DYNUNET_INPUTS[dims])
    for training in (False, True):
        net.train(training)
        with torch.no_grad():
            torch.testing.assert_close(net(x), reference_dynunet(net, x), rtol=1e-4, atol=1e-4)
    blocks = [n for n, m in net.named_modules() if isinstance(m, XAttnRes)]
    levels = len(DYNUNET_CONFIGS[dims]["filters"])
    encoder = [f"routing.downsamples.{k}" for k in range(1, levels - 2)] + ["routing.bottleneck"]  # not before e_2
    decoder = [f"routing.upsamples.{j}" for j in range(levels - 1)]
    wanted = {"full": encoder + decoder, "encoder": encoder, "decoder": decoder, "none": []}[xattnres]
    assert sorted(blocks) == sorted(wanted)


@pytest.mark.parametrize("skip", [True, False])
@pytest.mark.parametrize("xattnres", ["full", "encoder", "decoder"])
@pytest.mark.parametrize("dims", [2, 3])
def test_basic_unet_plugin_matches_hand_wired_eq_10_11(dims, xattnres, skip):
    torch.manual_seed(0)
    net = XAttnResBasicUNet(spatial_dims=dims, features=BASIC_FEATURES, xattnres=xattnres, skip=skip).eval()
    _perturb_queries(net)
    x = torch.randn(*BASIC_INPUTS[dims])
    with torch.no_grad():
        torch.testing.assert_close(net(x), reference_basic_unet(net, x), rtol=1e-4, atol=1e-4)
    # the pool grows stage by stage: the decoder block before upcat_1 reads x0..x4, u4..u2
    if xattnres != "encoder":
        assert net.routing.upcat_1.history_channels == [4, 4, 6, 8, 8, 8, 6, 4]


def _plain_dynunet(dims: str) -> DynUNet:
    config = {k: v for k, v in DYNUNET_CONFIGS[dims].items()}
    return DynUNet(**config)


@pytest.mark.parametrize("dims", ["2d", "3d"])
def test_plain_dynunet_weights_load_with_exactly_the_xattnres_parameters_missing(dims):
    torch.manual_seed(0)
    plain = _plain_dynunet(dims)
    net = XAttnResDynUNet(**DYNUNET_CONFIGS[dims])
    xattnres = sorted(
        f"{name}.{p}" for name, m in net.named_modules() if isinstance(m, XAttnRes) for p, _ in m.named_parameters()
    )
    assert xattnres and all(k.startswith("routing.") for k in xattnres)
    assert set(net.state_dict()) == set(plain.state_dict()) | set(xattnres)  # original names unchanged
    before = {k: v.clone() for k, v in net.state_dict().items() if k.startswith("routing.")}
    assert load_plain_state_dict(net, plain.state_dict()) == xattnres
    for key, value in plain.state_dict().items():
        torch.testing.assert_close(net.state_dict()[key], value, rtol=0, atol=0)
    for key, value in before.items():  # the XAttnRes parameters keep their values (zero queries)
        torch.testing.assert_close(net.state_dict()[key], value, rtol=0, atol=0)
    # weights of another DynUNet are refused, nothing loaded
    other = DynUNet(**dict(DYNUNET_CONFIGS[dims], filters=[4, 6, 8, 12]))
    with pytest.raises(RuntimeError, match="shape mismatch: bottleneck"):
        load_plain_state_dict(net, other.state_dict())
    with pytest.raises(RuntimeError, match="missing keys: input_block"):
        load_plain_state_dict(net, {k: v for k, v in plain.state_dict().items() if not k.startswith("input_block")})
    # a strict_network (refuses partial loads) still takes plain weights through load_plain_state_dict
    strict = strict_network("xattnres_monai.networks.plugins.XAttnResDynUNet", **DYNUNET_CONFIGS[dims])
    assert load_plain_state_dict(strict, plain.state_dict()) == xattnres


def test_plain_basic_unet_weights_load_with_exactly_the_xattnres_parameters_missing():
    plain = BasicUNet(spatial_dims=2, features=BASIC_FEATURES)
    net = XAttnResBasicUNet(spatial_dims=2, features=BASIC_FEATURES, xattnres="decoder")
    missing = load_plain_state_dict(net, plain.state_dict())
    assert missing == sorted(k for k in net.state_dict() if k not in plain.state_dict())
    assert {k.rsplit(".", 1)[-1] for k in missing} >= {"query", "gain"}
    assert {k.split(".")[1] for k in missing} == {"upcat_4", "upcat_3", "upcat_2", "upcat_1"}


@pytest.mark.parametrize("dims", ["2d", "3d"])
def test_no_xattnres_with_skips_is_the_plain_dynunet(dims):
    torch.manual_seed(0)
    plain = _plain_dynunet(dims)
    net = XAttnResDynUNet(**DYNUNET_CONFIGS[dims], xattnres="none")
    assert load_plain_state_dict(net, plain.state_dict()) == []
    x = torch.randn(*DYNUNET_INPUTS[dims])
    for training in (False, True):  # training: DynUNet's deep supervision heads, stacked
        plain.train(training), net.train(training)
        with torch.no_grad():
            torch.testing.assert_close(net(x), plain(x), rtol=0, atol=1e-6)


@pytest.mark.parametrize("dims", [2, 3])
def test_no_xattnres_with_skips_is_the_plain_basic_unet(dims):
    torch.manual_seed(0)
    plain = BasicUNet(spatial_dims=dims, features=BASIC_FEATURES).eval()
    net = XAttnResBasicUNet(spatial_dims=dims, features=BASIC_FEATURES, xattnres="none").eval()
    assert load_plain_state_dict(net, plain.state_dict()) == []
    x = torch.randn(*BASIC_INPUTS[dims])
    with torch.no_grad():
        torch.testing.assert_close(net(x), plain(x), rtol=0, atol=1e-6)


def _record_blocks(net: torch.nn.Module) -> Tuple[Dict[str, tuple], list]:
    calls: Dict[str, tuple] = {}

    def hook(name):
        def record(module, args, output):
            calls[name] = (args[0].detach().clone(), [h.detach().clone() for h in args[1]], output.detach().clone())

        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in net.named_modules() if isinstance(m, XAttnRes)]
    return calls, handles


@pytest.mark.parametrize("which", ["dynunet-2d", "dynunet-3d", "basic-2d"])
def test_zero_queries_make_each_block_the_mean_of_its_aligned_entries(which):
    torch.manual_seed(0)
    if which.startswith("dynunet"):
        dims = which.split("-")[1]
        net, x = XAttnResDynUNet(**DYNUNET_CONFIGS[dims]).eval(), torch.randn(*DYNUNET_INPUTS[dims])
    else:
        net, x = XAttnResBasicUNet(spatial_dims=2, features=BASIC_FEATURES).eval(), torch.randn(*BASIC_INPUTS[2])
    calls, handles = _record_blocks(net)
    with torch.no_grad():
        net(x)
    for handle in handles:
        handle.remove()
    blocks = {n: m for n, m in net.named_modules() if isinstance(m, XAttnRes)}
    assert set(calls) == set(blocks)
    for name, block in blocks.items():
        assert torch.count_nonzero(block.query) == 0
        inp, history, out = calls[name]
        size = list(inp.shape[2:])
        with torch.no_grad():
            aligned = [proj(resize(h, size)) for proj, h in zip(block.projections, history[: block.num_history])]
        torch.testing.assert_close(out, torch.stack(aligned + [inp]).mean(0), rtol=1e-5, atol=1e-5, msg=name)
    # and the attention weights are uniform
    with capture_attention(net) as weights, torch.no_grad():
        net(x)
    for name, w in weights.items():
        torch.testing.assert_close(w, torch.full_like(w, 1.0 / w.shape[1]), rtol=0, atol=1e-6, msg=name)


def test_no_skip_feeds_zeros_in_place_of_the_skip_tensor():
    """With ``skip=False`` the decoder convolutions' weights for the skip channels have no effect (and no
    gradient): the network is the narrower "no skip" network, with the plain parameter shapes."""
    torch.manual_seed(0)
    config = DYNUNET_CONFIGS["2d"]
    net = XAttnResDynUNet(**config, skip=False).eval()
    plain_shapes = {k: v.shape for k, v in _plain_dynunet("2d").state_dict().items()}
    assert all(net.state_dict()[k].shape == s for k, s in plain_shapes.items())
    x = torch.randn(*DYNUNET_INPUTS["2d"])
    with torch.no_grad():
        before = net(x)
        for up in net.upsamples:  # input channels [up; skip]: perturb the skip half
            weight = up.conv_block.conv1.conv.weight
            weight[:, weight.shape[1] // 2 :].normal_()
        torch.testing.assert_close(net(x), before, rtol=0, atol=0)
    net.train()
    net(x).sum().backward()
    for up in net.upsamples:
        grad = up.conv_block.conv1.conv.weight.grad
        assert torch.count_nonzero(grad[:, grad.shape[1] // 2 :]) == 0 and torch.count_nonzero(grad) > 0


def test_deep_supervision_in_training_mode():
    torch.manual_seed(0)
    net = XAttnResDynUNet(**DYNUNET_CONFIGS["3d"]).train()
    x = torch.randn(*DYNUNET_INPUTS["3d"])
    out = net(x)
    assert out.shape == (2, 1 + 2, 2, *DYNUNET_INPUTS["3d"][2:])  # output + 2 heads, at the output size
    loss = sum(0.5**i * out[:, i].square().mean() for i in range(out.shape[1]))
    loss.backward()
    for head in net.deep_supervision_heads:
        assert head.conv.conv.weight.grad is not None and torch.count_nonzero(head.conv.conv.weight.grad) > 0
    queries = [m.query.grad for m in net.modules() if isinstance(m, XAttnRes)]
    assert queries and all(g is not None and torch.count_nonzero(g) > 0 for g in queries)  # zero init still learns
    assert net.eval()(x).shape == (2, 2, *DYNUNET_INPUTS["3d"][2:])  # eval: the output only
    # MONAI's DeepSupervisionLoss takes the unbound heads
    from monai.losses import DeepSupervisionLoss, DiceCELoss

    target = torch.randint(0, 2, (2, 1, *DYNUNET_INPUTS["3d"][2:]))
    value = DeepSupervisionLoss(DiceCELoss(to_onehot_y=True, softmax=True))(list(net.train()(x).unbind(1)), target)
    assert torch.isfinite(value)


@pytest.mark.parametrize("which", ["dynunet-3d", pytest.param("basic-2d", marks=pytest.mark.slow)])
def test_torchscript_reproduces_eager(which):
    torch.manual_seed(0)
    if which == "dynunet-3d":
        net, x = XAttnResDynUNet(**DYNUNET_CONFIGS["3d"]), torch.randn(*DYNUNET_INPUTS["3d"])
    else:
        net, x = XAttnResBasicUNet(spatial_dims=2, features=BASIC_FEATURES), torch.randn(*BASIC_INPUTS[2])
    net.eval()
    _perturb_queries(net)
    scripted = torch.jit.script(net)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), net(x), rtol=1e-4, atol=1e-4)
        other = torch.randn(1, 1, 48, 20) if which == "basic-2d" else x[:1]  # another size / batch
        torch.testing.assert_close(scripted(other), net(other), rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_torch_export_reproduces_eager():
    torch.manual_seed(0)
    net = XAttnResDynUNet(**DYNUNET_CONFIGS["3d"]).eval()
    _perturb_queries(net)
    x = torch.randn(*DYNUNET_INPUTS["3d"])
    exported = torch.export.export(net, (x,))
    with torch.no_grad():
        torch.testing.assert_close(exported.module()(x), net(x), rtol=1e-4, atol=1e-4)


def test_options_are_parsed_and_recorded():
    net = XAttnResDynUNet(
        "3", "1", "2", [3, 3, 3], [1, 2, 2], [2, 2], filters=[4, 8, 8], deep_supervision="true",
        xattnres="Decoder", skip="false", norm_name=["instance", {"affine": True}],
    )  # fmt: skip
    assert (net.xattnres, net.skip, net.deep_supervision, net.norm_name) == ("decoder", False, True, ("instance", {"affine": True}))
    definition = network_definition(net)
    assert definition["_target_"] == "xattnres_monai.networks.plugins.dynunet.XAttnResDynUNet"
    rebuilt = XAttnResDynUNet(**{k: v for k, v in definition.items() if k != "_target_"})
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in net.state_dict().items()}
    basic = XAttnResBasicUNet(2, features=list(BASIC_FEATURES), skip="0")
    assert network_definition(basic)["skip"] is False and network_definition(basic)["features"] == list(BASIC_FEATURES)
    with pytest.raises(ValueError, match="xattnres"):
        XAttnResDynUNet(2, 1, 2, [3, 3, 3], [1, 2, 2], [2, 2], xattnres="both")
    with pytest.raises(ValueError, match="skip"):
        XAttnResBasicUNet(2, skip="maybe")
    with pytest.raises(ValueError, match="spatial_dims must be 2 or 3"):
        XAttnResBasicUNet(1)


def test_build_routing_mirrors_stage_names():
    stages = [Stage("stem", "encoder", 1, 4), Stage("down.0", "encoder", 4, 8), Stage("down.1", "encoder", 8, 16),
              Stage("up.0", "decoder", 8, 8), Stage("up.1", "decoder", 4, 4)]  # fmt: skip
    routing = build_routing(2, stages, "decoder")
    assert isinstance(routing.down[0], NoRouting) and isinstance(routing.down[1], NoRouting)
    assert routing.up[0].history_channels == [4, 8, 16] and routing.up[1].history_channels == [4, 8, 16, 8]
    assert not hasattr(routing, "stem")
    with pytest.raises(ValueError, match="out of order"):
        build_routing(2, [stages[0], Stage("down.1", "encoder", 4, 8)])


@pytest.mark.parametrize("which", ["dynunet", "basic_unet"])
def test_pruned_connections_drop_exactly_the_named_projections(which):
    """``pruned_connections`` ("block:entry", the report's stage names) removes those 1x1 projections and the
    entries from the blocks' softmax, is recorded in the definition, scripts, and refuses non-connections."""
    from xattnres_monai.routing.layout import routing_layout

    if which == "dynunet":
        make = lambda **kw: XAttnResDynUNet(3, 1, 3, [3, 3, 3, 3], [1, 2, 2, [2, 2, 1]], [2, 2, [2, 2, 1]],
                                            filters=[4, 8, 16, 16], **kw)  # fmt: skip
        shape, pruned = (1, 1, 16, 16, 8), ["d3:e4", "d3:e1", "e4:e2"]
        # e4 (16 channels) into d3's 4-channel Up, e1 (4) into d3 (equal widths: no projection), e2 (8) into e4's 16
        removed = 16 * 4 + 0 + 8 * 16
    else:
        make = lambda **kw: XAttnResBasicUNet(2, 1, 3, features=list(BASIC_FEATURES), **kw)
        shape, pruned = (1, 1, 32, 32), ["d4:e5", "d4:d1"]
        removed = sum(w.numel() for w in _projection_weights(make(), "d4", ("e5", "d1")))
    full, net = make(), make(pruned_connections=pruned)
    assert removed > 0
    assert sum(p.numel() for p in full.parameters()) - sum(p.numel() for p in net.parameters()) == removed
    entries = {b.name: b.entries for b in routing_layout(net)}
    for name in pruned:
        block, entry = name.split(":")
        assert entry not in entries[block] and entry in {b.name: b.entries for b in routing_layout(full)}[block]
    assert network_definition(net)["pruned_connections"] == sorted(pruned)
    assert "pruned_connections" not in network_definition(full)
    net.eval()
    with capture_attention(net) as weights:
        out = net(torch.randn(*shape))
    for name in {p.split(":")[0] for p in pruned}:
        module = next(b.module for b in routing_layout(net) if b.name == name)
        reads = len(entries[name])  # the entries it still reads, its own input included
        torch.testing.assert_close(weights[module], torch.full_like(weights[module], 1 / reads))  # zero queries
    x = torch.randn(*shape)
    torch.testing.assert_close(torch.jit.script(net)(x), net(x))
    assert out.shape[:2] == (1, 3)
    with pytest.raises(ValueError, match=f"{type(net).__name__}: pruned_connections .* not connections"):
        make(pruned_connections=["d1:d2"])  # d1 runs before d2
    with pytest.raises(ValueError, match="'block:entry' stage names"):
        make(pruned_connections="d9:e1")


def _projection_weights(net, block_name, entries):
    from xattnres_monai.routing.layout import routing_layout

    layout = next(b for b in routing_layout(net) if b.name == block_name)
    block = dict(net.named_modules())[layout.module]
    weights = []
    for entry in entries:
        k = layout.entries.index(entry)
        projection = block.projections[k]
        weights += list(projection.parameters())
    return weights
