"""Dual Cross-Attention: shapes at any size, the equations against naive references, token cap, size, U-Net option."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from xattnres_monai.networks.blocks import ChannelCrossAttention, DualCrossAttention, SpatialCrossAttention
from xattnres_monai.networks.nets import XAttnResUNet
from xattnres_monai.networks.utils import count_parameters

SMALL = [4, 8, 8, 16]  # channels of four skips, each divisible by the 4 spatial heads


def pyramid(channels, size, batch=1, seed=0):
    """Skip maps as a U-Net makes them: full resolution first, then halved (floor) by each max-pooling."""
    torch.manual_seed(seed)
    skips, size = [], list(size)
    for c in channels:
        skips.append(torch.randn(batch, c, *size))
        size = [s // 2 for s in size]
    return skips


def randomise(module):
    """Non-trivial LayerNorm affine parameters and batch-norm statistics, so the references test them."""
    torch.manual_seed(123)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, torch.nn.LayerNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(std=0.1)
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.normal_(std=0.1)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(std=0.1)
    return module


# ---- naive references, written from the equations -------------------------------------------------------


def layer_norm(x, norm):
    mean = x.mean(-1, keepdim=True)
    var = (x - mean).square().mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + norm.eps) * norm.weight + norm.bias


def depthwise(x, proj):
    return x * proj.weight + proj.bias


def naive_channel_attention(module, tokens):
    z = [layer_norm(t, n) for t, n in zip(tokens, module.norms)]
    context = torch.cat(z, dim=2)
    total = context.shape[2]
    out = []
    for i, (t, p) in enumerate(zip(tokens, module.projections)):
        q, k, v = depthwise(z[i], p.query), depthwise(context, p.key), depthwise(context, p.value)
        logits = torch.einsum("bnc,bnd->bcd", q, k) / math.sqrt(total)  # channels x all channels
        weights = logits.softmax(dim=-1)
        out.append(t + depthwise(torch.einsum("bcd,bnd->bnc", weights, v), p.out))
    return out


def naive_spatial_attention(module, tokens):
    z = [layer_norm(t, n) for t, n in zip(tokens, module.norms)]
    context = torch.cat(z, dim=2)
    heads = module.num_heads
    out = []
    for i, (t, p) in enumerate(zip(tokens, module.projections)):
        q, k, v = depthwise(context, p.query), depthwise(context, p.key), depthwise(z[i], p.value)
        d, dv = q.shape[2] // heads, v.shape[2] // heads
        per_head = []
        for h in range(heads):
            qh, kh, vh = q[..., h * d : (h + 1) * d], k[..., h * d : (h + 1) * d], v[..., h * dv : (h + 1) * dv]
            weights = (torch.einsum("bnc,bmc->bnm", qh, kh) / math.sqrt(d)).softmax(dim=-1)  # tokens x tokens
            per_head.append(torch.einsum("bnm,bmc->bnc", weights, vh))
        out.append(t + depthwise(torch.cat(per_head, dim=2), p.out))
    return out


def naive_dca(module, skips):
    """The whole block, upsampling before the 1x1 convolution as in the published code."""
    size = skips[0].shape[2:]
    grid = [max(1, int(s / module.patch_size + 0.5)) for s in size]
    tokens = []
    for s, emb in zip(skips, module.embeddings):
        tokens.append(depthwise(F.adaptive_avg_pool2d(s, grid).flatten(2).transpose(1, 2), emb.projection))
    tokens = naive_channel_attention(module.channel_attention, tokens)
    tokens = naive_spatial_attention(module.spatial_attention, tokens)
    out = []
    for t, s, fusion in zip(tokens, skips, module.fusions):
        x = t.transpose(1, 2).reshape(t.shape[0], t.shape[2], *grid)
        x = fusion.conv(F.interpolate(x, size=s.shape[2:], mode="bilinear", align_corners=False))
        out.append(fusion.norm_act(x + s))
    return out


# ---- tests --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(64, 64), (96, 64), (225, 193)])
def test_output_shapes_equal_skip_shapes(size):
    skips = pyramid(SMALL, size, batch=2)
    dca = DualCrossAttention(2, SMALL).eval()
    with torch.no_grad():
        out = dca(skips)
    assert [o.shape for o in out] == [s.shape for s in skips]
    net = XAttnResUNet(2, 1, 3, xattnres="none", dca=True).eval()
    with torch.no_grad():
        assert net(torch.randn(1, 1, *size)).shape == (1, 3, *size)


def test_3d_output_shapes():
    skips = pyramid([4, 8], (17, 12, 10), batch=2)
    out = DualCrossAttention(3, [4, 8], patch_size=4)(skips)
    assert [o.shape for o in out] == [s.shape for s in skips]


@pytest.mark.parametrize("train", [True, False])
def test_differentiable_all_parameters_get_gradients(train):
    skips = [s.requires_grad_() for s in pyramid(SMALL, (40, 33), batch=2)]
    dca = DualCrossAttention(2, SMALL, patch_size=4).train(train)
    torch.manual_seed(1)
    loss = sum((o * torch.randn_like(o)).sum() for o in dca(skips))
    loss.backward()
    assert all(s.grad is not None and s.grad.abs().sum() > 0 for s in skips)
    for name, p in dca.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        if name.startswith("spatial_attention.") and name.endswith(".key.bias"):
            # q_n . b is constant over the keys of row n: the softmax cancels it, the gradient is zero
            assert p.grad.abs().max() < 1e-5, name
        elif not train:
            # (in training mode the batch statistics cancel the per-channel constants added after the
            # last attention: the spatial value and output biases and the 1x1 convolution bias)
            assert p.grad.abs().sum() > 1e-3, name


def test_channel_attention_matches_naive_reference():
    torch.manual_seed(0)
    cca = randomise(ChannelCrossAttention([4, 8, 12])).double()
    tokens = [torch.randn(2, 15, c, dtype=torch.float64) for c in (4, 8, 12)]
    for got, want in zip(cca(tokens), naive_channel_attention(cca, tokens)):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_spatial_attention_matches_naive_reference():
    torch.manual_seed(0)
    sca = randomise(SpatialCrossAttention([4, 8, 12], num_heads=4)).double()
    tokens = [torch.randn(2, 15, c, dtype=torch.float64) for c in (4, 8, 12)]
    for got, want in zip(sca(tokens), naive_spatial_attention(sca, tokens)):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("size", [(24, 24), (27, 19)])
def test_whole_block_matches_naive_reference(size):
    dca = randomise(DualCrossAttention(2, [4, 8, 8], patch_size=3)).double().eval()
    skips = [s.double() for s in pyramid([4, 8, 8], size, batch=2)]
    with torch.no_grad():
        for got, want in zip(dca(skips), naive_dca(dca, skips)):
            torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_token_cap_bounds_the_grid():
    dca = DualCrossAttention(2, [4, 4])
    assert dca.token_grid([224, 224]) == [28, 28]  # the paper's grid, exactly at the cap
    assert dca.token_grid([225, 193]) == [28, 24]
    for size in ([1024, 768], [4000, 3000], [100000, 8], [9, 5000]):
        grid = dca.token_grid(size)
        assert all(g >= 1 for g in grid) and math.prod(grid) <= 784, (size, grid)
        assert math.prod(grid) >= 0.8 * 784 or min(grid) == 1  # grows the patch, does not collapse the grid
    assert math.prod(DualCrossAttention(3, [4], max_tokens=512).token_grid([300, 300, 200])) <= 512
    # at a large input the attention really sees at most max_tokens tokens
    seen = []
    dca.spatial_attention.register_forward_hook(lambda m, args, out: seen.append(args[0][0].shape[1]))
    skips = pyramid([4, 4], (1024, 768))
    with torch.no_grad():
        out = dca.eval()(skips)
    assert seen == [math.prod(dca.token_grid([1024, 768]))] and seen[0] <= 784
    assert [o.shape for o in out] == [s.shape for s in skips]


def test_parameter_overhead_matches_the_paper():
    count = count_parameters(DualCrossAttention(2, [32, 64, 128, 256]))
    assert abs(count - 110_560) <= 0.01 * 110_560  # 8.64M -> 8.75M
    assert count == sum(c * c + 17 * c + 8 * 480 for c in (32, 64, 128, 256))
    base = count_parameters(XAttnResUNet(2, 1, 1, xattnres="none"))
    with_dca = count_parameters(XAttnResUNet(2, 1, 1, xattnres="none", dca=True))
    assert with_dca - base == count_parameters(DualCrossAttention(2, [16, 32, 64, 128])) == 33_520


def test_scripted_unet_with_dca_matches_eager():
    torch.manual_seed(0)
    net = XAttnResUNet(2, 1, 3, dca=True).eval()  # DCA + XAttnRes "full"
    x = torch.randn(2, 1, 72, 56)
    with torch.no_grad():
        torch.testing.assert_close(torch.jit.script(net)(x), net(x), rtol=1e-5, atol=1e-5)


def test_dca_requires_skip_connections():
    with pytest.raises(ValueError, match="dca=True .* needs skip=True"):
        XAttnResUNet(2, 1, 2, skip=False, dca=True)


def test_bad_arguments_raise_value_error():
    with pytest.raises(ValueError, match="divisible by num_heads=4"):
        DualCrossAttention(2, [4, 6])
    with pytest.raises(ValueError, match="spatial_dims must be 2 or 3"):
        DualCrossAttention(1, [4])
    dca = DualCrossAttention(2, [4, 8])
    with pytest.raises(ValueError, match="expected 2 skip maps, got 1"):
        dca([torch.randn(1, 4, 8, 8)])
    with pytest.raises(ValueError, match=r"skip map 1 should be \(batch, 8"):
        dca([torch.randn(1, 4, 8, 8), torch.randn(1, 4, 4, 4)])
