"""Command line of the Synapse data preparation: ``python -m xattnres_monai.data.synapse``.

Only the argument parsing and the calls; the logic is :mod:`xattnres_monai.data.synapse`.
"""

from __future__ import annotations

import argparse
from typing import Any, Dict, Optional, Sequence

from xattnres_monai.data.inputs import MAX_VOXELS
from xattnres_monai.data.synapse import format_report, prepare_synapse
from xattnres_monai.utils.files import cli_main

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m xattnres_monai.data.synapse",
        description="Check Synapse multi-organ CT data (raw BTCV or TransUNet's preprocessed form), write the "
        "9-class labels and a MONAI datalist (paths relative to the datalist's folder).",
    )
    parser.add_argument("--input", required=True, help="raw BTCV folder or TransUNet folder (train_npz/, test_vol_h5/)")
    parser.add_argument("--output", required=True, help="datalist JSON to write; derived volumes go next to it")
    parser.add_argument(
        "--format", default="auto", choices=("auto", "btcv", "transunet"), dest="fmt", help="input form (auto: detected)"
    )
    parser.add_argument(
        "--split",
        default="auto",
        choices=("auto", "standard", "random"),
        help="standard TransUNet split, seeded random 60/20/20, or auto (standard if all 30 standard cases exist)",
    )
    val = parser.add_mutually_exclusive_group()
    val.add_argument("--num-val", type=int, default=None, help="validation cases taken from the training cases")
    val.add_argument("--val-fraction", type=float, default=None, help="fraction of training cases for validation")
    parser.add_argument("--seed", type=int, default=0, help="seed of the validation (and random) split")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    parser.add_argument(
        "--max-voxels",
        type=int,
        default=MAX_VOXELS,
        help=f"refuse volumes with more voxels, checked from the header before loading (default {MAX_VOXELS})",
    )
    return parser


@cli_main
def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Command-line entry point; see ``python -m xattnres_monai.data.synapse --help``."""
    args = _parser().parse_args(argv)
    datalist = prepare_synapse(
        args.input,
        args.output,
        fmt=args.fmt,
        split=args.split,
        num_val=args.num_val,
        val_fraction=args.val_fraction,
        seed=args.seed,
        overwrite=args.overwrite,
        max_voxels=args.max_voxels,
    )
    print(format_report(datalist, args.output))
    return datalist

