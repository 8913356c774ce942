"""Command line: parameter (and optionally FLOP) counts of the network configurations of the paper.

Usage::

    python -m xattnres_monai.networks.summary               # parameters of every configuration
    python -m xattnres_monai.networks.summary --flops 224   # plus forward FLOPs at 1x224x224
    python -m xattnres_monai.networks.summary --emcad       # plus EMCAD (PVTv2-B2) with and without XAttnRes

FLOPs are counted with ``torch.utils.flop_counter.FlopCounterMode`` (2 per multiply-add; convolutions,
matrix products and attention; element-wise operations, pooling and interpolation are not counted).
The counting is done by :mod:`xattnres_monai.networks.sizes` (import the functions from there); the names
below are re-exported for older imports.
"""

from __future__ import annotations

import argparse
from typing import List, Optional

from xattnres_monai.networks.sizes import (  # noqa: F401 (re-exported)
    DCA_PAPER_OVERHEAD,
    DCA_PAPER_SKIPS,
    PAPER_PARAMS,
    UNET_CONFIGURATIONS,
    count_flops,
    dca_paper_summary,
    emcad_summary,
    format_rows,
    summary_rows,
    unet_builders,
)

__all__ = ["UNET_CONFIGURATIONS", "count_flops", "summary_rows", "main"]


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
    print(dca_paper_summary(args.spatial_dims))
    if args.emcad:
        print()
        print(emcad_summary())


if __name__ == "__main__":
    main()
