"""Per-scan organ report: volume (mL), voxel count and mean intensity (HU) of every class of a label map.

:func:`organ_table` computes the numbers from a label map on the scan's own grid (after ``Invertd``) and, when
given, the original image (Hounsfield units for CT); :class:`OrganReportd` is the MONAI transform the inference
bundle runs after its writers: it writes ``<scan>_organs.csv`` and ``<scan>_organs.json`` next to the mask,
atomically, listing the post-processing steps the mask went through (``data["postprocessing"]``, recorded by
:mod:`xattnres_monai.transforms.postprocess`).

Volumes are ``voxel count x voxel volume``, the voxel volume being ``|det(A)|`` of the affine's 3 x 3 part: the
product of the voxel spacing for any (also oblique) non-sheared grid, in mm^3; 1 mL = 1000 mm^3.

Example::

    >>> table = organ_table(label, affine, image=hu, class_names=["background", "liver"])
    >>> table[0]["name"], table[0]["voxels"], round(table[0]["volume_ml"], 1)
    ('liver', 152314, 1480.2)
"""

from __future__ import annotations

import logging
import math
from typing import Any, Dict, Hashable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform

from xattnres_monai.metrics.segmentation import SYNAPSE_ORGANS
from xattnres_monai.utils.files import as_bool, write_csv_atomic, write_json_atomic

__all__ = [
    "ORGAN_COLUMNS",
    "OrganReportd",
    "class_name_map",
    "label_affine",
    "organ_table",
    "sibling_path",
    "voxel_volume_mm3",
]

logger = logging.getLogger(__name__)

#: the columns of the organ CSV, in order.
ORGAN_COLUMNS = ("class", "name", "voxels", "volume_ml", "mean_hu")
ClassNames = Union[Sequence[str], Mapping[Any, str], None]


def class_name_map(num_classes: Optional[int] = None, class_names: ClassNames = None) -> Dict[int, str]:
    """Foreground class id -> name.

    Args:
        num_classes: classes including background; with ``class_names`` unset, 9 gives the Synapse organs
            (:data:`~xattnres_monai.metrics.segmentation.SYNAPSE_ORGANS`) and any other number ``class<i>``.
        class_names: a list naming every class, background first, or a mapping ``{class id: name}`` (keys may be
            strings, as in JSON configs). Takes precedence over ``num_classes``.

    Example::

        >>> class_name_map(3, ["background", "liver", "tumour"])
        {1: 'liver', 2: 'tumour'}
    """
    if class_names is not None:
        if isinstance(class_names, Mapping):
            names = {int(k): str(v) for k, v in class_names.items() if int(k) != 0}
        elif isinstance(class_names, str):
            raise ValueError(f"class_names must be a list (background first) or a mapping, got {class_names!r}.")
        else:
            names = {i: str(n) for i, n in enumerate(class_names) if i != 0}
        if num_classes is not None and names and max(names) >= int(num_classes):
            raise ValueError(f"class_names name class {max(names)}, beyond num_classes={num_classes}.")
        return names
    if num_classes is None:
        raise ValueError("give num_classes or class_names.")
    if int(num_classes) == len(SYNAPSE_ORGANS) + 1:
        return dict(SYNAPSE_ORGANS)
    return {i: f"class{i}" for i in range(1, int(num_classes))}


def label_affine(label: Any, meta: Optional[Mapping[str, Any]] = None) -> np.ndarray:
    """The affine of a label map: its ``MetaTensor`` affine, else ``meta["affine"]``; a ``ValueError`` without."""
    affine = label.affine if isinstance(label, MetaTensor) else (meta or {}).get("affine")
    if affine is None:
        raise ValueError("the label map carries no affine (expected a MetaTensor or a meta dict with 'affine').")
    return np.asarray(affine.detach().cpu() if isinstance(affine, torch.Tensor) else affine, dtype=np.float64)


def voxel_volume_mm3(affine: Any, spatial_dims: int = 3) -> float:
    """``|det|`` of the affine's spatial block: the voxel volume in mm^3 (3D) or the pixel area in mm^2 (2D).

    Example::

        >>> voxel_volume_mm3(np.diag([0.8, 0.8, 2.5, 1.0]))
        1.6
    """
    a = np.asarray(affine, dtype=np.float64)
    return float(abs(np.linalg.det(a[:spatial_dims, :spatial_dims])))


def _flat_labels(label: Any) -> torch.Tensor:
    t = label.as_tensor() if isinstance(label, MetaTensor) else torch.as_tensor(np.asarray(label))
    t = t.detach().cpu()
    if t.ndim == 4:
        if t.shape[0] != 1:
            raise ValueError(f"expected a label map (1, x, y, z), got {t.shape[0]} channels (apply AsDiscreted).")
        t = t[0]
    if t.ndim != 3:
        raise ValueError(f"expected a 3D label map, got shape {tuple(t.shape)}.")
    return t.reshape(-1)


#: voxels per chunk of the counting passes: whole-volume integer copies are avoided (a 512 x 512 x 600 int64 copy
#: of a label map would take 1.2 GB).
_CHUNK = 1 << 24


def organ_table(
    label: Any,
    affine: Any,
    image: Any = None,
    num_classes: Optional[int] = None,
    class_names: ClassNames = None,
) -> List[Dict[str, Any]]:
    """Voxel count, volume (mL) and mean image value inside every foreground class of a 3D label map.

    Args:
        label: class ids, ``(x, y, z)`` or ``(1, x, y, z)``, on the scan's grid.
        affine: the label map's affine (mm); the voxel volume is ``|det|`` of its 3 x 3 part.
        image: the original image on the same grid (``(x, y, z)`` or ``(1, x, y, z)``), e.g. CT in HU; ``None``:
            no ``mean_hu`` (empty).
        num_classes: classes including background (default: from ``class_names``, else the largest label + 1).
        class_names: see :func:`class_name_map`.

    Returns:
        one row per foreground class (absent classes too, with 0 voxels): ``class, name, voxels, volume_ml,
        mean_hu`` (``mean_hu`` is ``None`` for an absent class or without ``image``).

    Example::

        >>> organ_table(label, np.diag([0.8, 0.8, 2.5, 1]), image=hu, num_classes=9)[5]["name"]
        'liver'
    """
    flat = _flat_labels(label)
    low, high = (int(round(float(v))) for v in torch.aminmax(flat)) if flat.numel() else (0, 0)
    if low < 0:
        raise ValueError("label map holds negative values.")
    if num_classes is None and class_names is None:
        num_classes = high + 1
    names = class_name_map(num_classes, class_names)
    n_bins = max(high, max(names, default=0)) + 1
    values = None
    if image is not None:
        values = image.as_tensor() if isinstance(image, MetaTensor) else torch.as_tensor(np.asarray(image))
        values = values.detach().cpu().reshape(-1)
        if values.numel() != flat.numel():
            raise ValueError(f"the image has {values.numel()} voxels, the label map {flat.numel()}: not one grid.")
    counts = torch.zeros(n_bins, dtype=torch.int64)
    sums = None if values is None else torch.zeros(n_bins, dtype=torch.float64)
    for start in range(0, flat.numel(), _CHUNK):
        ids = flat[start : start + _CHUNK].round().long()
        counts += torch.bincount(ids, minlength=n_bins)
        if sums is not None and values is not None:
            sums += torch.bincount(ids, weights=values[start : start + _CHUNK].double(), minlength=n_bins)
    voxel_ml = voxel_volume_mm3(affine) / 1000.0
    rows = []
    for cls, name in sorted(names.items()):
        voxels = int(counts[cls])
        mean = float(sums[cls]) / voxels if sums is not None and voxels else None
        rows.append({"class": cls, "name": name, "voxels": voxels, "volume_ml": voxels * voxel_ml, "mean_hu": mean})
    unnamed = [c for c in range(1, n_bins) if c not in names and int(counts[c])]
    if unnamed:
        logger.warning(f"label values {unnamed} have no class name: left out of the organ report")
    return rows


def sibling_path(mask_path: str, suffix: str, postfix: str = "seg") -> str:
    """The path of a file written beside a mask: the mask's name without ``.nii(.gz)`` and ``_<postfix>``, plus
    ``suffix``.

    Args:
        mask_path: the mask file (``InferenceInputs``' ``<name>_<postfix>.nii.gz``).
        suffix: the new ending, e.g. ``"_organs.csv"``.
        postfix: the mask's postfix (``InferenceInputs``' ``postfix``), removed when present.

    Example::

        >>> sibling_path("out/patient1_seg.nii.gz", "_prob.nii.gz")
        'out/patient1_prob.nii.gz'
    """
    path = str(mask_path)
    for ending in (".nii.gz", ".nii"):
        if path.endswith(ending):
            path = path[: -len(ending)]
            break
    if postfix and path.endswith(f"_{postfix}"):
        path = path[: -len(postfix) - 1]
    result = path + suffix
    if result == str(mask_path):
        raise ValueError(f"suffix {suffix!r} gives the mask's own path {mask_path}.")
    return result


def _json_number(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


class OrganReportd(MapTransform):
    """Write the organ report of one scan next to its mask: ``<scan>_organs.csv`` and ``<scan>_organs.json``.

    For the label map of ``keys`` (class ids ``(1, x, y, z)`` on the scan's grid, after ``Invertd`` and
    ``AsDiscreted(argmax=True)``): per class its voxel count, volume in mL (voxel count x voxel volume from the
    label map's affine) and mean HU of the original image (``image_key``: the image as loaded, kept by
    ``LoadVolumed(keep_original="image")`` as ``image_original``). The JSON also holds the scan, the mask, the
    spacing and the post-processing steps (``data[steps_key]``). Both files are written atomically; the rows are
    also stored in ``data[organs_key]`` (for the cohort table) and the paths in ``data["outputs"]``.

    Args:
        keys: the label map key.
        output_key: item key holding the mask path; the reports are named after it (:func:`sibling_path`).
        image_key: key of the original image (``None``: no mean HU). A missing key is an error unless ``None``.
        num_classes: classes including background (9: the Synapse organ names).
        class_names: see :func:`class_name_map`.
        suffix: the reports' ending before ``.csv`` / ``.json``.
        postfix: the mask's postfix, see :func:`sibling_path`.
        steps_key: where the post-processing steps are recorded.
        organs_key: where the rows are stored in the item.
        overwrite: replace existing reports.
        failures: a list collecting ``(path, reason)`` of failed writes instead of raising (the bundle's
            ``@inputs.failures``).

    Example (``inference.json``, after the writer)::

        {"_target_": "xattnres_monai.metrics.organ_report.OrganReportd", "keys": "pred",
         "image_key": "original_image", "num_classes": "@num_classes", "failures": "$@inputs.failures"}
    """

    def __init__(
        self,
        keys: KeysCollection = "pred",
        output_key: str = "output",
        image_key: Optional[str] = "original_image",
        num_classes: Optional[int] = None,
        class_names: ClassNames = None,
        suffix: str = "_organs",
        postfix: str = "seg",
        steps_key: str = "postprocessing",
        organs_key: str = "organs",
        overwrite: bool = False,
        failures: Optional[List[Tuple[str, str]]] = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.output_key = output_key
        self.image_key = image_key
        self.num_classes = None if num_classes is None else int(num_classes)
        self.class_names = class_names
        self.suffix = suffix
        self.postfix = postfix
        self.steps_key = steps_key
        self.organs_key = organs_key
        self.overwrite = as_bool(overwrite, "OrganReportd: overwrite")
        self.failures = failures

    def __call__(self, data: Mapping[Hashable, Any]) -> Dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            label = d[key]
            affine = label_affine(label, d.get(f"{key}_meta_dict"))
            image = None
            if self.image_key is not None:
                if self.image_key not in d:
                    raise KeyError(f"OrganReportd: no {self.image_key!r} in the item (LoadVolumed(keep_original=...))")
                image = d[self.image_key]
            rows = organ_table(label, affine, image, self.num_classes, self.class_names)
            d[self.organs_key] = rows
            mask = str(d[self.output_key])
            csv_path = sibling_path(mask, f"{self.suffix}.csv", self.postfix)
            json_path = sibling_path(mask, f"{self.suffix}.json", self.postfix)
            spacing = np.sqrt((affine[:3, :3] ** 2).sum(axis=0)).tolist()
            source = getattr(image, "meta", {}).get("filename_or_obj") if image is not None else None
            report = {
                "scan": str(source) if source else None,
                "mask": mask,
                "spacing_mm": spacing,
                "voxel_volume_ml": voxel_volume_mm3(affine) / 1000.0,
                "postprocessing": list(d.get(self.steps_key, [])),
                "organs": [{k: _json_number(v) for k, v in row.items()} for row in rows],
            }
            try:
                write_csv_atomic(csv_path, rows, fieldnames=ORGAN_COLUMNS, overwrite=self.overwrite)
                write_json_atomic(json_path, report, overwrite=self.overwrite, allow_nan=False)
            except OSError as err:
                if self.failures is None:
                    raise
                path = err.filename or csv_path
                reason = f"cannot write the organ report ({type(err).__name__}: {err.strerror or err})"
                self.failures.append((str(path), reason))
                logger.error(f"{path}: {reason}")
                continue
            d.setdefault("outputs", {})
            d["outputs"] = {**d["outputs"], "organ_csv": csv_path, "organ_json": json_path}
        return d
