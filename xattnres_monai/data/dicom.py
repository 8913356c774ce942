"""DICOM series integrity, checked from the headers before any pixel is decoded, and the reader of a checked series.

A scanner export is a folder of slice files. GDCM's series discovery (what ITK and so MONAI's ``ITKReader`` use on a
folder) silently leaves out a file it cannot parse, so a truncated or corrupt slice used to give a volume with one
slice fewer on a stretched z spacing. :func:`dicom_series` reads every file's header with pydicom (pixel data
skipped: only its length is compared with the file's size) and refuses, naming the file:

- a file that is not a readable DICOM file, or whose pixel data is cut short (truncated file);
- a slice of another series (when most files are of one series), or a folder of several series;
- a slice whose orientation, pixel spacing, rows / columns or pixel type differ from the others';
- a slice without a position, two slices at the same position, a gap (a missing slice) or uneven slice spacing
  (beyond :data:`SPACING_RTOL`).

Files that hold no image (an RTSTRUCT, a SEG, a structured report, ``DICOMDIR``) are left out with a note: a folder of
CT slices plus their contours is a common export. The checked slice files, sorted along the slice normal, then go to
:class:`DicomSeriesReader`, MONAI's ``ITKReader`` restricted to exactly those files, so the pixels are decoded once,
by one reader, with the geometry MONAI gives every DICOM series.

Example::

    >>> series = dicom_series("ct_study/")
    >>> series.shape, len(series.files)
    ((512, 512, 20), 20)
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple, Union

import numpy as np
from monai.data import ITKReader

from xattnres_monai.utils.files import InputError

__all__ = ["DicomSeries", "DicomSeriesReader", "SPACING_RTOL", "dicom_series"]

PathLike = Union[str, "os.PathLike[str]"]
#: slice spacings may differ from their median by this fraction (scanner positions are rounded to ~0.01 mm).
SPACING_RTOL = 0.05
#: orientation cosines and pixel spacings of the slices of one series agree within this tolerance.
GEOMETRY_ATOL = 1e-3
_PIXEL_DATA = 0x7FE00010
_UNDEFINED_LENGTH = 0xFFFFFFFF
_NON_IMAGE_NAMES = {"DICOMDIR"}
#: objects stored beside the slices of a study that are not slices of its image (left out with a note)
_NON_IMAGE_MODALITIES = {"RTSTRUCT", "RTPLAN", "RTDOSE", "RTRECORD", "SEG", "SR", "PR", "KO", "REG"}

logger = logging.getLogger(__name__)


@dataclass
class DicomSeries:
    """A checked series: the slice files in position order, ``shape`` (columns, rows, slices) and the RAS affine."""

    folder: Path
    files: Tuple[Path, ...]
    shape: Tuple[int, int, int]
    affine: np.ndarray


def _header(path: Path) -> Any:
    """The header of one file (``None`` for a file that holds no image), its pixel data checked for completeness.

    The pixel data value is not read (``defer_size``): its file offset and length are compared with the file size.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(str(path), defer_size=1024)
    except InvalidDicomError:
        raise InputError(path, "not a DICOM file") from None
    except Exception as err:  # truncated headers give EOFError / struct / value errors
        raise InputError(path, f"not a readable DICOM file ({type(err).__name__}: {err})") from None
    if str(getattr(ds, "Modality", "")).upper() in _NON_IMAGE_MODALITIES or _PIXEL_DATA not in ds:
        return None  # contours, segmentations, reports, dose grids: not slices of the image
    try:
        raw = ds.get_item(_PIXEL_DATA, keep_deferred=True)  # pydicom 3: do not read the deferred value
    except TypeError:  # pydicom 2 (the MONAI Label environment) never reads it here
        raw = ds.get_item(_PIXEL_DATA)
    tell, length = getattr(raw, "value_tell", None), int(getattr(raw, "length", 0) or 0)
    if tell is not None and length != _UNDEFINED_LENGTH:
        size = path.stat().st_size
        if tell + length > size:
            raise InputError(path, f"truncated DICOM file: its pixel data needs {length} bytes, {size - tell} present")
        expected = _expected_pixel_bytes(ds)
        if expected is not None and length < expected:
            raise InputError(path, f"pixel data holds {length} bytes, {expected} expected for its rows x columns")
    return ds


def _expected_pixel_bytes(ds: Any) -> Any:
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
        samples = int(getattr(ds, "SamplesPerPixel", 1) or 1)
        bits = int(ds.BitsAllocated)
    except (AttributeError, TypeError, ValueError):
        return None
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if syntax is None or syntax.is_encapsulated:
        return None  # compressed: the decoder checks the frames
    return rows * cols * frames * samples * bits // 8


def _vector(ds: Any, keyword: str, count: int, path: Path) -> np.ndarray:
    value = getattr(ds, keyword, None)
    try:
        array = np.array([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        array = np.empty(0)
    if array.shape != (count,) or not np.isfinite(array).all():
        raise InputError(path, f"{keyword} is missing or not {count} numbers ({value!r})")
    return array


def _series_files(folder: Path) -> List[Tuple[Path, Any]]:
    entries = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    files = [p for p in entries if p.is_file() and p.name.upper() not in _NON_IMAGE_NAMES]
    if not files:
        raise InputError(folder, "folder holds no DICOM series: it holds no files (and is not a .nii / .nii.gz file)")
    headers, skipped = [], []
    for path in files:
        if path.stat().st_size == 0:
            raise InputError(path, "zero-byte file in the DICOM series folder")
        ds = _header(path)
        if ds is None:
            skipped.append(path.name)
        else:
            headers.append((path, ds))
    if skipped:
        logger.info(f"{folder}: left out {len(skipped)} DICOM file(s) without an image ({', '.join(skipped[:3])})")
    if not headers:
        raise InputError(folder, "folder holds no DICOM series: its DICOM files hold no image slices")
    return headers


def _one_series(folder: Path, headers: List[Tuple[Path, Any]]) -> List[Tuple[Path, Any]]:
    by_series: Dict[str, List[Tuple[Path, Any]]] = {}
    for path, ds in headers:
        by_series.setdefault(str(getattr(ds, "SeriesInstanceUID", "")), []).append((path, ds))
    if len(by_series) == 1:
        return headers
    ranked = sorted(by_series.items(), key=lambda kv: -len(kv[1]))
    main_uid, main = ranked[0]
    strays = [path for uid, items in ranked[1:] for path, _ in items]
    if len(main) > 1 and len(main) >= 2 * len(strays):
        stray_uid = next(uid for uid, items in ranked[1:] if items[0][0] == strays[0])
        raise InputError(strays[0], f"slice of another series (SeriesInstanceUID {stray_uid}; the folder's "
                         f"{len(main)} other slices are series {main_uid})")  # fmt: skip
    counts = ", ".join(f"{uid or '(no UID)'}: {len(items)} file(s)" for uid, items in ranked[:4])
    raise InputError(folder, f"folder holds {len(by_series)} DICOM series ({counts}); give one series per folder")


def dicom_series(folder: PathLike) -> DicomSeries:
    """Check a folder holding one DICOM series from its headers (see the module docstring) and describe its grid.

    Args:
        folder: the series folder.

    Returns:
        the slice files sorted along the slice normal, the shape (columns, rows, slices) and the RAS affine
        (MONAI's convention: LPS patient coordinates of DICOM with x and y negated).

    Raises:
        InputError: naming the offending file (or the folder) and the problem.
    """
    folder = Path(folder)
    headers = _one_series(folder, _series_files(folder))
    first_path, first = headers[0]
    frames = int(getattr(first, "NumberOfFrames", 1) or 1)
    rows, cols = int(first.Rows), int(first.Columns)
    if len(headers) == 1:
        return _single_file(folder, first_path, first, rows, cols, frames)
    if frames > 1:
        raise InputError(first_path, f"multi-frame file ({frames} frames) in a series of {len(headers)} files")
    orientation = _vector(first, "ImageOrientationPatient", 6, first_path)
    spacing = _vector(first, "PixelSpacing", 2, first_path)
    for path, ds in headers[1:]:
        if (int(ds.Rows), int(ds.Columns)) != (rows, cols):
            raise InputError(path, f"slice of {ds.Rows} x {ds.Columns} pixels, the series' first is {rows} x {cols}")
        if not np.allclose(_vector(ds, "ImageOrientationPatient", 6, path), orientation, atol=GEOMETRY_ATOL):
            raise InputError(path, "slice orientation (ImageOrientationPatient) differs from the series' others")
        if not np.allclose(_vector(ds, "PixelSpacing", 2, path), spacing, atol=GEOMETRY_ATOL, rtol=0):
            raise InputError(path, "pixel spacing differs from the series' other slices")
        if int(getattr(ds, "BitsAllocated", 0)) != int(getattr(first, "BitsAllocated", 0)):
            raise InputError(path, "pixel type (BitsAllocated) differs from the series' other slices")
    normal = np.cross(orientation[:3], orientation[3:])
    positions = [(float(_vector(ds, "ImagePositionPatient", 3, p) @ normal), p, ds) for p, ds in headers]
    positions.sort(key=lambda item: item[0])
    steps = np.diff([z for z, _, _ in positions])
    step = float(np.median(steps))
    for (z0, p0, _), (z1, p1, _), d in zip(positions, positions[1:], steps):
        if d < GEOMETRY_ATOL:
            raise InputError(p1, f"at the same slice position as {p0.name} ({z1:.3f} mm along the normal)")
        if abs(d - step) > SPACING_RTOL * step:
            if d > 1.5 * step:
                missing = int(round(d / step)) - 1
                raise InputError(folder, f"{missing} slice(s) missing between {p0.name} and {p1.name} (a gap of "
                                 f"{d:.3f} mm, slices every {step:.3f} mm)")  # fmt: skip
            raise InputError(p1, f"uneven slice spacing: {d:.3f} mm after {p0.name}, {step:.3f} mm elsewhere")
    origin = _vector(positions[0][2], "ImagePositionPatient", 3, positions[0][1])
    affine = _affine(orientation, spacing, step, normal, origin)
    files = tuple(p for _, p, _ in positions)
    return DicomSeries(folder, files, (cols, rows, len(files)), affine)


def _single_file(folder: Path, path: Path, ds: Any, rows: int, cols: int, frames: int) -> DicomSeries:
    """One file: a single slice, or a multi-frame image (its frame geometry is left to ITK)."""
    orientation = np.array([1.0, 0, 0, 0, 1, 0]) if "ImageOrientationPatient" not in ds else \
        _vector(ds, "ImageOrientationPatient", 6, path)  # fmt: skip
    spacing = _vector(ds, "PixelSpacing", 2, path) if "PixelSpacing" in ds else np.ones(2)
    origin = _vector(ds, "ImagePositionPatient", 3, path) if "ImagePositionPatient" in ds else np.zeros(3)
    thickness = float(getattr(ds, "SpacingBetweenSlices", 0) or getattr(ds, "SliceThickness", 0) or 1.0)
    normal = np.cross(orientation[:3], orientation[3:])
    return DicomSeries(folder, (path,), (cols, rows, frames), _affine(orientation, spacing, thickness, normal, origin))


def _affine(orientation: np.ndarray, spacing: np.ndarray, step: float, normal: np.ndarray, origin: np.ndarray):
    """RAS affine of the (column, row, slice) voxel grid: DICOM's LPS geometry with x and y negated."""
    lps = np.eye(4)
    lps[:3, 0] = orientation[:3] * spacing[1]  # along a row: the column index grows, spaced by PixelSpacing[1]
    lps[:3, 1] = orientation[3:] * spacing[0]
    lps[:3, 2] = normal * step
    lps[:3, 3] = origin
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


class DicomSeriesReader(ITKReader):
    """MONAI's ``ITKReader`` reading exactly the given slice files of a series (as checked by :func:`dicom_series`).

    ``ITKReader`` given a folder lets GDCM discover the series, which drops unreadable files without an error; this
    reader hands ITK the checked files in position order instead. Decoding, the affine and the metadata are
    ``ITKReader``'s.

    Args:
        files: the slice files, sorted along the slice normal.
        kwargs: passed to ``ITKReader``.
    """

    def __init__(self, files: Sequence[PathLike], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.files = [str(f) for f in files]

    def verify_suffix(self, filename: Any) -> bool:
        return True

    def read(self, data: Any, **kwargs: Any) -> Any:
        import itk

        return itk.imread(self.files[0] if len(self.files) == 1 else self.files, **{**self.kwargs, **kwargs})
