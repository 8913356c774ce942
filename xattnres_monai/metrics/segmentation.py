"""Per-case, per-organ Dice, HD95 and IoU on 3D label volumes, and Table-1 style summaries.

Two conventions are offered, and every output names the one used:

``"literature"`` reproduces the evaluation code of TransUNet (``utils.calculate_metric_percase``, copied by
Swin-UNet, CASCADE, EMCAD and the XAttnRes paper), so that numbers can be compared with published tables:

- HD95 in **voxel units** (the volume spacing is ignored), computed like ``medpy.metric.binary.hd95``: the 95th
  percentile of the *pooled* surface distances of both directions (edges by a 6-connected erosion, exact Euclidean
  distances; here through :func:`monai.metrics.utils.get_edge_surface_distance`).
- organ present in both: Dice, IoU and HD95 as computed.
- missed organ (prediction empty, ground truth not): Dice 0, IoU 0, **HD95 0** (optimistic: a miss lowers the
  mean HD95).
- false positive on an absent organ (prediction not empty, ground truth empty): **Dice 1, IoU 1, HD95 0**
  (optimistic).
- organ absent from both: Dice 0, IoU 0, HD95 0 -- this is what the reference code does (its ``else`` branch
  handles "prediction empty" whatever the ground truth), so a correctly absent organ is scored as a miss.

``"physical"`` is the physically meaningful variant:

- HD95 in **millimetres** using the voxel spacing, with MONAI's definition
  (:func:`monai.metrics.compute_hausdorff_distance` with ``percentile=95``: the larger of the two directed 95th
  percentiles).
- missed organ: Dice 0, IoU 0, HD95 ``inf``; false positive on an absent organ: Dice 0, IoU 0, HD95 ``inf``.
- organ absent from both: Dice, IoU and HD95 ``NaN``, flagged ``"absent"`` and excluded from every mean.

Means are taken over cases first (ignoring ``NaN``), then over organs (again ignoring ``NaN``); a single ``inf``
makes a physical HD95 mean ``inf``, which is reported as such. Each row also carries a status per organ (``ok``,
``missed``, ``false_positive``, ``absent``) and the summaries count them.
"""

from __future__ import annotations

import math
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from monai.metrics import compute_dice, compute_hausdorff_distance, compute_iou
from monai.metrics.utils import get_edge_surface_distance
from monai.utils import convert_to_numpy

from xattnres_monai.utils.files import atomic_write, check_writable, write_csv_atomic

__all__ = [
    "CONVENTIONS",
    "HD95_UNITS",
    "STATUSES",
    "SYNAPSE_ORGANS",
    "class_names_for",
    "TABLE1_COLUMNS",
    "TABLE1_ORGANS",
    "evaluate_case",
    "format_markdown",
    "summarize",
    "write_reports",
]

CONVENTIONS = ("literature", "physical")
HD95_UNITS = {"literature": "voxel", "physical": "mm"}
STATUSES = ("ok", "missed", "false_positive", "absent")

#: Synapse 9-class ids -> organ names (the class ids of TransUNet's preprocessed data).
SYNAPSE_ORGANS: Dict[int, str] = {
    1: "spleen",
    2: "right_kidney",
    3: "left_kidney",
    4: "gallbladder",
    5: "pancreas",
    6: "liver",
    7: "stomach",
    8: "aorta",
}
#: Organ columns of Table 1 (Dice %), in the paper's order -> organ names.
TABLE1_ORGANS: Dict[str, str] = {
    "Aorta": "aorta",
    "GB": "gallbladder",
    "KL": "left_kidney",
    "KR": "right_kidney",
    "Liver": "liver",
    "PC": "pancreas",
    "Spleen": "spleen",
    "SM": "stomach",
}
TABLE1_COLUMNS: Tuple[str, ...] = ("DSC", "HD95", "mIoU", *TABLE1_ORGANS)

Array = Union[np.ndarray, torch.Tensor]


def class_names_for(num_classes: int, class_names: Optional[Sequence[str]] = None) -> List[str]:
    """Every class's name, background first: ``class_names`` when given, else the Synapse organs for 9 classes and
    ``class<i>`` otherwise (what reports, figures and DICOM-SEG segment labels show).

    Example::

        >>> class_names_for(3)
        ['background', 'class1', 'class2']
    """
    names = _class_names(int(num_classes), class_names)
    return ["background"] + [names[i] for i in range(1, int(num_classes))]


def _class_names(num_classes: int, class_names: Optional[Sequence[str]] = None) -> Dict[int, str]:
    """Foreground class id -> name: ``class_names[i]`` when given (``class_names[0]`` is the background), else the
    Synapse organs for 9 classes and ``class<i>`` otherwise."""
    if class_names is not None:
        names = [str(n) for n in class_names]
        if len(names) != num_classes or len(set(names)) != num_classes:
            raise ValueError(f"class_names must be {num_classes} distinct names (background first), got {names}.")
        return {i: names[i] for i in range(1, num_classes)}
    if num_classes == len(SYNAPSE_ORGANS) + 1:
        return dict(SYNAPSE_ORGANS)
    return {i: f"class{i}" for i in range(1, num_classes)}


def _crop_to_union(pred: np.ndarray, gt: np.ndarray, margin: int = 1) -> Tuple[np.ndarray, np.ndarray]:
    """Crop two same-shape boolean masks to the bounding box of their union (plus ``margin``); speeds up all metrics
    without changing them (edges at the volume border are kept as MONAI pads with background)."""
    union = pred | gt
    slices = []
    for axis in range(union.ndim):
        other = tuple(a for a in range(union.ndim) if a != axis)
        idx = np.flatnonzero(union.any(axis=other))
        slices.append(slice(max(int(idx[0]) - margin, 0), int(idx[-1]) + margin + 1))
    return pred[tuple(slices)], gt[tuple(slices)]


def _as_batch(mask: np.ndarray) -> torch.Tensor:
    """A binary mask as a one-channel batch ``(1, 1, *spatial)`` for MONAI's metric functions."""
    return torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float64))[None, None]


@contextmanager
def _quiet_monai() -> Iterator[None]:
    """Silence MONAI's internal deprecation notice (``get_mask_edges(always_return_as_numpy=...)``, MONAI 1.5-1.6)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        yield


def _hd95_pooled(pred: np.ndarray, gt: np.ndarray) -> float:
    """HD95 in voxels as ``medpy.metric.binary.hd95``: 95th percentile of both directions' distances pooled."""
    with _quiet_monai():
        _, distances, _ = get_edge_surface_distance(
            torch.from_numpy(pred), torch.from_numpy(gt), distance_metric="euclidean", spacing=None, symmetric=True
        )
    pooled = np.concatenate([convert_to_numpy(d).ravel() for d in distances])
    return float(np.percentile(pooled, 95))


def _organ_scores(
    pred: np.ndarray, gt: np.ndarray, spacing: Optional[Sequence[float]], convention: str
) -> Tuple[float, float, float, str]:
    """Dice, HD95, IoU and status of one organ given its two boolean masks."""
    has_pred, has_gt = bool(pred.any()), bool(gt.any())
    if has_pred and has_gt:
        pred, gt = _crop_to_union(pred, gt)
        y_pred, y = _as_batch(pred), _as_batch(gt)
        dice = float(compute_dice(y_pred, y, include_background=True, ignore_empty=False)[0, 0])
        iou = float(compute_iou(y_pred, y, include_background=True, ignore_empty=False)[0, 0])
        if convention == "literature":
            hd95 = _hd95_pooled(pred, gt)
        else:
            with _quiet_monai():
                hd = compute_hausdorff_distance(y_pred, y, include_background=True, percentile=95, spacing=spacing)
            hd95 = float(hd[0, 0])
        return dice, hd95, iou, "ok"
    if convention == "literature":
        if has_pred:  # false positive on an absent organ
            return 1.0, 0.0, 1.0, "false_positive"
        return 0.0, 0.0, 0.0, "missed" if has_gt else "absent"
    if has_pred or has_gt:
        return 0.0, math.inf, 0.0, "missed" if has_gt else "false_positive"
    return math.nan, math.nan, math.nan, "absent"


def evaluate_case(
    pred: Array,
    label: Array,
    spacing: Optional[Sequence[float]] = None,
    num_classes: int = 9,
    convention: str = "literature",
    case: Optional[str] = None,
    class_names: Optional[Sequence[str]] = None,
) -> Dict[str, Any]:
    """Dice, HD95 and IoU of every foreground class of one case.

    Args:
        pred: predicted class ids, spatial shape only (e.g. ``(H, W, D)``), numpy array or tensor.
        label: ground-truth class ids, same shape.
        spacing: voxel spacing in mm per spatial axis; required by ``"physical"``, ignored by ``"literature"``
            (whose HD95 is in voxels).
        num_classes: number of classes including background; classes ``1..num_classes-1`` are evaluated and named
            after the Synapse organs when ``num_classes == 9`` (``class<i>`` otherwise).
        convention: ``"literature"`` or ``"physical"`` (see the module docstring for the handling of empty organs).
        case: case identifier stored in the row.
        class_names: the name of every class, background first (e.g. a prepared dataset's own class list).

    Returns:
        A flat row: ``case``, ``convention``, then ``dice_<organ>``, ``hd95_<organ>``, ``iou_<organ>`` for every
        organ (Dice and IoU as fractions in [0, 1]), then ``status_<organ>`` (one of :data:`STATUSES`).

    Example::

        >>> row = evaluate_case(pred, label, spacing=(0.8, 0.8, 2.5), convention="physical", case="0001")
        >>> row["dice_liver"], row["hd95_liver"], row["status_gallbladder"]
        (0.95, 3.2, 'ok')
    """
    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {CONVENTIONS}, got {convention!r}.")
    pred_np, label_np = convert_to_numpy(pred), convert_to_numpy(label)
    if pred_np.shape != label_np.shape:
        raise ValueError(f"pred and label must have the same shape, got {pred_np.shape} and {label_np.shape}.")
    if convention == "physical":
        if spacing is None:
            raise ValueError("the 'physical' convention needs the voxel spacing (mm per axis).")
        spacing = [float(s) for s in spacing]
        if len(spacing) != pred_np.ndim:
            raise ValueError(f"spacing needs {pred_np.ndim} values (one per spatial axis), got {len(spacing)}.")
    names = _class_names(num_classes, class_names)
    row: Dict[str, Any] = {"case": case, "convention": convention}
    statuses = {}
    for index, name in names.items():
        dice, hd95, iou, status = _organ_scores(pred_np == index, label_np == index, spacing, convention)
        row.update({f"dice_{name}": dice, f"hd95_{name}": hd95, f"iou_{name}": iou})
        statuses[f"status_{name}"] = status
    row.update(statuses)
    return row


def _organ_names(row: Mapping[str, Any]) -> List[str]:
    """Organ names of a row from :func:`evaluate_case`, in order."""
    return [key[len("dice_") :] for key in row if key.startswith("dice_")]


def _mean(values: Sequence[float]) -> float:
    """Mean ignoring NaN (``inf`` propagates); NaN when nothing is left."""
    kept = [float(v) for v in values if not math.isnan(float(v))]
    return float(np.mean(kept)) if kept else math.nan


def summarize(rows: Sequence[Mapping[str, Any]]) -> Dict[str, Any]:
    """Table-1 summary of the rows of one convention: mean over cases per organ, then over organs.

    Args:
        rows: rows from :func:`evaluate_case`, all of the same convention and classes.

    Returns:
        A dict with ``convention``, ``cases``, ``hd95_unit``, then the Table-1 columns ``DSC`` (%), ``HD95``
        (voxels or mm), ``mIoU`` (%) and, for Synapse, one column per organ with its mean Dice in %: ``Aorta, GB,
        KL, KR, Liver, PC, Spleen, SM`` (other class sets: one column per class name); then ``per_organ``: organ
        -> ``{"dice", "hd95", "iou"}`` (case means, fractions for Dice/IoU) and ``counts``: organ -> number of
        cases per status.

    Example::

        >>> summary = summarize([evaluate_case(p, y, convention="literature", case=c) for c, p, y in cases])
        >>> [summary[k] for k in ("DSC", "HD95", "mIoU", "Liver")]
        [76.4, 26.71, 66.17, 94.96]
    """
    if not rows:
        raise ValueError("summarize needs at least one row.")
    conventions = {row["convention"] for row in rows}
    if len(conventions) != 1:
        raise ValueError(f"rows mix conventions {sorted(conventions)}; summarise each convention separately.")
    convention = conventions.pop()
    names = _organ_names(rows[0])
    per_organ = {
        name: {metric: _mean([row[f"{metric}_{name}"] for row in rows]) for metric in ("dice", "hd95", "iou")}
        for name in names
    }
    counts = {
        name: {status: sum(row[f"status_{name}"] == status for row in rows) for status in STATUSES} for name in names
    }
    summary: Dict[str, Any] = {"convention": convention, "cases": len(rows), "hd95_unit": HD95_UNITS[convention]}
    summary["DSC"] = 100.0 * _mean([per_organ[n]["dice"] for n in names])
    summary["HD95"] = _mean([per_organ[n]["hd95"] for n in names])
    summary["mIoU"] = 100.0 * _mean([per_organ[n]["iou"] for n in names])
    columns = TABLE1_ORGANS if set(names) == set(TABLE1_ORGANS.values()) else {n: n for n in names}
    for column, name in columns.items():
        summary[column] = 100.0 * per_organ[name]["dice"]
    summary["per_organ"] = per_organ
    summary["counts"] = counts
    return summary


def _table_columns(summary: Mapping[str, Any]) -> List[str]:
    """The Table-1 columns of a summary (everything between ``hd95_unit`` and ``per_organ``)."""
    skip = {"convention", "cases", "hd95_unit", "per_organ", "counts"}
    return [key for key in summary if key not in skip]


def _fmt(value: float) -> str:
    return "nan" if math.isnan(value) else ("inf" if math.isinf(value) else f"{value:.2f}")


def format_markdown(summaries: Sequence[Mapping[str, Any]]) -> str:
    """Markdown report: the Table-1 layout (one line per convention) and the per-organ outcome counts.

    Args:
        summaries: outputs of :func:`summarize`, one per convention.

    Example::

        >>> print(format_markdown([summarize(literature_rows), summarize(physical_rows)]))
    """
    columns = _table_columns(summaries[0])
    lines = [
        "| Convention | Cases | HD95 unit | " + " | ".join(columns) + " |",
        "|---|---|---|" + "---|" * len(columns),
    ]
    for s in summaries:
        values = " | ".join(_fmt(s[c]) for c in columns)
        lines.append(f"| {s['convention']} | {s['cases']} | {s['hd95_unit']} | {values} |")
    names = list(summaries[0]["counts"])
    lines += ["", "Cases per organ that were missed, false positives on an absent organ, or absent from both:", ""]
    lines += ["| Convention | Outcome | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for s in summaries:
        for status in STATUSES[1:]:
            counts = " | ".join(str(s["counts"][n][status]) for n in names)
            lines.append(f"| {s['convention']} | {status} | {counts} |")
    lines += [
        "",
        "DSC, mIoU and organ columns: Dice / IoU in %, mean over cases then over organs.",
        "literature: HD95 in voxels (medpy-style pooled 95th percentile); missed organ Dice 0 / HD95 0, false positive"
        " on an absent organ Dice 1 / HD95 0, organ absent from both Dice 0 / HD95 0 (as the TransUNet/EMCAD code).",
        "physical: HD95 in mm (MONAI, max of directed 95th percentiles); missed organ or false positive Dice 0 /"
        " HD95 inf; organ absent from both excluded (NaN).",
    ]
    return "\n".join(lines) + "\n"


def write_reports(
    rows: Sequence[Mapping[str, Any]], output_dir: Union[str, Path], overwrite: bool = False
) -> Dict[str, Path]:
    """Write ``per_case_<convention>.csv`` for each convention in ``rows``, ``summary.csv`` and ``summary.md``.

    All files are checked first (nothing is written if one exists and ``overwrite`` is False), then written
    atomically.

    Args:
        rows: rows from :func:`evaluate_case`, of one or both conventions.
        output_dir: destination folder (created if needed).
        overwrite: replace existing reports.

    Returns:
        File key (``per_case_<convention>``, ``summary_csv``, ``summary_md``) -> path.

    Example::

        >>> rows = [evaluate_case(p, y, s, convention=c, case=k) for k, p, y, s in cases for c in CONVENTIONS]
        >>> write_reports(rows, "runs/eval")["summary_md"]
        PosixPath('runs/eval/summary.md')
    """
    if not rows:
        raise ValueError("write_reports needs at least one row.")
    output_dir = Path(output_dir)
    by_convention: Dict[str, List[Mapping[str, Any]]] = {}
    for row in rows:
        by_convention.setdefault(row["convention"], []).append(row)
    paths = {f"per_case_{c}": output_dir / f"per_case_{c}.csv" for c in by_convention}
    paths.update(summary_csv=output_dir / "summary.csv", summary_md=output_dir / "summary.md")
    check_writable(paths.values(), overwrite=overwrite)
    summaries = [summarize(group) for group in by_convention.values()]
    for convention, group in by_convention.items():
        per_case = [{k: v for k, v in row.items() if k != "convention"} for row in group]
        write_csv_atomic(paths[f"per_case_{convention}"], per_case, overwrite=overwrite)
    summary_rows = []
    for s in summaries:
        flat = {k: s[k] for k in ("convention", "cases", "hd95_unit", *_table_columns(s))}
        flat.update({status: sum(c[status] for c in s["counts"].values()) for status in STATUSES[1:]})
        summary_rows.append(flat)
    write_csv_atomic(paths["summary_csv"], summary_rows, overwrite=overwrite)
    with atomic_write(paths["summary_md"], overwrite=overwrite) as tmp:
        tmp.write_text(format_markdown(summaries), encoding="utf-8")
    return paths
