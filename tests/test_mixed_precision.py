"""Mixed precision: the aggregation (Eq. 5-8) and XAttnResUNet under ``torch.autocast`` (CPU, bfloat16).

What is checked, and the tolerances (relative L2 error ``||a - b|| / ||b||`` unless said otherwise):

* the aggregation on float16 / bfloat16 entries (mixed with float32, as autocast leaves them), every
  implementation: output in the dtype of ``x``, gradients in each input's dtype, all finite; against the literal
  equations in float64 on the same (rounded) inputs, output within the dtype's unit roundoff ``u`` (bfloat16
  ``2^-8``, float16 ``2^-11``; this is the error of rounding the output once), gradients within ``2u``. Computing
  RMS, logits and softmax in the low precision (the literal equations run in bfloat16) misses these bounds
  (checked too): its logits (up to ~50 here, a sharp softmax) carry errors of ``|l| u``;
* one training step of every U-Net routing configuration (skip True/False x xattnres none/encoder/decoder/full in
  2D, and 3D) under bfloat16 autocast: it runs, the output is bfloat16 (the head is a convolution), each XAttnRes
  block returns the dtype of its ``x``, the loss and every gradient are finite;
* the same networks against float32 with batch norm on running statistics (eval mode, gradients still taken):
  output within ``2e-2``, parameter gradients (all, flattened) within ``1.5e-1`` and at cosine similarity
  ``>= 0.99``. These bound the bfloat16 convolutions as much as XAttnRes (the plain U-Net shows errors of the
  same size). In train mode the batch statistics of a 2-image batch at a 2x2 bottleneck amplify the bfloat16
  rounding far beyond that, for the plain U-Net too, so that comparison would test batch norm, not this code.
"""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from xattnres_monai.networks import ops
from xattnres_monai.networks.blocks import XAttnRes
from xattnres_monai.networks.nets import XAttnResUNet
from xattnres_monai.networks.ops import reference

UNIT_ROUNDOFF = {torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}
NETWORK_OUTPUT_TOLERANCE = 2e-2
NETWORK_GRADIENT_TOLERANCE = 1.5e-1
NETWORK_GRADIENT_COSINE = 0.99

# 2D: every skip x xattnres combination; 3D: with and without skips
PLACEMENTS = ("none", "encoder", "decoder", "full")
CONFIGURATIONS = [(2, skip, where) for skip, where in itertools.product((True, False), PLACEMENTS)]
CONFIGURATIONS += [(3, True, "full"), (3, False, "full")]
SMALL = {2: {"encoder_channels": (8, 16, 32), "decoder_channels": (16, 8)},
         3: {"encoder_channels": (4, 8, 16), "decoder_channels": (8, 4)}}  # fmt: skip


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm())


def _entries(low: torch.dtype):
    """Entries of 64 channels, x last: upsampled (6x5, 3x3), same size; one float32 entry (autocast mixes them)."""
    torch.manual_seed(0)
    shapes = [(6, 5), (12, 10), (3, 3), (12, 10), (12, 10)]
    dtypes = [low, torch.float32, low, low, low]
    values = [(3 * torch.randn(2, 64, *s) + 1).to(d).requires_grad_() for s, d in zip(shapes, dtypes)]
    query = (2 * torch.randn(64)).requires_grad_()  # logits up to ~50: a sharp softmax
    return query, values


@pytest.mark.parametrize("implementation", ["default", "pytorch", "reference"])
@pytest.mark.parametrize("low", [torch.bfloat16, torch.float16], ids=["bfloat16", "float16"])
def test_aggregation_reduces_in_float32_and_returns_the_input_dtype(low, implementation):
    query, values = _entries(low)
    exact = [v.detach().double().requires_grad_() for v in values]
    exact_query = query.detach().double().requires_grad_()
    expected = reference.aggregate(exact_query, exact, 1e-6)
    grad = torch.randn_like(expected)
    expected_grads = torch.autograd.grad(expected, [exact_query] + exact, grad)

    with ops.use_implementation(implementation), torch.autocast("cpu", dtype=torch.bfloat16):
        out = ops.aggregate(query, values, 1e-6)
    grads = torch.autograd.grad(out, [query] + values, grad.to(out.dtype))
    assert out.dtype == values[-1].dtype
    assert [g.dtype for g in grads] == [query.dtype] + [v.dtype for v in values]
    assert all(torch.isfinite(g).all() for g in grads) and torch.isfinite(out).all()
    u = UNIT_ROUNDOFF[low]
    assert _relative(out, expected) < u
    for ours, exact_grad in zip(grads, expected_grads):
        assert _relative(ours, exact_grad) < 2 * u

    # the bound has teeth: the literal equations computed in the low precision miss it
    naive = reference.aggregate(query.detach().to(low), [v.detach().to(low) for v in values], 1e-6)
    assert _relative(naive, expected) > u


def test_block_keeps_the_dtype_of_x():
    torch.manual_seed(0)
    block = XAttnRes(2, 8, [4, 8])
    history = [torch.randn(2, 4, 16, 16), torch.randn(2, 8, 4, 4)]
    for dtype in (torch.bfloat16, torch.float32):  # x as a convolution (bfloat16) or an upsampling (float32) gives it
        x = torch.randn(2, 8, 8, 8, dtype=dtype)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert block(x, [h.bfloat16() for h in history]).dtype == dtype


def _network(spatial_dims: int, skip: bool, xattnres: str) -> XAttnResUNet:
    torch.manual_seed(0)
    net = XAttnResUNet(spatial_dims, 1, 3, skip=skip, xattnres=xattnres, **SMALL[spatial_dims])
    with torch.no_grad():  # a trained-looking pseudo-query: attention far from uniform
        for name, p in net.named_parameters():
            if name.endswith("query"):
                p.normal_()
    return net


def _step(net: XAttnResUNet, x: torch.Tensor, labels: torch.Tensor, autocast: bool):
    net.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = net(x)
        loss = F.cross_entropy(out.float(), labels)
    loss.backward()
    return out, loss, [p.grad for p in net.parameters()]


@pytest.mark.parametrize("spatial_dims, skip, xattnres", CONFIGURATIONS)
def test_bfloat16_training_step_matches_float32(spatial_dims, skip, xattnres):
    net = _network(spatial_dims, skip, xattnres)
    x = torch.randn(2, 1, *([32, 32] if spatial_dims == 2 else [12, 12, 12]))
    labels = torch.randint(0, 3, (2, *x.shape[2:]))
    blocks = [m for m in net.modules() if isinstance(m, XAttnRes)]
    assert len(blocks) == {"none": 0, "encoder": 2, "decoder": 2, "full": 4}[xattnres]
    dtypes = []
    hooks = [b.register_forward_hook(lambda m, args, out: dtypes.append((args[0].dtype, out.dtype))) for b in blocks]

    out, loss, grads = _step(net.train(), x, labels, autocast=True)  # the training step itself
    for hook in hooks:
        hook.remove()
    assert out.dtype == torch.bfloat16
    assert len(dtypes) == len(blocks) and all(x_dtype == out_dtype for x_dtype, out_dtype in dtypes)
    assert torch.isfinite(loss) and all(g is not None and torch.isfinite(g).all() for g in grads)

    net.eval()  # batch norm on running statistics: the comparison measures precision, not batch-statistic noise
    out32, _, grads32 = _step(net, x, labels, autocast=False)
    out16, _, grads16 = _step(net, x, labels, autocast=True)
    flat32, flat16 = torch.cat([g.flatten() for g in grads32]), torch.cat([g.flatten() for g in grads16])
    assert _relative(out16, out32) < NETWORK_OUTPUT_TOLERANCE
    assert _relative(flat16, flat32) < NETWORK_GRADIENT_TOLERANCE
    assert F.cosine_similarity(flat16.double(), flat32.double(), dim=0).item() > NETWORK_GRADIENT_COSINE
