"""Command line of the synthetic 2D binary releases: ``python -m xattnres_monai.data.image_phantoms``.

Only the argument parsing and the calls; the logic is :mod:`xattnres_monai.testing.image_phantoms`.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional, Sequence

from xattnres_monai.testing.image_phantoms import PHANTOM_DATASETS, write_image_release
from xattnres_monai.utils.files import cli_main

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m xattnres_monai.data.image_phantoms",
        description="Write a synthetic 2D binary release laid out like CVC-ClinicDB, CVC-ColonDB or ISIC 2017.",
    )
    parser.add_argument("dataset", choices=PHANTOM_DATASETS)
    parser.add_argument("output", help="destination folder")
    parser.add_argument("--n", type=int, default=10, help="number of image / mask pairs")
    parser.add_argument("--size", type=int, nargs=2, default=(64, 80), metavar=("H", "W"), help="nominal size")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true", help="replace existing files")
    return parser


@cli_main
def main(argv: Optional[Sequence[str]] = None) -> Path:
    """Command-line entry point; see ``python -m xattnres_monai.data.image_phantoms --help``."""
    args = _parser().parse_args(argv)
    root = write_image_release(
        args.dataset, args.output, n_cases=args.n, size=args.size, seed=args.seed, overwrite=args.overwrite
    )
    print(f"wrote a synthetic {args.dataset} release with {args.n} cases to {root}")
    return root

