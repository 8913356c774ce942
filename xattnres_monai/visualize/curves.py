"""Training curves in one picture, like nnU-Net's ``progress.png``, and the same numbers as a CSV file.

A run's history is a list of rows, one per epoch, with the columns (:data:`BASE_COLUMNS`, any may be missing):

- ``epoch`` (1-based), ``train_loss`` (mean over the epoch's iterations), ``lr`` (first parameter group, at the
  start of the epoch), ``epoch_time_s`` (training iterations of the epoch), ``val_time_s`` (the validation run),
  ``val_mean_dice``;
- ``val_dice/<class name>``: per-class validation Dice;
- ``<series>/<key>``: any other series (e.g. ``routing_entropy/block1``), one panel per series name.

The picture (:func:`training_curves_figure`) is ``CURVES_WIDTH`` x ``CURVES_HEIGHT`` = 1600 x 1200 pixels, a grid
of two columns of panels: training loss (log scale when it spans more than a factor 10), validation Dice (mean in
black, classes in their palette colours, with a legend), learning rate (log scale likewise), epoch time, then one
panel per extra series. Validation values are plotted only at the epochs that have them.
"""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from xattnres_monai.utils.files import InputError, write_csv_atomic
from xattnres_monai.visualize.palette import default_colour
from xattnres_monai.visualize.scan_figure import write_png

__all__ = [
    "BASE_COLUMNS",
    "CURVES_HEIGHT",
    "CURVES_WIDTH",
    "PER_CLASS_PREFIX",
    "curve_columns",
    "read_curves_csv",
    "save_training_curves",
    "training_curves_figure",
    "write_curves_csv",
]

PathLike = Union[str, "os.PathLike[str]"]
Row = Mapping[str, float]

#: size of the training-curve picture in pixels.
CURVES_WIDTH, CURVES_HEIGHT = 1600, 1200
#: the columns every history may have, in CSV order.
BASE_COLUMNS = ("epoch", "train_loss", "lr", "epoch_time_s", "val_time_s", "val_mean_dice")
#: prefix of the per-class validation Dice columns.
PER_CLASS_PREFIX = "val_dice/"
_DPI = 100


def _finite(value: object) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def curve_columns(rows: Sequence[Row]) -> List[str]:
    """The CSV columns of ``rows``: :data:`BASE_COLUMNS` present in any row, then the others in order of appearance.

    Example::

        >>> curve_columns([{"epoch": 1, "val_dice/liver": 0.9, "train_loss": 0.5}])
        ['epoch', 'train_loss', 'val_dice/liver']
    """
    seen: Dict[str, None] = {}
    for row in rows:
        seen.update(dict.fromkeys(row))
    return [c for c in BASE_COLUMNS if c in seen] + [c for c in seen if c not in BASE_COLUMNS]


def write_curves_csv(path: PathLike, rows: Sequence[Row], overwrite: bool = True) -> Path:
    """Write the history as CSV (one row per epoch, missing or non-finite values empty), atomically.

    Example::

        >>> write_curves_csv("runs/progress.csv", [{"epoch": 1, "train_loss": 0.8}])
        PosixPath('runs/progress.csv')
    """
    clean = [{k: (int(v) if k == "epoch" else v) for k, v in row.items() if _finite(v)} for row in rows]
    return write_csv_atomic(path, clean, fieldnames=curve_columns(rows) or ["epoch"], overwrite=overwrite)


def read_curves_csv(path: PathLike) -> List[Dict[str, float]]:
    """Read back a history written by :func:`write_curves_csv` (empty cells are left out of the rows).

    Raises:
        InputError: a missing or unreadable file, no ``epoch`` column, or values that are not numbers.

    Example::

        >>> read_curves_csv("runs/progress.csv")[0]["epoch"]
        1
    """
    path = Path(path)
    try:
        with open(path, encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f)
            if reader.fieldnames is None or "epoch" not in reader.fieldnames:
                raise InputError(path, "not a training-curve CSV (no 'epoch' column)")
            rows = []
            for line, raw in enumerate(reader, start=2):
                try:
                    row = {k: float(v) for k, v in raw.items() if k is not None and v not in (None, "")}
                    row["epoch"] = int(row["epoch"])
                except (KeyError, ValueError):
                    raise InputError(path, f"line {line}: expected numbers and an epoch, got {dict(raw)}") from None
                rows.append(row)
    except OSError as err:
        raise InputError(path, f"cannot read training curves ({err.strerror or err})") from None
    return rows


def _series(rows: Sequence[Row], column: str) -> Tuple[np.ndarray, np.ndarray]:
    """The epochs and values of the rows where ``column`` is finite."""
    points = [(float(r["epoch"]), float(r[column])) for r in rows if _finite(r.get(column)) and _finite(r.get("epoch"))]
    if not points:
        return np.empty(0), np.empty(0)
    return np.array([p[0] for p in points]), np.array([p[1] for p in points])


def _log_if_wide(ax: object, values: Sequence[np.ndarray]) -> None:
    """Log y scale when every value is positive and they span more than a factor 10."""
    joined = np.concatenate([v for v in values if v.size]) if any(v.size for v in values) else np.empty(0)
    if joined.size and joined.min() > 0 and joined.max() / joined.min() > 10:
        ax.set_yscale("log")  # type: ignore[attr-defined]


def _class_colour(index: int, name: str, class_names: Optional[Sequence[str]]) -> Tuple[float, float, float]:
    """The palette colour of a per-class column: its class index in ``class_names``, else ``index + 1``."""
    names = list(class_names or [])
    rgb = default_colour(names.index(name) if name in names else index + 1)
    return rgb[0] / 255.0, rgb[1] / 255.0, rgb[2] / 255.0


def _plot(ax: object, rows: Sequence[Row], columns: Sequence[Tuple[str, str, Dict[str, object]]]) -> List[np.ndarray]:
    """Plot ``(column, legend label, style)`` series on ``ax``; returns the values plotted."""
    plotted = []
    for column, label, style in columns:
        x, y = _series(rows, column)
        if y.size:
            ax.plot(x, y, label=label, marker="o" if y.size < 30 else None, markersize=3, **style)  # type: ignore
        plotted.append(y)
    return plotted


def training_curves_figure(
    rows: Sequence[Row], class_names: Optional[Sequence[str]] = None, title: Optional[str] = None
) -> np.ndarray:
    """The training-curve picture of a history (see the module docstring), ``(1200, 1600, 3)`` uint8.

    Args:
        rows: one mapping per epoch (columns as in the module docstring).
        class_names: names by class index (0 = background): gives each ``val_dice/<name>`` curve the colour its
            class has in the scan figures.
        title: the figure's title.

    Example::

        >>> rgb = training_curves_figure([{"epoch": 1, "train_loss": 0.9, "val_mean_dice": 0.4}])
        >>> rgb.shape
        (1200, 1600, 3)
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = sorted(rows, key=lambda r: float(r.get("epoch", 0)))
    columns = curve_columns(rows)
    per_class = [c for c in columns if c.startswith(PER_CLASS_PREFIX)]
    extras: Dict[str, List[str]] = {}
    for c in columns:
        if "/" in c and not c.startswith(PER_CLASS_PREFIX):
            extras.setdefault(c.split("/", 1)[0], []).append(c)
    n_panels = 4 + len(extras)
    fig = Figure(figsize=((CURVES_WIDTH + 1e-3) / _DPI, (CURVES_HEIGHT + 1e-3) / _DPI), dpi=_DPI)
    canvas = FigureCanvasAgg(fig)
    axes = fig.subplots(int(math.ceil(n_panels / 2)), 2, squeeze=False).ravel()
    if title:
        fig.suptitle(title, fontsize=14)

    ax = axes[0]
    _log_if_wide(ax, _plot(ax, rows, [("train_loss", "training loss", {"color": "tab:blue"})]))
    ax.set_title("training loss (mean over the epoch)")

    ax = axes[1]
    styles = [("val_mean_dice", "mean", {"color": "black", "linewidth": 2.5})]
    styles += [(c, c[len(PER_CLASS_PREFIX):], {"color": _class_colour(i, c[len(PER_CLASS_PREFIX):], class_names),
                                                "linewidth": 1.2}) for i, c in enumerate(per_class)]  # fmt: skip
    _plot(ax, rows, styles)
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("validation Dice")

    ax = axes[2]
    _log_if_wide(ax, _plot(ax, rows, [("lr", "learning rate", {"color": "tab:green"})]))
    ax.set_title("learning rate (start of epoch)")

    ax = axes[3]
    _plot(ax, rows, [("epoch_time_s", "training", {"color": "tab:purple"}),
                     ("val_time_s", "validation", {"color": "tab:orange"})])  # fmt: skip
    ax.set_title("time per epoch (s)")

    for ax, (name, series) in zip(axes[4:], extras.items()):
        _plot(ax, rows, [(c, c.split("/", 1)[1], {"linewidth": 1.2}) for c in series])
        ax.set_title(name)
    for ax in axes[:n_panels]:
        ax.set_xlabel("epoch")
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, loc="best", ncol=2 if len(ax.get_legend_handles_labels()[0]) > 8 else 1)
        else:
            ax.text(0.5, 0.5, "no data yet", ha="center", va="center", transform=ax.transAxes, color="grey")
    for ax in axes[n_panels:]:
        ax.set_visible(False)
    fig.subplots_adjust(left=0.06, right=0.98, bottom=0.05, top=0.93 if title else 0.96, wspace=0.15, hspace=0.3)
    canvas.draw()
    rgba = np.asarray(canvas.buffer_rgba())
    if rgba.shape[:2] != (CURVES_HEIGHT, CURVES_WIDTH):
        expected = f"{CURVES_WIDTH}x{CURVES_HEIGHT}"
        raise RuntimeError(f"curves rendered at {rgba.shape[1]}x{rgba.shape[0]}, expected {expected}")
    return np.ascontiguousarray(rgba[..., :3])


def save_training_curves(
    path: PathLike,
    rows: Sequence[Row],
    class_names: Optional[Sequence[str]] = None,
    title: Optional[str] = None,
    overwrite: bool = True,
) -> Path:
    """:func:`training_curves_figure` written to ``path`` as a PNG, atomically (a reader never sees a partial file).

    Example::

        >>> save_training_curves("runs/progress.png", history, class_names=["background", "liver"])
        PosixPath('runs/progress.png')
    """
    return write_png(path, training_curves_figure(rows, class_names, title), overwrite=overwrite)
