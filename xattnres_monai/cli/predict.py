"""Command line ``python -m xattnres_monai predict`` (console script ``xattnres-monai predict``): masks for new scans
from a trained bundle, with no bundle config to write.

Only the argument parsing and the call; the logic is :func:`xattnres_monai.bundle.predict.predict`, which runs the
bundle's own ``configs/inference.json``.

Examples::

    python -m xattnres_monai predict -i scan.nii.gz -o masks/                          # one NIfTI scan
    python -m xattnres_monai predict -i /data/dicom/series_1 -o masks/ --bundle demo_output/synapse_bundle
    python -m xattnres_monai predict -i /data/new_scans -o masks/ --set save_figures=true
"""

from __future__ import annotations

import argparse
from typing import Optional, Sequence

from xattnres_monai.bundle.predict import DEFAULT_BUNDLES, parse_overrides, predict
from xattnres_monai.utils.files import cli_main

__all__ = ["main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m xattnres_monai predict",
        description="Segment new scans with a trained bundle: one scan (NIfTI), a DICOM series folder, or a folder "
        "of scans (NIfTI files and DICOM series sub-folders; images for the 2D bundles). Masks are written on each "
        "input's own grid as <name>_seg.nii.gz (PNG for 2D bundles).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-i", "--input", required=True, help="a scan, a DICOM series folder, or a folder of scans")
    parser.add_argument("-o", "--output", required=True, help="output folder (created)")
    parser.add_argument(
        "--bundle",
        default=None,
        help=f"trained bundle folder (default: the first of {', '.join(DEFAULT_BUNDLES)} holding configs/ and "
        "models/model.pt)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace existing masks (default: skip those scans)")
    parser.add_argument(
        "--set",
        metavar="KEY=VALUE",
        action="append",
        default=[],
        help="a bundle inference override, e.g. --set save_figures=true (repeatable; see the bundle's docs)",
    )
    return parser


@cli_main
def main(argv: Optional[Sequence[str]] = None) -> None:
    args = build_parser().parse_args(argv)
    predict(args.input, args.output, bundle=args.bundle, overwrite=args.overwrite, overrides=parse_overrides(args.set))


if __name__ == "__main__":
    main()
