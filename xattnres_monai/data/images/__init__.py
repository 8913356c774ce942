"""2D binary segmentation sets (CVC-ClinicDB, CVC-ColonDB, ISIC 2017): check the release, pair images with masks
by name, split, and write a MONAI datalist.

Layouts read (folder names are matched case-insensitively; image extensions ``.tif .tiff .png .bmp .jpg .jpeg``):

``clinicdb`` (CVC-ClinicDB, 612 images)
    ``Original/`` + ``Ground Truth/`` with identical file names (``1.tif`` ... ``612.tif``), either at the input
    root or under ``TIF/`` or ``PNG/`` (the Kaggle re-release ships both; the first found in the order root,
    ``TIF/``, ``PNG/`` is used and the others are named in a note), or the PNG re-release ``images/`` + ``masks/``.
``colondb`` (CVC-ColonDB, 380 images)
    ``images/`` + ``masks/`` with identical file names (PNG; TIFF, BMP and JPEG are accepted too).
``isic2017`` (ISIC 2017 Part 1, 2000 / 150 / 600 images)
    ``ISIC-2017_{Training,Validation,Test_v2}_Data/ISIC_XXXXXXX.jpg`` +
    ``ISIC-2017_{Training,Validation,Test_v2}_Part1_GroundTruth/ISIC_XXXXXXX_segmentation.png``; all six folders
    must be present.

Pairing: an image and a mask belong together when their names without extension agree (for ISIC, after removing
the mask's ``_segmentation`` suffix). Files ignored by rule, and counted in the summary: hidden and system files
(``.DS_Store``, ``Thumbs.db``, ``desktop.ini``, names starting with ``.``), metadata and documentation files
(``.csv``, ``.txt``, ``.md``, ``.json``, ``.xlsx``; e.g. ``ISIC-2017_Training_Data_metadata.csv``) and ISIC's
``ISIC_XXXXXXX_superpixels.png`` next to the images. Every other entry is either paired or reported.

Checks, all done before anything is written and reported one line each as ``<file>: <problem>``: unpaired image
or mask, duplicate case names, unexpected files and subfolders, zero-byte / truncated / unreadable image or mask
(PIL ``Image.open`` + ``load()``), image / mask size mismatch (sizes from the headers) and masks that are not
binary after thresholding. **Binary after thresholding**: the mask is read as grayscale (RGB by luminance, palette
through its palette, ``1``-bit as 0 / 255) with the full scale of its type (255 for 8-bit, 65535 for 16-bit, 1.0
for float masks in [0, 1]); the foreground is ``value > 50%`` of the full scale (``MASK_THRESHOLD``). At most 1% of
the pixels (``MAX_AMBIGUOUS_FRACTION``; JPEG and resampling edges) may lie strictly between 10% and 90% of the
full scale, and a mask whose non-zero values all lie at or below 10% (e.g. a 0/1 or class-index map, which
thresholding would turn into background) is refused too. Empty masks are accepted. Also refused: a missing or
empty input folder and an unknown layout (the message names the folders expected). By default any problem aborts
the preparation and nothing is written; with ``skip_bad`` / ``--skip-bad`` the bad pairs are left out, each problem
is printed as a warning and listed under ``"skipped"`` in the datalist.

Split: the polyp sets get a seeded random 8:1:1 split of the naturally sorted case names that have both an image
and a mask (bad pairs included, so that fixing or skipping files never changes the split of the others): the
cases are permuted with ``numpy.random.default_rng(seed)``, ``n_train = round(0.8 n)``, ``n_val = round(0.1 n)``
(halves rounded up), ``test`` the rest, and when ``n >= 3`` validation and test get at least one case each (taken
from training). The split is written to a split file (default ``<datalist folder>/split.json``:
``{"dataset", "mode", "seed", "training", "validation", "test"}``) and **reused** whenever it exists, whatever
``--seed`` says; a split file naming cases that are not present, or missing present cases, is an error (delete it
or pass another ``--split-file`` to draw a new split). ISIC 2017 uses the official split given by the folders; its
split file is written for the record, and an existing one must agree with the folders.

The datalist (MONAI "decathlon" JSON) has ``training``, ``validation`` and ``test`` (lists of ``{"image", "label",
"case"}``, paths **relative to the datalist's folder**, as for :mod:`xattnres_monai.data.synapse`), ``labels``
(``{"0": "background", "1": "polyp" | "lesion"}``), ``name``, ``dataset``, ``layout``, ``mask_threshold``,
``split`` (mode, seed, split file, counts) and ``skipped`` (``{"file", "problem", "case"}``).

Command line (argparse in :mod:`xattnres_monai.cli.images`)::

    python -m xattnres_monai.data.images clinicdb --input /data/CVC-ClinicDB --output /data/clinicdb/datalist.json
    python -m xattnres_monai.data.images isic2017 --input /data/ISIC2017 --output /data/isic2017/datalist.json
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image

from xattnres_monai.data.image_inputs import check_image
from xattnres_monai.data.inputs import load_datalist  # the one datalist reader
from xattnres_monai.utils.files import (
    InputError,
    check_writable,
    exit_on_user_error,
    raise_if_any,
    write_json_atomic,
)

__all__ = [
    "DATASETS",
    "IMAGE_EXTENSIONS",
    "ISIC_SUBSETS",
    "LABELS",
    "MASK_THRESHOLD",
    "MAX_AMBIGUOUS_FRACTION",
    "Layout",
    "Pair",
    "check_mask_values",
    "check_pair",
    "checked_image_datalist",
    "detect_layout",
    "find_pairs",
    "format_report",
    "load_split_file",
    "mask_values",
    "natural_key",
    "prepare_images",
    "split_cases",
]

PathLike = Union[str, "os.PathLike[str]"]

DATASETS: Tuple[str, ...] = ("clinicdb", "colondb", "isic2017")
NAMES: Dict[str, str] = {"clinicdb": "CVC-ClinicDB", "colondb": "CVC-ColonDB", "isic2017": "ISIC 2017"}
#: Class id -> name per dataset.
LABELS: Dict[str, Dict[str, str]] = {
    "clinicdb": {"0": "background", "1": "polyp"},
    "colondb": {"0": "background", "1": "polyp"},
    "isic2017": {"0": "background", "1": "lesion"},
}
IMAGE_EXTENSIONS: Tuple[str, ...] = (".tif", ".tiff", ".png", ".bmp", ".jpg", ".jpeg")
#: Official ISIC 2017 subsets: datalist key -> folder infix (``ISIC-2017_<infix>_Data`` / ``_Part1_GroundTruth``).
ISIC_SUBSETS: Dict[str, str] = {"training": "Training", "validation": "Validation", "test": "Test_v2"}
#: Foreground: grayscale value above this fraction of the mask's full scale.
MASK_THRESHOLD = 0.5
#: Ambiguous band (fractions of the full scale) and the largest fraction of pixels allowed in it.
AMBIGUOUS_BAND: Tuple[float, float] = (0.1, 0.9)
MAX_AMBIGUOUS_FRACTION = 0.01
SPLIT_RATIO: Tuple[float, float, float] = (0.8, 0.1, 0.1)
SUBSETS: Tuple[str, ...] = ("training", "validation", "test")
DEFAULT_SEED = 2222

_SYSTEM_FILES = {"thumbs.db", "desktop.ini", "ehthumbs.db"}
_METADATA_EXTENSIONS = {".csv", ".txt", ".md", ".json", ".xlsx", ".xls"}
_SUPERPIXELS = re.compile(r"_superpixels$", re.IGNORECASE)
_SEGMENTATION = re.compile(r"_segmentation$", re.IGNORECASE)
_POLYP_LAYOUTS: Dict[str, Tuple[Tuple[str, Tuple[str, ...], Tuple[str, ...]], ...]] = {
    # (subfolder, image folder names, mask folder names), in order of preference
    "clinicdb": (
        ("", ("Original",), ("Ground Truth", "GroundTruth", "Ground_Truth")),
        ("TIF", ("Original",), ("Ground Truth", "GroundTruth", "Ground_Truth")),
        ("PNG", ("Original",), ("Ground Truth", "GroundTruth", "Ground_Truth")),
        ("", ("images",), ("masks",)),
    ),
    "colondb": (("", ("images",), ("masks",)),),
}
_EXPECTED: Dict[str, str] = {
    "clinicdb": "Original/ + Ground Truth/ (at the root or under TIF/ or PNG/), or images/ + masks/",
    "colondb": "images/ + masks/",
    "isic2017": ", ".join(f"ISIC-2017_{s}_Data/ + ISIC-2017_{s}_Part1_GroundTruth/" for s in ISIC_SUBSETS.values()),
}


@dataclass
class Layout:
    """Where the images and masks of a release lie.

    ``folders`` maps a subset (``"all"`` for the polyp sets, ``training`` / ``validation`` / ``test`` for ISIC) to its
    ``(image folder, mask folder)``; ``description`` names them for the summary; ``notes`` are printed.
    """

    dataset: str
    folders: Dict[str, Tuple[Path, Path]]
    description: str
    notes: List[str] = field(default_factory=list)


@dataclass
class Pair:
    """An image and its mask, matched by case name; ``subset`` is ``"all"`` unless the release fixes it (ISIC)."""

    case: str
    image: Path
    mask: Path
    subset: str = "all"


# ---------------------------------------------------------------------------------------------------------- helpers


def natural_key(name: str) -> Tuple[Tuple[int, Any], ...]:
    """Sort key that orders digit runs by value: ``"2" < "10"``, ``"ISIC_0000002" < "ISIC_0000010"``.

    Example::

        >>> sorted(["10", "2", "1"], key=natural_key)
        ['1', '2', '10']
    """
    return tuple((0, int(part)) if part.isdigit() else (1, part) for part in re.split(r"(\d+)", name) if part)


def _sorted(names: Sequence[str]) -> List[str]:
    return sorted(names, key=natural_key)


def _first(names: Sequence[str], k: int = 5) -> str:
    names = list(names)
    return ", ".join(names[:k]) + (f" and {len(names) - k} more" if len(names) > k else "")


def _relative(path: Path, base: Path) -> str:
    return Path(os.path.relpath(path.resolve(), base.resolve())).as_posix()


def _child(folder: Path, names: Sequence[str]) -> Optional[Path]:
    """The subfolder of ``folder`` whose name is one of ``names`` (case-insensitive), or None."""
    if not folder.is_dir():
        return None
    wanted = {n.lower() for n in names}
    for entry in sorted(folder.iterdir()):
        if entry.is_dir() and entry.name.lower() in wanted:
            return entry
    return None


def _visible(folder: Path) -> List[Path]:
    return sorted(p for p in folder.iterdir() if not _is_system(p))


def _is_system(path: Path) -> bool:
    return path.name.startswith(".") or path.name.lower() in _SYSTEM_FILES


def _check_dir(path: PathLike) -> Path:
    path = Path(path)
    if not path.exists():
        raise InputError(path, "input folder does not exist")
    if not path.is_dir():
        raise InputError(path, "not a folder")
    if not _visible(path):
        raise InputError(path, "input folder is empty")
    return path


def _check_dataset(dataset: str) -> str:
    if dataset not in DATASETS:
        raise ValueError(f"dataset must be one of {', '.join(DATASETS)}; got {dataset!r}.")
    return dataset


# ----------------------------------------------------------------------------------------------------------- layout


def detect_layout(dataset: str, input_dir: PathLike) -> Layout:
    """Find the image and mask folders of ``dataset`` in ``input_dir`` (see the module docstring for the layouts).

    Args:
        dataset: ``"clinicdb"``, ``"colondb"`` or ``"isic2017"``.
        input_dir: the release's folder.

    Raises:
        InputError: the folder does not exist or is empty, no known layout is found (the message names the folders
            expected and those found), or a layout is incomplete (the missing folder is named).

    Example::

        >>> layout = detect_layout("clinicdb", "/data/CVC-ClinicDB")
        >>> layout.description
        'TIF/Original/ + TIF/Ground Truth/'
    """
    dataset, input_dir = _check_dataset(dataset), _check_dir(input_dir)
    if dataset == "isic2017":
        return _isic_layout(input_dir)
    found: List[Tuple[Path, Path]] = []
    errors: List[InputError] = []
    for sub, image_names, mask_names in _POLYP_LAYOUTS[dataset]:
        root = _child(input_dir, (sub,)) if sub else input_dir
        if root is None:
            continue
        images, masks = _child(root, image_names), _child(root, mask_names)
        if images is not None and masks is not None:
            found.append((images, masks))
        elif images is not None:
            errors.append(InputError(images, f"no mask folder {mask_names[0]}/ next to it"))
        elif masks is not None:
            errors.append(InputError(masks, f"no image folder {image_names[0]}/ next to it"))
    if not found:
        if errors:
            raise_if_any(errors)
        entries = [p.name + ("/" if p.is_dir() else "") for p in _visible(input_dir)]
        raise InputError(
            input_dir,
            f"unknown layout for {dataset}: expected {_EXPECTED[dataset]}; found {_first(entries, 8)}",
        )
    images, masks = found[0]
    description = f"{_relative(images, input_dir)}/ + {_relative(masks, input_dir)}/"
    notes = [
        f"note: {_relative(i, input_dir)}/ + {_relative(m, input_dir)}/ also present in {input_dir}, not used "
        f"(using {description})"
        for i, m in found[1:]
    ]
    return Layout(dataset, {"all": (images, masks)}, description, notes)


def _isic_layout(input_dir: Path) -> Layout:
    folders: Dict[str, Tuple[Path, Path]] = {}
    missing: List[str] = []
    for subset, infix in ISIC_SUBSETS.items():
        names = (f"ISIC-2017_{infix}_Data", f"ISIC-2017_{infix}_Part1_GroundTruth")
        images, masks = _child(input_dir, names[:1]), _child(input_dir, names[1:])
        if images is None or masks is None:
            missing += [f"{n}/" for n, p in zip(names, (images, masks)) if p is None]
        else:
            folders[subset] = (images, masks)
    if not folders:
        entries = [p.name + ("/" if p.is_dir() else "") for p in _visible(input_dir)]
        raise InputError(
            input_dir, f"unknown layout for isic2017: expected {_EXPECTED['isic2017']}; found {_first(entries, 8)}"
        )
    if missing:
        raise InputError(
            input_dir,
            f"incomplete ISIC 2017 release (the official split needs all six folders): missing {', '.join(missing)}",
        )
    infixes = ",".join(ISIC_SUBSETS.values())
    return Layout("isic2017", folders, f"ISIC-2017_{{{infixes}}}_Data/ + ISIC-2017_{{{infixes}}}_Part1_GroundTruth/")


# ---------------------------------------------------------------------------------------------------------- pairing


def _classify(path: Path, dataset: str, is_mask: bool, ignored: Counter) -> Optional[Union[str, InputError]]:
    """The case name of an image or mask file, None for a file ignored by rule, or the problem with the entry."""
    if _is_system(path):
        ignored["hidden or system files"] += 1
        return None
    if path.is_dir():
        return InputError(path, "unexpected subfolder (images and masks must lie directly in their folder)")
    suffix = path.suffix.lower()
    if suffix in _METADATA_EXTENSIONS:
        ignored["metadata or documentation files (.csv, .txt, ...)"] += 1
        return None
    if suffix not in IMAGE_EXTENSIONS:
        return InputError(
            path, f"unexpected file type {suffix or '(no extension)'!r} (expected one of {' '.join(IMAGE_EXTENSIONS)})"
        )
    stem = path.stem
    if dataset == "isic2017":
        if not is_mask and _SUPERPIXELS.search(stem):
            ignored["ISIC superpixel files (*_superpixels.png)"] += 1
            return None
        if is_mask:
            if not _SEGMENTATION.search(stem):
                return InputError(
                    path, "mask name does not end in _segmentation (expected ISIC_XXXXXXX_segmentation.png)"
                )
            stem = _SEGMENTATION.sub("", stem)
    return stem


def find_pairs(layout: Layout) -> Tuple[List[Pair], List[Tuple[Optional[str], InputError]], Counter]:
    """Pair the images and masks of a layout by case name.

    Args:
        layout: from :func:`detect_layout`.

    Returns:
        ``(pairs, problems, ignored)``: the pairs in natural case order; ``(case or None, error)`` for every unpaired,
        duplicate or unexpected entry; counts of the files ignored by rule, per rule.

    Example::

        >>> pairs, problems, ignored = find_pairs(detect_layout("colondb", "/data/CVC-ColonDB"))
        >>> pairs[0].case, pairs[0].image.name, pairs[0].mask.name
        ('1', '1.png', '1.png')
    """
    pairs: List[Pair] = []
    problems: List[Tuple[Optional[str], InputError]] = []
    ignored: Counter = Counter()
    subset_of: Dict[str, str] = {}
    for subset, (image_dir, mask_dir) in layout.folders.items():
        found: Dict[str, Dict[str, Path]] = {"image": {}, "mask": {}}
        for kind, folder in (("image", image_dir), ("mask", mask_dir)):
            for path in sorted(folder.iterdir()):
                case = _classify(path, layout.dataset, kind == "mask", ignored)
                if case is None:
                    continue
                if isinstance(case, InputError):
                    problems.append((None, case))
                elif case in found[kind]:
                    other = found[kind][case].name
                    problems.append((case, InputError(path, f"duplicate {kind} for case {case} (also {other})")))
                else:
                    found[kind][case] = path
        images, masks = found["image"], found["mask"]
        mask_suffix = "_segmentation" if layout.dataset == "isic2017" else ""
        for case in _sorted(set(images) | set(masks)):
            if case not in masks:
                problem = f"unpaired image: no mask named {case}{mask_suffix}.* in {mask_dir}"
                problems.append((case, InputError(images[case], problem)))
            elif case not in images:
                problems.append(
                    (case, InputError(masks[case], f"unpaired mask: no image named {case}.* in {image_dir}"))
                )
            elif case in subset_of:
                problems.append((case, InputError(images[case], f"case {case} is also in {subset_of[case]}")))
            else:
                subset_of[case] = subset
                pairs.append(Pair(case, images[case], masks[case], subset))
    pairs.sort(key=lambda p: natural_key(p.case))
    return pairs, problems, ignored


# ----------------------------------------------------------------------------------------------------------- checks


def mask_values(image: Image.Image) -> Tuple[np.ndarray, float]:
    """A mask as a 2D grayscale array and the full scale of its type (see the module docstring).

    The bundles load masks through :func:`xattnres_monai.transforms.to_gray`, which uses this, so the
    preparation checks and the training threshold agree on every mask type.
    """
    mode = image.mode
    if mode == "1":
        return np.asarray(image, dtype=np.uint8) * 255, 255.0
    if mode.startswith("I;16"):
        return np.asarray(image).astype(np.float64), 65535.0
    if mode in ("I", "F"):
        values = np.asarray(image).astype(np.float64)
        peak = float(values.max()) if values.size else 0.0
        if mode == "F" and peak <= 1.0:
            return values, 1.0
        return values, 255.0 if peak <= 255 else 65535.0
    return np.asarray(image.convert("L")), 255.0


def check_mask_values(values: np.ndarray, full_scale: float) -> Optional[str]:
    """The problem with a grayscale mask that is not binary after thresholding, or None.

    Args:
        values: the grayscale mask.
        full_scale: the largest value of its type (255 for 8-bit masks).

    Example::

        >>> check_mask_values(np.array([[0, 255], [255, 0]], np.uint8), 255.0) is None
        True
        >>> check_mask_values(np.array([[0, 128], [255, 0]], np.uint8), 255.0)
        'mask is not binary after thresholding: 25.00% of the pixels lie between 10% and 90% of the full scale 255 ...'
    """
    low, high = (f * full_scale for f in AMBIGUOUS_BAND)
    ambiguous = float(np.mean((values > low) & (values < high))) if values.size else 0.0
    if ambiguous > MAX_AMBIGUOUS_FRACTION:
        return (
            f"mask is not binary after thresholding: {100 * ambiguous:.2f}% of the pixels lie between "
            f"{100 * AMBIGUOUS_BAND[0]:.0f}% and {100 * AMBIGUOUS_BAND[1]:.0f}% of the full scale {full_scale:g} "
            f"(at most {100 * MAX_AMBIGUOUS_FRACTION:g}% allowed, for JPEG / resampling edges)"
        )
    peak = float(values.max()) if values.size else 0.0
    if 0 < peak <= low:
        return (
            f"mask values are all at or below {100 * AMBIGUOUS_BAND[0]:.0f}% of the full scale {full_scale:g} "
            f"(max {peak:g}): a 0/1 or class-index map would be all background after thresholding at "
            f"{100 * MASK_THRESHOLD:.0f}%; store the foreground as {full_scale:g}"
        )
    return None


def _open(path: Path, kind: str, is_mask: bool) -> Tuple[Optional[Tuple[int, int]], Optional[str]]:
    """Read an image completely; return its (W, H) size (from the header) and the problem found, if any.

    Images get the checks of bundle inference (:func:`xattnres_monai.data.image_inputs.check_image`: readable and
    complete, one frame, size limit from the header, finite, not constant); masks are read the same way and must
    be binary after thresholding (:func:`check_mask_values`; an empty mask is fine).
    """
    try:
        if path.stat().st_size == 0:
            return None, f"zero-byte {kind} file"
    except OSError as err:
        return None, f"cannot read {kind} file ({err.strerror or err})"
    if not is_mask:
        try:
            return check_image(str(path)), None
        except InputError as err:
            return None, err.problem
    size: Optional[Tuple[int, int]] = None
    try:
        with Image.open(path) as image:
            size = image.size
            frames = int(getattr(image, "n_frames", 1) or 1)
            if frames > 1:
                return None, f"{frames}-frame {kind} (a stack or animation): expected one 2D mask"
            image.load()
            problem = check_mask_values(*mask_values(image))
    except Image.DecompressionBombError as err:
        return None, f"{kind} too large to read safely ({err})"
    except Image.UnidentifiedImageError:
        return None, f"not a readable {kind} (PIL cannot identify the file as an image)"
    except Exception as err:  # truncated data, corrupt headers, decoder errors
        where = "data" if size is not None else "header"
        return None, f"truncated or corrupt {kind} {where} ({type(err).__name__}: {err})"
    return size, problem


def check_pair(pair: Pair) -> List[InputError]:
    """Check one image / mask pair: both readable, the mask binary after thresholding, the same size.

    Args:
        pair: from :func:`find_pairs`.

    Returns:
        The problems, each naming its file (empty when the pair is good).

    Example::

        >>> [str(e) for e in check_pair(Pair("1", Path("Original/1.tif"), Path("Ground Truth/1.tif")))]
        []
    """
    errors = []
    image_size, problem = _open(pair.image, "image", is_mask=False)
    if problem:
        errors.append(InputError(pair.image, problem))
    mask_size, problem = _open(pair.mask, "mask", is_mask=True)
    if problem:
        errors.append(InputError(pair.mask, problem))
    if image_size is not None and mask_size is not None and image_size != mask_size:
        errors.append(
            InputError(
                pair.mask,
                f"mask size {mask_size[0]}x{mask_size[1]} (W x H) differs from its image {pair.image.name} "
                f"{image_size[0]}x{image_size[1]}",
            )
        )
    return errors


# ------------------------------------------------------------------------------------------------------------ split


def _half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


def split_cases(cases: Sequence[str], seed: int = DEFAULT_SEED) -> Dict[str, List[str]]:
    """Seeded random 8:1:1 split of case names.

    The cases are sorted naturally, permuted with ``numpy.random.default_rng(seed)``; ``n_train = round(0.8 n)``,
    ``n_val = round(0.1 n)`` (halves rounded up), ``test`` takes the rest; with ``n >= 3`` validation and test get at
    least one case each (taken from training).

    Args:
        cases: the case names (duplicates are ignored).
        seed: seed of the permutation.

    Returns:
        ``{"training", "validation", "test"}``: disjoint lists in natural order.

    Example::

        >>> split = split_cases([str(i) for i in range(1, 613)], seed=2222)
        >>> [len(split[s]) for s in ("training", "validation", "test")]
        [490, 61, 61]
    """
    ordered = _sorted(set(cases))
    n = len(ordered)
    n_train, n_val = _half_up(SPLIT_RATIO[0] * n), _half_up(SPLIT_RATIO[1] * n)
    if n >= 3:
        n_val = max(n_val, 1)
    n_test = n - n_train - n_val
    if n >= 3 and n_test < 1:
        n_train -= 1 - n_test
        n_test = 1
    order = [ordered[i] for i in np.random.default_rng(seed).permutation(n)]
    return {
        "training": _sorted(order[:n_train]),
        "validation": _sorted(order[n_train : n_train + n_val]),
        "test": _sorted(order[n_train + n_val :]),
    }


def load_split_file(path: PathLike) -> Dict[str, Any]:
    """Read and check a split file: JSON with lists ``training``, ``validation``, ``test`` of distinct case names.

    Raises:
        InputError: naming the file: not JSON, a list missing, or a case in two subsets.

    Example::

        >>> load_split_file("/data/clinicdb/split.json")["seed"]
        2222
    """
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as err:
        raise InputError(path, f"not a readable split file ({type(err).__name__}: {err})") from None
    if not isinstance(data, dict):
        raise InputError(path, "not a split file: expected a JSON object with training / validation / test lists")
    seen: Dict[str, str] = {}
    for subset in SUBSETS:
        cases = data.get(subset)
        if not isinstance(cases, list) or not all(isinstance(c, str) for c in cases):
            raise InputError(path, f"not a split file: {subset!r} must be a list of case names")
        for case in cases:
            if case in seen:
                raise InputError(path, f"case {case} is in both {seen[case]} and {subset}")
            seen[case] = subset
    return data


def _check_split(split: Dict[str, Any], path: Path, present: Dict[str, str], input_dir: Path) -> None:
    """Raise if a split file and the cases present (case -> official subset or "all") disagree."""
    listed = {case: subset for subset in SUBSETS for case in split[subset]}
    extra = _sorted(set(listed) - set(present))
    missing = _sorted(set(present) - set(listed))
    if extra or missing:
        parts = []
        if extra:
            parts.append(f"names {len(extra)} case(s) not present in {input_dir}: {_first(extra)}")
        if missing:
            parts.append(f"lacks {len(missing)} case(s) present there: {_first(missing)}")
        raise InputError(
            path,
            f"split file does not match the data: {'; '.join(parts)} "
            "(delete it, or pass another --split-file, to draw a new split)",
        )
    moved = _sorted(c for c, s in present.items() if s != "all" and listed[c] != s)
    if moved:
        raise InputError(
            path, f"split file disagrees with the official ISIC 2017 split for {len(moved)} case(s): {_first(moved)}"
        )


# --------------------------------------------------------------------------------------------------------- pipeline


def prepare_images(
    dataset: str,
    input_dir: PathLike,
    output: PathLike,
    seed: int = DEFAULT_SEED,
    split_file: Optional[PathLike] = None,
    skip_bad: bool = False,
    overwrite: bool = False,
) -> Dict[str, Any]:
    """Check a 2D binary release, split it and write the datalist ``output`` (and the split file when new).

    Everything is checked before anything is written. Without ``skip_bad`` any problem raises (all of them
    together, one line each) and nothing is written; with it the bad pairs are left out, each problem is printed as
    a warning to stderr and listed under ``"skipped"``. Layout problems, a stale split file and an existing output
    are always errors.

    Args:
        dataset: ``"clinicdb"``, ``"colondb"`` or ``"isic2017"``.
        input_dir: the release's folder (see the module docstring for the layouts).
        output: the datalist JSON to write.
        seed: seed of the 8:1:1 split of the polyp sets; ignored when the split file exists (it is reused).
        split_file: split file to reuse or write; default ``<datalist folder>/split.json``.
        skip_bad: leave bad pairs out instead of refusing.
        overwrite: replace an existing datalist (an existing split file is always reused, never replaced).

    Returns:
        The datalist written.

    Raises:
        InputError: bad input (an :class:`~xattnres_monai.utils.files.InputErrorGroup` when several).
        FileExistsError: the datalist exists and ``overwrite`` is False.

    Example::

        >>> datalist = prepare_images("clinicdb", "/data/CVC-ClinicDB", "/data/clinicdb/datalist.json")
        >>> [len(datalist[s]) for s in ("training", "validation", "test")]
        [490, 61, 61]
    """
    dataset = _check_dataset(dataset)
    input_dir, output = Path(input_dir), Path(output)
    out_dir = output.parent
    split_path = Path(split_file) if split_file is not None else out_dir / "split.json"
    layout = detect_layout(dataset, input_dir)
    pairs, problems, ignored = find_pairs(layout)
    if not pairs:
        raise_if_any([e for _, e in problems] or [InputError(input_dir, f"no images found in {layout.description}")])

    present = {p.case: p.subset for p in pairs}
    reused = split_path.exists()
    if reused:
        split = load_split_file(split_path)
        _check_split(split, split_path, present, input_dir)
        mode, used_seed = split.get("mode", "official" if dataset == "isic2017" else "random"), split.get("seed")
    elif dataset == "isic2017":
        split = {s: _sorted(c for c, subset in present.items() if subset == s) for s in SUBSETS}
        mode, used_seed = "official", None
    else:
        split = split_cases(list(present), seed=seed)
        mode, used_seed = "random", seed
    check_writable([output], overwrite=overwrite)

    for pair in pairs:
        problems += [(pair.case, e) for e in check_pair(pair)]
    if not skip_bad:
        raise_if_any([e for _, e in problems])
    bad = {case for case, _ in problems if case is not None}
    good = {p.case: p for p in pairs if p.case not in bad}
    if not good:
        raise_if_any([e for _, e in problems])  # nothing usable is left

    for note in layout.notes:
        print(note)
    if reused:
        note = f"reusing split file {split_path} (seed {used_seed})"
        if dataset != "isic2017" and used_seed != seed:
            note += f"; --seed {seed} is ignored"
        print(note)
    for _, error in problems:
        print(f"warning: {error} (skipped)", file=sys.stderr)
    if not reused:
        record = {"dataset": dataset, "mode": mode, "seed": used_seed, **{s: split[s] for s in SUBSETS}}
        write_json_atomic(split_path, record)

    datalist: Dict[str, Any] = {
        "name": NAMES[dataset],
        "dataset": dataset,
        "description": "Paths are relative to this file's folder (load_decathlon_datalist base_dir).",
        "layout": layout.description,
        "labels": dict(LABELS[dataset]),
        "mask_threshold": MASK_THRESHOLD,
        "split": {
            "mode": mode,
            "ratio": "official" if mode == "official" else "8:1:1",
            "seed": used_seed,
            "file": _relative(split_path, out_dir),
            "reused": reused,
            "cases": {s: len(split[s]) for s in SUBSETS},
            "counts": {s: sum(c in good for c in split[s]) for s in SUBSETS},
        },
        "skipped": [
            {"file": _relative(Path(e.path), out_dir), "problem": e.problem, "case": case} for case, e in problems
        ],
        "ignored": dict(sorted(ignored.items())),
    }
    for subset in SUBSETS:
        datalist[subset] = [
            {"image": _relative(good[c].image, out_dir), "label": _relative(good[c].mask, out_dir), "case": c}
            for c in split[subset]
            if c in good
        ]
    write_json_atomic(output, datalist, overwrite=overwrite)
    return datalist


def checked_image_datalist(datalist: PathLike, key: str, also_check: Sequence[str] = ()) -> List[Dict[str, Any]]:
    """Load one subset of a datalist for a bundle, after checking every pair of it (and of ``also_check``).

    The checks of the preparation (:func:`check_pair`: readable, complete, binary mask, same size) run again on the
    files the datalist names, so files that changed or vanished since the preparation are reported before
    training or evaluation starts: bad input ends the run with one ``error: <file>: <problem>`` line per problem
    (all subsets together) and exit code 2.

    Args:
        datalist: the datalist JSON (paths relative to its folder).
        key: the subset to return (``training``, ``validation``, ``test``).
        also_check: other subsets to check in the same pass (training checks ``validation`` too).

    Example (``train.json``)::

        "train_datalist": "$xattnres_monai.data.images.checked_image_datalist(@datalist, 'training', ['validation'])"
    """
    errors: List[InputError] = []
    result: List[Dict[str, Any]] = []
    with exit_on_user_error():
        for subset in [key, *[k for k in also_check if k != key]]:
            try:
                items = load_datalist(datalist, subset, check=False)
            except InputError as err:
                errors += getattr(err, "errors", [err])
                continue
            for item in items:
                missing = [k for k in ("image", "label") if not os.path.isfile(item[k])]
                errors += [InputError(item[k], "no such file (listed in the datalist)") for k in missing]
                if not missing:
                    pair = Pair(str(item.get("case", Path(item["image"]).stem)), Path(item["image"]), Path(item["label"]))
                    errors += check_pair(pair)
            if subset == key:
                result = items
        raise_if_any(errors)
    return result


def format_report(datalist: Dict[str, Any], output: PathLike) -> str:
    """Human-readable summary of a datalist from :func:`prepare_images`: split, pairs per subset, skipped files."""
    split = datalist["split"]
    how = f"random {split['ratio']}, seed {split['seed']}" if split["mode"] == "random" else split["mode"]
    lines = [
        f"dataset: {datalist['name']} ({datalist['layout']})",
        f"split: {how} ({'reused' if split['reused'] else 'wrote'} {split['file']})",
    ]
    for subset in SUBSETS:
        lines.append(f"{subset:<10} {split['counts'][subset]:5d} pairs")
    for rule, count in datalist["ignored"].items():
        lines.append(f"ignored: {count} {rule}")
    skipped = datalist["skipped"]
    lines.append(f"skipped: {len(skipped)} file(s)" + (" (listed under 'skipped' in the datalist)" if skipped else ""))
    lines.append(f"wrote {output}")
    return "\n".join(lines)
