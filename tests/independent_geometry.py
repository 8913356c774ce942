"""Geometry and voxels of real files, read WITHOUT the project's code: the reference the project's readers are checked
against (tests/test_real_corpus.py).

- DICOM series: pydicom only. Slices are sorted by ``ImagePositionPatient`` projected on the slice normal
  (row direction x column direction); the geometry is the one ITK (and so MONAI's ``ITKReader``) builds: origin = the
  first slice's position, direction = (row, column, normal), z spacing = the mean distance between consecutive slices.
- NIfTI: nibabel only.

Axis order everywhere: (x, y, z) = (column, row, slice) for DICOM, i.e. the order of a nibabel / MONAI array whose
affine is RAS. The RAS affine of a DICOM series is ``diag(-1, -1, 1, 1) @`` its LPS affine.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

PathLike = Union[str, Path]
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])

__all__ = [
    "DicomGeometry",
    "NiftiGeometry",
    "dicom_series_geometry",
    "dicom_series_data",
    "dicom_slice_values",
    "nifti_geometry",
    "nifti_data",
    "rtstruct_roi_names",
    "rtstruct_to_label",
]


@dataclass
class DicomGeometry:
    """Geometry of one DICOM series (a folder of single-frame slices)."""

    files: List[Path]  #: the slice files, sorted along the slice normal (index = z)
    shape: Tuple[int, int, int]  #: (columns, rows, slices) = (x, y, z)
    spacing: Tuple[float, float, float]  #: (column spacing, row spacing, slice spacing) in mm
    origin: np.ndarray  #: LPS position of voxel (0, 0, 0): the first slice's ImagePositionPatient
    direction: np.ndarray  #: 3 x 3 LPS, columns = row direction, column direction, slice normal
    affine_lps: np.ndarray  #: 4 x 4, voxel (x, y, z) -> LPS mm
    affine: np.ndarray  #: 4 x 4, voxel (x, y, z) -> RAS mm (what MONAI's ITKReader / nibabel use)
    positions: np.ndarray  #: (n, 3) ImagePositionPatient of each sorted slice

    def voxel_to_lps(self, points: np.ndarray) -> np.ndarray:
        points = np.asarray(points, dtype=np.float64)
        return points @ self.affine_lps[:3, :3].T + self.affine_lps[:3, 3]

    def lps_to_voxel(self, points: np.ndarray) -> np.ndarray:
        """Continuous voxel coordinates (x, y, z) of LPS points (n, 3)."""
        points = np.asarray(points, dtype=np.float64)
        return (points - self.affine_lps[:3, 3]) @ np.linalg.inv(self.affine_lps[:3, :3]).T


@dataclass
class NiftiGeometry:
    shape: Tuple[int, int, int]
    spacing: Tuple[float, float, float]
    affine: np.ndarray  #: 4 x 4 RAS (nibabel's ``image.affine``)
    orientation: str  #: axis codes, e.g. "RAS", "PIR"
    dtype: np.dtype  #: dtype nibabel's dataobj gives (scaling applied)


def _read_headers(folder: Path) -> List[Tuple[Path, "object"]]:
    import pydicom

    headers = []
    for path in sorted(p for p in Path(folder).iterdir() if p.is_file()):
        try:
            ds = pydicom.dcmread(str(path), stop_before_pixels=True)
        except Exception:  # not DICOM: ignored, as ITK's series reader does
            continue
        if "ImagePositionPatient" in ds and "ImageOrientationPatient" in ds and "PixelSpacing" in ds:
            headers.append((path, ds))
    if not headers:
        raise ValueError(f"{folder}: no DICOM image slice with ImagePositionPatient / ImageOrientationPatient")
    series = {str(ds.get("SeriesInstanceUID", "")) for _, ds in headers}
    if len(series) != 1:
        raise ValueError(f"{folder}: {len(series)} series, expected one")
    return headers


def dicom_series_geometry(folder: PathLike) -> DicomGeometry:
    """Geometry of the single-frame DICOM series in ``folder``, from pydicom headers only.

    A single-slice series has slice spacing ``SpacingBetweenSlices`` if given, else 1.0 (ITK's default); only the
    in-plane part of its affine is meaningful.
    """
    headers = _read_headers(Path(folder))
    ds0 = headers[0][1]
    iop = np.array([float(v) for v in ds0.ImageOrientationPatient])
    row_dir, col_dir = iop[:3], iop[3:]  # row_dir: direction of increasing column index (x)
    normal = np.cross(row_dir, col_dir)
    positions = np.array([[float(v) for v in ds.ImagePositionPatient] for _, ds in headers])
    order = np.argsort(positions @ normal, kind="stable")
    headers = [headers[i] for i in order]
    positions = positions[order]
    dy, dx = (float(v) for v in ds0.PixelSpacing)  # PixelSpacing = (row spacing, column spacing)
    if len(headers) > 1:
        projected = positions @ normal
        dz = float((projected[-1] - projected[0]) / (len(headers) - 1))
    else:
        dz = float(ds0.get("SpacingBetweenSlices", 1.0) or 1.0)
    direction = np.stack([row_dir, col_dir, normal], axis=1)
    affine_lps = np.eye(4)
    affine_lps[:3, :3] = direction @ np.diag([dx, dy, dz])
    affine_lps[:3, 3] = positions[0]
    shape = (int(ds0.Columns), int(ds0.Rows), len(headers))
    return DicomGeometry(
        files=[path for path, _ in headers],
        shape=shape,
        spacing=(dx, dy, dz),
        origin=positions[0].copy(),
        direction=direction,
        affine_lps=affine_lps,
        affine=LPS_TO_RAS @ affine_lps,
        positions=positions,
    )


def dicom_slice_values(path: PathLike) -> np.ndarray:
    """One slice's rescaled values (``pixel_array * RescaleSlope + RescaleIntercept``), float64, (x, y) order."""
    import pydicom

    ds = pydicom.dcmread(str(path))
    pixels = ds.pixel_array.astype(np.float64)
    if pixels.ndim != 2:
        raise ValueError(f"{path}: expected one single-frame slice, got pixel array of shape {pixels.shape}")
    slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
    intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
    return (pixels * slope + intercept).T  # (rows, columns) -> (x, y)


def dicom_series_data(folder: PathLike, slices: Optional[Sequence[int]] = None) -> np.ndarray:
    """Rescaled voxel values (float64) of the series, (x, y, z); ``slices``: only these z indices (in that order)."""
    geometry = dicom_series_geometry(folder)
    indices = range(len(geometry.files)) if slices is None else slices
    return np.stack([dicom_slice_values(geometry.files[k]) for k in indices], axis=-1)


# -------------------------------------------------------------------------------------------------------------- NIfTI


def nifti_geometry(path: PathLike) -> NiftiGeometry:
    import nibabel as nib

    image = nib.load(str(path))
    shape = tuple(int(s) for s in image.shape[:3])
    return NiftiGeometry(
        shape=shape,  # type: ignore[arg-type]
        spacing=tuple(float(z) for z in image.header.get_zooms()[:3]),  # type: ignore[arg-type]
        affine=np.asarray(image.affine, dtype=np.float64),
        orientation="".join(nib.aff2axcodes(image.affine)),
        dtype=np.asanyarray(image.dataobj[(slice(0, 1),) * len(image.shape)]).dtype,  # one voxel, scaled
    )


def nifti_data(path: PathLike) -> np.ndarray:
    """The voxels as nibabel gives them (scaling applied), (x, y, z)."""
    import nibabel as nib

    image = nib.load(str(path))
    return np.asanyarray(image.dataobj).reshape(image.shape[:3])


# ----------------------------------------------------------------------------------------------------------- RTSTRUCT


def rtstruct_roi_names(rtstruct_path: PathLike) -> Dict[int, str]:
    """ROI number -> ROI name of an RTSTRUCT."""
    import pydicom

    ds = pydicom.dcmread(str(rtstruct_path))
    return {int(roi.ROINumber): str(roi.ROIName) for roi in ds.StructureSetROISequence}


def rtstruct_to_label(
    series_folder: PathLike,
    rtstruct_path: PathLike,
    roi_name: str = "GTV-1",
    combine: str = "union",
) -> np.ndarray:
    """The ROI ``roi_name`` of an RTSTRUCT as a uint8 mask on the grid of the series in ``series_folder``, (x, y, z).

    Each closed planar contour is assigned to the slice whose position along the normal is nearest (it must lie
    within 1/4 slice spacing) and filled with ``PIL.ImageDraw.polygon`` (boundary pixels included) after mapping its
    LPS mm points to continuous pixel coordinates (x = column, y = row, pixel centres at integers).
    ``combine``: several contours on one slice are united (``"union"``) or XORed (``"xor"``, holes).
    """
    import pydicom
    from PIL import Image, ImageDraw

    geometry = dicom_series_geometry(series_folder)
    ds = pydicom.dcmread(str(rtstruct_path))
    names = rtstruct_roi_names(rtstruct_path)
    numbers = [number for number, name in names.items() if name == roi_name]
    if not numbers:
        raise KeyError(f"{rtstruct_path}: no ROI named {roi_name!r} (has {sorted(names.values())})")
    columns, rows, depth = geometry.shape
    label = np.zeros((columns, rows, depth), dtype=np.uint8)
    normal = geometry.direction[:, 2]
    projected = geometry.positions @ normal
    tolerance = abs(geometry.spacing[2]) / 4 if depth > 1 else 1e-3
    for roi in ds.ROIContourSequence:
        if int(roi.ReferencedROINumber) not in numbers:
            continue
        for contour in getattr(roi, "ContourSequence", []):
            points = np.asarray([float(v) for v in contour.ContourData], dtype=np.float64).reshape(-1, 3)
            distance = np.abs(projected - float(np.mean(points @ normal)))
            k = int(np.argmin(distance))
            if distance[k] > tolerance:
                raise ValueError(f"{rtstruct_path}: a {roi_name} contour lies between slices ({distance[k]:.3f} mm)")
            voxels = geometry.lps_to_voxel(points)
            polygon = [(float(x), float(y)) for x, y in voxels[:, :2]]
            image = Image.new("L", (columns, rows), 0)  # PIL size = (width, height) = (x, y)
            if len(polygon) >= 2:
                ImageDraw.Draw(image).polygon(polygon, fill=1, outline=1)
            else:
                ImageDraw.Draw(image).point(polygon, fill=1)
            mask = (np.asarray(image, dtype=np.uint8).T > 0)  # (rows, columns) -> (x, y)
            if combine == "xor":
                label[:, :, k] ^= mask
            else:
                label[:, :, k] |= mask
    return label
