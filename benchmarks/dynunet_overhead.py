"""DynUNet vs DynUNet + XAttnRes (the plug-in), measured side by side in one run on this machine.

A typical nnU-Net-like 3D configuration: kernels ``[[3, 3, 3]] * 5``, strides ``[[1, 1, 1], [2, 2, 2], [2, 2, 2],
[2, 2, 2], [2, 2, 2]]``, filters ``[32, 64, 128, 256, 320]``, instance norm, leaky ReLU, deep supervision (2 heads);
a ``96^3`` patch and batch 2 for training. For MONAI's ``DynUNet`` and
:class:`~xattnres_monai.networks.plugins.XAttnResDynUNet` (``xattnres="full"``, ``skip=True``: the paper's "both";
``--configs`` adds others) it prints:

* parameters;
* FLOPs (``torch.utils.flop_counter``: convolutions and matrix products, counted on the meta device, so nothing
  runs) of one forward pass of a patch (inference) and of one training step (forward + backward, batch);
* training-step wall time (forward, deep-supervision loss, backward; median over ``--repeats``, timed round-robin so
  that load from other processes hits both alike) and its peak memory (CPU: peak resident-set increase of two steps
  in a fresh process; CUDA: ``torch.cuda.max_memory_allocated``);
* sliding-window inference time (``monai.inferers.SlidingWindowInferer``, Gaussian blending, overlap 0.5) of one
  volume of ``--inference-shape`` (default 512 x 512 x 100, a typical abdominal CT; heavy on a small CPU: pass a
  smaller shape, the output says what was measured and how many windows it took).

Targets (project issue): parameter overhead <= 5 %, inference time <= 1.25x.

Usage::

    python benchmarks/dynunet_overhead.py [--patch 96 96 96] [--batch 2] [--repeats 3]
        [--inference-shape 512 512 100] [--device cpu|cuda] [--threads N] [--configs full replace]
        [--skip-training] [--skip-inference]

Why the FLOPs and wall-time overheads differ: the counter sees the 1x1 projections of the aligned entries (run at
the lowest resolution of each pair) but not the aggregation itself (channel norms, softmax, weighted sum,
interpolation), which is element-wise and memory-bound; at the finest decoder stage it reads 9 entries of
``32 x 96^3``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Callable, Dict, List, Sequence

import torch
from torch.utils.flop_counter import FlopCounterMode

from xattnres_monai.networks.plugins import XAttnResDynUNet
from xattnres_monai.networks.utils import count_parameters

#: the nnU-Net-like configuration (3D full resolution, 5 levels).
DYNUNET = dict(
    spatial_dims=3,
    in_channels=1,
    out_channels=9,
    kernel_size=[[3, 3, 3]] * 5,
    strides=[[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2]],
    upsample_kernel_size=[[2, 2, 2]] * 4,
    filters=[32, 64, 128, 256, 320],
    deep_supervision=True,
    deep_supr_num=2,
)
#: the compared networks: plain MONAI DynUNet and the plug-in's routing configurations (Table 3 / 4 names).
CONFIGS: Dict[str, Dict] = {
    "dynunet": {},
    "full": {"xattnres": "full", "skip": True},
    "replace": {"xattnres": "full", "skip": False},
    "decoder": {"xattnres": "decoder", "skip": True},
    "encoder": {"xattnres": "encoder", "skip": True},
}


def build(name: str, device: torch.device) -> torch.nn.Module:
    torch.manual_seed(0)
    if name == "dynunet":
        from monai.networks.nets import DynUNet

        return DynUNet(**DYNUNET).to(device)
    return XAttnResDynUNet(**DYNUNET, **CONFIGS[name]).to(device)


def deep_supervision_loss(out: torch.Tensor) -> torch.Tensor:
    """A stand-in for MONAI's ``DeepSupervisionLoss`` (weights 1, 1/2, 1/4) over the stacked heads."""
    heads = out.unbind(1) if out.dim() == 6 else (out,)
    return sum(0.5**i * h.float().square().mean() for i, h in enumerate(heads))


def training_step(net: torch.nn.Module, x: torch.Tensor) -> Callable[[], None]:
    def step() -> None:
        net.zero_grad(set_to_none=True)
        deep_supervision_loss(net(x)).backward()
        if x.device.type == "cuda":
            torch.cuda.synchronize()

    return step


def count_flops(name: str, patch: Sequence[int], batch: int) -> Dict[str, int]:
    """Forward FLOPs of one patch (eval) and of one training step (train, batch), on the meta device."""
    net = build(name, torch.device("meta"))
    counts = {}
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        net.eval()(torch.empty(1, 1, *patch, device="meta"))
    counts["forward"] = counter.get_total_flops()
    net.train()
    with FlopCounterMode(display=False) as counter:
        deep_supervision_loss(net(torch.empty(batch, 1, *patch, device="meta"))).backward()
    counts["train"] = counter.get_total_flops()
    return counts


def _peak_rss_bytes() -> int:
    with open("/proc/self/status") as f:
        return int(next(line for line in f if line.startswith("VmHWM:")).split()[1]) * 1024


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _measure_memory(name: str, patch: Sequence[int], batch: int, device: torch.device) -> int:
    """Peak memory of two training steps (run in a fresh process for CPU)."""
    net = build(name, device).train()
    x = torch.randn(batch, 1, *patch, device=device)
    step = training_step(net, x)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        step(), step()
        return torch.cuda.max_memory_allocated() - before
    before = _rss_bytes()
    with open("/proc/self/clear_refs", "w") as f:  # reset the peak-RSS mark (VmHWM) to the current RSS
        f.write("5")
    step(), step()
    return _peak_rss_bytes() - before


def peak_memory(name: str, patch: Sequence[int], batch: int, device: torch.device, threads: int) -> int:
    if device.type == "cuda":
        return _measure_memory(name, patch, batch, device)
    # every tensor above 64 KiB its own mapping, returned on free: resident memory follows live tensors
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    cmd = [sys.executable, __file__, "--measure-memory", name, "--patch", *map(str, patch), "--batch", str(batch),
           "--threads", str(threads)]  # fmt: skip
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
    return int(out.stdout.strip().splitlines()[-1])


def time_round_robin(steps: Dict[str, Callable[[], None]], repeats: int, warmup: int = 1) -> Dict[str, List[float]]:
    for step in steps.values():
        for _ in range(warmup):
            step()
    times: Dict[str, List[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    return times


def sliding_window_time(
    nets: Dict[str, torch.nn.Module], shape: Sequence[int], patch: Sequence[int], device: torch.device, repeats: int
) -> Dict[str, List[float]]:
    from monai.inferers import SlidingWindowInferer

    inferer = SlidingWindowInferer(roi_size=list(patch), sw_batch_size=2, overlap=0.5, mode="gaussian", progress=False)
    volume = torch.randn(1, 1, *shape, device=device)
    steps = {}
    for name, net in nets.items():
        net.eval()

        def run(net=net) -> None:
            with torch.no_grad():
                inferer(volume, net)
            if device.type == "cuda":
                torch.cuda.synchronize()

        steps[name] = run
    return time_round_robin(steps, repeats, warmup=1 if device.type == "cuda" else 0)


def num_windows(shape: Sequence[int], patch: Sequence[int], overlap: float = 0.5) -> int:
    from monai.data.utils import dense_patch_slices
    from monai.inferers.utils import _get_scan_interval

    size = [max(s, p) for s, p in zip(shape, patch)]
    return len(dense_patch_slices(size, list(patch), _get_scan_interval(size, list(patch), len(patch), [overlap] * len(patch))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patch", type=int, nargs=3, default=[96, 96, 96])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="timed training steps per network")
    parser.add_argument("--inference-shape", type=int, nargs=3, default=[512, 512, 100])
    parser.add_argument("--inference-repeats", type=int, default=1)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--configs", nargs="*", default=["full"], choices=[c for c in CONFIGS if c != "dynunet"])
    parser.add_argument("--skip-training", action="store_true")
    parser.add_argument("--skip-inference", action="store_true")
    parser.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    parser.add_argument("--measure-memory", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.measure_memory:
        print(_measure_memory(args.measure_memory, args.patch, args.batch, device))
        return

    names = ["dynunet"] + list(args.configs)
    patch, batch = list(args.patch), args.batch
    print(f"torch {torch.__version__}, device {device}, {torch.get_num_threads()} threads")
    print(f"DynUNet: kernels {DYNUNET['kernel_size'][0]} x 5, strides {DYNUNET['strides']}, filters {DYNUNET['filters']}, "
          f"deep supervision ({DYNUNET['deep_supr_num']} heads)")  # fmt: skip
    print(f"training: batch {batch} x 1 x {' x '.join(map(str, patch))}; compared: " + ", ".join(names))
    results: Dict[str, Dict[str, float]] = {n: {} for n in names}
    nets = {n: build(n, device) for n in names}
    for n in names:
        results[n]["params"] = count_parameters(nets[n])
        results[n].update({f"flops_{k}": v for k, v in count_flops(n, patch, batch).items()})
    if not args.skip_training:
        steps = {n: training_step(nets[n].train(), torch.randn(batch, 1, *patch, device=device)) for n in names}
        times = time_round_robin(steps, args.repeats)
        for n in names:
            results[n]["train_time"] = statistics.median(times[n])
            results[n]["train_ratios"] = [t / b for t, b in zip(times[n], times["dynunet"])]
        del steps
        gc.collect()
        for n in names:
            results[n]["train_memory"] = peak_memory(n, patch, batch, device, args.threads)
    shape = list(args.inference_shape)
    windows = num_windows(shape, patch)
    if not args.skip_inference:
        times = sliding_window_time(nets, shape, patch, device, args.inference_repeats)
        for n in names:
            results[n]["inference_time"] = statistics.median(times[n])

    base = results["dynunet"]
    rows = [("parameters", "params", lambda v: f"{v / 1e6:.3f} M"),
            ("GFLOPs forward, 1 patch", "flops_forward", lambda v: f"{v / 1e9:.1f}"),
            ("GFLOPs training step", "flops_train", lambda v: f"{v / 1e9:.1f}"),
            ("training step s (median)", "train_time", lambda v: f"{v:.2f}"),
            ("training peak memory MiB", "train_memory", lambda v: f"{v / 2**20:.0f}"),
            (f"sliding window s ({'x'.join(map(str, shape))})", "inference_time", lambda v: f"{v:.1f}")]  # fmt: skip
    print()
    header = f"{'':<34}" + "".join(f"{n:>14}" for n in names) + "".join(f"{n + ' / dynunet':>18}" for n in names[1:])
    print(header)
    for label, key, fmt in rows:
        if key not in base:
            continue
        line = f"{label:<34}" + "".join(f"{fmt(results[n][key]):>14}" for n in names)
        line += "".join(f"{results[n][key] / base[key]:>18.3f}" for n in names[1:])
        print(line)
    print(f"\nsliding window: volume {' x '.join(map(str, shape))}, patch {' x '.join(map(str, patch))}, overlap 0.5, "
          f"Gaussian blending, sw_batch_size 2: {windows} windows"
          + ("" if "inference_time" in base else " (not run: --skip-inference)"))  # fmt: skip
    if shape != [512, 512, 100]:
        print(f"  (a reduced volume: 512 x 512 x 100 takes {num_windows([512, 512, 100], patch)} windows, "
              f"about {num_windows([512, 512, 100], patch) / windows:.1f}x as long)")  # fmt: skip
    if "train_ratios" in results.get("full", {}):
        r = results["full"]["train_ratios"]
        print(f"'full' / dynunet training-step time per round (noise): {', '.join(f'{v:.3f}' for v in r)}")
    if "full" in results:
        full = results["full"]
        param_over = 100 * (full["params"] / base["params"] - 1)
        print("\nTargets ('full' = XAttnRes + skips)")
        print(f"  parameter overhead     {param_over:+6.2f} %  (target <= +5 %)     {'OK' if param_over <= 5 else 'MISSED'}")
        if "inference_time" in full:
            ratio = full["inference_time"] / base["inference_time"]
            print(f"  inference time         {ratio:6.3f}x   (target <= 1.25x)   {'OK' if ratio <= 1.25 else 'MISSED'}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "windows": windows, "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
