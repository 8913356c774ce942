"""Synapse multi-organ CT: check the input data, build the 9-class labels and write a MONAI datalist.

Two on-disk forms are accepted:

``btcv``
    The raw BTCV release: ``img00XX.nii.gz`` + ``label00XX.nii.gz`` (``.nii`` also accepted), either side by side
    or in ``img/`` and ``label/`` subfolders (also under ``Training/``, as in ``RawData/Training``). The 14 raw label
    ids are remapped to the 9 Synapse classes (raw 1, 2, 3, 4, 11, 6, 7, 8 -> 1..8; raw 5, 9, 10, 12, 13 -> 0) and
    written as uint8 NIfTI files with the label's affine and header to ``<datalist folder>/labels_9class/``. Images
    stay where they are and keep their Hounsfield units (``"intensity": "hu"``: training applies the HU window
    [-125, 275] -> [0, 1]).
``transunet``
    TransUNet's preprocessed release: ``train_npz/caseXXXX_sliceNNN.npz`` (keys ``image``, ``label``; H x W) and
    ``test_vol_h5/caseXXXX.npy.h5`` (datasets ``image``, ``label``; Z x H x W). Labels are already 9-class and are
    never remapped (values above 8 are an error); images are already clipped and scaled to [0, 1]
    (``"intensity": "normalised"``: training must skip the HU window). Each case becomes a NIfTI pair in
    ``<datalist folder>/transunet_nifti/``: the npz slices of a case are stacked in slice order, and a Z x H x W
    volume is stored with axes (H, W, Z), so that axial slice ``k`` of the NIfTI volume is exactly TransUNet's
    slice ``k``. The preprocessed files carry no geometry, so the affine is the identity (1 mm isotropic spacing):
    HD95 in mm is then in voxel units for this form.

The datalist (a MONAI "decathlon" JSON) has the keys ``training``, ``validation`` and ``test`` (lists of
``{"image", "label", "case"}``), ``labels`` (class id -> name), ``format``, ``intensity``, ``split`` (mode, seed,
case ids and slice counts per subset) and ``name``. Paths are **relative to the datalist's folder**: load a subset
with ``monai.data.load_decathlon_datalist(path, data_list_key="validation", base_dir=<datalist folder>)`` (which
is also what it does when ``base_dir`` is omitted).

Split: the standard TransUNet split (18 training cases, 12 test cases) when all 30 standard cases are present,
otherwise a seeded random 60/20/20 split of the cases found. The validation cases are drawn from the training
cases with a seeded generator and removed from ``training``, so no checkpoint is ever selected on test data.

Everything is checked before anything is written; all problems are reported, one line each. The checks of a NIfTI
pair (readable and complete, 3D, not larger than ``--max-voxels`` from the header, finite and non-constant image,
integer labels in range, same shape and affine) are those of :mod:`xattnres_monai.data.inputs`, shared with the
bundles' training, evaluation and inference.

Command line (argparse in :mod:`xattnres_monai.cli.synapse`)::

    python -m xattnres_monai.data.synapse --input /data/RawData/Training --output /data/synapse/datalist.json
"""

from __future__ import annotations

import os
from contextlib import ExitStack, suppress
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import nibabel as nib
import numpy as np

from xattnres_monai.data.inputs import AFFINE_ATOL  # noqa: F401 (re-exported: the tolerance of the pair checks)
from xattnres_monai.data.inputs import MAX_VOXELS, check_pair, image_errors, label_errors, read_pair
from xattnres_monai.utils.files import (
    InputError,
    atomic_write,
    check_writable,
    raise_if_any,
    write_json_atomic,
)

__all__ = [
    "BTCV_TO_SYNAPSE",
    "HU_WINDOW",
    "SYNAPSE_LABELS",
    "TEST_CASES",
    "TRAIN_CASES",
    "check_btcv_case",
    "detect_format",
    "find_btcv_cases",
    "find_transunet_cases",
    "load_transunet_case",
    "prepare_synapse",
    "remap_btcv_label",
    "split_cases",
]

PathLike = Union[str, "os.PathLike[str]"]

#: Synapse class ids -> names (TransUNet's 9 classes).
SYNAPSE_LABELS: Dict[str, str] = {
    "0": "background",
    "1": "spleen",
    "2": "right_kidney",
    "3": "left_kidney",
    "4": "gallbladder",
    "5": "pancreas",
    "6": "liver",
    "7": "stomach",
    "8": "aorta",
}
#: Raw BTCV label id -> Synapse class id (5 esophagus, 9 IVC, 10 portal/splenic vein, 12/13 adrenals -> background).
BTCV_TO_SYNAPSE: Dict[int, int] = {
    0: 0, 1: 1, 2: 2, 3: 3, 4: 4, 5: 0, 6: 6, 7: 7, 8: 8, 9: 0, 10: 0, 11: 5, 12: 0, 13: 0
}  # fmt: skip
TRAIN_CASES: Tuple[str, ...] = tuple(
    f"{i:04d}" for i in (5, 6, 7, 9, 10, 21, 23, 24, 26, 27, 28, 30, 31, 33, 34, 37, 39, 40)
)
TEST_CASES: Tuple[str, ...] = tuple(f"{i:04d}" for i in (1, 2, 3, 4, 8, 22, 25, 29, 32, 35, 36, 38))
HU_WINDOW: Tuple[float, float] = (-125.0, 275.0)
DEFAULT_NUM_VAL = 3
SUBSETS = ("training", "validation", "test")

_BTCV_RE = re.compile(r"^(img|label)(\d{4})\.nii(\.gz)?$")
_NPZ_RE = re.compile(r"^case(\d{4})_slice(\d+)\.npz$")
_H5_RE = re.compile(r"^case(\d{4})\.npy\.h5$")


@dataclass
class TransUNetCase:
    """The source files of one TransUNet case: its npz slices (by slice number) or its h5 volume."""

    case: str
    slices: Dict[int, Path] = field(default_factory=dict)
    volume: Optional[Path] = None

    @property
    def source(self) -> Path:
        """A file that names the case in messages."""
        return self.volume if self.volume is not None else self.slices[min(self.slices)]


# ----------------------------------------------------------------------------------------------- format detection


def detect_format(input_dir: PathLike) -> str:
    """``"transunet"`` if ``input_dir`` has ``train_npz/`` or ``test_vol_h5/``, ``"btcv"`` if it has BTCV files.

    Args:
        input_dir: the data folder.

    Raises:
        InputError: the folder does not exist, is empty of both forms, or holds both.

    Example::

        >>> detect_format("/data/RawData/Training")
        'btcv'
    """
    input_dir = _check_dir(input_dir)
    transunet = any((input_dir / sub).is_dir() for sub in ("train_npz", "test_vol_h5"))
    btcv = bool(_btcv_files(input_dir))
    if transunet and btcv:
        raise InputError(input_dir, "holds both BTCV NIfTI files and TransUNet folders; choose one with --format")
    if transunet:
        return "transunet"
    if btcv:
        return "btcv"
    raise InputError(
        input_dir,
        "no Synapse data found: expected img00XX.nii.gz + label00XX.nii.gz (flat or in img/ and label/) "
        "or TransUNet's train_npz/ and test_vol_h5/",
    )


def _check_dir(path: PathLike) -> Path:
    path = Path(path)
    if not path.exists():
        raise InputError(path, "input folder does not exist")
    if not path.is_dir():
        raise InputError(path, "not a folder")
    return path


def _btcv_files(input_dir: Path) -> List[Path]:
    """BTCV image/label files directly in ``input_dir`` or in its ``img/``, ``label/`` (also under ``Training/``)."""
    folders = [input_dir] + [input_dir / a / b for a in ("", "Training") for b in ("img", "label")]
    files = []
    for folder in folders:
        if folder.is_dir():
            # a folder named like a file is kept: the checks then say what it is (not "label without image")
            files += sorted(p for p in folder.iterdir() if _BTCV_RE.match(p.name))
    return files


# ------------------------------------------------------------------------------------------------------ raw BTCV


def find_btcv_cases(input_dir: PathLike) -> Tuple[Dict[str, Tuple[Path, Path]], List[InputError], List[str]]:
    """Pair the BTCV image and label files of ``input_dir`` by case number.

    Args:
        input_dir: folder with ``img00XX.nii.gz`` / ``label00XX.nii.gz``, flat or in ``img/`` and ``label/``.

    Returns:
        ``(cases, errors, case_ids)``: case id -> (image, label) for complete pairs; one error per image without
        label, label without image, or duplicate; and the ids of every case seen (complete or not).

    Example::

        >>> cases, errors, ids = find_btcv_cases("/data/RawData/Training")
        >>> [p.name for p in cases["0001"]]
        ['img0001.nii.gz', 'label0001.nii.gz']
    """
    input_dir = _check_dir(input_dir)
    found: Dict[str, Dict[str, Path]] = {}
    errors: List[InputError] = []
    for path in _btcv_files(input_dir):
        kind, case = _BTCV_RE.match(path.name).group(1, 2)  # type: ignore[union-attr]
        entry = found.setdefault(case, {})
        if kind in entry:
            errors.append(InputError(path, f"duplicate {kind} file for case {case} (also {entry[kind]})"))
            continue
        entry[kind] = path
    cases = {}
    for case, entry in sorted(found.items()):
        if "label" not in entry:
            errors.append(InputError(entry["img"], f"no matching label file label{case}.nii.gz"))
        elif "img" not in entry:
            errors.append(InputError(entry["label"], f"no matching image file img{case}.nii.gz"))
        else:
            cases[case] = (entry["img"], entry["label"])
    return cases, errors, sorted(found)


def check_btcv_case(
    image_path: PathLike, label_path: PathLike, max_voxels: Optional[int] = MAX_VOXELS
) -> Tuple[int, List[InputError]]:
    """Check one BTCV image/label pair with :func:`xattnres_monai.data.inputs.check_pair`.

    Both files must be readable, complete 3D NIfTI volumes of the same shape and affine (``atol=1e-3``), not
    larger than ``max_voxels`` (checked from the header before loading); the image must be finite and not constant
    and the label must hold integers in 0-13.

    Args:
        image_path: ``img00XX.nii.gz``.
        label_path: ``label00XX.nii.gz``.
        max_voxels: size limit of each volume (``None``: no limit).

    Returns:
        ``(num_axial_slices, errors)`` (the number of slices is 0 when the pair is unusable).

    Example::

        >>> check_btcv_case("img/img0001.nii.gz", "label/label0001.nii.gz")
        (147, [])
    """
    return check_pair(image_path, label_path, max_label=max(BTCV_TO_SYNAPSE), max_voxels=max_voxels)


def remap_btcv_label(label: np.ndarray) -> np.ndarray:
    """Map raw BTCV label ids (0-13) to the 9 Synapse classes (uint8) with a lookup table.

    (A numpy lookup table rather than ``monai.transforms.MapLabelValue``, which gives the same result: this module
    does not import MONAI/torch, so the command line starts in a fraction of a second.)

    Args:
        label: integer-valued raw label volume with values in 0-13 (checked by :func:`check_btcv_case`).

    Example::

        >>> remap_btcv_label(np.array([0, 1, 5, 11, 13, 8]))
        array([0, 1, 0, 5, 0, 8], dtype=uint8)
    """
    lut = np.zeros(max(BTCV_TO_SYNAPSE) + 1, dtype=np.uint8)
    lut[list(BTCV_TO_SYNAPSE)] = list(BTCV_TO_SYNAPSE.values())
    return lut[np.asarray(label).astype(np.intp)]


def _remove_empty(folders: Sequence[Path]) -> None:
    """Remove the folders of ``folders`` (deepest first) that exist and are empty: staging left nothing behind."""
    for folder in folders:
        with suppress(OSError):
            folder.rmdir()


def _write_remapped_label(label: Any, output: Path, stack: ExitStack, overwrite: bool) -> None:
    """Write the 9-class label of a checked BTCV label volume (as read by :func:`~xattnres_monai.data.inputs.
    read_volume`: the one decode) to a temporary file that ``stack`` moves to ``output`` when it closes without an
    error (and removes otherwise): nothing is written unless every case passed its checks."""
    data = remap_btcv_label(np.asarray(label.data))
    image = nib.Nifti1Image(data, label.affine)
    image.header.set_data_dtype(np.uint8)
    image.header.set_slope_inter(1, 0)
    nib.save(image, str(stack.enter_context(atomic_write(output, overwrite=overwrite))))


# --------------------------------------------------------------------------------------------- TransUNet preprocessed


def find_transunet_cases(input_dir: PathLike) -> Tuple[Dict[str, TransUNetCase], List[InputError]]:
    """Group TransUNet's ``train_npz/caseXXXX_sliceNNN.npz`` by case and find ``test_vol_h5/caseXXXX.npy.h5``.

    Args:
        input_dir: folder holding ``train_npz/`` and/or ``test_vol_h5/``.

    Returns:
        ``(cases, errors)``; errors name duplicate slices and cases present in both forms.

    Example::

        >>> cases, errors = find_transunet_cases("/data/Synapse")
        >>> len(cases["0005"].slices), cases["0001"].volume.name
        (85, 'case0001.npy.h5')
    """
    input_dir = _check_dir(input_dir)
    cases: Dict[str, TransUNetCase] = {}
    errors: List[InputError] = []
    npz_dir, h5_dir = input_dir / "train_npz", input_dir / "test_vol_h5"
    for path in sorted(npz_dir.iterdir()) if npz_dir.is_dir() else []:
        match = _NPZ_RE.match(path.name)
        if match:
            entry = cases.setdefault(match.group(1), TransUNetCase(match.group(1)))
            index = int(match.group(2))
            if index in entry.slices:
                errors.append(InputError(path, f"duplicate slice {index} (also {entry.slices[index].name})"))
            entry.slices[index] = path
    for path in sorted(h5_dir.iterdir()) if h5_dir.is_dir() else []:
        match = _H5_RE.match(path.name)
        if match:
            entry = cases.setdefault(match.group(1), TransUNetCase(match.group(1)))
            if entry.slices:
                errors.append(InputError(path, f"case {entry.case} is also in train_npz/; keep one form"))
            entry.volume = path
    return dict(sorted(cases.items())), errors


def _read_npz_slice(path: Path) -> Tuple[np.ndarray, np.ndarray]:
    if path.stat().st_size == 0:
        raise InputError(path, "zero-byte file")
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [k for k in ("image", "label") if k not in npz.files]
            if missing:
                raise InputError(path, f"missing key(s) {missing} (expected 'image' and 'label')")
            image, label = npz["image"], npz["label"]
    except InputError:
        raise
    except Exception as err:
        raise InputError(path, f"not a readable .npz file ({type(err).__name__}: {err})") from None
    if image.ndim != 2 or image.shape != label.shape:
        raise InputError(path, f"expected 2D image and label of the same shape, got {image.shape} and {label.shape}")
    _check_transunet_values(path, image, label)
    return image, label


def _read_h5_volume(path: Path, max_voxels: Optional[int] = MAX_VOXELS) -> Tuple[np.ndarray, np.ndarray]:
    try:
        import h5py  # optional: only TransUNet's test volumes need it
    except ImportError:
        raise ModuleNotFoundError(f"h5py is needed to read {path} (pip install h5py)") from None
    if path.stat().st_size == 0:
        raise InputError(path, "zero-byte file")
    try:
        with h5py.File(path, "r") as f:
            missing = [k for k in ("image", "label") if k not in f]
            if missing:
                raise InputError(path, f"missing dataset(s) {missing} (expected 'image' and 'label')")
            _check_size(path, f["image"].shape, max_voxels)  # from the HDF5 header, before reading
            image, label = f["image"][()], f["label"][()]
    except InputError:
        raise
    except Exception as err:
        raise InputError(path, f"not a readable HDF5 file ({type(err).__name__}: {err})") from None
    if image.ndim != 3 or image.shape != label.shape:
        raise InputError(
            path, f"expected 3D (Z, H, W) image and label of the same shape, got {image.shape} and {label.shape}"
        )
    _check_transunet_values(path, image, label)
    return image, label


def _check_size(path: Path, shape: Sequence[int], max_voxels: Optional[int]) -> None:
    voxels = int(np.prod(shape, dtype=np.int64))
    if max_voxels is not None and voxels > max_voxels:
        raise InputError(
            path, f"volume of shape {tuple(shape)} ({voxels:,} voxels) exceeds the {int(max_voxels):,}-voxel limit"
        )


def _check_transunet_values(path: Path, image: np.ndarray, label: np.ndarray) -> None:
    """Raise the first problem with the values of a TransUNet file: NaN/Inf image, label outside 0-8.

    (A single slice may be constant, e.g. all air after the HU window: constant *volumes* are refused by
    :func:`load_transunet_case`.)
    """
    note = "; TransUNet's data is already 9-class and is never remapped"
    errors = image_errors(path, image, allow_constant=True) + label_errors(path, label, max_label=8, note=note)
    raise_if_any(errors[:1])


def _stack_slices(case: TransUNetCase, max_voxels: Optional[int] = MAX_VOXELS) -> Tuple[np.ndarray, np.ndarray]:
    indices = sorted(case.slices)
    if indices != list(range(len(indices))):
        gaps = sorted(set(range(indices[-1] + 1)) - set(indices))[:5]
        raise InputError(case.source, f"case {case.case} has no slice(s) {gaps}; slices must be numbered 0..N-1")
    images, labels = [], []
    for index in indices:
        image, label = _read_npz_slice(case.slices[index])
        if not images:  # before reading the other slices
            _check_size(case.source, (len(indices), *image.shape), max_voxels)
        if images and image.shape != images[0].shape:
            raise InputError(case.slices[index], f"slice shape {image.shape} differs from slice 0's {images[0].shape}")
        images.append(image)
        labels.append(label)
    return np.stack(images), np.stack(labels)


def load_transunet_case(case: TransUNetCase, max_voxels: Optional[int] = MAX_VOXELS) -> Tuple[np.ndarray, np.ndarray]:
    """Load one TransUNet case as checked ``(Z, H, W)`` volumes: float32 image, uint8 label (0-8, not remapped).

    Args:
        case: the case's npz slices or h5 volume, from :func:`find_transunet_cases`.
        max_voxels: refuse larger volumes (from the HDF5 header or the first slice, before reading the rest).

    Raises:
        InputError: unreadable or inconsistent file, too large, NaN/Inf or constant image, labels outside 0-8.

    Example::

        >>> image, label = load_transunet_case(cases["0001"])
        >>> image.shape, label.max()
        ((147, 512, 512), 8)
    """
    if case.volume is not None:
        image, label = _read_h5_volume(case.volume, max_voxels)
    else:
        image, label = _stack_slices(case, max_voxels)
    raise_if_any(image_errors(case.source, image))  # NaN/Inf was checked per file; a constant volume is refused here
    return image.astype(np.float32), label.astype(np.uint8)


def _transunet_to_nifti(volume: np.ndarray) -> nib.Nifti1Image:
    """A ``(Z, H, W)`` volume as a NIfTI image with axes ``(H, W, Z)`` and an identity (1 mm) affine."""
    image = nib.Nifti1Image(np.ascontiguousarray(np.transpose(volume, (1, 2, 0))), np.eye(4))
    image.header.set_xyzt_units("mm")
    image.set_qform(np.eye(4), code=1)
    image.set_sform(np.eye(4), code=1)
    return image


def _write_transunet_case(
    case: TransUNetCase, image_out: Path, label_out: Path, overwrite: bool, max_voxels: Optional[int] = MAX_VOXELS
) -> None:
    image, label = load_transunet_case(case, max_voxels)
    for volume, output in ((image, image_out), (label, label_out)):
        with atomic_write(output, overwrite=overwrite) as tmp:
            nib.save(_transunet_to_nifti(volume), str(tmp))


# --------------------------------------------------------------------------------------------------------- split


def _num_from(fraction: Optional[float], count: Optional[int], total: int, default: int) -> int:
    if count is not None:
        return int(count)
    if fraction is not None:
        return max(1, int(round(fraction * total)))
    return default


def split_cases(
    case_ids: Sequence[str],
    split: str = "auto",
    num_val: Optional[int] = None,
    val_fraction: Optional[float] = None,
    seed: int = 0,
) -> Dict[str, Any]:
    """Split case ids into training / validation / test.

    Args:
        case_ids: the cases available.
        split: ``"standard"`` (TransUNet's 18 training / 12 test cases; all 30 must be present), ``"random"``
            (seeded 60/20/20 split of all cases) or ``"auto"`` (standard when all 30 standard cases are present).
        num_val: number of validation cases drawn from the training cases (default 3 for the standard split,
            20% of all cases for the random one).
        val_fraction: alternatively, the fraction of the training cases used for validation.
        seed: seed of the generator that draws the validation (and random test) cases.

    Returns:
        ``{"mode", "seed", "reason", "training", "validation", "test"}`` with sorted case ids.

    Raises:
        InputError: ``split="standard"`` with standard cases missing (named), or too few cases.

    Example::

        >>> split = split_cases([f"{i:04d}" for i in range(1, 41)], seed=0)
        >>> split["mode"], len(split["training"]), len(split["validation"]), len(split["test"])
        ('standard', 15, 3, 12)
    """
    if num_val is not None and val_fraction is not None:
        raise ValueError("give num_val or val_fraction, not both.")
    available = sorted(set(case_ids))
    missing = sorted(set(TRAIN_CASES + TEST_CASES) - set(available))
    if split == "auto":
        split = "random" if missing else "standard"
        reason = "not all 30 standard cases are present" if missing else "all 30 standard cases are present"
    elif split in ("standard", "random"):
        reason = "requested"
    else:
        raise ValueError(f"split must be 'auto', 'standard' or 'random', got {split!r}.")
    if split == "standard" and missing:
        raise InputError("--split standard", f"missing standard case(s) {', '.join(missing)}")
    rng = np.random.default_rng(seed)
    if split == "standard":
        pool, test = sorted(TRAIN_CASES), sorted(TEST_CASES)
        extra = sorted(set(available) - set(pool) - set(test))
        if extra:
            reason += f"; {len(extra)} other case(s) not used: {' '.join(extra)}"
        n_val = _num_from(val_fraction, num_val, len(pool), DEFAULT_NUM_VAL)
    else:
        if len(available) < 3:
            raise InputError("--split random", f"needs at least 3 cases, found {len(available)}")
        n_test = max(1, int(round(0.2 * len(available))))
        order = [str(c) for c in rng.permutation(available)]
        test, pool = sorted(order[:n_test]), sorted(order[n_test:])
        n_val = _num_from(val_fraction, num_val, len(pool), max(1, int(round(0.2 * len(available)))))
    if not 0 <= n_val < len(pool):
        raise InputError("--num-val", f"{n_val} validation case(s) leave no training case (pool of {len(pool)})")
    validation = sorted(str(c) for c in rng.choice(pool, size=n_val, replace=False)) if n_val else []
    training = [c for c in pool if c not in validation]
    return {"mode": split, "seed": seed, "reason": reason, "training": training, "validation": validation, "test": test}


# ------------------------------------------------------------------------------------------------------- pipeline


def _relative(path: Path, base: Path) -> str:
    return Path(os.path.relpath(path.resolve(), base.resolve())).as_posix()


def prepare_synapse(
    input_dir: PathLike,
    output: PathLike,
    fmt: str = "auto",
    split: str = "auto",
    num_val: Optional[int] = None,
    val_fraction: Optional[float] = None,
    seed: int = 0,
    overwrite: bool = False,
    max_voxels: Optional[int] = MAX_VOXELS,
) -> Dict[str, Any]:
    """Check the Synapse data in ``input_dir``, write the 9-class label volumes and the datalist ``output``.

    Nothing is written unless every case used passes the checks; all problems are raised together.

    Args:
        input_dir: raw BTCV or TransUNet data folder (see the module docstring).
        output: the datalist JSON to write; derived volumes go next to it.
        fmt: ``"auto"``, ``"btcv"`` or ``"transunet"``.
        split: ``"auto"``, ``"standard"`` or ``"random"`` (see :func:`split_cases`).
        num_val: validation cases drawn from the training cases.
        val_fraction: alternatively, the fraction of training cases used for validation.
        seed: seed of the split.
        overwrite: replace existing outputs.
        max_voxels: refuse volumes with more voxels, from the header before loading (``None``: no limit).

    Returns:
        The datalist written.

    Raises:
        InputError: bad input (an :class:`~xattnres_monai.utils.files.InputErrorGroup` when several).
        FileExistsError: an output exists and ``overwrite`` is False.

    Example::

        >>> datalist = prepare_synapse("/data/RawData/Training", "/data/synapse/datalist.json")
        >>> datalist["split"]["mode"], len(datalist["validation"])
        ('standard', 3)
    """
    input_dir, output = _check_dir(input_dir), Path(output)
    fmt = detect_format(input_dir) if fmt == "auto" else fmt
    if fmt not in ("btcv", "transunet"):
        raise ValueError(f"fmt must be 'auto', 'btcv' or 'transunet', got {fmt!r}.")
    out_dir = output.parent
    if fmt == "btcv":
        btcv, errors, case_ids = find_btcv_cases(input_dir)
        if not case_ids:
            raise InputError(input_dir, "no BTCV img00XX.nii.gz / label00XX.nii.gz files found")
    else:
        transunet, errors = find_transunet_cases(input_dir)
        case_ids = list(transunet)
        if not case_ids:
            raise InputError(input_dir, "no TransUNet train_npz/caseXXXX_sliceNNN.npz or test_vol_h5/*.npy.h5 found")
    missing = sorted(set(TRAIN_CASES + TEST_CASES) - set(case_ids))
    if split == "standard" and missing:
        names = [f"img{c}.nii.gz/label{c}.nii.gz" if fmt == "btcv" else f"case{c}" for c in missing]
        raise InputError(input_dir, f"--split standard needs all 30 standard cases; missing {', '.join(names)}")
    chosen = split_cases(case_ids, split=split, num_val=num_val, val_fraction=val_fraction, seed=seed)
    used = sorted(c for subset in SUBSETS for c in chosen[subset])
    if fmt == "btcv":
        sources = {c: btcv[c] for c in used if c in btcv}
        targets = {c: (sources[c][0], out_dir / "labels_9class" / f"label{c}.nii.gz") for c in sources}
        writes = [label for _, label in targets.values()]
    else:
        sources = {c: transunet[c] for c in used}
        folder = out_dir / "transunet_nifti"
        targets = {c: (folder / f"img{c}.nii.gz", folder / f"label{c}.nii.gz") for c in sources}
        writes = [p for pair in targets.values() for p in pair]
    check_writable([output, *writes], overwrite=overwrite)

    slices: Dict[str, int] = {}
    if fmt == "btcv":
        # each volume is decoded once: checked, and its label remapped into a temporary file committed at the end
        label_dir = out_dir / "labels_9class"
        new_dirs = [d for d in (label_dir, *label_dir.parents) if not d.exists()]  # removed again if a case fails
        with ExitStack() as staged:
            staged.callback(_remove_empty, new_dirs)
            for case, source in sources.items():
                image, label, case_errors = read_pair(*source, max_label=max(BTCV_TO_SYNAPSE), max_voxels=max_voxels)
                errors += case_errors
                if not case_errors and image is not None:
                    slices[case] = int(image.shape[2])
                    _write_remapped_label(label, targets[case][1], staged, overwrite)
                del image, label
            raise_if_any(errors)
    else:
        for case, source in sources.items():
            try:
                slices[case] = int(load_transunet_case(source, max_voxels)[0].shape[0])
            except InputError as err:
                errors += getattr(err, "errors", [err])
        raise_if_any(errors)
        for case, source in sources.items():
            _write_transunet_case(source, *targets[case], overwrite, max_voxels)
    datalist: Dict[str, Any] = {
        "name": "Synapse multi-organ CT",
        "description": "Paths are relative to this file's folder (load_decathlon_datalist base_dir).",
        "format": fmt,
        "intensity": "hu" if fmt == "btcv" else "normalised",
        "labels": dict(SYNAPSE_LABELS),
        "split": {
            **{k: chosen[k] for k in ("mode", "seed", "reason")},
            "cases": {subset: chosen[subset] for subset in SUBSETS},
            "slices": {subset: sum(slices[c] for c in chosen[subset]) for subset in SUBSETS},
        },
    }
    for subset in SUBSETS:
        datalist[subset] = [
            {"image": _relative(targets[c][0], out_dir), "label": _relative(targets[c][1], out_dir), "case": c}
            for c in chosen[subset]
        ]
    write_json_atomic(output, datalist, overwrite=overwrite)
    return datalist


def format_report(datalist: Dict[str, Any], output: PathLike) -> str:
    """Human-readable summary of a datalist from :func:`prepare_synapse`: format, split and counts per subset."""
    split = datalist["split"]
    lines = [
        f"format: {datalist['format']} (intensity: {datalist['intensity']})",
        f"split: {split['mode']} (seed {split['seed']}; {split['reason']})",
    ]
    for subset in SUBSETS:
        cases = split["cases"][subset]
        lines.append(f"{subset:<10} {len(cases):3d} cases {split['slices'][subset]:6d} axial slices: {' '.join(cases)}")
    lines.append(f"wrote {output}")
    return "\n".join(lines)
