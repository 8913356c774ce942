"""Command line of the synthetic CT phantoms: ``python -m xattnres_monai.data.phantoms``.

Only the argument parsing and the calls; the logic is :mod:`xattnres_monai.testing.phantoms`.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

from xattnres_monai.testing.phantoms import write_phantoms
from xattnres_monai.utils.files import cli_main

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m xattnres_monai.data.phantoms",
        description="Write synthetic abdominal-CT-like phantoms (img00XX.nii.gz / label00XX.nii.gz, raw BTCV ids).",
    )
    parser.add_argument("--output", required=True, help="destination folder")
    parser.add_argument("--cases", type=int, default=12, help="number of cases (numbered from --first-case)")
    parser.add_argument("--size", type=int, nargs=3, default=(96, 96, 48), metavar=("X", "Y", "Z"))
    parser.add_argument("--spacing", type=float, nargs=3, default=(0.8, 0.8, 2.5), metavar=("SX", "SY", "SZ"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--first-case", type=int, default=1)
    parser.add_argument("--overwrite", action="store_true", help="replace existing files")
    return parser


@cli_main
def main(argv: Optional[Sequence[str]] = None) -> List[Tuple[Path, Path]]:
    """Command-line entry point; see ``python -m xattnres_monai.data.phantoms --help``."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        pairs = write_phantoms(
            args.output, args.cases, args.size, args.spacing, args.seed, args.first_case, overwrite=args.overwrite
        )
    except ValueError as err:  # invalid sizes or counts: a usage error
        parser.error(str(err))
    print(f"wrote {len(pairs)} phantom case(s) of size {tuple(args.size)} to {args.output}")
    return pairs

