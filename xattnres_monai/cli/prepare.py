"""Command line ``python -m xattnres_monai.data.prepare``: prepare any labelled CT / MR collection (or the Synapse
release) for the bundles.

Only the argument parsing and the calls; the logic is in :mod:`xattnres_monai.data.collection` (own data) and
:mod:`xattnres_monai.data.synapse` (``--preset synapse``, the same arguments as
``python -m xattnres_monai.data.synapse``).

Examples::

    python -m xattnres_monai.data.prepare --input /data/my_ct --output /data/my_ct_prepared/datalist.json \\
        --labels liver=1,spleen=2,kidney=3
    python -m xattnres_monai.data.prepare --input /data/Task03_Liver/dataset.json --output /data/liver/datalist.json
    python -m xattnres_monai.data.prepare --preset synapse --input /data/RawData/Training \\
        --output /data/synapse/datalist.json
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Dict, Optional, Sequence

from xattnres_monai.data.collection import LABEL_SUFFIXES, format_report, prepare_collection
from xattnres_monai.data.inputs import MAX_VOXELS
from xattnres_monai.data.synapse import format_report as format_synapse_report
from xattnres_monai.data.synapse import prepare_synapse
from xattnres_monai.utils.files import cli_main

__all__ = ["main"]

_EPILOG = f"""\
naming rule (a folder; a dataset.json in it is used instead when present):
  1. imagesTr/ + labelsTr/ (or images/ + labels/, img/ + label/, images/ + masks/ ...): same file name;
     nnU-Net's _0000 is stripped from image names, a label may also end with a label suffix
  2. side by side: <case>.nii.gz + <case>SUFFIX.nii.gz, SUFFIX one of {' '.join(LABEL_SUFFIXES)};
     <case>/ may be a DICOM series folder next to <case>_seg.nii.gz
  3. one folder per case: <case>/ with one image and one label file (label.nii.gz, seg.nii.gz,
     segmentation.nii.gz, mask.nii.gz, gt.nii.gz, or any name with a label suffix)
dataset.json (MSD / nnU-Net): "training": [{{"image", "label"}}] (or imagesTr/ + labelsTr/), "labels" as
  id -> name or name -> id; without --labels all its classes are used.
label ids in the files that --labels does not list are refused unless --ignore-unlisted.
outputs (next to --output): labels_<N>class/<case>.nii.gz (uint8), classes.json (bundle overlay: num_classes),
  classes_metadata.json (metadata.json fragment). Nothing is written unless every pair passes the checks.
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m xattnres_monai.data.prepare",
        description="Check a labelled CT/MR collection (any file names, any label ids), write its labels remapped "
        "to your classes, a MONAI datalist and the bundle overlay for that many classes. --preset synapse prepares "
        "the Synapse release instead (as python -m xattnres_monai.data.synapse).",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--input", required=True, help="folder of image/label pairs, or a dataset.json")
    parser.add_argument("--output", required=True, help="datalist JSON to write; derived files go next to it")
    parser.add_argument("--preset", choices=("synapse",), default=None,
                        help="a known release: synapse = BTCV raw or TransUNet data, 9 classes")  # fmt: skip
    own = parser.add_argument_group("own data")
    own.add_argument("--labels", default=None, metavar="NAME=ID,...",
                     help="your classes with the ids of your label files, e.g. liver=1,spleen=2,kidney=3 "
                          "(kidney=3+4 merges ids); optional with a dataset.json")  # fmt: skip
    own.add_argument("--onto", choices=("synapse",), default=None,
                     help="map the names onto the Synapse bundle's 9 classes instead of new classes 1..K")  # fmt: skip
    own.add_argument("--ignore-unlisted", action="store_true",
                     help="label ids not in --labels become background (default: such files are refused)")  # fmt: skip
    own.add_argument("--window", default=None, metavar="LOW,HIGH|auto",
                     help="intensity window for training/inference (hu_window), e.g. for MR; auto: 0.5/99.5 "
                          "percentiles of the training images (default: the bundle's CT window)")  # fmt: skip
    own.add_argument("--bundle", default=None, metavar="FOLDER",
                     help="a copy of the bundle folder: write num_classes (and hu_window) into its configs and "
                          "the classes into its configs/metadata.json")  # fmt: skip
    own.add_argument("--check", action="store_true", help="check everything, write nothing")
    syn = parser.add_argument_group("--preset synapse only")
    syn.add_argument("--format", default=None, choices=("auto", "btcv", "transunet"), dest="fmt",
                     help="input form (auto: detected)")  # fmt: skip
    syn.add_argument("--split", default=None, choices=("auto", "standard", "random"),
                     help="standard TransUNet split, seeded random 60/20/20, or auto")  # fmt: skip
    val = parser.add_mutually_exclusive_group()
    val.add_argument("--num-val", type=int, default=None, help="validation cases taken from the training cases")
    val.add_argument("--val-fraction", type=float, default=None, help="fraction of training cases for validation")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    parser.add_argument("--max-voxels", type=int, default=MAX_VOXELS,
                        help=f"refuse larger volumes, from the header before loading (default {MAX_VOXELS})")
    return parser


def _say(line: str) -> None:
    print(line, file=sys.stderr if line.startswith("warning:") else sys.stdout, flush=True)


@cli_main
def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Command-line entry point; see ``python -m xattnres_monai.data.prepare --help``."""
    parser = _parser()
    args = parser.parse_args(argv)
    own_options = {"--labels": args.labels, "--onto": args.onto, "--ignore-unlisted": args.ignore_unlisted,
                   "--window": args.window, "--bundle": args.bundle, "--check": args.check}  # fmt: skip
    if args.preset == "synapse":
        used = [name for name, value in own_options.items() if value not in (None, False)]
        if used:
            parser.error(f"{', '.join(used)} do(es) not apply to --preset synapse (its 9 classes are fixed)")
        datalist = prepare_synapse(
            args.input,
            args.output,
            fmt=args.fmt or "auto",
            split=args.split or "auto",
            num_val=args.num_val,
            val_fraction=args.val_fraction,
            seed=args.seed,
            overwrite=args.overwrite,
            max_voxels=args.max_voxels,
        )
        print(format_synapse_report(datalist, args.output))
        return datalist
    if args.fmt is not None or args.split is not None:
        parser.error("--format and --split apply to --preset synapse only")
    datalist = prepare_collection(
        args.input,
        args.output,
        labels=args.labels,
        onto=args.onto,
        ignore_unlisted=args.ignore_unlisted,
        num_val=args.num_val,
        val_fraction=args.val_fraction,
        seed=args.seed,
        overwrite=args.overwrite,
        max_voxels=args.max_voxels,
        bundle=args.bundle,
        window=args.window,
        check_only=args.check,
        log=_say,
    )
    if not args.check:
        print(format_report(datalist, args.output))
    return datalist

