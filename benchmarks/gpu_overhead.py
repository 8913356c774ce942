"""XAttnRes on a CUDA GPU: overhead side by side in one run, and (``--check``) the GPU correctness checks.

For the U-Net at 224^2 (batch 6) and a 3D U-Net (96^3, batch 2), one training step (forward, loss, backward) under
AMP (bfloat16 by default), median of repeated steps, with peak memory (``torch.cuda.max_memory_allocated`` above
what model and inputs hold):

* plain U-Net (the reference: 1.00);
* XAttnRes + skips ("both") with the PyTorch formulation of the aggregation;
* the same with the Triton kernel (``networks/ops/triton_kernel.py``, what the dispatcher picks on CUDA);
* plain U-Net and XAttnRes under ``torch.compile`` (fullgraph; the kernel as a custom operator), with their compile
  time and the largest difference from eager.

Then the Triton kernel alone on the finest decoder stage of the 2D U-Net (8 history entries -> 16 x 224^2, batch
6): time and achieved memory bandwidth, ``bytes / time`` with bytes the compulsory traffic (every entry read once
per pass, every output written once), as a fraction of the device's peak: measured (a device-to-device copy of
1 GiB, counted as read + write) and nominal (a table by device name, where the name is known). The backward is
timed with its buffer initialisation and dtype casts.

``--check`` runs, first, the GPU correctness checks: the Triton kernel, alone and in the block through the
dispatcher (pooled, upsampled and same-size entries), against the literal equations in float64: float32 forward
and backward within 1e-5 of the largest value, or within twice the error of the literal equations evaluated in
float32 where that is larger (long sums round); 2D / 3D, channels-first / channels-last, TF32 off; float16 /
bfloat16 entries within 2 unit roundoffs. Then a compiled network against eager (float32), and float16 (with
GradScaler) and bfloat16 autocast training, 200 steps of Adam on random data, 2D and 3D, without a NaN / Inf;
then the benchmark (``--check-only``: checks alone). Exit status 1 if a check fails.

Everything in one run of < 5 minutes on an H100 / H200: the compiled rows (the slow part: Inductor compiles each
network) start only while the time budget (``--budget``, seconds) leaves room, and are reported as skipped
otherwise. Without CUDA the script says so and exits 0.

Usage::

    python benchmarks/gpu_overhead.py [--check | --check-only] [--amp-dtype bfloat16|float16] [--budget 280]
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from typing import Callable, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F

from xattnres_monai.networks import ops
from xattnres_monai.networks.blocks import XAttnRes
from xattnres_monai.networks.nets import XAttnResUNet
from xattnres_monai.networks.ops import reference
from xattnres_monai.networks.ops.reference import stacked_xattnres
from xattnres_monai.networks.summary import UNET_CONFIGURATIONS

#: nominal memory bandwidth (bytes/s) by a substring of ``torch.cuda.get_device_name()``, most specific first
NOMINAL_BANDWIDTH = (
    ("H200", 4.8e12),
    ("H100 NVL", 3.9e12),
    ("H100 PCIe", 2.0e12),
    ("H100", 3.35e12),  # SXM
    ("GH200", 4.0e12),
    ("A100-SXM4-80GB", 2.039e12),
    ("A100 80GB PCIe", 1.935e12),
    ("A100", 1.555e12),  # 40 GB
    ("L40S", 0.864e12),
    ("L40", 0.864e12),
    ("L4", 0.3e12),
    ("A10G", 0.6e12),
    ("A10", 0.6e12),
    ("V100", 0.9e12),
    ("RTX 4090", 1.008e12),
    ("RTX 3090", 0.936e12),
)
UNIT_ROUNDOFF = {torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}


class Clock:
    """Wall time since start, and whether ``needed`` seconds are left of the budget."""

    def __init__(self, budget: float) -> None:
        self.start = time.perf_counter()
        self.budget = budget

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def allows(self, needed: float) -> bool:
        return self.elapsed() + needed <= self.budget


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_time(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def peak_memory(fn: Callable[[], object], device: torch.device) -> Optional[int]:
    """Peak allocated memory of one call of ``fn`` above what was allocated before it (CUDA only)."""
    if device.type != "cuda":
        return None
    synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn()
    synchronize(device)
    return torch.cuda.max_memory_allocated(device) - base


# --- the networks -----------------------------------------------------------------------------------------------


def make_network(spatial_dims: int, configuration: str, device: torch.device) -> XAttnResUNet:
    torch.manual_seed(0)
    net = XAttnResUNet(spatial_dims, 1, 9 if spatial_dims == 2 else 2, **UNET_CONFIGURATIONS[configuration])
    with torch.no_grad():  # a trained-looking pseudo-query: attention far from uniform
        for name, p in net.named_parameters():
            if name.endswith("query"):
                p.normal_()
    return net.to(device)


def make_step(net: torch.nn.Module, model: Callable, x: torch.Tensor, labels: torch.Tensor, amp: torch.dtype,
              implementation: str = "default") -> Callable[[], torch.Tensor]:  # fmt: skip
    """One training step (forward under autocast, cross-entropy, backward); returns the (detached) output."""

    def step() -> torch.Tensor:
        net.zero_grad(set_to_none=True)
        with ops.use_implementation(implementation), torch.autocast(x.device.type, dtype=amp):
            out = model(x)
            loss = F.cross_entropy(out.float(), labels)
        loss.backward()
        return out.detach()

    return step


class NetworkTable:
    """The rows of one network shape: eager ones measured first, compiled ones while the budget allows."""

    def __init__(self, spatial_dims: int, shape: Tuple[int, ...], args, device: torch.device) -> None:
        self.spatial_dims, self.shape, self.args, self.device = spatial_dims, shape, args, device
        self.amp = getattr(torch, args.amp_dtype)
        torch.manual_seed(1)
        self.x = torch.randn(*shape, device=device)
        out_channels = 9 if spatial_dims == 2 else 2
        self.labels = torch.randint(0, out_channels, (shape[0], *shape[2:]), device=device)
        self.rows: Dict[str, Dict[str, object]] = {}

    def run(self, label: str, configuration: str, implementation: str = "default", compiled: bool = False) -> None:
        net = make_network(self.spatial_dims, configuration, self.device)
        model: Callable = net
        row: Dict[str, object] = {"aggregation": "-"}
        if configuration != "baseline":
            probe = [torch.zeros(16, device=self.device, dtype=self.amp)]
            with ops.use_implementation(implementation):
                row["aggregation"] = ops.implementation_for(probe[0], probe) + (" op" if compiled else "")
        if compiled:
            torch._dynamo.reset()
            model = torch.compile(net, fullgraph=True)
            start = time.perf_counter()
            out = make_step(net, model, self.x, self.labels, self.amp)()
            synchronize(self.device)
            row["compile"] = time.perf_counter() - start
            eager = make_step(net, net, self.x, self.labels, self.amp)()
            row["difference"] = float((out.float() - eager.float()).abs().max() / eager.float().std())
        step = make_step(net, model, self.x, self.labels, self.amp, implementation)
        row["time"] = median_time(step, self.device, self.args.repeats)
        row["memory"] = peak_memory(step, self.device)
        self.rows[label] = row
        print(f"  measured {self.spatial_dims}D {label}", file=sys.stderr)

    def run_eager(self) -> None:
        self.run("plain U-Net", "baseline")
        self.run("XAttnRes, PyTorch formulation", "both", implementation="pytorch")
        self.run("XAttnRes, default dispatch", "both")

    def run_compiled(self, clock: Clock) -> None:
        for label, configuration in (("plain U-Net, compiled", "baseline"), ("XAttnRes, compiled", "both")):
            if clock.allows(self.args.compile_reserve):
                self.run(label, configuration, compiled=True)
            else:
                self.rows[label] = {"skipped": f"time budget ({clock.elapsed():.0f} s of {clock.budget:.0f} s used)"}

    def print(self) -> None:
        base = self.rows["plain U-Net"]
        compiled_base = self.rows.get("plain U-Net, compiled", {})
        size = "x".join(str(s) for s in self.shape)
        print(f"\n{self.spatial_dims}D U-Net, input {size}, AMP {self.args.amp_dtype}, one training step "
              "(forward, cross-entropy, backward); ratios to the plain U-Net")  # fmt: skip
        print(f"{'':<31}{'aggregation':>14}{'time ms':>10}{'x plain':>9}{'x compiled plain':>18}"
              f"{'peak MiB':>10}{'x plain':>9}")  # fmt: skip
        for label, row in self.rows.items():
            if "skipped" in row:
                print(f"{label:<31}  skipped: {row['skipped']}")
                continue
            t = row["time"]
            versus_compiled = ""
            if "compiled" in label and "time" in compiled_base:
                versus_compiled = f"{t / compiled_base['time']:.3f}"
            memory = row["memory"]
            if memory is None:
                memory_text = f"{'n/a':>10}{'':>9}"
            else:
                memory_text = f"{memory / 2**20:>10.0f}{memory / base['memory']:>9.3f}"
            print(f"{label:<31}{row['aggregation']:>14}{1e3 * t:>10.2f}{t / base['time']:>9.3f}"
                  f"{versus_compiled:>18}{memory_text}")  # fmt: skip
            if "compile" in row:
                print(f"{'':<31}(compiled in {row['compile']:.0f} s; output vs eager, AMP: "
                      f"max |difference| / std {row['difference']:.1e})")  # fmt: skip


# --- the Triton kernel alone ---------------------------------------------------------------------------------


def copy_bandwidth(device: torch.device) -> float:
    """Device-to-device copy of 1 GiB: bytes read + written per second."""
    src = torch.empty(2**28, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    seconds = median_time(lambda: dst.copy_(src), device, repeats=10)
    return 2 * src.numel() * src.element_size() / seconds


def nominal_bandwidth(name: str) -> Optional[float]:
    for key, value in NOMINAL_BANDWIDTH:
        if key in name:
            return value
    return None


def kernel_bandwidth(device: torch.device, batch: int, size: int) -> None:
    from xattnres_monai.networks.ops import triton_kernel

    measured = copy_bandwidth(device)
    name = torch.cuda.get_device_name(device)
    nominal = nominal_bandwidth(name)
    print(f"\nTriton kernel alone, finest decoder stage: 8 history entries (scales 1, 2, 4, 8, 16, 8, 4, 2) + x, "
          f"16 x {size}^2, batch {batch}")  # fmt: skip
    print(f"peak bandwidth: measured (1 GiB device-to-device copy, read + write) {measured / 1e9:.0f} GB/s; "
          + (f"nominal ({name}, table) {nominal / 1e9:.0f} GB/s" if nominal else f"nominal: '{name}' not in the table"))
    print(f"{'':<28}{'time ms':>9}{'GB moved':>10}{'GB/s':>8}{'of copy':>9}{'of nominal':>12}")
    scales = (1, 2, 4, 8, 16, 8, 4, 2)
    for dtype in (torch.float32, torch.bfloat16):
        torch.manual_seed(0)
        values = [torch.randn(batch, 16, size // s, size // s, device=device, dtype=dtype) for s in scales]
        values.append(torch.randn(batch, 16, size, size, device=device, dtype=dtype))
        query = torch.randn(16, device=device)
        out, lse = triton_kernel.forward(query, values, 1e-6)
        grad = torch.randn_like(out)
        entries = sum(v.numel() * v.element_size() for v in values)
        grads = entries  # written once each, in their dtype
        passes = {
            "forward": (lambda: triton_kernel.forward(query, values, 1e-6),
                        entries + out.numel() * out.element_size() + lse.numel() * 4),
            "backward (2 passes)": (lambda: triton_kernel.backward(grad, query, values, lse, 1e-6),
                                         2 * entries + grad.numel() * grad.element_size() + lse.numel() * 4 + grads),
        }  # fmt: skip
        for label, (fn, moved) in passes.items():
            seconds = median_time(fn, device, repeats=20, warmup=3)
            rate = moved / seconds
            of_nominal = f"{rate / nominal:>12.2f}" if nominal else f"{'-':>12}"
            print(f"{str(dtype).replace('torch.', '') + ' ' + label:<28}{1e3 * seconds:>9.3f}{moved / 1e9:>10.3f}"
                  f"{rate / 1e9:>8.0f}{rate / measured:>9.2f}{of_nominal}")  # fmt: skip


# --- the checks -------------------------------------------------------------------------------------------------


class Checks:
    def __init__(self) -> None:
        self.failures: List[str] = []

    def record(self, name: str, ok: bool, detail: str = "") -> None:
        print(f"  {'ok  ' if ok else 'FAIL'} {name}" + (f": {detail}" if detail else ""))
        if not ok:
            self.failures.append(name)


def _error(ours: List[torch.Tensor], exact: List[torch.Tensor]) -> float:
    """The largest ``max |a - b| / max |b|`` over the tensors (float64)."""
    errors = [float((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30))
              for a, b in zip(ours, exact) if b.numel()]  # fmt: skip
    return max(errors, default=0.0)


def _float32_check(ours: List[torch.Tensor], exact: List[torch.Tensor], float32: List[torch.Tensor]):
    """Passes within ``1e-5`` of the float64 values (relative to the largest), or within twice the error of the
    literal equations evaluated in float32 where that is larger (large sums: the float32 rounding itself)."""
    error, baseline = _error(ours, exact), _error(float32, exact)
    detail = f"max |error| / max |value| {error:.1e} (literal equations in float32: {baseline:.1e})"
    return error <= max(1e-5, 2 * baseline), detail


def _literal(query: torch.Tensor, values: List[torch.Tensor], grad: torch.Tensor, dtype: torch.dtype):
    """The literal equations in ``dtype`` on the same inputs: output and gradients."""
    query = query.detach().to(dtype).requires_grad_()
    values = [v.detach().to(dtype).requires_grad_() for v in values]
    out = reference.aggregate(query, values, 1e-6)
    return [out.detach()] + list(torch.autograd.grad(out, [query] + values, grad.to(dtype)))


def check_kernel(checks: Checks, device: torch.device) -> None:
    from xattnres_monai.networks.ops import triton_kernel

    print("Triton kernel against the literal equations (float64), forward and backward")
    cases = {
        "2d": (6, 2, (37, 41), [(19, 21), (37, 21), (5, 41), (37, 41)]),
        "3d": (5, 2, (12, 10, 14), [(6, 5, 7), (12, 3, 14), (1, 10, 14), (12, 10, 14)]),
    }
    for name, (channels, batch, target, sizes) in cases.items():
        for layout in ("channels_first", "channels_last"):
            torch.manual_seed(0)
            values = [torch.randn(batch, channels, *s, device=device) for s in sizes + [target]]
            if layout == "channels_last":
                fmt = torch.channels_last if len(target) == 2 else torch.channels_last_3d
                values = [v.contiguous(memory_format=fmt) for v in values]
            values = [v.requires_grad_() for v in values]
            query = (2 * torch.randn(channels, device=device)).requires_grad_()
            out = triton_kernel.aggregate(query, values, 1e-6)
            grad = torch.randn_like(out)
            ours = [out.detach()] + list(torch.autograd.grad(out, [query] + values, grad))
            exact = _literal(query, values, grad, torch.float64)
            float32 = _literal(query, values, grad, torch.float32)
            checks.record(f"float32 {name} {layout}", *_float32_check(ours, exact, float32))
    for low in (torch.float16, torch.bfloat16):
        torch.manual_seed(0)
        dtypes = [low, torch.float32, low, low]
        values = [torch.randn(2, 16, *s, device=device).to(d).requires_grad_()
                  for s, d in zip([(14, 14), (28, 28), (28, 28), (28, 28)], dtypes)]  # fmt: skip
        query = (2 * torch.randn(16, device=device)).requires_grad_()
        out = triton_kernel.aggregate(query, values, 1e-6)
        grad = torch.randn_like(out)
        ours = [out.detach()] + list(torch.autograd.grad(out, [query] + values, grad))
        exact = _literal(query, values, grad, torch.float64)
        u = UNIT_ROUNDOFF[low]
        errors = [float((a.double() - b).norm() / b.norm()) for a, b in zip(ours, exact)]
        ok = out.dtype == low and all(math.isfinite(e) and e < 2 * u for e in errors)
        checks.record(f"{low} entries (+ float32)", ok, f"largest relative error {max(errors):.1e} (bound {2 * u:.1e})")


def check_block(checks: Checks, device: torch.device) -> None:
    """The block through the dispatcher, as the networks call it: pooled, upsampled and same-size entries."""
    print("XAttnRes block through the dispatcher against the literal equations (float64)")
    for spatial_dims, target, entries in (
        (2, (24, 20), [(4, (48, 40)), (6, (12, 10)), (8, (24, 20)), (6, (49, 9))]),
        (3, (8, 6, 8), [(4, (16, 12, 16)), (6, (4, 3, 4)), (8, (8, 6, 8))]),
    ):
        torch.manual_seed(0)
        block = XAttnRes(spatial_dims, 6, [c for c, _ in entries]).to(device)
        with torch.no_grad():
            block.query.normal_(std=2.0)
            block.gain.uniform_(0.5, 1.5)
        history = [torch.randn(2, c, *s, device=device, requires_grad=True) for c, s in entries]
        x = torch.randn(2, 6, *target, device=device, requires_grad=True)
        probe = [x.detach()]
        implementation = ops.implementation_for(probe[0], probe)
        out = block(x, history)
        grad = torch.randn_like(out)
        ours = [out.detach()] + list(torch.autograd.grad(out, [x, *history, *block.parameters()], grad))

        def literal(dtype: torch.dtype) -> List[torch.Tensor]:
            copy = XAttnRes(spatial_dims, 6, [c for c, _ in entries]).to(device=device, dtype=dtype)
            copy.load_state_dict(block.state_dict())
            inputs = [t.detach().to(dtype).requires_grad_() for t in [x, *history]]
            expected = stacked_xattnres(copy, inputs[0], inputs[1:])
            grads = torch.autograd.grad(expected, inputs + list(copy.parameters()), grad.to(dtype))
            return [expected.detach()] + list(grads)

        ok, detail = _float32_check(ours, literal(torch.float64), literal(torch.float32))
        checks.record(f"{spatial_dims}D block ({implementation})", ok, detail)


def check_compiled(checks: Checks, device: torch.device) -> None:
    print("torch.compile (fullgraph) against eager, float32, small 2D U-Net")
    torch._dynamo.reset()
    net = XAttnResUNet(2, 1, 3, encoder_channels=(8, 16, 32), decoder_channels=(16, 8)).to(device)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith("query"):
                p.normal_()
    x = torch.randn(2, 1, 64, 64, device=device)

    def step(model: Callable) -> List[torch.Tensor]:
        net.zero_grad(set_to_none=True)
        out = model(x)
        out.square().mean().backward()
        return [out.detach()] + [p.grad.clone() for p in net.parameters()]

    start = time.perf_counter()
    compiled = step(torch.compile(net, fullgraph=True))
    seconds = time.perf_counter() - start
    eager = step(net)
    error = _error(compiled, eager)
    checks.record("compiled U-Net output and gradients", error <= 1e-4,
                  f"max |difference| / max |value| {error:.1e} (bound 1e-4), compiled in {seconds:.0f} s")  # fmt: skip
    torch._dynamo.reset()


def check_training(checks: Checks, device: torch.device, steps: int) -> None:
    print(f"AMP training, {steps} steps of Adam on random data (XAttnRes + skips)")
    for spatial_dims, shape in ((2, (4, 1, 128, 128)), (3, (2, 1, 32, 32, 32))):
        for dtype in (torch.float16, torch.bfloat16):
            torch.manual_seed(0)
            net = XAttnResUNet(spatial_dims, 1, 3, **UNET_CONFIGURATIONS["both"]).to(device)
            optimiser = torch.optim.Adam(net.parameters(), lr=1e-3)
            scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
            finite, skipped, losses = True, 0, []
            for _ in range(steps):
                x = torch.randn(*shape, device=device)
                labels = (x[:, 0] > 0.5).long() + (x[:, 0] > 1.5).long()  # a learnable toy task
                optimiser.zero_grad(set_to_none=True)
                with torch.autocast(device.type, dtype=dtype):
                    loss = F.cross_entropy(net(x).float(), labels)
                finite = finite and bool(torch.isfinite(loss))
                scale = scaler.get_scale() if scaler.is_enabled() else 1.0
                scaler.scale(loss).backward()
                scaler.step(optimiser)
                scaler.update()
                skipped += int(scaler.is_enabled() and scaler.get_scale() < scale)
                losses.append(float(loss.detach()))
            finite = finite and all(torch.isfinite(p).all() for p in net.parameters())
            ok = finite and skipped <= steps // 10
            checks.record(f"{spatial_dims}D {str(dtype).replace('torch.', '')}", ok,
                          f"loss {losses[0]:.3f} -> {statistics.mean(losses[-10:]):.3f}, all finite: {finite}, "
                          f"GradScaler skipped {skipped} steps")  # fmt: skip


def run_checks(device: torch.device, args) -> bool:
    previous = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False  # float32 checks: no TF32
    checks = Checks()
    try:
        check_kernel(checks, device)
        check_block(checks, device)
        if not args.no_compile:
            check_compiled(checks, device)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = previous
    check_training(checks, device, args.train_steps)
    print("checks: " + ("all passed" if not checks.failures else "FAILED: " + ", ".join(checks.failures)))
    return not checks.failures


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="run the GPU correctness checks, then the benchmark")
    parser.add_argument("--check-only", action="store_true", help="run the GPU correctness checks only")
    parser.add_argument("--amp-dtype", default="bfloat16", choices=("bfloat16", "float16"))
    parser.add_argument("--batch", type=int, default=6)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch-3d", type=int, default=2)
    parser.add_argument("--size-3d", type=int, default=96)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--train-steps", type=int, default=200)
    parser.add_argument("--budget", type=float, default=280.0, help="seconds for the whole run (compiled rows last)")
    parser.add_argument("--compile-reserve", type=float, default=75.0, help="seconds a compiled row may need")
    parser.add_argument("--no-compile", action="store_true", help="leave out torch.compile")
    parser.add_argument("--device", default="cuda", help=argparse.SUPPRESS)  # "cpu": a smoke test of this script
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("benchmarks/gpu_overhead.py needs a CUDA GPU (none here); nothing to do.")
        return 0
    clock = Clock(args.budget)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    probe = [torch.zeros(1, 16, 1, 1, device=device)]
    print(f"torch {torch.__version__}, {name}; aggregation here: {ops.implementation_for(probe[0], probe)}")
    ok = True
    if args.check or args.check_only:
        ok = run_checks(device, args)
        if args.check_only:
            return 0 if ok else 1
    tables = [
        NetworkTable(2, (args.batch, 1, args.size, args.size), args, device),
        NetworkTable(3, (args.batch_3d, 1) + (args.size_3d,) * 3, args, device),
    ]
    for table in tables:  # eager rows first, then the compiled ones while the budget lasts
        table.run_eager()
    for table in tables:
        if not args.no_compile:
            table.run_compiled(clock)
    for table in tables:
        table.print()
    probe = [torch.zeros(1, device=device)]
    if device.type == "cuda" and ops.implementation_for(probe[0], probe) == "triton":
        kernel_bandwidth(device, args.batch, args.size)
    print(f"\ntotal {clock.elapsed():.0f} s" + ("" if ok else "; checks FAILED (see above)"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
