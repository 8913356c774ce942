"""Command line ``python -m xattnres_monai routing``: see the learned XAttnRes routing of a trained bundle on scans.

Only the argument parsing and the call; the logic is :func:`xattnres_monai.routing.bundle.run_routing_report`, which
runs the bundle's own ``configs/inference.json`` network and preprocessing.

Examples::

    python -m xattnres_monai routing -i data/new_scans -o routing/                      # the demo bundle
    python -m xattnres_monai routing --bundle demo_output/synapse_bundle -i scan.nii.gz -o routing/ --maps 4
    python -m xattnres_monai routing --bundle B --labels B/data/datalist.json -o routing/ --slices-per-scan 32
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional, Sequence

from xattnres_monai.bundle.predict import DEFAULT_BUNDLES, find_bundle, parse_overrides
from xattnres_monai.routing.bundle import run_routing_report
from xattnres_monai.utils.files import InputError, cli_main

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m xattnres_monai routing",
        description="Report the learned XAttnRes routing of a trained bundle: the mean attention weight of every "
        "block on every history entry (overall, per organ, at boundaries and in interiors) as routing_report.csv / "
        ".json, a block x entry heatmap beside the plain U-Net's fixed skip topology (routing_heatmap.png), the "
        "routing entropy per block (routing_entropy.png) and, with --maps, per-position weight maps of chosen slices.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-i", "--input", default=None,
                        help="a scan, a DICOM series folder or a folder of scans (default: the images of --labels)")
    parser.add_argument("-o", "--output", required=True, help="output folder (created)")
    parser.add_argument("--bundle", default=None,
                        help=f"trained bundle folder (default: the first of {', '.join(DEFAULT_BUNDLES)} holding "
                        "configs/ and models/model.pt)")
    parser.add_argument("--config", nargs="+", default=None,
                        help="inference config file(s) to merge (default: <bundle>/configs/inference.json)")
    parser.add_argument("--labels", default=None,
                        help="datalist JSON with image/label items: ground-truth organ regions for the scans it lists")
    parser.add_argument("--maps", type=int, default=0, help="draw attention maps for N slices in all (default 0)")
    parser.add_argument("--blocks", nargs="+", default=None, help="blocks drawn in the maps, e.g. d3 d4 (default all)")
    parser.add_argument("--slices-per-scan", type=int, default=None,
                        help="evenly spaced slices per volume (default: every slice)")
    parser.add_argument("--max-scans", type=int, default=None, help="report on the first N scans only")
    parser.add_argument("--boundary-width", type=int, default=1,
                        help="positions within K of another class count as boundary, at each block's resolution")
    parser.add_argument("--batch-size", type=int, default=16, help="slices per forward pass (default 16)")
    parser.add_argument("--device", default=None, help="e.g. cpu, cuda:0 (default: CUDA when available)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing report files")
    parser.add_argument("--set", metavar="KEY=VALUE", action="append", default=[],
                        help="a bundle config override, e.g. --set roi_size=[96,96] (repeatable)")  # fmt: skip
    return parser


@cli_main
def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.input is None and args.labels is None:
        parser.error("give the scans (-i) or a labelled datalist (--labels)")
    for option in ("maps", "batch_size", "boundary_width"):
        if getattr(args, option) < (0 if option == "maps" else 1):
            parser.error(f"--{option.replace('_', '-')} must be {'>= 0' if option == 'maps' else '>= 1'}")
    bundle = find_bundle(args.bundle)
    config = args.config or [str(bundle / "configs" / "inference.json")]
    try:
        report = run_routing_report(
            config, bundle, args.input, args.output, labels=args.labels, max_scans=args.max_scans,
            slices_per_scan=args.slices_per_scan, maps=args.maps, map_blocks=args.blocks,
            boundary_width=args.boundary_width, batch_size=args.batch_size, device=args.device,
            overrides=parse_overrides(args.set), overwrite=args.overwrite,
        )  # fmt: skip
    except ValueError as err:
        if isinstance(err, InputError):
            raise
        parser.error(str(err))
    weights = report.mean_weights()
    entropy = report.mean_entropy()
    print(f"routing report of {report.images} input(s) written to {Path(args.output)}")
    for block in report.blocks:
        top = max(weights[block], key=lambda e: weights[block][e])
        print(f"  {block:>6}: strongest entry {top} ({weights[block][top]:.3f}), entropy {entropy[block]:.3f}")


if __name__ == "__main__":
    main()
