"""Pictures of the learned XAttnRes routing: the block x entry heatmap, the entropy bars and per-position maps.

Three pictures, each rendered with a matplotlib ``Figure`` on its Agg canvas (no ``pyplot``) and written atomically
with :func:`~xattnres_monai.visualize.scan_figure.write_png`:

- :func:`routing_heatmap_figure`, ``HEATMAP_WIDTH`` x ``HEATMAP_HEIGHT`` = 1800 x 800 pixels: left, the mean weight of
  every block (rows) on every history entry (columns), annotated, with its colour bar; right, when given, the fixed
  topology of the plain network as the same matrix (1 where it connects the entry to the stage). Grey cells: entries
  outside the block's pool.
- :func:`entropy_figure`, ``ENTROPY_WIDTH`` x ``ENTROPY_HEIGHT`` = 1000 x 600 pixels: the mean normalised entropy of
  each block as bars (one group per block, one bar per series, e.g. all positions / boundaries / interiors), with
  the uniform level 1 dashed.
- :func:`attention_maps_figure`: one panel per history entry (the block's weight on that entry at every position,
  colour scale 0..1, over the slice in grey, with the organ contours of the prediction), then the per-position
  normalised entropy panel; size :func:`attention_maps_size` (documented there).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from xattnres_monai.visualize.palette import class_colours
from xattnres_monai.visualize.scan_figure import write_png

__all__ = [
    "ENTROPY_HEIGHT",
    "ENTROPY_WIDTH",
    "HEATMAP_HEIGHT",
    "HEATMAP_WIDTH",
    "MAP_COLUMNS",
    "MAP_PANEL",
    "attention_maps_figure",
    "attention_maps_size",
    "entropy_figure",
    "routing_heatmap_figure",
    "save_attention_maps",
]

PathLike = Union[str, "os.PathLike[str]"]

#: size of the heatmap picture in pixels.
HEATMAP_WIDTH, HEATMAP_HEIGHT = 1800, 800
#: size of the entropy picture in pixels.
ENTROPY_WIDTH, ENTROPY_HEIGHT = 1000, 600
#: attention maps: default side of a square panel, panels per row, and the fixed bands around them (pixels).
MAP_PANEL = 256
MAP_COLUMNS = 5
MAP_GAP = 10
MAP_TITLE = 50
MAP_HEADER = 28
MAP_MARGIN = 12
MAP_COLORBAR = 110
_BACKGROUND = (24 / 255.0, 24 / 255.0, 24 / 255.0)
_DPI = 100
_WEIGHT_CMAP = "inferno"
_ENTROPY_CMAP = "viridis"


def _figure(width: int, height: int, facecolor: Any = "white"):
    """A ``Figure`` of exactly ``width`` x ``height`` pixels and its Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=((width + 1e-3) / _DPI, (height + 1e-3) / _DPI), dpi=_DPI, facecolor=facecolor)
    return fig, FigureCanvasAgg(fig)


def _pixels(canvas: Any, width: int, height: int) -> np.ndarray:
    """Draw the canvas and return its RGB pixels, checking the size."""
    canvas.draw()
    rgba = np.asarray(canvas.buffer_rgba())
    if rgba.shape[:2] != (height, width):
        raise RuntimeError(f"figure rendered at {rgba.shape[1]}x{rgba.shape[0]}, expected {width}x{height}")
    return np.ascontiguousarray(rgba[..., :3])


# ----------------------------------------------------------------------------------------------------------- heatmap


def _matrix_panel(fig: Any, ax: Any, matrix: np.ndarray, rows: Sequence[str], columns: Sequence[str], cmap: str,
                  vmax: float, title: str, label: str, fmt: str) -> None:  # fmt: skip
    """One annotated block x entry matrix with its colour bar on ``ax``; NaN cells grey, unannotated."""
    from matplotlib import colormaps

    colour_map = colormaps[cmap].with_extremes(bad=(0.85, 0.85, 0.85))
    masked = np.ma.masked_invalid(matrix)
    image = ax.imshow(masked, cmap=colour_map, vmin=0.0, vmax=vmax, aspect="auto", interpolation="nearest")
    size = max(6.0, min(11.0, 90.0 / max(1, len(columns))))
    for r in range(matrix.shape[0]):
        for c in range(matrix.shape[1]):
            value = matrix[r, c]
            if np.isfinite(value):
                red, green, blue, _ = colour_map(min(max(value / vmax, 0.0), 1.0) if vmax > 0 else 0.0)
                light = 0.299 * red + 0.587 * green + 0.114 * blue > 0.5  # text readable on the cell's colour
                ax.text(c, r, format(value, fmt), ha="center", va="center", fontsize=size,
                        color="black" if light else "white")  # fmt: skip
    ax.set_xticks(range(len(columns)), labels=list(columns))
    ax.set_yticks(range(len(rows)), labels=list(rows))
    ax.set_xlabel("history entry (pool order; input = the block's own stage input)")
    ax.set_ylabel("XAttnRes block (stage it precedes)")
    ax.set_title(title, fontsize=12)
    fig.colorbar(image, ax=ax, fraction=0.05, pad=0.02).set_label(label)


def routing_heatmap_figure(
    matrix: np.ndarray,
    blocks: Sequence[str],
    entries: Sequence[str],
    topology: Optional[np.ndarray] = None,
    title: Optional[str] = None,
    value_label: str = "mean attention weight",
) -> np.ndarray:
    """The routing heatmap (module docstring), ``(HEATMAP_HEIGHT, HEATMAP_WIDTH, 3)`` uint8.

    Args:
        matrix: ``(len(blocks), len(entries))`` mean weights; NaN where the entry is not in the block's pool.
        blocks: row names (the stage each block precedes).
        entries: column names (history entries, ``"input"`` last).
        topology: the fixed topology as the same matrix (1 connected, 0 not, NaN not in the pool); ``None``: not drawn.
        title: the picture's title.
        value_label: the colour bar's label of the left matrix.

    Example::

        >>> rgb = routing_heatmap_figure(np.full((2, 3), 1 / 3), ["d1", "d2"], ["e1", "e2", "input"])
        >>> rgb.shape
        (800, 1800, 3)
    """
    matrix = np.asarray(matrix, dtype=np.float64)
    if matrix.shape != (len(blocks), len(entries)):
        raise ValueError(
            f"routing_heatmap_figure: matrix {matrix.shape} for {len(blocks)} blocks x {len(entries)} entries"
        )
    fig, canvas = _figure(HEATMAP_WIDTH, HEATMAP_HEIGHT)
    axes = fig.subplots(1, 2 if topology is not None else 1, squeeze=False)[0]
    finite = matrix[np.isfinite(matrix)]
    vmax = float(max(finite.max(), 1e-3)) if finite.size else 1.0
    pools = [int(np.isfinite(row).sum()) for row in matrix]
    rows = [f"{b} (uniform {1.0 / n:.3f})" if n else str(b) for b, n in zip(blocks, pools)]
    _matrix_panel(fig, axes[0], matrix, rows, entries, _WEIGHT_CMAP, vmax, "learned routing: mean weight per entry",
                  value_label, ".3f")  # fmt: skip
    if topology is not None:
        topology = np.asarray(topology, dtype=np.float64)
        if topology.shape != matrix.shape:
            raise ValueError(
                f"routing_heatmap_figure: topology {topology.shape} differs from the matrix's {matrix.shape}"
            )
        _matrix_panel(fig, axes[1], topology, list(blocks), entries, "Greys", 1.0,
                      "fixed topology of the plain network (1 = connected)", "connection", ".0f")  # fmt: skip
    if title:
        fig.suptitle(title, fontsize=14)
    fig.subplots_adjust(left=0.09, right=0.97, bottom=0.12, top=0.88 if title else 0.92, wspace=0.25)
    return _pixels(canvas, HEATMAP_WIDTH, HEATMAP_HEIGHT)


# ----------------------------------------------------------------------------------------------------------- entropy


def entropy_figure(series: Mapping[str, Mapping[str, float]], title: Optional[str] = None) -> np.ndarray:
    """Mean normalised entropy per block as grouped bars, ``(ENTROPY_HEIGHT, ENTROPY_WIDTH, 3)`` uint8.

    Args:
        series: series name -> ``{block: entropy}`` (e.g. ``{"all positions": {...}, "boundaries": {...}}``); blocks
            in the order of the first series; a missing or NaN value leaves its bar out.
        title: the picture's title.

    Example::

        >>> entropy_figure({"all positions": {"e2": 1.0, "d4": 0.7}}).shape
        (600, 1000, 3)
    """
    fig, canvas = _figure(ENTROPY_WIDTH, ENTROPY_HEIGHT)
    ax = fig.subplots()
    blocks: List[str] = []
    for values in series.values():
        blocks += [b for b in values if b not in blocks]
    n = max(1, len(series))
    width = 0.8 / n
    for k, (name, values) in enumerate(series.items()):
        x = [i - 0.4 + width * (k + 0.5) for i in range(len(blocks))]
        heights = [float(values.get(b, np.nan)) for b in blocks]
        bars = ax.bar(x, [h if np.isfinite(h) else 0.0 for h in heights], width=width * 0.95, label=name)
        for bar, h in zip(bars, heights):
            if np.isfinite(h):
                ax.text(bar.get_x() + bar.get_width() / 2, h + 0.01, f"{h:.2f}", ha="center", va="bottom", fontsize=7)
    ax.axhline(1.0, color="black", linestyle="--", linewidth=1, label="uniform (1)")
    ax.set_xticks(range(len(blocks)), labels=blocks)
    ax.set_ylim(0.0, 1.3)
    ax.set_xlabel("XAttnRes block (stage it precedes)")
    ax.set_ylabel("mean entropy / log(K+1)")
    ax.set_title(title or "routing entropy per block (1 = uniform, 0 = one entry)", fontsize=12)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper center", ncol=min(4, n + 1))
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.1, top=0.92)
    return _pixels(canvas, ENTROPY_WIDTH, ENTROPY_HEIGHT)


# ---------------------------------------------------------------------------------------------------- attention maps


def attention_maps_size(n_entries: int, panel_size: int = MAP_PANEL) -> Tuple[int, int]:
    """``(width, height)`` in pixels of :func:`attention_maps_figure` for a block of ``n_entries`` (``K+1``) weights.

    ``n = n_entries + 1`` panels (the entries, then the entropy) in ``c = min(n, MAP_COLUMNS)`` columns and
    ``r = ceil(n / c)`` rows::

        width  = MAP_MARGIN + c * (panel_size + MAP_GAP) + MAP_COLORBAR
        height = MAP_TITLE + r * (MAP_HEADER + panel_size) + (r - 1) * MAP_GAP + MAP_MARGIN

    Example::

        >>> attention_maps_size(9)  # d4 of the default U-Net: 10 panels, 2 rows of 5
        (1452, 640)
    """
    panels = int(n_entries) + 1
    columns = min(panels, MAP_COLUMNS)
    rows = int(math.ceil(panels / columns))
    width = MAP_MARGIN + columns * (panel_size + MAP_GAP) + MAP_COLORBAR
    height = MAP_TITLE + rows * (MAP_HEADER + panel_size) + (rows - 1) * MAP_GAP + MAP_MARGIN
    return width, height


def _grey(image: np.ndarray) -> np.ndarray:
    """A 2D display image 0..1 from ``(H, W)`` or channel-first ``(C, H, W)`` (channel mean), 0.5-99.5 percentiles."""
    image = np.asarray(image, dtype=np.float64)
    if image.ndim == 3:
        image = image.mean(axis=0)
    if image.ndim != 2:
        raise ValueError(f"attention_maps_figure: expected a 2D image (H, W) or (C, H, W), got shape {image.shape}")
    finite = image[np.isfinite(image)]
    low, high = np.percentile(finite, (0.5, 99.5)) if finite.size else (0.0, 1.0)
    return np.clip((np.nan_to_num(image, nan=low) - low) / max(high - low, 1e-12), 0.0, 1.0)


def _entropy(weights: np.ndarray) -> np.ndarray:
    """Normalised entropy per position of ``(N, h, w)`` weights."""
    n = weights.shape[0]
    if n < 2:
        return np.zeros(weights.shape[1:])
    safe = np.where(weights > 0, weights, 1.0)
    return -(weights * np.log(safe)).sum(axis=0) / math.log(n)


def attention_maps_figure(
    image: Any,
    weights: Any,
    entries: Sequence[str],
    prediction: Any = None,
    entropy: Any = None,
    colours: Any = None,
    title: Optional[str] = None,
    panel_size: int = MAP_PANEL,
) -> np.ndarray:
    """Per-position weight maps of one XAttnRes block on one slice, ``attention_maps_size(len(entries), panel_size)``.

    Each panel shows the slice in grey, the block's weight on one entry over it (colour scale 0..1, nearest
    neighbour: one cell per position at the block's resolution) and the contours of the predicted classes; its header
    gives the entry and its mean weight. The last panel is the per-position entropy divided by ``log(K+1)`` (0..1).
    The colour bars (weight, entropy) are in the right column. Images are shown as given (rows top to bottom).

    Args:
        image: the slice ``(H, W)`` or ``(C, H, W)`` (channel mean), any intensity range (0.5-99.5 percentiles).
        weights: the block's weights ``(K+1, h, w)`` at its resolution (stretched over the slice).
        entries: the ``K+1`` entry names.
        prediction: a label map ``(H, W)`` whose classes > 0 are outlined (``None``: no contours).
        entropy: the ``(h, w)`` normalised entropy map (``None``: computed from ``weights``).
        colours: contour colours by class index (see :func:`~xattnres_monai.visualize.palette.class_colours`;
            default: the palette, so an organ has the colour of the scan figures).
        title: the picture's title (e.g. scan, slice and block).
        panel_size: side of the square panels in pixels (at least 64).

    Example::

        >>> w = np.full((3, 16, 16), 1 / 3)
        >>> attention_maps_figure(np.random.rand(64, 64), w, ["e1", "e2", "input"]).shape  # 4 panels in one row
        (346, 1186, 3)
    """
    panel = int(panel_size)
    if panel < 64:
        raise ValueError(f"attention_maps_figure: panel_size {panel_size} is below 64 pixels")
    grey = _grey(_array(image))
    maps = np.asarray(_array(weights), dtype=np.float64)
    if maps.ndim != 3 or maps.shape[0] != len(entries):
        raise ValueError(
            f"attention_maps_figure: weights {maps.shape} for {len(entries)} entries (expected (K+1, h, w))"
        )
    entropy_map = _entropy(maps) if entropy is None else np.asarray(_array(entropy), dtype=np.float64)
    labels = None if prediction is None else np.asarray(_array(prediction)).astype(np.int64)
    if labels is not None and labels.shape != grey.shape:
        raise ValueError(f"attention_maps_figure: prediction {labels.shape} differs from the image's {grey.shape}")
    width, height = attention_maps_size(len(entries), panel)
    columns = min(len(entries) + 1, MAP_COLUMNS)
    fig, canvas = _figure(width, height, facecolor=_BACKGROUND)
    rgb = None
    if labels is not None:
        n_classes = max(int(labels.max()) + 1 if labels.size else 2, 2)
        rgb = class_colours(n_classes, colours)
    extent = (-0.5, grey.shape[1] - 0.5, grey.shape[0] - 0.5, -0.5)
    panels = [(f"{name}  (mean {maps[n].mean():.3f})", maps[n], _WEIGHT_CMAP) for n, name in enumerate(entries)]
    panels.append((f"entropy / log(K+1)  (mean {entropy_map.mean():.3f})", entropy_map, _ENTROPY_CMAP))
    mappables = {}
    for k, (header, values, cmap) in enumerate(panels):
        row, column = divmod(k, columns)
        left = MAP_MARGIN + column * (panel + MAP_GAP)
        top = MAP_TITLE + row * (MAP_HEADER + panel + MAP_GAP) + MAP_HEADER
        ax = fig.add_axes((left / width, 1.0 - (top + panel) / height, panel / width, panel / height))
        ax.imshow(grey, cmap="gray", vmin=0.0, vmax=1.0, extent=extent, interpolation="bilinear")
        mappables[cmap] = ax.imshow(values, cmap=cmap, vmin=0.0, vmax=1.0, alpha=0.6, extent=extent,
                                    interpolation="nearest")  # fmt: skip
        if labels is not None and rgb is not None:
            for c in range(1, len(rgb)):
                mask = labels == c
                if mask.any() and not mask.all():
                    colour = tuple(v / 255.0 for v in rgb[c])
                    ax.contour(mask.astype(np.float32), levels=[0.5], colors=[colour], linewidths=1.0)
        ax.set_xlim(extent[0], extent[1])
        ax.set_ylim(extent[2], extent[3])
        ax.set_axis_off()
        fig.text((left + panel / 2) / width, 1.0 - (top - MAP_HEADER / 2) / height, header, color="white",
                 ha="center", va="center", fontsize=9)  # fmt: skip
    bar_left = (width - MAP_COLORBAR + 18) / width
    bar_width = 18 / width
    grid_top, grid_bottom = MAP_TITLE + MAP_HEADER, height - MAP_MARGIN
    half = (grid_bottom - grid_top - MAP_HEADER) / 2
    for i, (cmap, label) in enumerate(((_WEIGHT_CMAP, "attention weight"), (_ENTROPY_CMAP, "entropy / log(K+1)"))):
        top = grid_top + i * (half + MAP_HEADER)
        cax = fig.add_axes((bar_left, 1.0 - (top + half) / height, bar_width, half / height))
        bar = fig.colorbar(mappables[cmap], cax=cax)
        bar.set_label(label, color="white", fontsize=9)
        bar.ax.tick_params(colors="white", labelsize=8)
    if title:
        fig.text(MAP_MARGIN / width, 1.0 - (MAP_TITLE / 2) / height, title, color="white", ha="left", va="center",
                 fontsize=13, fontweight="bold")  # fmt: skip
    return _pixels(canvas, width, height)


def _array(data: Any) -> np.ndarray:
    """A numpy array from an array, tensor or ``MetaTensor``."""
    if hasattr(data, "as_tensor"):
        data = data.as_tensor()
    if hasattr(data, "detach"):
        data = data.detach().cpu().numpy()
    return np.asarray(data)


def save_attention_maps(path: PathLike, image: Any, weights: Any, entries: Sequence[str], overwrite: bool = False,
                        **kwargs: Any) -> Path:  # fmt: skip
    """:func:`attention_maps_figure` written to ``path`` as a PNG (atomic; an existing file needs ``overwrite``).

    Example::

        >>> save_attention_maps("out/maps/img0001_slice40_d4.png", image, weights, entries, prediction=labels)
        PosixPath('out/maps/img0001_slice40_d4.png')
    """
    if not overwrite and os.path.lexists(path):
        raise FileExistsError(17, "already exists (pass overwrite=True to replace it)", str(path))
    return write_png(path, attention_maps_figure(image, weights, entries, **kwargs), overwrite=overwrite)
