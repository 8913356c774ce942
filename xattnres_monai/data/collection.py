"""Bring your own dataset: check any labelled CT / MR collection, remap its labels and write a MONAI datalist.

The command line is :mod:`xattnres_monai.data.prepare`; this module holds the logic (no argparse).

Input: a folder (or an MSD ``dataset.json``)
============================================

``--input`` is either an MSD / nnU-Net ``dataset.json`` file, or a folder. A folder holding a ``dataset.json`` is
read through it. Otherwise image/label pairs are found by the **naming rule**, tried in this order:

1. **Two sub-folders**, one for images and one for labels: ``imagesTr/`` + ``labelsTr/`` (nnU-Net / MSD),
   ``images/`` + ``labels/``, also ``image/``, ``img/``, ``imgs/`` and ``label/``, ``masks/``,
   ``segmentations/``. An image and its label have the same name; on images the nnU-Net channel suffix
   ``_0000`` is stripped first (``liver_003_0000.nii.gz`` pairs with ``liver_003.nii.gz``; other channels,
   ``_0001`` ..., are refused: the bundle takes one channel), and a label may also carry one of the label
   suffixes below (``liver_003_seg.nii.gz``).
2. **Side by side** in one folder: ``<case>.nii.gz`` (or ``.nii``) with ``<case>_seg.nii.gz``; the label
   suffixes are ``_seg``, ``_segmentation``, ``_label``, ``_labels``, ``_mask`` and ``_gt``. A sub-folder
   ``<case>/`` holding one DICOM series is an image when ``<case>_seg.nii.gz`` (or another suffix) lies next
   to it.
3. **One sub-folder per case** (in the same folder as rule 2): ``<case>/`` holding exactly one image and one
   label NIfTI file, the label named ``label``, ``labels``, ``seg``, ``segmentation``, ``mask`` or ``gt``, or
   with a label suffix (KiTS: ``case_00000/imaging.nii.gz`` + ``segmentation.nii.gz``).

The case id is the image name without ``.nii(.gz)`` and ``_0000`` (rules 1-2), or the case folder's name
(rule 3). Hidden files are skipped; other files are listed as ignored, except images in formats the bundle
cannot read (``.nrrd``, ``.mha``, ``.dcm`` outside a series folder ...), which are errors. An image without a
label, a label without an image, or two labels for one image are errors.

``dataset.json`` (Medical Segmentation Decathlon / nnU-Net): ``training`` lists ``{"image", "label"}`` paths
relative to the file's folder (MSD), or, without ``training`` (nnU-Net v2), the pairs are ``imagesTr/`` +
``labelsTr/`` by rule 1. ``labels`` is read in both orientations: id -> name (MSD, ``{"0": "background",
"1": "liver"}``) and name -> id (nnU-Net v2, ``{"background": 0, "liver": 1}``). Without ``--labels`` every
non-background class of ``labels`` is used.

Label map
=========

``--labels liver=1,spleen=2,kidney=3`` names the classes with the ids **as they are in the label files**
(``kidney=2+3`` merges two ids into one class; with a ``dataset.json`` a bare name, ``liver``, takes its id from
the file). Names: letters, digits, ``_``, ``-``, ``.`` (spaces become ``_``); ids: positive integers; each name
and each id once. Two modes:

- new class list (default): the classes become 1..K in the order given, background 0; the bundle then trains
  a network with K + 1 output channels;
- ``--onto synapse``: the names are mapped by name onto the Synapse bundle's classes (``spleen``,
  ``right_kidney``, ``left_kidney``, ``gallbladder``, ``pancreas``, ``liver``, ``stomach``, ``aorta``; case,
  spaces and ``-`` do not matter), keeping the 9-class network (fine-tuning the Synapse model on partial labels:
  the organs you do not list are background in your data).

Label ids found in the files but not in the map are **refused** (a typo in the map must not silently erase an
organ), unless ``--ignore-unlisted``: then they become background, with a note giving each such id and its voxel
count. A listed class found in no file gets a warning.

Checks, outputs
===============

Every pair is checked before anything is written, with the project's shared checks
(:func:`xattnres_monai.data.inputs.check_pair`: readable complete 3D volumes under ``--max-voxels``, finite and
non-constant image, integer labels, same shape and affine); all problems are raised together, one line each
(``<file>: <problem>``; the CLI exits with code 2). Outputs (existing ones are refused unless ``overwrite``;
each is written atomically):

- ``<datalist folder>/labels_<N>class/<case>.nii.gz``: the remapped labels, uint8, with the label's affine;
  images are not copied (the datalist points to them);
- the datalist (the format of :func:`xattnres_monai.data.synapse.prepare_synapse`: ``training`` /
  ``validation`` / ``test`` lists of ``{"image", "label", "case"}`` with paths relative to its folder,
  ``labels`` id -> name, ``format``, ``intensity``, ``split``, ``name``), plus ``num_classes``;
- ``classes.json`` next to it: the bundle overlay ``{"num_classes": N, "class_names": [...]}`` (plus
  ``"hu_window"`` with ``--window``; ``class_names`` is for the evaluation report), merged as the last config
  file: ``--config_file "['configs/train.json','<folder>/classes.json']"`` (likewise for evaluate, inference);
- ``classes_metadata.json`` next to it: the matching ``metadata.json`` fragment (``label_classes``,
  ``pred_classes``, ``network_data_format#outputs#pred#num_channels`` / ``channel_def``), merged with
  ``--meta_file "['configs/metadata.json','<folder>/classes_metadata.json']"`` (export, verify_metadata);
- with ``bundle``: the same values written into a *copy* of the bundle folder (every ``configs/*.json`` that
  sets ``num_classes`` / ``hu_window``, and ``configs/metadata.json``), so that it needs no overlay.

Split: with 3 or more cases a seeded random split (:func:`xattnres_monai.data.synapse.split_cases`: 20 % test,
validation drawn from the rest); with 1 or 2 cases validation and test are the training cases, with a warning
(the scores then measure the fit to the training data, not generalisation).

Intensities: CT in Hounsfield units needs nothing (the bundle windows [-125, 275]). For MR (or CT with another
window) ``window=(lo, hi)`` or ``window="auto"`` (the 0.5 and 99.5 percentiles of the training images) is
written to the overlay as ``hu_window``.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from xattnres_monai.data.inputs import MAX_VOXELS, check_pair, load_datalist, read_json, read_volume
from xattnres_monai.data.synapse import SYNAPSE_LABELS, split_cases
from xattnres_monai.utils.files import InputError, atomic_write, check_writable, raise_if_any, write_json_atomic

__all__ = [
    "LABEL_SUFFIXES",
    "LabelMap",
    "Pair",
    "build_label_map",
    "find_pairs",
    "format_report",
    "parse_label_spec",
    "prepare_collection",
    "read_dataset_json",
    "remap_label",
]

PathLike = Union[str, "os.PathLike[str]"]
Log = Callable[[str], None]

NIFTI_SUFFIXES = (".nii.gz", ".nii")
#: a file name (without .nii / .nii.gz) ending with one of these is a label (side by side, per-case folders).
LABEL_SUFFIXES: Tuple[str, ...] = ("_seg", "_segmentation", "_label", "_labels", "_mask", "_gt")
#: image / label sub-folder names of rule 1, in order of preference.
IMAGE_DIRS: Tuple[str, ...] = ("imagesTr", "images", "image", "img", "imgs")
LABEL_DIRS: Tuple[str, ...] = ("labelsTr", "labels", "label", "masks", "segmentations")
#: label file names inside a per-case folder (rule 3).
CASE_LABEL_NAMES: Tuple[str, ...] = ("label", "labels", "seg", "segmentation", "mask", "gt")
#: image formats the bundle does not read: an error rather than an ignored file.
UNREADABLE = (".nrrd", ".nhdr", ".mha", ".mhd", ".dcm", ".ima", ".mgz", ".img", ".hdr", ".npz", ".npy", ".h5")
#: label ids are read as integers up to this value (the label files' ids, before the remap).
MAX_SOURCE_ID = 2**31 - 1
_CHANNEL_RE = re.compile(r"^(.*)_(\d{4})$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
#: accepted spellings of the Synapse class names (after lower-casing and turning spaces / ``-`` into ``_``).
SYNAPSE_ALIASES: Dict[str, str] = {
    "gall_bladder": "gallbladder",
    "kidney_right": "right_kidney",
    "kidney_r": "right_kidney",
    "r_kidney": "right_kidney",
    "kidney_left": "left_kidney",
    "kidney_l": "left_kidney",
    "l_kidney": "left_kidney",
}

logger = logging.getLogger(__name__)


@dataclass
class Pair:
    """One case: its id, image (NIfTI file or DICOM series folder) and label file."""

    case: str
    image: Path
    label: Path


@dataclass
class LabelMap:
    """The user's label map: ``classes`` output id -> name (1..K), ``source`` file id -> output id."""

    classes: Dict[int, str]
    source: Dict[int, int]
    num_classes: int
    onto: Optional[str] = None
    spec: List[Tuple[str, List[int]]] = field(default_factory=list)

    @property
    def labels(self) -> Dict[str, str]:
        """Class id -> name with background, as the datalist's ``labels``."""
        return {"0": "background", **{str(i): name for i, name in sorted(self.classes.items())}}


# ------------------------------------------------------------------------------------------------------ label map


def _normalise_name(name: str) -> str:
    return "_".join(name.split())


def parse_label_spec(spec: str, known: Optional[Mapping[str, int]] = None) -> List[Tuple[str, List[int]]]:
    """Parse ``"liver=1,spleen=2,kidney=3+4"`` into ``[("liver", [1]), ("spleen", [2]), ("kidney", [3, 4])]``.

    Args:
        spec: comma-separated ``name=id`` items (``id`` as in the label files; ``+`` joins several ids into one
            class). A bare ``name`` takes its id from ``known``.
        known: class name -> id of a ``dataset.json`` (for bare names).

    Raises:
        InputError: naming ``--labels`` and every problem (empty item, bad name, non-integer or non-positive id,
            a name or an id given twice, a bare name not in ``known``).

    Example::

        >>> parse_label_spec("liver=1,spleen=2,kidney=3+4")
        [('liver', [1]), ('spleen', [2]), ('kidney', [3, 4])]
    """
    errors: List[InputError] = []
    entries: List[Tuple[str, List[int]]] = []
    names: Dict[str, str] = {}
    owners: Dict[int, str] = {}

    def fail(problem: str) -> None:
        errors.append(InputError("--labels", problem))

    items = [item.strip() for item in str(spec).split(",")]
    if not any(items):
        raise InputError("--labels", "empty label map; expected name=id pairs such as liver=1,spleen=2")
    for item in items:
        if not item:
            fail(f"empty item in {spec!r} (two commas, or a trailing comma)")
            continue
        name, sep, ids_text = item.partition("=")
        name = _normalise_name(name)
        if not _NAME_RE.match(name):
            fail(f"{item!r}: class name {name!r} must start with a letter or digit and hold only letters, digits, "
                 "'_', '-' and '.'")  # fmt: skip
            continue
        if name.lower() == "background":
            fail(f"{item!r}: background is class 0 and is not listed; name the foreground classes only")
            continue
        if not sep:
            if known is None:
                fail(f"{item!r} has no id: write name=id with the id used in your label files, e.g. {name}=1")
                continue
            lookup = {k.lower(): v for k, v in known.items()}
            if name.lower() not in lookup:
                fail(f"{item!r} is not a class of dataset.json ({', '.join(sorted(known))}); or write {name}=<id>")
                continue
            ids_text = str(lookup[name.lower()])
        ids: List[int] = []
        for text in ids_text.split("+"):
            text = text.strip()
            if not re.fullmatch(r"[+-]?\d+", text):
                fail(f"{item!r}: id {text!r} is not an integer")
                ids = []
                break
            value = int(text)
            if value <= 0:
                fail(f"{item!r}: id {value} must be positive (0 is background)")
                ids = []
                break
            if value > MAX_SOURCE_ID:
                fail(f"{item!r}: id {value} is too large (at most {MAX_SOURCE_ID})")
                ids = []
                break
            ids.append(value)
        if not ids:
            continue
        if name.lower() in names:
            fail(f"class {name!r} is given twice ({names[name.lower()]}, {item}); to merge ids into one class "
                 f"write {name}={'+'.join(map(str, ids))}+...")  # fmt: skip
            continue
        names[name.lower()] = item
        for value in ids:
            if value in owners:
                fail(f"id {value} is given to both {owners[value]!r} and {name!r}")
            owners[value] = name
        entries.append((name, ids))
    raise_if_any(errors)
    return entries


def _synapse_name(name: str) -> Optional[str]:
    key = name.lower().replace("-", "_")
    key = SYNAPSE_ALIASES.get(key, key)
    return key if key in SYNAPSE_LABELS.values() else None


def build_label_map(entries: Sequence[Tuple[str, Sequence[int]]], onto: Optional[str] = None) -> LabelMap:
    """The :class:`LabelMap` of parsed ``--labels`` entries, as a new class list or ``onto="synapse"``.

    Raises:
        InputError: unknown Synapse class names (the valid ones listed), a Synapse class given twice, more than
            255 classes, an unknown ``onto``.

    Example::

        >>> build_label_map([("liver", [1]), ("kidney", [3, 4])]).source
        {1: 1, 3: 2, 4: 2}
        >>> build_label_map([("Liver", [7]), ("right kidney", [2])], onto="synapse").source
        {7: 6, 2: 2}
    """
    entries = [(name, list(ids)) for name, ids in entries]
    if onto is None:
        if len(entries) > 254:
            raise InputError("--labels", f"{len(entries)} classes; at most 254 (uint8 labels with background)")
        classes = {i: name for i, (name, _) in enumerate(entries, start=1)}
        source = {value: i for i, (_, ids) in enumerate(entries, start=1) for value in ids}
        return LabelMap(classes, source, len(entries) + 1, None, entries)
    if onto != "synapse":
        raise InputError("--onto", f"unknown class set {onto!r}; available: synapse")
    valid = [n for i, n in sorted(SYNAPSE_LABELS.items(), key=lambda kv: int(kv[0])) if i != "0"]
    ids_of = {n: int(i) for i, n in SYNAPSE_LABELS.items()}
    errors, source, used = [], {}, {}
    for name, ids in entries:
        target = _synapse_name(name)
        if target is None:
            errors.append(InputError("--labels", f"{name!r} is not a Synapse class; valid names: {', '.join(valid)}"))
            continue
        if target in used:
            errors.append(InputError("--labels", f"{name!r} and {used[target]!r} are both the Synapse class {target}"))
            continue
        used[target] = name
        source.update({value: ids_of[target] for value in ids})
    raise_if_any(errors)
    classes = {int(i): n for i, n in SYNAPSE_LABELS.items() if i != "0"}
    return LabelMap(classes, source, len(SYNAPSE_LABELS), "synapse", entries)


def remap_label(data: np.ndarray, source: Mapping[int, int]) -> np.ndarray:
    """Map the label ids of ``data`` with ``source`` (file id -> class id); every other id becomes 0 (uint8).

    ``data`` holds integer values (checked by :func:`~xattnres_monai.data.inputs.label_errors`), of any dtype.

    Example::

        >>> remap_label(np.array([0, 1, 5, 3, 4]), {1: 1, 3: 2, 4: 2})
        array([0, 1, 0, 2, 2], dtype=uint8)
    """
    data = np.asarray(data)
    ints = np.rint(data).astype(np.int64) if np.issubdtype(data.dtype, np.floating) else data.astype(np.int64)
    if ints.size == 0:
        return ints.astype(np.uint8)
    low, high = int(ints.min()), int(ints.max())
    if low >= 0 and high < 2**16:  # lookup table
        lut = np.zeros(high + 1, dtype=np.uint8)
        for value, target in source.items():
            if value <= high:
                lut[value] = target
        return lut[ints]
    values, inverse = np.unique(ints, return_inverse=True)
    mapped = np.array([source.get(int(v), 0) for v in values], dtype=np.uint8)
    return mapped[inverse].reshape(ints.shape)


# -------------------------------------------------------------------------------------------------------- pairing


def _nifti_stem(name: str) -> Optional[str]:
    for suffix in NIFTI_SUFFIXES:
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return None


def _label_base(stem: str) -> Optional[str]:
    """The case of a label stem with a label suffix (``abc_seg`` -> ``abc``), else None."""
    for suffix in LABEL_SUFFIXES:
        if stem.lower().endswith(suffix) and len(stem) > len(suffix):
            return stem[: -len(suffix)]
    return None


def _image_case(path: Path, stem: str, errors: List[InputError]) -> Optional[str]:
    """The case id of an image stem: nnU-Net's ``_0000`` stripped, other channels refused."""
    match = _CHANNEL_RE.match(stem)
    if match and match.group(2) != "0000":
        errors.append(InputError(path, f"channel {match.group(2)} of a multi-channel case: the bundle takes one "
                                       "channel (keep the _0000 files only)"))  # fmt: skip
        return None
    return match.group(1) if match else stem


def _visible(folder: Path) -> List[Path]:
    return sorted(p for p in folder.iterdir() if not p.name.startswith("."))


def _other_file(path: Path, errors: List[InputError], notes: List[str]) -> None:
    if path.name.lower().endswith(UNREADABLE):
        errors.append(InputError(path, "unsupported file type: expected .nii / .nii.gz, or a folder holding one "
                                       "DICOM series (convert it, e.g. with SimpleITK)"))  # fmt: skip
    elif path.name != "dataset.json":
        notes.append(f"note: ignored {path} (not an image or label file)")


def _add(found: Dict[str, Dict[str, List[Path]]], case: str, kind: str, path: Path) -> None:
    found.setdefault(case, {"image": [], "label": []})[kind].append(path)


def _pairs_of(found: Dict[str, Dict[str, List[Path]]], errors: List[InputError], hint: str) -> List[Pair]:
    pairs = []
    for case, entry in sorted(found.items()):
        images, labels = entry["image"], entry["label"]
        if len(images) > 1:
            errors.append(InputError(images[1], f"second image for case {case!r} (also {images[0]})"))
        if len(labels) > 1:
            errors.append(InputError(labels[1], f"second label for case {case!r} (also {labels[0]})"))
        if not images:
            errors.append(InputError(labels[0], f"label without image: no image for case {case!r} ({hint})"))
        elif not labels:
            errors.append(InputError(images[0], f"image without label: no label for case {case!r} ({hint})"))
        elif len(images) == 1 and len(labels) == 1:
            pairs.append(Pair(case, images[0], labels[0]))
    return pairs


def _subfolder_pairs(folder: Path, image_dir: Path, label_dir: Path, errors: List[InputError],
                     notes: List[str]) -> List[Pair]:  # fmt: skip
    found: Dict[str, Dict[str, List[Path]]] = {}
    for path in _visible(image_dir):
        stem = _nifti_stem(path.name) if path.is_file() else (path.name if path.is_dir() else None)
        if stem is None:
            _other_file(path, errors, notes)
            continue
        case = _image_case(path, stem, errors)
        if case is not None:
            _add(found, case, "image", path)
    for path in _visible(label_dir):
        stem = _nifti_stem(path.name) if path.is_file() else None
        if stem is None:
            _other_file(path, errors, notes)
            continue
        base = _label_base(stem)
        case = base if base is not None and base in found and stem not in found else stem
        _add(found, case, "label", path)
    hint = f"rule: {image_dir.name}/<case>.nii.gz + {label_dir.name}/<case>.nii.gz, images may end with _0000"
    return _pairs_of(found, errors, hint)


def _case_folder_pair(folder: Path, errors: List[InputError]) -> Tuple[bool, Optional[Pair]]:
    """Rule 3: ``(is a case folder, its pair)``: a folder holding NIfTI files is a case folder, whose pair is
    its one image and one label (None, with an error, when it holds other files)."""
    files = [p for p in _visible(folder) if p.is_file() and _nifti_stem(p.name) is not None]
    if not files:
        return False, None
    labels, images = [], []
    for path in files:
        stem = _nifti_stem(path.name) or ""
        is_label = stem.lower() in CASE_LABEL_NAMES or _label_base(stem) is not None
        (labels if is_label else images).append(path)
    if len(images) == 1 and len(labels) == 1:
        return True, Pair(folder.name, images[0], labels[0])
    found = f"{len(images)} image(s) {[p.name for p in images]} and {len(labels)} label(s) {[p.name for p in labels]}"
    problem = (f"case folder needs exactly one image and one label NIfTI file (label named "
               f"{'/'.join(CASE_LABEL_NAMES)} or with a suffix {'/'.join(LABEL_SUFFIXES)}); found {found}")
    errors.append(InputError(folder, problem))
    return True, None


def _flat_pairs(folder: Path, errors: List[InputError], notes: List[str]) -> List[Pair]:
    found: Dict[str, Dict[str, List[Path]]] = {}
    subfolders, case_pairs = [], []
    for path in _visible(folder):
        if path.is_dir():
            subfolders.append(path)
            continue
        stem = _nifti_stem(path.name)
        if stem is None:
            _other_file(path, errors, notes)
            continue
        base = _label_base(stem)
        if base is not None:
            _add(found, base, "label", path)
        else:
            case = _image_case(path, stem, errors)
            if case is not None:
                _add(found, case, "image", path)
    for sub in subfolders:
        if sub.name in found and not found[sub.name]["image"]:  # <case>/ (a DICOM series) + <case>_seg.nii.gz
            _add(found, sub.name, "image", sub)
            continue
        is_case, pair = _case_folder_pair(sub, errors)
        if pair is not None:
            case_pairs.append(pair)
        elif not is_case:
            notes.append(f"note: ignored folder {sub} (no {sub.name}_seg.nii.gz next to it, no NIfTI files in it)")
    hint = f"rule: <case>.nii.gz + <case>{{{','.join(LABEL_SUFFIXES)}}}.nii.gz side by side"
    pairs = _pairs_of(found, errors, hint)
    taken = {p.case for p in pairs}
    for pair in case_pairs:
        if pair.case in taken:
            errors.append(InputError(pair.image, f"case {pair.case!r} is also a side-by-side pair in {folder}"))
        else:
            pairs.append(pair)
    return sorted(pairs, key=lambda p: p.case)


def _dirs(folder: Path, names: Sequence[str]) -> List[Path]:
    return [folder / n for n in names if (folder / n).is_dir()]


def find_pairs(input_path: PathLike) -> Tuple[List[Pair], List[InputError], List[str], Optional[Dict[str, int]]]:
    """Find the image/label pairs of a folder or ``dataset.json`` (see the module docstring for the rules).

    Returns:
        ``(pairs, errors, notes, known_labels)``: the complete pairs; one error per problem (unpaired files,
        duplicates, unsupported files ...); notes (the rule used, ignored files); the class name -> id of a
        ``dataset.json`` (``None`` for a plain folder).

    Raises:
        InputError: the input does not exist, or no pair at all was found.

    Example::

        >>> pairs, errors, notes, known = find_pairs("/data/my_ct")
        >>> [(p.case, p.image.name, p.label.name) for p in pairs]
        [('patient_a', 'patient_a.nii.gz', 'patient_a_seg.nii.gz')]
    """
    path = Path(input_path)
    if not path.exists():
        raise InputError(path, "input does not exist")
    if path.is_file() or (path / "dataset.json").is_file():
        json_path = path if path.is_file() else path / "dataset.json"
        if path.is_file() and path.suffix.lower() != ".json":
            raise InputError(path, "expected a folder of images and labels, or a dataset.json file")
        pairs, errors, notes, known = read_dataset_json(json_path)
    else:
        errors, notes, known = [], [], None
        image_dirs, label_dirs = _dirs(path, IMAGE_DIRS), _dirs(path, LABEL_DIRS)
        if image_dirs and label_dirs:
            if len(image_dirs) > 1 or len(label_dirs) > 1:
                both = [p.name + "/" for p in image_dirs + label_dirs]
                raise InputError(path, f"holds several image or label folders ({', '.join(both)}); keep one of each")
            pairs = _subfolder_pairs(path, image_dirs[0], label_dirs[0], errors, notes)
            notes.insert(0, f"note: pairs from {image_dirs[0].name}/ + {label_dirs[0].name}/ (same file names)")
        else:
            pairs = _flat_pairs(path, errors, notes)
            notes.insert(0, "note: pairs side by side (<case>.nii.gz + <case>_seg.nii.gz ...) or one folder per case")
    if not pairs and not errors:
        raise InputError(path, "no image/label pairs found: expected imagesTr/ + labelsTr/ (or images/ + labels/), "
                               "<case>.nii.gz + <case>_seg.nii.gz side by side, or a dataset.json")  # fmt: skip
    return pairs, errors, notes, known


def _read_labels_dict(path: Path, labels: Any) -> Dict[str, int]:
    """Class name -> id of a ``dataset.json`` ``labels`` dict, in either orientation (background excluded)."""
    if not isinstance(labels, dict) or not labels:
        raise InputError(path, "'labels' must be a non-empty dict (id -> name, or name -> id)")

    def as_int(value: Any) -> Optional[int]:
        if isinstance(value, bool):
            return None
        if isinstance(value, int):
            return value
        if isinstance(value, str) and re.fullmatch(r"\d+", value.strip()):
            return int(value)
        return None

    if all(as_int(k) is not None and isinstance(v, str) for k, v in labels.items()):  # MSD: {"0": "background"}
        pairs = [(str(v), as_int(k)) for k, v in labels.items()]
    elif all(isinstance(k, str) and as_int(v) is not None for k, v in labels.items()):  # nnU-Net: {"background": 0}
        pairs = [(k, as_int(v)) for k, v in labels.items()]
    else:
        if any(isinstance(v, list) for v in labels.values()):
            raise InputError(path, "region-based 'labels' (lists of ids) are not supported; give --labels name=id")
        raise InputError(path, "'labels' must map ids to names ({\"1\": \"liver\"}) or names to ids "
                               "({\"liver\": 1}), not a mix")  # fmt: skip
    known: Dict[str, int] = {}
    for name, value in pairs:
        if value == 0:
            continue
        known[_normalise_name(name)] = int(value)  # type: ignore[arg-type]
    return known


def read_dataset_json(path: PathLike) -> Tuple[List[Pair], List[InputError], List[str], Dict[str, int]]:
    """Pairs and class names of an MSD / nnU-Net ``dataset.json`` (see the module docstring).

    Returns:
        ``(pairs, errors, notes, known_labels)`` as :func:`find_pairs`.
    """
    path = Path(path)
    content = read_json(path)  # the package's one datalist reader reads dataset.json too (it is a datalist)
    if not isinstance(content, dict):
        raise InputError(path, "expected a JSON object with 'labels' and 'training'")
    known = _read_labels_dict(path, content.get("labels")) if "labels" in content else {}
    errors: List[InputError] = []
    notes = [f"note: pairs from {path}"]
    if content.get("training") is None:  # nnU-Net v2: imagesTr/ + labelsTr/
        image_dir, label_dir = path.parent / "imagesTr", path.parent / "labelsTr"
        if not (image_dir.is_dir() and label_dir.is_dir()):
            raise InputError(path, "has no 'training' list and no imagesTr/ + labelsTr/ folders next to it")
        pairs = _subfolder_pairs(path.parent, image_dir, label_dir, errors, notes)
        return pairs, errors, notes, known
    try:
        items = load_datalist(path, "training", check=False)
    except InputError as err:
        errors += getattr(err, "errors", [err])
        items = []
    pairs, seen = [], {}
    for item in items:
        image, label = Path(item["image"]), Path(item["label"])
        stem = _nifti_stem(image.name) or image.name
        match = _CHANNEL_RE.match(stem)
        case = match.group(1) if match and match.group(2) == "0000" else stem
        if case in seen:
            errors.append(InputError(image, f"case {case!r} is listed twice in {path.name} (also {seen[case]})"))
            continue
        seen[case] = image
        pairs.append(Pair(case, image, label))
    return pairs, errors, notes, known


# --------------------------------------------------------------------------------------------------------- checks


def _as_numpy(data: Any) -> np.ndarray:
    """The voxels of :func:`~xattnres_monai.data.inputs.read_volume` (a numpy array or a torch / MONAI tensor)."""
    if hasattr(data, "as_tensor"):
        data = data.as_tensor()
    if hasattr(data, "detach"):
        data = data.detach().cpu().numpy()
    return np.asarray(data)


def _relative(path: Path, base: Path) -> str:
    return Path(os.path.relpath(path.resolve(), base.resolve())).as_posix()


def _parse_window(window: Union[None, str, Sequence[float]]) -> Union[None, str, Tuple[float, float]]:
    if window is None or (isinstance(window, str) and window.strip().lower() == "auto"):
        return None if window is None else "auto"
    try:
        values = [float(v) for v in (window.split(",") if isinstance(window, str) else window)]
    except (TypeError, ValueError):
        values = []
    if len(values) != 2 or not np.all(np.isfinite(values)) or values[0] >= values[1]:
        raise InputError("--window", f"expected 'auto' or LOW,HIGH with LOW < HIGH, got {window!r}")
    return float(values[0]), float(values[1])


def _bundle_files(bundle: Path) -> Dict[Path, Dict[str, Any]]:
    """The config files of a bundle copy to update (``metadata.json`` and the configs that set ``num_classes``)."""
    configs = bundle / "configs"
    needed = [configs / n for n in ("train.json", "inference.json", "metadata.json")]
    missing = [p.name for p in needed if not p.is_file()]
    if missing:
        raise InputError(bundle, f"not a copy of the bundle folder: configs/{', configs/'.join(missing)} missing")
    repo_bundle = Path(__file__).resolve().parents[2] / "bundles" / "synapse_ct_segmentation"
    if repo_bundle.is_dir() and bundle.resolve() == repo_bundle.resolve():
        raise InputError(bundle, "is the repository's bundle; copy it first (cp -r bundles/synapse_ct_segmentation "
                                 "my_bundle) and pass the copy")  # fmt: skip
    files = {}
    for path in sorted(configs.glob("*.json")):
        try:
            content = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise InputError(path, f"cannot read bundle config ({' '.join(str(err).split())})") from None
        if path.name == "metadata.json" or (isinstance(content, dict) and "num_classes" in content):
            files[path] = content
    return files


def _metadata_values(label_map: LabelMap) -> Dict[str, Any]:
    names = {i: n.replace("_", " ") for i, n in label_map.labels.items()}
    listing = ", ".join(f"{i} {n}" for i, n in names.items())
    return {
        "label_classes": listing,
        "pred_classes": f"{label_map.num_classes} channels (logits): {listing}",
        "network_data_format#outputs#pred#num_channels": label_map.num_classes,
        "network_data_format#outputs#pred#channel_def": names,
    }


def _updated_bundle(files: Dict[Path, Dict[str, Any]], overlay: Dict[str, Any], meta: Dict[str, Any],
                    overwrite: bool) -> Dict[Path, Dict[str, Any]]:  # fmt: skip
    updated = {}
    for path, content in files.items():
        content = json.loads(json.dumps(content))
        if path.name == "metadata.json":
            pred = content.setdefault("network_data_format", {}).setdefault("outputs", {}).setdefault("pred", {})
            current = pred.get("channel_def")
            synapse = {i: n.replace("_", " ") for i, n in SYNAPSE_LABELS.items()}
            new = meta["network_data_format#outputs#pred#channel_def"]
            if current not in (None, synapse, new) and not overwrite:
                raise InputError(path, f"already adapted to other classes ({current}); pass --overwrite to replace")
            pred["num_channels"] = meta["network_data_format#outputs#pred#num_channels"]
            pred["channel_def"] = new
            for key in ("label_classes", "pred_classes", "image_classes"):
                if key in meta:
                    content[key] = meta[key]
        else:
            for key, value in overlay.items():
                if key in content or key in ("num_classes", "class_names"):
                    content[key] = value
        updated[path] = content
    return updated


def _window_of(pairs: Sequence[Pair], max_voxels: Optional[int]) -> Tuple[float, float]:
    """The 0.5 and 99.5 percentiles of the images (each subsampled to at most 2M voxels)."""
    samples = []
    for pair in pairs:
        data = _as_numpy(read_volume(pair.image, max_voxels).data).astype(np.float32, copy=False).ravel()
        samples.append(data[:: max(1, data.size // 2_000_000)])
    low, high = np.percentile(np.concatenate(samples), [0.5, 99.5])
    if not high > low:
        high = low + 1.0
    return round(float(low), 2), round(float(high), 2)


def prepare_collection(
    input_path: PathLike,
    output: PathLike,
    labels: Optional[str] = None,
    onto: Optional[str] = None,
    ignore_unlisted: bool = False,
    num_val: Optional[int] = None,
    val_fraction: Optional[float] = None,
    seed: int = 0,
    overwrite: bool = False,
    max_voxels: Optional[int] = MAX_VOXELS,
    bundle: Optional[PathLike] = None,
    window: Union[None, str, Sequence[float]] = None,
    check_only: bool = False,
    log: Optional[Log] = None,
) -> Dict[str, Any]:
    """Check a labelled collection, write its remapped labels, the datalist and the bundle overlay.

    Nothing is written unless every pair passes the checks; all problems are raised together.

    Args:
        input_path: a folder of image/label pairs or a ``dataset.json`` (see the module docstring).
        output: the datalist JSON to write; ``labels_<N>class/``, ``classes.json`` and ``classes_metadata.json``
            go next to it.
        labels: the label map ``"liver=1,spleen=2"`` (ids as in the files); optional with a ``dataset.json``.
        onto: ``None`` (the listed classes become 1..K) or ``"synapse"`` (mapped onto the 9 Synapse classes).
        ignore_unlisted: map ids not in the map to background instead of refusing the files.
        num_val: validation cases drawn from the training cases (3 or more cases).
        val_fraction: alternatively, the fraction of training cases used for validation.
        seed: seed of the split.
        overwrite: replace existing outputs (and a bundle copy already adapted to other classes).
        max_voxels: refuse larger volumes, from the header before loading (``None``: no limit).
        bundle: a *copy* of the bundle folder whose configs get ``num_classes`` (and ``hu_window``) and whose
            ``metadata.json`` gets the classes.
        window: intensity window written as ``hu_window``: ``(low, high)``, ``"low,high"`` or ``"auto"``
            (0.5 / 99.5 percentiles of the training images); ``None``: the bundle's CT window.
        check_only: check everything, write nothing.
        log: receives the ``note: ...`` / ``warning: ...`` lines (default: this module's logger).

    Returns:
        The datalist (written unless ``check_only``).

    Raises:
        InputError: bad input (an :class:`~xattnres_monai.utils.files.InputErrorGroup` when several).
        FileExistsError: an output exists and ``overwrite`` is False.

    Example::

        >>> datalist = prepare_collection("/data/my_ct", "/data/my_ct_prepared/datalist.json",
        ...                               labels="liver=1,spleen=2,kidney=3")
        >>> datalist["num_classes"], datalist["labels"]["3"]
        (4, 'kidney')
    """
    say: Log = log if log is not None else (lambda line: logger.warning(line))
    output = Path(output)
    out_dir = output.parent
    window = _parse_window(window)
    pairs, errors, notes, known = find_pairs(input_path)
    for note in notes:
        say(note)
    if labels is None or not str(labels).strip():
        if not known:
            raise InputError("--labels", "required: name=id pairs with the ids of your label files, e.g. "
                                         "--labels liver=1,spleen=2,kidney=3")  # fmt: skip
        labels = ",".join(f"{name}={value}" for name, value in sorted(known.items(), key=lambda kv: kv[1]))
        say(f"note: classes from dataset.json: {labels}")
    label_map = build_label_map(parse_label_spec(labels, known), onto)
    if label_map.onto == "synapse":
        unused = [n for i, n in label_map.classes.items() if i not in label_map.source.values()]
        if unused:
            say(f"note: Synapse classes not in your labels are background in your data: {', '.join(unused)}")

    # the split and every output path, known before anything is read
    cases = [p.case for p in pairs]
    if len(pairs) >= 3:
        chosen = split_cases(cases, split="random", num_val=num_val, val_fraction=val_fraction, seed=seed)
        chosen["reason"] = f"seeded random split of {len(cases)} cases"
    else:
        if num_val is not None or val_fraction is not None:
            say("note: --num-val / --val-fraction ignored: fewer than 3 cases")
        chosen = {"mode": "all", "seed": seed, "training": sorted(cases), "validation": sorted(cases),
                  "test": sorted(cases)}  # fmt: skip
        chosen["reason"] = (f"only {len(cases)} case(s): validation and test are the training cases")
    bundle_files = _bundle_files(Path(bundle)) if bundle is not None else {}
    label_dir = out_dir / f"labels_{label_map.num_classes}class"
    targets = {p.case: label_dir / f"{p.case}.nii.gz" for p in pairs}
    overlay_path, meta_path = out_dir / "classes.json", out_dir / "classes_metadata.json"
    inputs = {os.path.normcase(os.path.abspath(p)) for pair in pairs for p in (pair.image, pair.label)}
    for pair in pairs:
        if os.path.normcase(os.path.abspath(targets[pair.case])) in inputs:
            errors.append(InputError(targets[pair.case], "the remapped label would replace an input file; "
                                                         "choose another --output folder"))  # fmt: skip

    # check every pair (the shared checks), then the ids against the map
    source_max = MAX_SOURCE_ID
    slices: Dict[str, int] = {}
    found_ids: Dict[int, int] = {}
    unlisted: Dict[int, Tuple[int, List[str]]] = {}
    for pair in pairs:
        slices[pair.case], pair_errors = check_pair(pair.image, pair.label, max_label=source_max,
                                                    max_voxels=max_voxels)  # fmt: skip
        errors += pair_errors
        if pair_errors:
            continue
        data = _as_numpy(read_volume(pair.label, max_voxels).data)
        values, counts = np.unique(np.rint(data).astype(np.int64) if data.dtype.kind == "f" else data,
                                   return_counts=True)  # fmt: skip
        foreign = []
        for value, count in zip(values.tolist(), counts.tolist()):
            found_ids[int(value)] = found_ids.get(int(value), 0) + int(count)
            if value != 0 and value not in label_map.source:
                foreign.append(int(value))
                total, files = unlisted.get(int(value), (0, []))
                unlisted[int(value)] = (total + int(count), files + [pair.label.name])
        if foreign and not ignore_unlisted:
            problem = f"label ids {foreign[:10]} are not in --labels ({labels}); add them, or pass --ignore-unlisted"
            errors.append(InputError(pair.label, f"{problem} to make them background"))
    if not errors:  # only meaningful when every file could be read
        missing = [f"{name} (id {'+'.join(map(str, ids))})" for name, ids in label_map.spec
                   if not any(found_ids.get(v, 0) for v in ids)]  # fmt: skip
        if missing:
            say(f"warning: class(es) found in no label file: {', '.join(missing)}")
    raise_if_any(errors)
    for value, (count, files) in sorted(unlisted.items()):
        shown = ", ".join(files[:3]) + (f" and {len(files) - 3} more" if len(files) > 3 else "")
        say(f"note: unlisted label id {value} set to background: {count} voxel(s) in {shown}")
    if len(pairs) < 3:
        say(f"warning: only {len(pairs)} case(s): validation and test use the TRAINING cases, so their scores "
            "measure the fit to the training data, not how well the model generalises; add cases for a real "
            "split")

    # class_names: the column names of the evaluation report (SegmentationReport)
    names = [label_map.labels[str(i)] for i in range(label_map.num_classes)]
    overlay: Dict[str, Any] = {"num_classes": label_map.num_classes, "class_names": names}
    if window is not None:
        by_case = {p.case: p for p in pairs}
        window = _window_of([by_case[c] for c in chosen["training"]], max_voxels) if window == "auto" else window
        overlay["hu_window"] = [float(window[0]), float(window[1])]
        say(f"note: intensity window {overlay['hu_window']} (written as hu_window)")
    meta = _metadata_values(label_map)
    if window is not None:
        meta["image_classes"] = (f"single-channel image, intensities windowed to {overlay['hu_window']} and scaled "
                                 "to [0, 1]")  # fmt: skip
    updated = _updated_bundle(bundle_files, overlay, meta, overwrite)
    datalist: Dict[str, Any] = {
        "name": f"{Path(input_path).resolve().name}: {', '.join(label_map.classes.values())}",
        "description": "Paths are relative to this file's folder (load_decathlon_datalist base_dir).",
        "format": "collection",
        "intensity": "hu" if window is None else "window",
        "labels": label_map.labels,
        "num_classes": label_map.num_classes,
        "label_map": {
            "onto": label_map.onto,
            "source_ids": {str(k): v for k, v in sorted(label_map.source.items())},
            "unlisted": "background" if ignore_unlisted else "refused",
        },
        "split": {
            **{k: chosen[k] for k in ("mode", "seed", "reason")},
            "cases": {subset: chosen[subset] for subset in ("training", "validation", "test")},
            "slices": {subset: sum(slices[c] for c in chosen[subset]) for subset in ("training", "validation", "test")},
        },
    }
    if window is not None:
        datalist["intensity_window"] = overlay["hu_window"]
    by_case = {p.case: p for p in pairs}
    for subset in ("training", "validation", "test"):
        datalist[subset] = [
            {"image": _relative(by_case[c].image, out_dir), "label": _relative(targets[c], out_dir), "case": c}
            for c in chosen[subset]
        ]
    if check_only:
        say("note: checked only (--check): nothing written")
        return datalist
    check_writable([output, overlay_path, meta_path, *targets.values()], overwrite=overwrite)

    for pair in pairs:
        _write_label(pair.label, targets[pair.case], label_map.source, overwrite, max_voxels)
    write_json_atomic(overlay_path, overlay, overwrite=overwrite, indent=4)
    write_json_atomic(meta_path, meta, overwrite=overwrite, indent=4)
    for path, content in updated.items():
        write_json_atomic(path, content, overwrite=True, indent=4)
        say(f"note: updated {path}")
    write_json_atomic(output, datalist, overwrite=overwrite)
    return datalist


def _write_label(label_path: Path, output: Path, source: Mapping[int, int], overwrite: bool,
                 max_voxels: Optional[int]) -> None:  # fmt: skip
    import nibabel as nib

    volume = read_volume(label_path, max_voxels)
    image = nib.Nifti1Image(remap_label(_as_numpy(volume.data), source), volume.affine)
    image.header.set_xyzt_units("mm")
    image.set_qform(volume.affine, code=1)
    image.set_sform(volume.affine, code=1)
    image.header.set_slope_inter(1, 0)
    with atomic_write(output, overwrite=overwrite) as tmp:
        nib.save(image, str(tmp))


def format_report(datalist: Dict[str, Any], output: PathLike) -> str:
    """Human-readable summary of a datalist from :func:`prepare_collection`: classes, split, the next commands."""
    split = datalist["split"]
    classes = ", ".join(f"{i} {n}" for i, n in datalist["labels"].items())
    folder = Path(output).parent
    lines = [f"classes ({datalist['num_classes']}): {classes}", f"split: {split['mode']} ({split['reason']})"]
    for subset in ("training", "validation", "test"):
        cases = split["cases"][subset]
        lines.append(f"{subset:<10} {len(cases):3d} cases {split['slices'][subset]:6d} axial slices: {' '.join(cases)}")
    lines += [
        f"wrote {output}, {folder / 'classes.json'} (bundle overlay), {folder / 'classes_metadata.json'}",
        "train: python -m monai.bundle run --config_file "
        f"\"['<bundle>/configs/train.json','{folder / 'classes.json'}']\" --datalist {output} "
        "--bundle_root <run folder>",
    ]
    return "\n".join(lines)
