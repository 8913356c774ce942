"""Read and check the volumes every entry point takes in, before any of them is processed.

One reader (:func:`read_volume`: a NIfTI file or a DICOM series folder) and one set of checks, shared by
the data preparation (:mod:`xattnres_monai.data.synapse`), the bundles' training and evaluation datalists
(:func:`load_datalist`) and inference (:func:`check_scan`, :class:`InferenceInputs`):

- the file exists, is not empty, has a supported type (``.nii`` / ``.nii.gz``, or a folder of one DICOM series);
- the header is readable and describes one 3D volume (a trailing 4th axis of length 1 is accepted), not empty
  and not larger than ``max_voxels`` (:data:`MAX_VOXELS` by default): checked from the header, *before* the
  voxels are read, so a huge file cannot exhaust memory;
- the voxels are readable (a truncated gzip stream only shows when all data is read);
- an image is finite (no NaN / Inf) and not constant; a label holds integers in ``0..max_label``;
- an image and its label have the same shape and affine (within :data:`AFFINE_ATOL`).

Every problem is an :class:`~xattnres_monai.utils.files.InputError`: one line, ``"<file>: <problem>"``. Commands
that take many files report all of them; inference still processes the good scans.

This module imports neither MONAI nor torch, so the data-preparation command starts quickly.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from xattnres_monai.utils.files import InputError, as_bool, exit_on_user_error, raise_if_any

__all__ = [
    "AFFINE_ATOL",
    "MAX_VOXELS",
    "InferenceInputs",
    "Volume",
    "check_pair",
    "check_scan",
    "checked_datalist",
    "image_errors",
    "label_errors",
    "load_datalist",
    "output_path_for",
    "read_volume",
]

PathLike = Union[str, "os.PathLike[str]"]
NIFTI_SUFFIXES = (".nii.gz", ".nii")
#: refuse volumes above this many voxels before loading them (2**31 voxels = 8 GiB as float32). Every entry point
#: takes its own limit: ``max_voxels`` in the bundles (``--max_voxels``), ``--max-voxels`` in data preparation.
MAX_VOXELS = 1024 * 1024 * 2048
#: image and label affines must agree within this absolute tolerance (mm).
AFFINE_ATOL = 1e-3
_SUPPORTED = "expected .nii / .nii.gz, or a DICOM series folder"

logger = logging.getLogger(__name__)


@dataclass
class Volume:
    """A checked 3D volume: ``shape`` and ``affine`` (RAS, 4 x 4) from the header, ``data`` (x, y, z) if loaded."""

    path: Path
    shape: Tuple[int, int, int]
    affine: np.ndarray
    data: Optional[np.ndarray] = None


# --------------------------------------------------------------------------------------------------------- reading


def _stem(path: Path) -> str:
    name = path.name
    for suffix in NIFTI_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def output_path_for(scan: str, output_dir: str, postfix: str = "seg") -> str:
    """``<output_dir>/<scan name without .nii(.gz)>_<postfix>.nii.gz`` (a DICOM folder uses its folder name)."""
    return os.path.join(output_dir, f"{_stem(Path(scan.rstrip(os.sep)))}_{postfix}.nii.gz")


def _spatial_shape(path: Path, shape: Sequence[int], max_voxels: Optional[int]) -> Tuple[int, int, int]:
    """The 3D shape of a header shape; raises for other dimensionalities, empty or too large volumes."""
    shape = tuple(int(s) for s in shape)
    spatial = shape[:3] if len(shape) == 4 and shape[3] == 1 else shape
    if len(spatial) != 3:
        extra = " (several channels or time points)" if len(shape) > 3 else ""
        raise InputError(path, f"expected a 3D volume, got {len(shape)}D data of shape {shape}{extra}")
    if min(spatial) < 1:
        raise InputError(path, f"empty volume of shape {shape}")
    voxels = int(np.prod(spatial, dtype=np.int64))
    if max_voxels is not None and voxels > max_voxels:
        limit = f"{int(max_voxels):,}-voxel limit (max_voxels)"
        raise InputError(path, f"volume of shape {shape} ({voxels:,} voxels) exceeds the {limit}")
    return spatial  # type: ignore[return-value]


def _read_nifti(path: Path, max_voxels: Optional[int], load: bool) -> Volume:
    import nibabel as nib

    try:
        image = nib.load(str(path))
    except Exception as err:  # nibabel raises many types for damaged headers
        raise InputError(path, f"not a readable NIfTI file ({type(err).__name__}: {err})") from None
    shape = _spatial_shape(path, image.shape, max_voxels)  # from the header, before the voxels are read
    volume = Volume(path, shape, np.asarray(image.affine, dtype=np.float64))
    if load:
        try:
            volume.data = np.asanyarray(image.dataobj).reshape(shape)
        except Exception as err:  # gzip / zlib / EOF errors of truncated or corrupt files
            raise InputError(path, f"corrupt or truncated NIfTI data ({type(err).__name__}: {err})") from None
    return volume


def _read_dicom(path: Path, max_voxels: Optional[int], load: bool) -> Volume:
    import SimpleITK as sitk

    warnings = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)  # ITK prints "No Series were found" warnings to stderr
    try:
        series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(path))
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(warnings)
    if not series:
        raise InputError(path, "folder holds no DICOM series (and is not a .nii / .nii.gz file)")
    if len(series) > 1:
        raise InputError(path, f"folder holds {len(series)} DICOM series; give one series per folder")
    files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(path), series[0])
    try:
        info = sitk.ImageFileReader()
        info.SetFileName(files[0])
        info.ReadImageInformation()  # the first file's header: rows x columns (x frames), before any pixel is read
        size = info.GetSize()
        _spatial_shape(path, (size[0], size[1], len(files) * (size[2] if len(size) > 2 else 1)), max_voxels)
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(files)
        image = reader.Execute()
    except RuntimeError as err:
        raise InputError(path, f"cannot read DICOM series ({' '.join(str(err).split())[:200]})") from None
    shape = _spatial_shape(path, image.GetSize(), max_voxels)
    lps_to_ras = np.diag([-1.0, -1.0, 1.0])
    affine = np.eye(4)
    affine[:3, :3] = lps_to_ras @ np.array(image.GetDirection()).reshape(3, 3) @ np.diag(image.GetSpacing())
    affine[:3, 3] = lps_to_ras @ np.array(image.GetOrigin())
    volume = Volume(path, shape, affine)
    if load:
        volume.data = np.transpose(sitk.GetArrayViewFromImage(image), (2, 1, 0))  # (z, y, x) -> (x, y, z)
    return volume


def read_volume(path: PathLike, max_voxels: Optional[int] = MAX_VOXELS, load: bool = True) -> Volume:
    """Read one 3D volume (NIfTI file or DICOM series folder), checking everything that can be wrong with the file.

    Args:
        path: a ``.nii`` / ``.nii.gz`` file or a folder holding one DICOM series.
        max_voxels: refuse volumes with more voxels (checked from the header, before reading); ``None``: no limit.
        load: also read (and so check) the voxels.

    Raises:
        InputError: missing, zero-byte, unsupported type, unreadable header, not 3D, empty, too large, corrupt data.

    Example::

        >>> volume = read_volume("img0001.nii.gz")
        >>> volume.shape, volume.data.dtype
        ((512, 512, 147), dtype('int16'))
    """
    path = Path(path)
    if not path.exists():
        raise InputError(path, "no such file or folder")
    if path.is_dir():
        return _read_dicom(path, max_voxels, load)
    if path.stat().st_size == 0:
        raise InputError(path, "zero-byte file")
    if not path.name.endswith(NIFTI_SUFFIXES):
        raise InputError(path, f"unsupported file type: {_SUPPORTED}")
    return _read_nifti(path, max_voxels, load)


# ---------------------------------------------------------------------------------------------------------- values


def image_errors(path: PathLike, data: np.ndarray, allow_constant: bool = False) -> List[InputError]:
    """Errors for NaN / Inf voxels and (unless ``allow_constant``) a constant image."""
    if np.issubdtype(data.dtype, np.floating) or np.issubdtype(data.dtype, np.complexfloating):
        finite = np.isfinite(data)
        if not finite.all():
            return [InputError(path, f"{int(finite.size - finite.sum())} NaN/Inf voxel(s) in the image")]
    if not allow_constant and data.size and float(data.min()) == float(data.max()):
        return [InputError(path, f"constant image (every voxel is {float(data.min()):g})")]
    return []


def label_errors(path: PathLike, data: np.ndarray, max_label: int, note: str = "") -> List[InputError]:
    """Errors for non-integer label values (NaN included) or values outside ``0..max_label``."""
    if np.issubdtype(data.dtype, np.floating):
        bad = data != np.round(data)  # also catches NaN
        if bad.any():
            values = np.unique(data[bad])[:5].tolist()
            return [InputError(path, f"non-integer label values {values}")]
    if data.size and (data.min() < 0 or data.max() > max_label):
        values = np.unique(data[(data < 0) | (data > max_label)])
        shown = [int(v) for v in values[:10]]
        return [InputError(path, f"unknown label values {shown} (expected 0-{max_label}){note}")]
    return []


def check_pair(
    image_path: PathLike,
    label_path: PathLike,
    max_label: int,
    max_voxels: Optional[int] = MAX_VOXELS,
    note: str = "",
) -> Tuple[int, List[InputError]]:
    """Check one image/label pair: both readable 3D volumes, finite non-constant image, labels in ``0..max_label``,
    same shape and affine (``atol`` :data:`AFFINE_ATOL`).

    Args:
        image_path: the image (NIfTI file or DICOM series folder).
        label_path: its label volume.
        max_label: the largest valid label id.
        max_voxels: size limit, see :func:`read_volume`.
        note: appended to the message about unknown label values.

    Returns:
        ``(number of axial slices, errors)`` (0 slices when the pair is unusable).

    Example::

        >>> check_pair("img/img0001.nii.gz", "label/label0001.nii.gz", max_label=13)
        (147, [])
    """
    errors: List[InputError] = []
    volumes = []
    for path in (image_path, label_path):
        try:
            volumes.append(read_volume(path, max_voxels))
        except InputError as err:
            errors.append(err)
    if errors:
        return 0, errors
    image, label = volumes
    errors += image_errors(image.path, image.data)
    errors += label_errors(label.path, label.data, max_label, note)
    if image.shape != label.shape:
        errors.append(InputError(label.path, f"shape {label.shape} differs from the image's {image.shape}"))
    elif not np.allclose(image.affine, label.affine, atol=AFFINE_ATOL, rtol=0):
        errors.append(InputError(label.path, f"affine differs from the image's (beyond {AFFINE_ATOL:g})"))
    return (0 if errors else int(image.shape[2])), errors


def check_scan(scan: PathLike, max_voxels: Optional[int] = MAX_VOXELS) -> None:
    """Raise :class:`InputError` naming ``scan`` if it cannot be segmented (unreadable, not 3D, too large, one
    DICOM series per folder, NaN/Inf or constant voxels)."""
    volume = read_volume(scan, max_voxels)
    raise_if_any(image_errors(volume.path, volume.data))


# -------------------------------------------------------------------------------------------------------- datalists


def _read_json(path: Path) -> Any:
    if not path.exists():
        raise InputError(path, "datalist file does not exist")
    if path.is_dir():
        raise InputError(path, "is a folder, expected a datalist JSON file")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise InputError(path, f"cannot read datalist JSON ({err})") from None


def load_datalist(
    datalist: PathLike,
    key: str,
    num_classes: Optional[int] = None,
    max_voxels: Optional[int] = MAX_VOXELS,
    check: bool = True,
) -> List[Dict[str, Any]]:
    """The ``key`` subset of a MONAI datalist, paths made absolute, every image/label pair checked.

    Paths are relative to the datalist's folder (as :func:`monai.data.load_decathlon_datalist` resolves them).

    Args:
        datalist: the datalist JSON (``{"training": [{"image", "label", ...}], ...}``).
        key: the subset (``"training"``, ``"validation"``, ``"test"``).
        num_classes: classes including background: labels must lie in ``0..num_classes-1`` (``None``: not checked).
        max_voxels: size limit of each volume, see :func:`read_volume`.
        check: check each pair with :func:`check_pair` (reads every volume once).

    Raises:
        InputError: unreadable datalist, missing or empty subset, items without image/label, or bad files (an
            :class:`~xattnres_monai.utils.files.InputErrorGroup` naming every bad file).

    Example::

        >>> items = load_datalist("data/datalist.json", "training", num_classes=9)
        >>> sorted(items[0])
        ['case', 'image', 'label']
    """
    path = Path(datalist)
    content = _read_json(path)
    if not isinstance(content, dict) or key not in content:
        raise InputError(path, f"datalist has no {key!r} section")
    entries = content[key]
    if not isinstance(entries, list) or not entries:
        raise InputError(path, f"datalist section {key!r} lists no items")
    items, errors = [], []
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict) or not all(isinstance(entry.get(k), str) for k in ("image", "label")):
            errors.append(InputError(path, f"{key}[{index}] needs 'image' and 'label' paths, got {entry!r}"))
            continue
        item = dict(entry)
        for k in ("image", "label"):
            item[k] = os.path.normpath(os.path.join(path.parent, entry[k]))  # absolute paths are kept as they are
        items.append(item)
    max_label = 2**31 if num_classes is None else int(num_classes) - 1
    for item in items if check else []:
        errors += check_pair(item["image"], item["label"], max_label, max_voxels)[1]
    raise_if_any(errors)
    return items


_CHECKED: Dict[Tuple, Tuple[Tuple, List[Dict[str, Any]]]] = {}


def _stamps(items: List[Dict[str, Any]]) -> Tuple:
    """(path, size, mtime) of every file of ``items``: a checked subset is re-checked when one changed."""
    stamps = []
    for item in items:
        for key in ("image", "label"):
            try:
                st = os.stat(item[key])
                stamps.append((item[key], st.st_size, st.st_mtime_ns))
            except OSError:
                stamps.append((item[key], None, None))
    return tuple(stamps)


def checked_datalist(
    datalist: PathLike,
    key: str,
    num_classes: Optional[int] = None,
    max_voxels: Optional[int] = MAX_VOXELS,
    also_check: Sequence[str] = (),
) -> List[Dict[str, Any]]:
    """:func:`load_datalist` for bundle configs: bad input ends the run with ``error: <file>: <problem>`` lines
    (every bad file of ``key`` and of the ``also_check`` subsets, so that one run reports them all) and exit code 2.

    A subset checked once in the process (same datalist and files, unchanged) is not read again.

    Example (``train.json``)::

        "train_datalist": "$xattnres_monai.data.inputs.checked_datalist(@datalist, 'training', @num_classes,
                           @max_voxels, also_check=['validation'])"
    """
    errors = []
    result: List[Dict[str, Any]] = []
    with exit_on_user_error():
        path = Path(datalist).resolve()
        stamp = path.stat().st_mtime_ns if path.is_file() else None
        for subset in [key, *[k for k in also_check if k != key]]:
            memo = (str(path), stamp, subset, num_classes, max_voxels)
            if memo in _CHECKED and _stamps(_CHECKED[memo][1]) == _CHECKED[memo][0]:
                items = _CHECKED[memo][1]
            else:
                try:
                    items = load_datalist(datalist, subset, num_classes, max_voxels)
                except InputError as err:
                    errors += [e for e in getattr(err, "errors", [err]) if str(e) not in map(str, errors)]
                    continue
                _CHECKED[memo] = (_stamps(items), items)
            if subset == key:
                result = items
        raise_if_any(errors)
    logger.info(f"{datalist}: {len(result)} {key} item(s) checked")
    return [dict(item) for item in result]


# -------------------------------------------------------------------------------------------------------- inference


class InferenceInputs:
    """The scans of one inference run: from a folder (``dataset_dir``) or a list (``datalist``), each checked.

    A folder contributes every ``*.nii`` / ``*.nii.gz`` file and every sub-folder (a DICOM series); other files
    (except hidden ones, and the output folder when it lies inside) are failures ("unsupported file type"), so that
    no input is silently left out. A datalist is a JSON list of paths or of ``{"image": path}`` items, or a MONAI
    datalist with a ``"test"`` (or ``"testing"``) section. Scans whose output already exists are skipped unless
    ``overwrite``; scans that fail :func:`check_scan` are recorded in :attr:`failures` (file and reason) and the
    others still run; two scans that would write the same output are a failure for the second. A missing or empty
    input folder or an unreadable datalist is a failure too (no scan runs). The failures are reported at the end of
    the run by :class:`xattnres_monai.handlers.report.InferenceReport`, which then exits with code 2.

    Subclasses for other kinds of input (:class:`xattnres_monai.data.image_inputs.ImageInferenceInputs`) override
    :meth:`accepts`, :meth:`check` and :meth:`outputs_for` and the :attr:`supported` message.

    Args:
        output_dir: where the masks will be written (``<name>_<postfix>.nii.gz``).
        dataset_dir: folder of scans (used when ``datalist`` is empty).
        datalist: path of a JSON list of scans.
        overwrite: replace existing outputs.
        postfix: output name postfix.
        max_voxels: refuse larger scans (from the header, before loading them), see :func:`read_volume`.

    Attributes:
        items: ``[{"image": scan, "output": mask path}]`` for the scans to process.
        failures: ``[(scan, reason)]``; skipped: ``[(scan, reason)]``.
    """

    #: what a folder may hold, for the "unsupported file type" and "empty folder" messages.
    supported = _SUPPORTED

    def __init__(
        self,
        output_dir: str,
        dataset_dir: Optional[str] = None,
        datalist: Optional[str] = None,
        overwrite: bool = False,
        postfix: str = "seg",
        max_voxels: Optional[int] = MAX_VOXELS,
    ) -> None:
        self.postfix = postfix
        self.max_voxels = max_voxels
        self._collect(output_dir, dataset_dir, datalist, overwrite)

    def accepts(self, entry: Path) -> bool:
        """Whether a folder entry is an input (a NIfTI file or a DICOM series folder)."""
        return entry.is_dir() or entry.name.endswith(NIFTI_SUFFIXES)

    def check(self, scan: str) -> None:
        """Raise :class:`InputError` naming ``scan`` if it cannot be segmented."""
        check_scan(scan, self.max_voxels)

    def outputs_for(self, scan: str) -> Dict[str, str]:
        """The item keys and paths of the files written for ``scan`` (empty paths are not written)."""
        return {"output": output_path_for(scan, self.output_dir, self.postfix)}

    def _collect(self, output_dir: str, dataset_dir: Optional[str], datalist: Optional[str], overwrite: bool) -> None:
        self.output_dir = output_dir
        self.overwrite = as_bool(overwrite, "overwrite")
        self.failures: List[Tuple[str, str]] = []
        self.skipped: List[Tuple[str, str]] = []
        self.items: List[Dict[str, str]] = []
        try:
            scans = self._list_scans(dataset_dir, datalist)
        except InputError as err:
            self._fail(err)
            scans = []
        claimed: Dict[str, str] = {}
        for scan in scans:
            outputs = self.outputs_for(scan)
            clash = next((claimed[p] for p in outputs.values() if p in claimed), None)
            if clash is not None:
                self._fail(InputError(scan, f"writes the same output as {clash}; rename one of them"))
                continue
            claimed.update({p: scan for p in outputs.values() if p})
            existing = [p for p in outputs.values() if p and os.path.exists(p)]
            if existing and not self.overwrite:
                self.skipped.append((scan, f"output {existing[0]} exists (set overwrite to replace it)"))
                continue
            try:
                self.check(scan)
            except InputError as err:
                self._fail(err)
                continue
            self.items.append({"image": scan, **outputs})
        for scan, reason in self.skipped:
            logger.warning(f"{scan}: skipped, {reason}")

    def _fail(self, err: InputError) -> None:
        self.failures.append((err.path, err.problem))
        logger.error(str(err))

    def _list_scans(self, dataset_dir: Optional[str], datalist: Optional[str]) -> List[str]:
        if datalist:
            return self._read_datalist(datalist)
        if not dataset_dir:
            raise InputError("dataset_dir", "no input given: set dataset_dir (a folder) or datalist (a JSON file)")
        folder = Path(dataset_dir)
        if not folder.exists():
            raise InputError(folder, "input folder does not exist")
        if not folder.is_dir():
            raise InputError(folder, "not a folder (dataset_dir must be a folder of inputs; use datalist for a list)")
        output = Path(self.output_dir).resolve()
        entries = sorted(p for p in folder.iterdir() if not p.name.startswith(".") and p.resolve() != output)
        if not entries:
            raise InputError(folder, f"input folder is empty: {self.supported}")
        scans = []
        for entry in entries:
            if self.accepts(entry):
                scans.append(str(entry))
            else:
                self._fail(InputError(entry, f"unsupported file type: {self.supported}"))
        return scans

    @staticmethod
    def _read_datalist(datalist: str) -> List[str]:
        path = Path(datalist)
        content = _read_json(path)
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
