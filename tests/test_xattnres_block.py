"""The XAttnRes block against the paper's equations (Eq. 4-8)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from xattnres_monai.networks import ops
from xattnres_monai.networks.blocks import QUERY_INITS, XAttnRes
from xattnres_monai.networks.ops import fused_cpu
from xattnres_monai.networks.ops.reference import resize, stacked_xattnres

# (spatial_dims, target channels, target size, history [(channels, size)])
CASES = {
    "2d-mixed": (2, 8, (12, 10), [(8, (24, 20)), (4, (12, 10)), (16, (6, 5)), (8, (3, 3)), (8, (12, 10))]),
    "2d-odd": (2, 6, (13, 7), [(3, (27, 15)), (6, (7, 4)), (12, (13, 7))]),
    "3d-mixed": (3, 4, (6, 8, 5), [(2, (12, 16, 10)), (4, (3, 4, 3)), (8, (6, 8, 5)), (4, (6, 8, 5))]),
}


def make_case(name: str, seed: int = 0, batch: int = 2):
    spatial_dims, channels, size, entries = CASES[name]
    torch.manual_seed(seed)
    block = XAttnRes(spatial_dims, channels, [c for c, _ in entries])
    history = [torch.randn(batch, c, *s) for c, s in entries]
    x = torch.randn(batch, channels, *size)
    return block, x, history


@pytest.mark.parametrize("name", sorted(CASES))
def test_zero_query_gives_mean_of_aligned_entries(name):
    block, x, history = make_case(name)
    size = list(x.shape[2:])
    aligned = [proj(resize(h, size)) for proj, h in zip(block.projections, history)]
    expected = torch.stack(aligned + [x]).mean(0)
    torch.testing.assert_close(block(x, history), expected, rtol=0, atol=1e-6)


@pytest.fixture(params=["fused_cpu", "pytorch"])
def implementation(request):
    """Run a test with the fused CPU kernel and with the PyTorch formulation (CUDA / fallback / scripted path)."""
    with ops.use_implementation("default" if request.param == "fused_cpu" else "pytorch"):
        if ops.implementation_for(torch.zeros(1), [torch.zeros(1)]) != request.param:
            pytest.fail(f"{request.param} does not run here (the fused CPU kernel needs a C++ compiler to build)")
        yield request.param


@pytest.mark.parametrize("batch", [2, 1])
@pytest.mark.parametrize("name", sorted(CASES))
def test_optimised_matches_stacked_equations(name, batch, implementation):
    block, x, history = make_case(name, seed=1, batch=batch)
    with torch.no_grad():
        block.query.normal_(std=2.0)  # far from uniform weights
        block.gain.uniform_(0.5, 1.5)
    out = block(x, history)
    torch.testing.assert_close(out, stacked_xattnres(block, x, history), rtol=1e-5, atol=1e-5)
    _, weights = stacked_xattnres(block, x, history, return_weights=True)
    torch.testing.assert_close(block.attention_weights(x, history), weights, rtol=1e-5, atol=1e-5)
    # the weights really vary over entries and positions
    assert weights.std(dim=1).mean() > 0.05


@pytest.mark.parametrize("batch", [2, 1])
@pytest.mark.parametrize("name", sorted(CASES))
def test_hand_written_backward_matches_autograd_of_the_equations(name, batch, implementation):
    """The training path's backward (fused kernel or ``ops.pytorch.Aggregate``) against autograd through the literal equations.

    Batch 1 runs the fused kernel's row-chunked path (several threads on one image)."""
    block, x, history = make_case(name, seed=2, batch=batch)
    block, x = block.double(), x.double().requires_grad_()
    history = [h.double().requires_grad_() for h in history]
    with torch.no_grad():
        block.query.normal_(std=2.0)
        block.gain.uniform_(0.5, 1.5)
    inputs = [x, *history, *block.parameters()]
    grad_out = torch.randn_like(x)
    ours = torch.autograd.grad(block(x, history), inputs, grad_out)
    literal = torch.autograd.grad(stacked_xattnres(block, x, history), inputs, grad_out)
    for a, b in zip(ours, literal):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("threads", [1, 2])
def test_fused_kernel_float32_training_step_matches_pytorch_formulation(threads):
    """float32 forward and gradients of both implementations agree on the finest stage of the default U-Net
    (the kernel runs its rows inline with one thread, on a thread pool with two)."""
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        _compare_float32_implementations()
    finally:
        torch.set_num_threads(previous_threads)


def _compare_float32_implementations():
    torch.manual_seed(0)
    channels, scales = [16, 32, 64, 128, 128, 64, 32, 16], [1, 2, 4, 8, 16, 8, 4, 2]
    block = XAttnRes(2, 16, channels)
    with torch.no_grad():
        block.query.normal_()
    history = [torch.randn(3, c, 64 // s, 64 // s) for c, s in zip(channels, scales)]
    x = torch.randn(3, 16, 64, 64)
    results = []
    for implementation in ("default", "pytorch"):
        with ops.use_implementation(implementation):
            inputs = [t.clone().requires_grad_() for t in [x] + history]
            block.zero_grad()
            out = block(inputs[0], inputs[1:])
            out.backward(torch.linspace(-1, 1, out.numel()).view_as(out))
            with torch.no_grad():
                inference = block(x, history)
        torch.testing.assert_close(inference, out.detach())
        results.append([out.detach(), block.query.grad.clone()] + [t.grad for t in inputs])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_empty_batch(implementation):
    block = XAttnRes(2, 4, [8, 4])
    x = torch.randn(0, 4, 8, 8, requires_grad=True)
    history = [torch.randn(0, 8, 16, 16, requires_grad=True), torch.randn(0, 4, 4, 4, requires_grad=True)]
    out = block(x, history)
    out.sum().backward()
    assert out.shape == x.shape and history[0].grad.shape == history[0].shape and block.query.grad.abs().sum() == 0


def test_fused_kernel_missing_compiler_falls_back_with_a_warning(tmp_path):
    """Without a compiler the block warns once and runs the PyTorch formulation (checked in a fresh process)."""
    import subprocess
    import sys

    code = (
        "import warnings, torch\n"
        "from xattnres_monai.networks.blocks import XAttnRes\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    out = XAttnRes(2, 4, [4])(torch.ones(1, 4, 4, 4), [torch.ones(1, 4, 2, 2)])\n"
        "assert torch.allclose(out, torch.ones(1, 4, 4, 4))\n"
        "print([str(w.message) for w in caught])\n"
    )
    env = {**__import__("os").environ, "CXX": str(tmp_path / "no-such-compiler"), "XATTNRES_KERNEL_CACHE": str(tmp_path)}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stderr
    assert "fused CPU kernel could not be built, using the PyTorch formulation" in run.stdout
    assert not list(tmp_path.glob("*.tmp"))  # no half-built library left in the cache


def test_upsampled_entries_are_projected_before_interpolation_exactly():
    """Bilinear interpolation and a 1x1 conv commute: both orders give the same aligned value."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(5, 3, 1, bias=False)
    h = torch.randn(2, 5, 7, 9)
    a = conv(F.interpolate(h, size=(15, 20), mode="bilinear", align_corners=False))
    b = F.interpolate(conv(h), size=(15, 20), mode="bilinear", align_corners=False)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_projection_is_identity_when_channels_match_and_conv_otherwise():
    block = XAttnRes(2, 8, [8, 4, 16])
    assert isinstance(block.projections[0], torch.nn.Identity)
    assert isinstance(block.projections[1], torch.nn.Conv2d) and block.projections[1].in_channels == 4
    assert sum(p.numel() for p in block.parameters()) == 4 * 8 + 16 * 8 + 8 + 8


def test_each_entry_resized_once_per_target_resolution():
    block_a = XAttnRes(2, 4, [4, 8])
    block_b = XAttnRes(2, 4, [4, 8, 4])
    history = [torch.randn(1, 4, 32, 32), torch.randn(1, 8, 16, 16)]
    cache: dict = {}
    block_a(torch.randn(1, 4, 8, 8), history, cache)
    pools = lambda: sorted(k for k in cache if k.startswith("pool"))  # noqa: E731 (also cached: channels-last copies)
    assert pools() == ["pool0x8x8", "pool1x8x8"]
    pooled = cache["pool0x8x8"]
    history.append(torch.randn(1, 4, 8, 8))
    block_b(torch.randn(1, 4, 8, 8), history, cache)
    assert pools() == ["pool0x8x8", "pool1x8x8"] and cache["pool0x8x8"] is pooled  # reused, not recomputed


def test_gradients_reach_query_and_weights_specialise():
    torch.manual_seed(0)
    block = XAttnRes(2, 4, [4, 4, 4])
    x = torch.randn(8, 4, 6, 6)
    # entry n points mostly along channel n, so a single pseudo-query can tell the entries apart
    history = [0.3 * torch.randn(8, 4, 6, 6) + 2 * F.one_hot(torch.tensor(n), 4).view(1, 4, 1, 1) for n in range(3)]
    target = history[1]  # the toy task: route entry 1 through
    loss = F.mse_loss(block(x, history), target)
    loss.backward()
    assert block.query.grad is not None and block.query.grad.abs().sum() > 0
    optimiser = torch.optim.Adam(block.parameters(), lr=0.1)
    for _ in range(30):
        optimiser.zero_grad()
        F.mse_loss(block(x, history), target).backward()
        optimiser.step()
    weights = block.attention_weights(x, history)
    assert not torch.allclose(weights, torch.full_like(weights, 0.25), atol=1e-2)
    assert weights[:, 1].mean() > 0.5  # it learned to prefer the useful entry


@pytest.mark.parametrize("init", QUERY_INITS)
def test_query_initialisations(init):
    torch.manual_seed(0)
    block = XAttnRes(2, 64, [32], query_init=init)
    if init == "zero":
        assert torch.count_nonzero(block.query) == 0
    else:
        assert block.query.abs().sum() > 0
        bound = {"normal": 0.2, "kaiming_uniform": (6 / 64) ** 0.5, "xavier_uniform": (6 / 65) ** 0.5}[init]
        assert block.query.abs().max() <= bound + 1e-6


def test_no_state_kept_between_forward_passes():
    block, x, history = make_case("2d-mixed")
    first = block(x, history)
    block(torch.randn_like(x), [torch.randn_like(h) for h in history])
    torch.testing.assert_close(block(x, history), first)
    assert not any(isinstance(v, torch.Tensor) for v in vars(block).values())


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"spatial_dims": 1, "channels": 4, "history_channels": [4]}, "spatial_dims must be 2 or 3, got 1"),
        ({"spatial_dims": 2, "channels": 4, "history_channels": [4], "query_init": "ones"}, "query_init must be"),
        ({"spatial_dims": 2, "channels": 0, "history_channels": [4]}, "channel counts must be positive"),
    ],
)
def test_bad_configuration(kwargs, message):
    with pytest.raises(ValueError, match=message):
        XAttnRes(**kwargs)


def test_bad_inputs_name_expected_and_given():
    block = XAttnRes(2, 4, [8, 4])
    with pytest.raises(ValueError, match="expected x with 4 channels, got 3"):
        block(torch.randn(1, 3, 8, 8), [torch.randn(1, 8, 8, 8), torch.randn(1, 4, 8, 8)])
    with pytest.raises(ValueError, match="at least 2 entries, got 1"):
        block(torch.randn(1, 4, 8, 8), [torch.randn(1, 8, 8, 8)])
    with pytest.raises(ValueError, match="history entry 0 should have 8 channels, got 5"):
        block(torch.randn(1, 4, 8, 8), [torch.randn(1, 5, 8, 8), torch.randn(1, 4, 8, 8)])


def test_block_is_scriptable():
    block, x, history = make_case("3d-mixed")
    with torch.no_grad():
        block.query.normal_()
    scripted = torch.jit.script(block)
    torch.testing.assert_close(scripted(x, history, {}), block(x, history))


def test_implementation_for_follows_the_dispatch_rules(caplog):
    values = [torch.randn(1, 4, 4, 4), torch.randn(1, 4, 8, 8)]
    assert ops.implementation_for(values[-1], values) == "fused_cpu"  # eager, CPU, float32 (the kernel is built)
    assert ops.implementation_for(values[-1], [v.double() for v in values]) == "fused_cpu"
    assert ops.implementation_for(values[-1], [v.bfloat16() for v in values]) == "pytorch"
    with ops.use_implementation("pytorch"):
        assert ops.implementation_for(values[-1], values) == "pytorch"
    seen = []
    torch.jit.trace(lambda t: seen.append(ops.implementation_for(t, [t])) or t * 2, (values[-1],), check_trace=False)
    assert seen == ["pytorch_graph"]
    with pytest.raises(ValueError, match="'default' or 'pytorch'"):
        with ops.use_implementation("cuda"):
            pass
    # the choice is logged (at DEBUG, once per implementation, device, dtype and autograd state)
    ops.dispatch._logged.clear()
    with caplog.at_level("DEBUG", logger="xattnres_monai.networks.ops.dispatch"):
        for _ in range(2):
            XAttnRes(2, 4, [4])(values[1], values[:1])
    messages = [r.getMessage() for r in caplog.records]
    assert messages == ["XAttnRes aggregation: fused_cpu for cpu torch.float32 (grad True)"]


def test_reference_aggregate_is_the_block_with_query_times_gain():
    block, x, history = make_case("2d-mixed", seed=3)
    with torch.no_grad():
        block.query.normal_(std=2.0)
        block.gain.uniform_(0.5, 1.5)
    values = [p(resize(h, list(x.shape[2:]))) for p, h in zip(block.projections, history)] + [x]
    expected = ops.reference.aggregate(block.query * block.gain, values, block.eps)
    torch.testing.assert_close(ops.aggregate(block.query * block.gain, values, block.eps), expected)
    torch.testing.assert_close(stacked_xattnres(block, x, history), expected)


def test_cached_kernel_is_loaded_without_a_compiler_and_readable_by_all(tmp_path):
    """A build in the cache is loaded as is: no compiler lookup, no subprocess (checked in a fresh process with both
    booby-trapped). Builds are written read+execute for all, so a shared cache serves every user."""
    import os
    import shutil
    import stat
    import subprocess
    import sys

    assert fused_cpu.available(torch.zeros(1))
    built = fused_cpu._cached_path()
    assert stat.S_IMODE(built.stat().st_mode) == 0o755
    shutil.copy2(built, tmp_path / built.name)
    code = (
        "import shutil, subprocess, warnings, torch\n"
        "def trap(*args, **kwargs): raise AssertionError('compiler looked up')\n"
        "shutil.which = subprocess.run = subprocess.Popen = trap\n"
        "warnings.simplefilter('error')\n"
        "from xattnres_monai.networks import ops\n"
        "print(ops.implementation_for(torch.zeros(1), [torch.zeros(1)]))\n"
    )
    env = {**os.environ, "XATTNRES_KERNEL_CACHE": str(tmp_path), "PATH": ""}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "fused_cpu"
