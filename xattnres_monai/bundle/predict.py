"""Predict with a trained bundle without writing a bundle config: what ``python -m xattnres_monai predict`` runs.

:func:`predict` runs the bundle's own ``configs/inference.json`` (so everything the bundle does at inference, with
the settings training recorded there, applies unchanged) on one scan, one DICOM series folder, or a folder of scans,
through MONAI's ``monai.bundle run``. :func:`find_bundle` says which trained bundle is used when none is given.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence

from xattnres_monai.data.image_inputs import IMAGE_SUFFIXES
from xattnres_monai.data.inputs import NIFTI_SUFFIXES
from xattnres_monai.utils.files import InputError

__all__ = ["DEFAULT_BUNDLES", "find_bundle", "parse_overrides", "predict", "scan_inputs"]

#: where a trained bundle is looked for when none is given: the current folder, then the demo's bundles
DEFAULT_BUNDLES = (".", "demo_output/synapse_bundle", "demo_output/clinicdb_bundle", "demo_output/colondb_bundle",
                   "demo_output/isic2017_bundle")


def _is_bundle(folder: Path) -> bool:
    return (folder / "configs" / "inference.json").is_file()


def find_bundle(bundle: Optional[str] = None) -> Path:
    """The trained bundle folder to predict with: ``bundle``, or the first of :data:`DEFAULT_BUNDLES` that is one.

    Raises:
        InputError: the folder is not a bundle (no ``configs/inference.json``) or has no ``models/model.pt``.
    """
    if bundle is None:
        found = [Path(c) for c in DEFAULT_BUNDLES if _is_bundle(Path(c)) and (Path(c) / "models" / "model.pt").is_file()]
        if not found:
            raise InputError(
                ".", "no trained bundle here or in demo_output/: pass --bundle <bundle folder> (make demo makes one)"
            )
        return found[0].resolve()
    folder = Path(bundle)
    if not _is_bundle(folder):
        raise InputError(folder, "not a bundle folder (expected configs/inference.json inside)")
    if not (folder / "models" / "model.pt").is_file():
        raise InputError(folder / "models" / "model.pt", "missing: this bundle has not been trained")
    return folder.resolve()


def scan_inputs(path: str) -> Dict[str, Any]:
    """How the bundle reads ``path``: ``{"dataset_dir": folder}`` (a folder of scans) or ``{"scans": [path]}``.

    A NIfTI file or a 2D image is one scan; a folder holding files but no scans or sub-folders is one DICOM series;
    any other folder is a folder of scans (NIfTI files, DICOM series sub-folders, images).
    """
    source = Path(path)
    if not source.exists():
        raise InputError(source, "does not exist")
    if source.is_file():
        return {"scans": [str(source.resolve())]}
    entries = [e for e in source.iterdir() if not e.name.startswith(".")]
    if not entries:
        raise InputError(source, "empty folder")
    scans = [e for e in entries if e.is_dir() or e.name.lower().endswith(NIFTI_SUFFIXES + IMAGE_SUFFIXES)]
    if not scans:  # only other files: the folder is itself one DICOM series
        return {"scans": [str(source.resolve())]}
    return {"dataset_dir": str(source.resolve())}


def predict(
    inputs: str,
    output_dir: str,
    bundle: Optional[str] = None,
    overwrite: bool = False,
    overrides: Optional[Mapping[str, Any]] = None,
) -> None:
    """Run ``<bundle>/configs/inference.json`` on ``inputs``, writing masks (and reports) into ``output_dir``.

    Args:
        inputs: a scan (NIfTI file, 2D image), a DICOM series folder, or a folder of scans.
        output_dir: the output folder (created).
        bundle: the trained bundle folder (``None``: :func:`find_bundle`).
        overwrite: replace existing outputs (otherwise scans with an output are skipped).
        overrides: more config overrides (``{"roi_size": [96, 96]}``...), as ``monai.bundle run`` takes them.

    Raises:
        InputError: no trained bundle, missing inputs. Scans that fail are reported at the end of the run, which then
        exits with code 2 (the others are still written).
    """
    from monai.bundle import run

    root = find_bundle(bundle)
    source = scan_inputs(inputs)
    os.makedirs(output_dir, exist_ok=True)
    args: Dict[str, Any] = {
        "config_file": str(root / "configs" / "inference.json"),
        "logging_file": str(root / "configs" / "logging.conf"),
        "bundle_root": str(root),
        "output_dir": str(Path(output_dir).resolve()),
        "overwrite": bool(overwrite),
    }
    if not (root / "configs" / "logging.conf").is_file():
        del args["logging_file"]
    with tempfile.TemporaryDirectory(prefix="xattnres-predict-") as tmp:
        if "scans" in source:
            datalist = Path(tmp) / "scans.json"
            datalist.write_text(json.dumps(source["scans"]), encoding="utf-8")
            args["datalist"] = str(datalist)
        else:
            args["dataset_dir"] = source["dataset_dir"]
        args.update(dict(overrides or {}))
        run(**args)


def parse_overrides(pairs: Sequence[str]) -> Dict[str, Any]:
    """``["roi_size=[96,96]", "tta=true"]`` -> ``{"roi_size": [96, 96], "tta": True}`` (values parsed as JSON if they
    are JSON, strings otherwise)."""
    parsed: Dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise InputError(pair, "expected KEY=VALUE (a bundle config override, e.g. roi_size=[96,96])")
        try:
            parsed[key] = json.loads(value)
        except ValueError:
            parsed[key] = value
    return parsed

