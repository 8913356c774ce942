"""Parameter (and optionally FLOP) counts of the network configurations of the paper.

Usage::

    python -m xattnres_monai.networks.summary               # parameters of every configuration
    python -m xattnres_monai.networks.summary --flops 224   # plus forward FLOPs at 1x224x224
    python -m xattnres_monai.networks.summary --emcad       # plus EMCAD (PVTv2-B2) with and without XAttnRes

FLOPs are counted with ``torch.utils.flop_counter.FlopCounterMode`` (2 per multiply-add; convolutions,
matrix products and attention; element-wise operations, pooling and interpolation are not counted).
"""

from __future__ import annotations

import argparse
from typing import Callable, Dict, List, Optional, Tuple

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from xattnres_monai.networks.blocks import DualCrossAttention
from xattnres_monai.networks.nets import XAttnResUNet
from xattnres_monai.networks.utils import count_parameters

__all__ = ["UNET_CONFIGURATIONS", "count_flops", "summary_rows", "main"]

#: the U-Net routing configurations of Tables 3-4, and Dual Cross-Attention skips (alone and with
#: XAttnRes) for comparison: name -> constructor arguments.
UNET_CONFIGURATIONS: Dict[str, Dict[str, object]] = {
    "baseline": {"skip": True, "xattnres": "none"},
    "no_skip": {"skip": False, "xattnres": "none"},
    "replace": {"skip": False, "xattnres": "full"},
    "both": {"skip": True, "xattnres": "full"},
    "encoder_only": {"skip": True, "xattnres": "encoder"},
    "decoder_only": {"skip": True, "xattnres": "decoder"},
    "dca": {"skip": True, "xattnres": "none", "dca": True},
    "dca_both": {"skip": True, "xattnres": "full", "dca": True},
}

#: the DCA paper's U-Net skip widths and its published DCA overhead (8.64M -> 8.75M parameters).
DCA_PAPER_SKIPS = (32, 64, 128, 256)
DCA_PAPER_OVERHEAD = 0.11e6

#: the paper's reported sizes (Table 2), for comparison.
PAPER_PARAMS = {"baseline": 1.06e6, "both": 1.28e6}


def count_flops(network: nn.Module, input_shape: Tuple[int, ...]) -> int:
    """Forward FLOPs of ``network`` on a zero tensor of ``input_shape`` (eval mode, no grad)."""
    was_training = network.training
    network.eval()
    counter = FlopCounterMode(display=False)
    device = next(network.parameters()).device
    with torch.no_grad(), counter:
        network(torch.zeros(input_shape, device=device))
    network.train(was_training)
    return counter.get_total_flops()


def summary_rows(
    builders: Dict[str, Callable[[], nn.Module]], reference: str, input_shape: Optional[Tuple[int, ...]] = None
) -> List[Dict[str, object]]:
    """Parameters (and FLOPs for ``input_shape``) of each built network, with the overhead vs ``reference``."""
    rows = []
    for name, build in builders.items():
        net = build()
        row: Dict[str, object] = {"name": name, "params": count_parameters(net)}
        if input_shape is not None:
            row["flops"] = count_flops(net, input_shape)
        rows.append(row)
    base = next(r for r in rows if r["name"] == reference)
    for row in rows:
        row["params_delta"] = int(row["params"]) - int(base["params"])
        if input_shape is not None:
            row["flops_ratio"] = float(row["flops"]) / float(base["flops"])
    return rows


def unet_builders(spatial_dims: int = 2, in_channels: int = 1, out_channels: int = 1) -> Dict[str, Callable[[], nn.Module]]:
    return {
        name: (lambda kw=kw: XAttnResUNet(spatial_dims, in_channels, out_channels, **kw))
        for name, kw in UNET_CONFIGURATIONS.items()
    }


def format_rows(rows: List[Dict[str, object]], paper: Dict[str, float]) -> str:
    has_flops = "flops" in rows[0]
    header = f"{'configuration':<16}{'params':>12}{'vs base':>10}{'paper':>9}"
    if has_flops:
        header += f"{'GFLOPs':>9}{'ratio':>8}"
    lines = [header, "-" * len(header)]
    for row in rows:
        ref = paper.get(str(row["name"]))
        line = (
            f"{row['name']:<16}{row['params']:>12,}{row['params_delta']:>+10,}"
            f"{(f'{ref / 1e6:.2f}M' if ref else '-'):>9}"
        )
        if has_flops:
            line += f"{float(row['flops']) / 1e9:>9.3f}{float(row['flops_ratio']):>8.3f}"
        lines.append(line)
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spatial-dims", type=int, default=2, choices=(2, 3))
    parser.add_argument("--in-channels", type=int, default=1)
    parser.add_argument("--out-channels", type=int, default=1)
    parser.add_argument("--flops", type=int, default=None, metavar="SIZE", help="also count FLOPs at SIZE^d, batch 1")
    parser.add_argument("--emcad", action="store_true", help="also EMCAD / PVTv2-B2 sizes and FLOPs (slow, ~30 s)")
    args = parser.parse_args(argv)
    shape = None
    if args.flops:
        shape = (1, args.in_channels) + (args.flops,) * args.spatial_dims
    rows = summary_rows(unet_builders(args.spatial_dims, args.in_channels, args.out_channels), "baseline", shape)
    print(f"U-Net + XAttnRes, {args.spatial_dims}D, {args.in_channels} -> {args.out_channels} channels")
    print(format_rows(rows, PAPER_PARAMS))
    dca_paper = count_parameters(DualCrossAttention(args.spatial_dims, DCA_PAPER_SKIPS))
    print(
        f"DCA block alone on the DCA paper's U-Net skips {list(DCA_PAPER_SKIPS)}: {dca_paper:,} parameters "
        f"(paper: 8.64M -> 8.75M, +{DCA_PAPER_OVERHEAD / 1e6:.2f}M)"
    )
    if args.emcad:
        from xattnres_monai.networks.nets.emcad import emcad_summary

        print()
        print(emcad_summary())


if __name__ == "__main__":
    main()
