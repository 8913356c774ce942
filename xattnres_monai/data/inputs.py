"""The one input layer of every entry point: read and check NIfTI volumes and DICOM series, datalists and scans.

Preparation, training, evaluation, inference and MONAI Label all take their volumes through here:

- :func:`read_header` checks what can be checked without decoding voxels: the file exists, is not empty, has a
  supported type (``.nii`` / ``.nii.gz``, or a folder of one DICOM series), its header describes one 3D volume (a
  trailing 4th axis of length 1 is accepted) within ``max_voxels``; a DICOM series passes the integrity checks of
  :mod:`xattnres_monai.data.dicom` (every slice complete and of one series, no gap). Run on every item of a datalist
  or an inference run before anything is processed, so that all such problems are reported at once.
- :func:`read_volume` decodes a volume **once**, with MONAI's ``LoadImage`` (``NibabelReader`` / ``ITKReader``), so
  the array, affine and metadata are MONAI's; :class:`~xattnres_monai.transforms.LoadVolumed` is the MONAI transform
  the bundles use in place of ``LoadImaged``, and it checks the loaded arrays with :func:`image_errors` (finite, not
  constant) and :func:`label_errors` (integers in the class map): the array that was checked is the array used.
- :func:`load_datalist` is the one datalist reader; :class:`InferenceInputs` collects the scans of a run.

Every problem is an :class:`~xattnres_monai.utils.files.InputError`: one line, ``"<file>: <problem>"``. Commands
that take many files report all of them; inference still processes the good scans.
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
    "checked_datalist",
    "image_errors",
    "label_errors",
    "load_datalist",
    "output_path_for",
    "pair_errors",
    "read_header",
    "read_json",
    "read_pair",
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
    """A checked 3D volume: ``shape`` and ``affine`` (RAS, 4 x 4), ``data`` (x, y, z) once loaded.

    ``data`` is the :class:`~monai.data.MetaTensor` that MONAI's ``LoadImage`` returns (float32, metadata with the
    affine and ``filename_or_obj``), so the array that was checked is the array that is used.
    """

    path: Path
    shape: Tuple[int, int, int]
    affine: np.ndarray
    data: Optional[Any] = None
    #: the slice files of a DICOM series, in the order of their position along the slice normal
    files: Tuple[Path, ...] = ()


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


def _nifti_header(path: Path, max_voxels: Optional[int]) -> Volume:
    import nibabel as nib

    try:
        image = nib.load(str(path))  # the header only: nibabel reads the voxels lazily
    except Exception as err:  # nibabel raises many types for damaged headers
        raise InputError(path, f"not a readable NIfTI file ({type(err).__name__}: {err})") from None
    shape = _spatial_shape(path, image.shape, max_voxels)
    return Volume(path, shape, np.asarray(image.affine, dtype=np.float64))


def read_header(path: PathLike, max_voxels: Optional[int] = MAX_VOXELS) -> Volume:
    """Check everything that can be checked without decoding the voxels, and give the volume's grid.

    A NIfTI file: exists, not empty, a readable header describing one 3D volume (a trailing axis of length 1 is
    accepted) within ``max_voxels``. A DICOM series folder: the series integrity checks of
    :func:`~xattnres_monai.data.dicom.dicom_series` (every file a complete DICOM file of one series, consistent
    geometry, no missing or duplicate slice). The voxels themselves (truncated compressed data, NaN, constant
    images, label values) are checked when :func:`read_volume` loads them.

    Args:
        path: a ``.nii`` / ``.nii.gz`` file or a folder holding one DICOM series.
        max_voxels: refuse volumes with more voxels; ``None``: no limit.

    Returns:
        a :class:`Volume` without ``data``: ``shape`` (x, y, z) and the RAS ``affine`` MONAI's reader will give.

    Raises:
        InputError: naming the file (or the slice of a series) and the problem.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(path, "no such file or folder")
    if path.is_dir():
        if path.name.endswith(NIFTI_SUFFIXES):
            raise InputError(path, "is a folder named like a NIfTI file; expected a .nii / .nii.gz file (or a "
                             "DICOM series folder with another name)")  # fmt: skip
        from xattnres_monai.data.dicom import dicom_series

        series = dicom_series(path)
        _spatial_shape(path, series.shape, max_voxels)
        return Volume(path, series.shape, series.affine, files=series.files)
    if path.stat().st_size == 0:
        raise InputError(path, "zero-byte file")
    if not path.name.endswith(NIFTI_SUFFIXES):
        raise InputError(path, f"unsupported file type: {_SUPPORTED}")
    return _nifti_header(path, max_voxels)


def read_volume(path: PathLike, max_voxels: Optional[int] = MAX_VOXELS, header: Optional[Volume] = None) -> Volume:
    """Read one 3D volume (NIfTI file or DICOM series folder) once, with MONAI's readers, after its header checks.

    The one place in the package that decodes a NIfTI file or a DICOM series. The voxels are read by MONAI's
    ``LoadImage``: ``NibabelReader`` for NIfTI, ``ITKReader`` for a DICOM series (given exactly the slice files that
    passed :func:`read_header`'s integrity checks, in position order), so the array, the affine and the metadata are
    those every MONAI transform and writer expects, and masks written back land on the input's grid. A volume of one
    slice stays 3D (x, y, 1).

    Args:
        path: a ``.nii`` / ``.nii.gz`` file or a folder holding one DICOM series.
        max_voxels: refuse volumes with more voxels (checked from the header, before reading); ``None``: no limit.
        header: the result of :func:`read_header` for ``path`` when the caller has it already.

    Raises:
        InputError: missing, zero-byte, unsupported type, unreadable header, not 3D, empty, too large, corrupt data,
            a damaged DICOM series.

    Example::

        >>> volume = read_volume("img0001.nii.gz")
        >>> volume.shape, volume.data.dtype
        ((512, 512, 147), torch.float32)
    """
    volume = header if header is not None else read_header(path, max_voxels)
    try:
        data = _load(volume)
    except Exception as err:  # gzip / zlib / EOF errors of truncated files, ITK decoding errors
        kind = "DICOM series" if volume.files else "NIfTI data"
        raise InputError(volume.path, f"corrupt or truncated {kind} ({type(err).__name__}: {err})") from None
    if data.ndim == 2:  # ITK reads a series of one slice as a 2D image: keep the volume 3D, on the header's grid
        data = data.unsqueeze(-1)
        data.affine = volume.affine
    elif data.ndim == 4 and data.shape[-1] == 1:  # x, y, z, 1 (a 4D NIfTI of one time point)
        data = data[..., 0]
    if tuple(data.shape) != volume.shape:
        raise InputError(volume.path, f"the voxels have shape {tuple(data.shape)}, the header says {volume.shape}")
    return Volume(volume.path, volume.shape, np.asarray(data.affine, dtype=np.float64), data, volume.files)


_LOAD_IMAGE: Any = None


def _load(volume: Volume) -> Any:
    """Decode with MONAI's ``LoadImage`` (float32 ``MetaTensor``), given the reader the header check chose: exactly
    what a bare ``LoadImage`` gives, in time and memory (``benchmarks/input_path.py``). One ``LoadImage`` per process:
    constructing one instantiates every reader MONAI knows."""
    global _LOAD_IMAGE
    from monai.data import NibabelReader
    from monai.transforms import LoadImage

    from xattnres_monai.data.dicom import DicomSeriesReader

    if _LOAD_IMAGE is None:
        _LOAD_IMAGE = LoadImage(image_only=True)
    reader = DicomSeriesReader(volume.files) if volume.files else NibabelReader()
    return _LOAD_IMAGE(str(volume.path), reader=reader)


# ---------------------------------------------------------------------------------------------------------- values


def _tensor(data: Any) -> Any:
    import torch  # not at import time: the preparation command starts without torch until it reads a volume

    return data.as_tensor() if hasattr(data, "as_tensor") else torch.as_tensor(np.asarray(data))


def _chunks(t: Any, size: int = 1 << 22) -> Any:
    """Flat chunks of ``t``: whole-volume checks without whole-volume temporaries (memory stays at the volume's)."""
    return t.reshape(-1).split(size)


def image_errors(path: PathLike, data: Any, allow_constant: bool = False) -> List[InputError]:
    """Errors for NaN / Inf voxels and (unless ``allow_constant``) a constant image (``data``: array or tensor).

    One pass over the voxels: the minimum and maximum (NaN propagates into them, so do infinities) answer both.
    """
    import torch

    t = _tensor(data)
    if not t.numel():
        return []
    low, high = (float(v) for v in torch.aminmax(t.reshape(-1)))
    if not (np.isfinite(low) and np.isfinite(high)):
        bad = sum(int((~torch.isfinite(c)).sum()) for c in _chunks(t))
        return [InputError(path, f"{bad} NaN/Inf voxel(s) in the image")]
    if not allow_constant and low == high:
        return [InputError(path, f"constant image (every voxel is {low:g})")]
    return []


def label_errors(path: PathLike, data: Any, max_label: int, note: str = "") -> List[InputError]:
    """Errors for non-integer label values (NaN included) or values outside ``0..max_label``.

    The one label-value check of the package (preparation, training, evaluation and MONAI Label fine-tuning).
    """
    import torch

    t = _tensor(data)
    if not t.numel():
        return []
    if t.is_floating_point():
        fractional = [c[c != torch.round(c)] for c in _chunks(t)]  # also catches NaN
        if any(f.numel() for f in fractional):
            values = torch.unique(torch.cat(fractional))[:5].tolist()
            return [InputError(path, f"non-integer label values {values}")]
    low, high = (float(v) for v in torch.aminmax(t.reshape(-1)))
    if low < 0 or high > max_label:
        outside = torch.cat([torch.unique(c[(c < 0) | (c > max_label)]) for c in _chunks(t)])
        shown = [int(v) for v in torch.unique(outside)[:10].tolist()]
        return [InputError(path, f"unknown label values {shown} (expected 0-{max_label}){note}")]
    return []


def pair_errors(image: Volume, label: Volume) -> List[InputError]:
    """Errors for an image and its label on different grids (shape, or affine beyond :data:`AFFINE_ATOL`)."""
    if image.shape != label.shape:
        return [InputError(label.path, f"shape {label.shape} differs from the image's {image.shape}")]
    if not np.allclose(image.affine, label.affine, atol=AFFINE_ATOL, rtol=0):
        return [InputError(label.path, f"affine differs from the image's (beyond {AFFINE_ATOL:g})")]
    return []


def read_pair(
    image_path: PathLike,
    label_path: PathLike,
    max_label: int,
    max_voxels: Optional[int] = MAX_VOXELS,
    note: str = "",
    load: bool = True,
) -> Tuple[Optional[Volume], Optional[Volume], List[InputError]]:
    """Read and check one image/label pair: both readable 3D volumes on the same grid (shape, affine within
    :data:`AFFINE_ATOL`) and, with ``load``, a finite non-constant image and labels in ``0..max_label``.

    Args:
        image_path: the image (NIfTI file or DICOM series folder).
        label_path: its label volume.
        max_label: the largest valid label id.
        max_voxels: size limit, see :func:`read_header`.
        note: appended to the message about unknown label values.
        load: also decode and check the voxels (else the headers only; the voxels are then checked when
            :class:`~xattnres_monai.transforms.LoadVolumed` loads them).

    Returns:
        ``(image, label, errors)``: the volumes (with ``data`` when loaded; ``None`` when unreadable) and the errors.
    """
    volumes: List[Optional[Volume]] = []
    errors: List[InputError] = []
    for path in (image_path, label_path):
        try:
            volumes.append(read_header(path, max_voxels))
        except InputError as err:
            volumes.append(None)
            errors.append(err)
    image, label = volumes
    if image is None or label is None:
        return image, label, errors
    errors += pair_errors(image, label)
    if load and not errors:
        try:
            image, label = read_volume(image_path, header=image), read_volume(label_path, header=label)
        except InputError as err:
            return image, label, [err]
        errors += image_errors(image.path, image.data)
        errors += label_errors(label.path, label.data, max_label, note)
    return image, label, errors


def check_pair(
    image_path: PathLike,
    label_path: PathLike,
    max_label: int,
    max_voxels: Optional[int] = MAX_VOXELS,
    note: str = "",
    load: bool = True,
) -> Tuple[int, List[InputError]]:
    """:func:`read_pair`, for callers that need only the verdict: ``(number of axial slices, errors)`` (0 slices
    when the pair is unusable).

    Example::

        >>> check_pair("img/img0001.nii.gz", "label/label0001.nii.gz", max_label=13)
        (147, [])
    """
    image, _, errors = read_pair(image_path, label_path, max_label, max_voxels, note, load)
    return (0 if errors or image is None else int(image.shape[2])), errors


# -------------------------------------------------------------------------------------------------------- datalists


def read_json(path: PathLike) -> Any:
    """A datalist's JSON content; an :class:`InputError` naming the file when it is missing or not JSON."""
    path = Path(path)
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
    keys: Sequence[str] = ("image", "label"),
) -> List[Dict[str, Any]]:
    """The ``key`` subset of a datalist, paths made absolute, each pair's headers checked: the one datalist reader.

    Reads a MONAI datalist (``{"training": [{"image", "label", ...}], ...}``, paths relative to the datalist's folder as
    :func:`monai.data.load_decathlon_datalist` resolves them); for inference, a ``test`` / ``testing`` section or a
    plain JSON list of paths or of ``{"image": path}`` items (``keys=("image",)``).

    Args:
        datalist: the datalist JSON.
        key: the subset (``"training"``, ``"validation"``, ``"test"``).
        num_classes: classes including background, for the message of a label check (``None``: not checked).
        max_voxels: size limit of each volume, see :func:`read_header`.
        check: check each item's files with :func:`read_header` and image/label grids with :func:`pair_errors` (no
            voxel is decoded: :class:`~xattnres_monai.transforms.LoadVolumed` checks the voxels when it loads them).
        keys: the path entries of each item; the first one is required.

    Raises:
        InputError: unreadable datalist, missing or empty subset, items without their paths, or bad files (an
            :class:`~xattnres_monai.utils.files.InputErrorGroup` naming every bad file).

    Example::

        >>> items = load_datalist("data/datalist.json", "training", num_classes=9)
        >>> sorted(items[0])
        ['case', 'image', 'label']
    """
    path = Path(datalist)
    content = read_json(path)
    if isinstance(content, dict) and key == "test" and key not in content and "testing" in content:
        key = "testing"  # MONAI's decathlon datalists name the section "testing"
    if isinstance(content, list) and keys == ("image",):
        entries = [{"image": e} if isinstance(e, str) else e for e in content]
    elif isinstance(content, dict) and key in content:
        entries = content[key]
    else:
        raise InputError(path, f"datalist has no {key!r} section")
    if not isinstance(entries, list) or not entries:
        raise InputError(path, f"datalist section {key!r} lists no items")
    items, errors = [], []
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict) or not all(isinstance(entry.get(k), str) for k in keys):
            wanted = " and ".join(repr(k) for k in keys) + (" paths" if len(keys) > 1 else " path")
            errors.append(InputError(path, f"{key}[{index}] needs {wanted}, got {entry!r}"))
            continue
        item = dict(entry)
        for k in keys:
            item[k] = os.path.normpath(os.path.join(path.parent, entry[k]))  # absolute paths are kept as they are
        items.append(item)
    for item in items if check else []:
        if len(keys) > 1:
            errors += check_pair(item[keys[0]], item[keys[1]], 0, max_voxels, load=False)[1]
        else:
            try:
                read_header(item[keys[0]], max_voxels)
            except InputError as err:
                errors.append(err)
    raise_if_any(errors)
    return items


def checked_datalist(
    datalist: PathLike,
    key: str,
    num_classes: Optional[int] = None,
    max_voxels: Optional[int] = MAX_VOXELS,
    also_check: Sequence[str] = (),
) -> List[Dict[str, Any]]:
    """:func:`load_datalist` for bundle configs: bad input ends the run with ``error: <file>: <problem>`` lines
    and exit code 2.

    The headers of every item of ``key`` and of the ``also_check`` subsets are checked (no voxel is decoded: the
    bundle's ``LoadVolumed`` checks the voxels when it loads them, once). When a header check fails the run is over
    anyway, so the voxels of the other items are then checked too, and one run reports every bad file.

    Example (``train.json``)::

        "train_datalist": "$xattnres_monai.data.inputs.checked_datalist(@datalist, 'training', @num_classes,
                           @max_voxels, also_check=['validation'])"
    """
    errors: List[InputError] = []
    result: List[Dict[str, Any]] = []
    loaded: List[Dict[str, Any]] = []
    with exit_on_user_error():
        for subset in [key, *[k for k in also_check if k != key]]:
            try:
                items = load_datalist(datalist, subset, num_classes, max_voxels, check=False)
            except InputError as err:
                errors += getattr(err, "errors", [err])
                continue
            loaded += items
            if subset == key:
                result = items
        for item in loaded:
            errors += check_pair(item["image"], item["label"], 0, max_voxels, load=False)[1]
        if errors:
            bad = {e.path for e in errors}
            max_label = 2**31 if num_classes is None else int(num_classes) - 1
            for item in loaded:
                if item["image"] not in bad and item["label"] not in bad:
                    errors += check_pair(item["image"], item["label"], max_label, max_voxels)[1]
        unique: Dict[str, InputError] = {str(e): e for e in errors}
        raise_if_any(list(unique.values()))
    logger.info(f"{datalist}: {len(result)} {key} item(s) checked")
    return result


# -------------------------------------------------------------------------------------------------------- inference


class InferenceInputs:
    """The scans of one inference run: from a folder (``dataset_dir``) or a list (``datalist``), each checked.

    A folder contributes every ``*.nii`` / ``*.nii.gz`` file and every sub-folder (a DICOM series); other files
    (except hidden ones, and the output folder when it lies inside) are failures ("unsupported file type"), so that
    no input is silently left out. A datalist is a JSON list of paths or of ``{"image": path}`` items, or a MONAI
    datalist with a ``"test"`` (or ``"testing"``) section. Scans whose output already exists are skipped unless
    ``overwrite``; scans that fail :func:`read_header` (the checks that need no decoding, DICOM series integrity
    included) are recorded in :attr:`failures` (file and reason) and the others still run; the voxel checks run when
    :class:`~xattnres_monai.data.datasets.InferenceDataset` loads a scan, and a scan failing them is recorded there; two scans that would write the same output are a failure for the second. A missing or empty
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
        max_voxels: refuse larger scans (from the header, before loading them), see :func:`read_header`.

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
        """Raise :class:`InputError` naming ``scan`` (or its damaged slice) if its header shows it cannot be used."""
        read_header(scan, self.max_voxels)

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
        for one in getattr(err, "errors", [err]):
            self.failures.append((one.path, one.problem))
            logger.error(str(one))

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
            elif entry.is_dir():
                self._fail(InputError(entry, f"is a folder, not an input file: {self.supported}"))
            else:
                self._fail(InputError(entry, f"unsupported file type: {self.supported}"))
        return scans

    @staticmethod
    def _read_datalist(datalist: str) -> List[str]:
        return [item["image"] for item in load_datalist(datalist, "test", check=False, keys=("image",))]
