"""Command line of the 2D binary data preparation (CVC-ClinicDB, CVC-ColonDB, ISIC 2017): ``python -m xattnres_monai.data.images``.

Only the argument parsing and the calls; the logic is :mod:`xattnres_monai.data.images`.
"""

from __future__ import annotations

import argparse
from typing import Any, Dict, Optional, Sequence

from xattnres_monai.data.images import DATASETS, DEFAULT_SEED, format_report, prepare_images
from xattnres_monai.utils.files import cli_main

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m xattnres_monai.data.images",
        description="Check a 2D binary segmentation release (CVC-ClinicDB, CVC-ColonDB, ISIC 2017), pair images with "
        "masks, split (seeded 8:1:1 for the polyp sets, official for ISIC 2017) and write a MONAI datalist.",
    )
    parser.add_argument("dataset", choices=DATASETS)
    parser.add_argument("--input", required=True, help="the release's folder")
    parser.add_argument("--output", required=True, help="datalist JSON to write (paths relative to its folder)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="seed of a new 8:1:1 split (polyp sets)")
    parser.add_argument("--split-file", default=None, help="split file to reuse or write (default: OUT/split.json)")
    parser.add_argument("--skip-bad", action="store_true", help="leave bad pairs out (listed) instead of refusing")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing datalist")
    return parser


@cli_main
def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Command-line entry point; see ``python -m xattnres_monai.data.images --help``."""
    args = _parser().parse_args(argv)
    datalist = prepare_images(
        args.dataset,
        args.input,
        args.output,
        seed=args.seed,
        split_file=args.split_file,
        skip_bad=args.skip_bad,
        overwrite=args.overwrite,
    )
    print(format_report(datalist, args.output))
    return datalist

