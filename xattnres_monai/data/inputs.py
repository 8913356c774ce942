"""Collect and check the scans given to bundle inference, before any of them is processed.

Each scan is checked on its own (readable, 3D, finite, not absurdly large, a single DICOM series);
failures are recorded with the file name and the reason, and the good scans still run. The
collected failures are reported at the end of the run by
:class:`xattnres_monai.handlers.InferenceReport`, which then exits non-zero.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

from xattnres_monai.utils.files import InputError

__all__ = ["InferenceInputs", "check_scan", "output_path_for", "MAX_VOXELS"]

NIFTI_SUFFIXES = (".nii.gz", ".nii")
#: refuse volumes above this many voxels before loading them (1024 x 1024 x 2048 float32 = 8 GiB).
MAX_VOXELS = 1024 * 1024 * 2048

logger = logging.getLogger(__name__)


def _stem(path: Path) -> str:
    name = path.name
    for suffix in NIFTI_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def output_path_for(scan: str, output_dir: str, postfix: str = "seg") -> str:
    """``<output_dir>/<scan name without .nii(.gz)>_<postfix>.nii.gz`` (a DICOM folder uses its folder name)."""
    return os.path.join(output_dir, f"{_stem(Path(scan.rstrip(os.sep)))}_{postfix}.nii.gz")


def _check_shape(path: Path, shape: Tuple[int, ...]) -> None:
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        raise InputError(path, f"expected a 3D volume, got {len(shape)}D data of shape {tuple(shape)}")
    if min(shape) < 1:
        raise InputError(path, f"empty volume of shape {tuple(shape)}")
    if int(np.prod(shape, dtype=np.int64)) > MAX_VOXELS:
        raise InputError(path, f"volume of shape {tuple(shape)} exceeds the {MAX_VOXELS:,}-voxel limit")


def _check_values(path: Path, data: np.ndarray) -> None:
    if not np.isfinite(data).all():
        raise InputError(path, f"{int((~np.isfinite(data)).sum())} voxels are NaN or Inf")
    if float(data.min()) == float(data.max()):
        raise InputError(path, f"constant image (every voxel is {float(data.min()):g})")


def _check_nifti(path: Path) -> None:
    import nibabel as nib

    try:
        image = nib.load(str(path))
        _check_shape(path, tuple(image.shape))  # from the header, before loading the voxels
        data = np.asanyarray(image.dataobj)
    except InputError:
        raise
    except Exception as err:  # nibabel / gzip / zlib raise many types for damaged files
        raise InputError(path, f"cannot read NIfTI file ({type(err).__name__}: {err})") from None
    _check_values(path, data)


def _check_dicom_folder(path: Path) -> None:
    import SimpleITK as sitk

    series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(path))
    if not series:
        raise InputError(path, "folder holds no DICOM series")
    if len(series) > 1:
        raise InputError(path, f"folder holds {len(series)} DICOM series; give one series per folder")
    files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(path), series[0])
    try:
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(files)
        image = reader.Execute()
    except RuntimeError as err:
        raise InputError(path, f"cannot read DICOM series ({' '.join(str(err).split())[:200]})") from None
    _check_shape(path, tuple(image.GetSize()))
    _check_values(path, sitk.GetArrayViewFromImage(image))


def check_scan(scan: str) -> None:
    """Raise :class:`InputError` naming ``scan`` if it cannot be segmented (see module docstring)."""
    path = Path(scan)
    if not path.exists():
        raise InputError(path, "no such file or folder")
    if path.is_dir():
        _check_dicom_folder(path)
        return
    if path.stat().st_size == 0:
        raise InputError(path, "zero-byte file")
    if not path.name.endswith(NIFTI_SUFFIXES):
        raise InputError(path, "unsupported file type: expected .nii / .nii.gz, or a DICOM series folder")
    _check_nifti(path)


class InferenceInputs:
    """The scans of one inference run: from a folder (``dataset_dir``) or a list (``datalist``).

    A folder contributes every ``*.nii`` / ``*.nii.gz`` file and every sub-folder (a DICOM series);
    a datalist is a JSON list of paths or of ``{"image": path}`` items, or a MONAI datalist with a
    ``"test"`` (or ``"testing"``) section. Scans whose output already exists are skipped unless
    ``overwrite``; scans that fail :func:`check_scan` are recorded in :attr:`failures`.

    Args:
        output_dir: where the masks will be written (``<name>_<postfix>.nii.gz``).
        dataset_dir: folder of scans (used when ``datalist`` is empty).
        datalist: path of a JSON list of scans.
        overwrite: replace existing outputs.
        postfix: output name postfix.

    Attributes:
        items: ``[{"image": scan, "output": mask path}]`` for the scans to process.
        failures: ``[(scan, reason)]``; skipped: ``[(scan, reason)]``.
    """

    def __init__(
        self,
        output_dir: str,
        dataset_dir: Optional[str] = None,
        datalist: Optional[str] = None,
        overwrite: bool = False,
        postfix: str = "seg",
    ) -> None:
        self.output_dir = output_dir
        self.overwrite = overwrite
        self.failures: List[Tuple[str, str]] = []
        self.skipped: List[Tuple[str, str]] = []
        self.items: List[Dict[str, str]] = []
        for scan in self._list_scans(dataset_dir, datalist):
            output = output_path_for(scan, output_dir, postfix)
            if os.path.exists(output) and not overwrite:
                self.skipped.append((scan, f"output {output} exists (set overwrite to replace it)"))
                continue
            try:
                check_scan(scan)
            except InputError as err:
                self.failures.append((scan, err.problem))
                logger.error(str(err))
                continue
            self.items.append({"image": scan, "output": output})
        for scan, reason in self.skipped:
            logger.warning(f"{scan}: skipped, {reason}")

    def _list_scans(self, dataset_dir: Optional[str], datalist: Optional[str]) -> List[str]:
        if datalist:
            return self._read_datalist(datalist)
        if not dataset_dir:
            raise InputError("dataset_dir", "no input given: set dataset_dir (a folder) or datalist (a JSON file)")
        folder = Path(dataset_dir)
        if not folder.is_dir():
            raise InputError(folder, "input folder does not exist")
        scans = sorted(str(p) for p in folder.iterdir() if p.is_dir() or p.name.endswith(NIFTI_SUFFIXES))
        if not scans:
            raise InputError(folder, "input folder holds no .nii / .nii.gz files or DICOM series folders")
        return scans

    @staticmethod
    def _read_datalist(datalist: str) -> List[str]:
        path = Path(datalist)
        try:
            content = json.loads(path.read_text())
        except FileNotFoundError:
            raise InputError(path, "datalist file does not exist") from None
        except (OSError, ValueError) as err:
            raise InputError(path, f"cannot read datalist JSON ({err})") from None
        if isinstance(content, dict):
            content = content.get("test", content.get("testing", []))
        scans = []
        for entry in content if isinstance(content, list) else []:
            scan = entry.get("image") if isinstance(entry, dict) else entry
            if isinstance(scan, str):
                scans.append(scan if os.path.isabs(scan) else str(path.parent / scan))
        if not scans:
            raise InputError(path, "datalist lists no scans (expected a list of paths or {'image': path} items)")
        return scans
