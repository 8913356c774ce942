"""Figures a radiologist can read: one CT scan (axial + coronal slice) or one photo, with ground truth and prediction.

Layout (pixels, :class:`FigureLayout`): a title band (``TITLE_HEIGHT``) and a column-header band
(``HEADER_HEIGHT``) on top, the row names in a left margin (``MARGIN_LEFT``), then a grid of square panels of
``panel_size`` pixels (512 by default, never less) separated by ``GAP`` pixels, and the legend in a column of
``LEGEND_WIDTH`` pixels on the right. Columns: image alone | ground-truth overlay (only when a label is given) |
prediction overlay. Rows of a scan figure: axial, coronal; a photo figure has one row.

Each slice is resampled to fit its panel with the physical aspect ratio of its voxels (spacing from the affine;
bilinear for the image, nearest neighbour for the masks) and centred on a black background. Masks are drawn as
translucent fills (``OVERLAY_ALPHA``) with an opaque two-pixel outline. The legend holds one solid square swatch of
``SWATCH`` pixels per class (exactly the class colour, drawn without anti-aliasing) followed by the class name,
from the top of the legend column, class 1 first: the background (class 0) is not drawn.

Radiological convention: the volume is reoriented with nibabel to LPI (array axes towards the patient's Left,
Posterior, Inferior: ``io_orientation`` / ``ornt_transform`` / ``apply_orientation``), so that a transposed slice is
displayed with the patient's RIGHT on the viewer's LEFT and anterior (axial) / superior (coronal) at the top, and
the letters R, L, A, P, S, I are written at the panel edges. Oblique scans are shown on their closest anatomical
axes (no resampling across axes).

Rendering uses a matplotlib ``Figure`` with its Agg canvas, never ``pyplot``: thread-safe and headless.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from xattnres_monai.utils.files import atomic_write
from xattnres_monai.visualize.palette import RGB, class_colours, class_names_for

__all__ = [
    "FigureLayout",
    "GAP",
    "HEADER_HEIGHT",
    "LEGEND_WIDTH",
    "MARGIN_LEFT",
    "OVERLAY_ALPHA",
    "PANEL_SIZE",
    "SWATCH",
    "TITLE_HEIGHT",
    "image_figure",
    "save_image_figure",
    "save_scan_figure",
    "scan_figure",
    "write_png",
]

PathLike = Union[str, "os.PathLike[str]"]
Colours = Optional[Union[Sequence[Any], Mapping[int, Any]]]

#: side of a square panel in pixels (the minimum as well).
PANEL_SIZE = 512
#: pixels between panels, and between the last column and the legend.
GAP = 12
#: left margin holding the row names (written vertically).
MARGIN_LEFT = 56
#: band of the title, at the top.
TITLE_HEIGHT = 48
#: band of the column names, under the title.
HEADER_HEIGHT = 36
#: bottom margin.
MARGIN_BOTTOM = 12
#: width of the legend column, right of the panels.
LEGEND_WIDTH = 280
#: side of a legend swatch; legend rows are ``LEGEND_ROW`` pixels apart (less when many classes must fit).
SWATCH = 20
LEGEND_ROW = 30
#: opacity of the mask fill over the image.
OVERLAY_ALPHA = 0.45
#: figure background and text colours.
BACKGROUND: RGB = (24, 24, 24)
TEXT_COLOUR = "white"
_DPI = 100


# ------------------------------------------------------------------------------------------------------------ layout


@dataclass(frozen=True)
class FigureLayout:
    """Pixel geometry of a figure of ``n_rows`` x ``n_columns`` square panels plus the legend column.

    Boxes are ``(left, top, right, bottom)`` in image pixels, right and bottom exclusive (slice an
    ``(H, W, 3)`` array with ``[top:bottom, left:right]``).

    Example::

        >>> layout = FigureLayout(n_rows=2, n_columns=3)
        >>> layout.width, layout.height, layout.panel_box(1, 2)
        (1908, 1132, (1104, 608, 1616, 1120))
    """

    n_rows: int
    n_columns: int
    panel_size: int = PANEL_SIZE

    @property
    def width(self) -> int:
        return MARGIN_LEFT + self.n_columns * (self.panel_size + GAP) + LEGEND_WIDTH

    @property
    def height(self) -> int:
        return TITLE_HEIGHT + HEADER_HEIGHT + self.n_rows * self.panel_size + (self.n_rows - 1) * GAP + MARGIN_BOTTOM

    def panel_box(self, row: int, column: int) -> Tuple[int, int, int, int]:
        """The box of the panel at ``row``, ``column`` (0-based)."""
        left = MARGIN_LEFT + column * (self.panel_size + GAP)
        top = TITLE_HEIGHT + HEADER_HEIGHT + row * (self.panel_size + GAP)
        return left, top, left + self.panel_size, top + self.panel_size

    @property
    def legend_box(self) -> Tuple[int, int, int, int]:
        """The legend column: right of the last panel, over the height of the panel grid."""
        left = MARGIN_LEFT + self.n_columns * (self.panel_size + GAP)
        top = TITLE_HEIGHT + HEADER_HEIGHT
        return left, top, self.width, self.height - MARGIN_BOTTOM


# ------------------------------------------------------------------------------------------------------------ arrays


def _to_numpy(data: Any) -> np.ndarray:
    """A numpy copy-free view of an array, tensor or ``MetaTensor``."""
    if hasattr(data, "as_tensor"):
        data = data.as_tensor()
    if hasattr(data, "detach"):
        data = data.detach().cpu().numpy()
    return np.asarray(data)


def _label_map(data: Any, ndim: int, name: str) -> np.ndarray:
    """An integer label map of ``ndim`` spatial dimensions from a label map, a channel-first label map ``(1, ...)``
    or a one-hot / probability stack ``(C, ...)`` (argmax over channels)."""
    array = _to_numpy(data)
    if array.ndim == ndim + 1:
        array = array[0] if array.shape[0] == 1 else np.argmax(array, axis=0)
    if array.ndim != ndim:
        raise ValueError(f"{name}: expected a {ndim}D label map (or channel-first), got shape {tuple(array.shape)}")
    if array.dtype == bool:
        return array.astype(np.int32)
    if np.issubdtype(array.dtype, np.floating):
        if not np.all(np.isfinite(array)) or np.any(array != np.round(array)):
            raise ValueError(f"{name}: non-integer values; expected a label map (argmax / threshold it first)")
    if array.size and array.min() < 0:
        raise ValueError(f"{name}: negative label values")
    return array.astype(np.int32)


def _window(image: np.ndarray, window: Optional[Tuple[float, float]]) -> np.ndarray:
    """Grey levels 0..255 (float) of ``image`` in ``window`` (``None``: its 0.5-99.5 percentiles)."""
    if window is None:
        finite = image[np.isfinite(image)]
        low, high = (np.percentile(finite, (0.5, 99.5)) if finite.size else (0.0, 1.0))
    else:
        low, high = float(window[0]), float(window[1])
        if not high > low:
            raise ValueError(f"hu_window {tuple(window)}: the upper bound must be above the lower one")
    high = high if high > low else low + 1.0
    return np.clip((np.nan_to_num(image, nan=low) - low) / (high - low) * 255.0, 0.0, 255.0)


def _fitted_size(shape: Tuple[int, int], spacing: Tuple[float, float], panel: int) -> Tuple[int, int]:
    """``(height, width)`` in pixels of a ``shape`` slice of ``spacing`` (row, column) fitted into the panel."""
    height_mm, width_mm = shape[0] * spacing[0], shape[1] * spacing[1]
    scale = panel / max(height_mm, width_mm)
    return max(1, min(panel, int(round(height_mm * scale)))), max(1, min(panel, int(round(width_mm * scale))))


def _resize(array: np.ndarray, size: Tuple[int, int], labels: bool) -> np.ndarray:
    """Resize a 2D float image (bilinear) or label map (nearest neighbour), or an RGB uint8 image, to ``size``."""
    from PIL import Image

    height, width = size
    if array.ndim == 3:  # RGB photo
        return np.asarray(Image.fromarray(array, mode="RGB").resize((width, height), Image.Resampling.BILINEAR))
    mode = "I" if labels else "F"
    resample = Image.Resampling.NEAREST if labels else Image.Resampling.BILINEAR
    image = Image.fromarray(np.ascontiguousarray(array, dtype=np.int32 if labels else np.float32), mode=mode)
    return np.asarray(image.resize((width, height), resample))


def _outline(labels: np.ndarray) -> np.ndarray:
    """Pixels of a label map within two pixels of a change of label, on the foreground side."""
    edge = np.zeros(labels.shape, dtype=bool)
    for shift in (1, 2):
        edge[shift:] |= labels[shift:] != labels[:-shift]
        edge[:-shift] |= labels[:-shift] != labels[shift:]
        edge[:, shift:] |= labels[:, shift:] != labels[:, :-shift]
        edge[:, :-shift] |= labels[:, :-shift] != labels[:, shift:]
    return edge & (labels > 0)


def _overlay(rgb: np.ndarray, labels: np.ndarray, colours: Sequence[RGB]) -> np.ndarray:
    """``rgb`` with each class > 0 filled translucently in its colour and outlined opaquely."""
    lut = np.asarray(colours, dtype=np.float32)
    labels = np.minimum(labels, len(colours) - 1)
    colour = lut[labels]
    out = rgb.astype(np.float32)
    fg = labels > 0
    out[fg] = (1.0 - OVERLAY_ALPHA) * out[fg] + OVERLAY_ALPHA * colour[fg]
    edge = _outline(labels)
    out[edge] = colour[edge]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _panels(
    grey: np.ndarray, masks: Sequence[np.ndarray], colours: Sequence[RGB], panel: int
) -> List[np.ndarray]:
    """The panels of one row: ``grey`` (fitted RGB uint8) alone, then overlaid with each mask, centred in black."""
    height, width = grey.shape[:2]
    top, left = (panel - height) // 2, (panel - width) // 2
    out = []
    for content in [grey] + [_overlay(grey, mask, colours) for mask in masks]:
        canvas = np.zeros((panel, panel, 3), dtype=np.uint8)
        canvas[top : top + height, left : left + width] = content
        out.append(canvas)
    return out


# ---------------------------------------------------------------------------------------------------------- drawing


def _inches(width: int, height: int) -> Tuple[float, float]:
    """Figure size in inches for ``width`` x ``height`` pixels at ``_DPI`` (a thousandth of a pixel above, because
    Agg truncates ``inches * dpi``, and 19.08 * 100 is 1907.99...)."""
    return (width + 1e-3) / _DPI, (height + 1e-3) / _DPI


def _compose(
    layout: FigureLayout,
    panels: Sequence[Sequence[np.ndarray]],
    column_names: Sequence[str],
    row_names: Sequence[str],
    legend: Sequence[Tuple[str, RGB]],
    title: Optional[str] = None,
    letters: Optional[Sequence[Tuple[str, str, str, str]]] = None,
) -> np.ndarray:
    """Render the figure: panels and legend swatches as pixels, text with matplotlib (Agg, no pyplot)."""
    from matplotlib import patheffects
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    width, height = layout.width, layout.height
    pixels = np.empty((height, width, 3), dtype=np.uint8)
    pixels[:] = BACKGROUND
    for r, row in enumerate(panels):
        for c, panel in enumerate(row):
            left, top, right, bottom = layout.panel_box(r, c)
            pixels[top:bottom, left:right] = panel
    legend_left, legend_top, _, legend_bottom = layout.legend_box
    step = min(LEGEND_ROW, (legend_bottom - legend_top - LEGEND_ROW) / max(1, len(legend)))
    swatch = int(min(SWATCH, max(4, step - 4)))
    rows_y = [legend_top + LEGEND_ROW + int(i * step) for i in range(len(legend))]
    for (_, colour), y in zip(legend, rows_y):
        pixels[y : y + swatch, legend_left + 8 : legend_left + 8 + swatch] = colour

    fig = Figure(figsize=_inches(width, height), dpi=_DPI, facecolor=np.asarray(BACKGROUND) / 255.0)
    canvas = FigureCanvasAgg(fig)
    fig.figimage(pixels, 0, 0, origin="upper", resize=False)

    def text(x: float, y: float, s: str, **kwargs: Any) -> None:
        fig.text(x / width, 1.0 - y / height, s, color=TEXT_COLOUR, **kwargs)

    if title:
        text(MARGIN_LEFT, TITLE_HEIGHT / 2, title, fontsize=16, va="center", ha="left", fontweight="bold")
    for c, name in enumerate(column_names):
        left, top, right, _ = layout.panel_box(0, c)
        text((left + right) / 2, top - HEADER_HEIGHT / 2, name, fontsize=13, ha="center", va="center")
    for r, name in enumerate(row_names):
        _, top, _, bottom = layout.panel_box(r, 0)
        text(MARGIN_LEFT / 2, (top + bottom) / 2, name, fontsize=13, ha="center", va="center", rotation=90)
    if legend:
        text(legend_left + 8, legend_top + LEGEND_ROW / 2 - 4, "Legend", fontsize=13, va="center", fontweight="bold")
    for (name, _), y in zip(legend, rows_y):
        text(legend_left + 16 + swatch, y + swatch / 2, name, fontsize=min(12, max(6, step * 0.45)), va="center")
    stroke = [patheffects.withStroke(linewidth=3, foreground="black")]
    for r, row_letters in enumerate(letters or []):
        if not row_letters:
            continue
        top_letter, bottom_letter, left_letter, right_letter = row_letters
        for c in range(len(panels[r])):
            left, top, right, bottom = layout.panel_box(r, c)
            kwargs = dict(fontsize=15, fontweight="bold", path_effects=stroke)
            text((left + right) / 2, top + 14, top_letter, ha="center", va="center", **kwargs)
            text((left + right) / 2, bottom - 14, bottom_letter, ha="center", va="center", **kwargs)
            text(left + 8, (top + bottom) / 2, left_letter, ha="left", va="center", **kwargs)
            text(right - 8, (top + bottom) / 2, right_letter, ha="right", va="center", **kwargs)
    canvas.draw()
    rgba = np.asarray(canvas.buffer_rgba())
    if rgba.shape[:2] != (height, width):  # guard: the canvas must have exactly the layout's size
        raise RuntimeError(f"figure rendered at {rgba.shape[1]}x{rgba.shape[0]}, expected {width}x{height}")
    return np.ascontiguousarray(rgba[..., :3])


def _legend(
    n_classes: int, class_names: Optional[Sequence[str]], colours: Colours
) -> Tuple[List[Tuple[str, RGB]], List[RGB]]:
    """The legend entries ``(name, colour)`` of classes ``1..n-1`` and the colours of all classes."""
    names = class_names_for(n_classes, class_names)
    rgb = class_colours(n_classes, colours)
    return list(zip(names, rgb))[1:], rgb


def _panel_size(panel_size: int) -> int:
    if int(panel_size) < PANEL_SIZE:
        raise ValueError(f"panel_size {panel_size}: panels are at least {PANEL_SIZE} pixels")
    return int(panel_size)


# ------------------------------------------------------------------------------------------------------------- scans


def _display_orientation(affine: np.ndarray) -> np.ndarray:
    """The nibabel orientation transform from the array axes of ``affine`` to LPI."""
    from nibabel.orientations import axcodes2ornt, io_orientation, ornt_transform

    return ornt_transform(io_orientation(affine), axcodes2ornt(("L", "P", "I")))


def _original_index(ornt: np.ndarray, shape: Sequence[int], axis: int, index: int) -> Tuple[int, int]:
    """``(array axis, index)`` in the original array of slice ``index`` on display (LPI) ``axis``."""
    source = int(np.flatnonzero(ornt[:, 0] == axis)[0])
    return source, (index if ornt[source, 1] > 0 else int(shape[source]) - 1 - index)


def _best_slice(mask: np.ndarray, axis: int) -> int:
    """The index along ``axis`` with the most foreground voxels (the middle one when there is none)."""
    counts = (mask > 0).sum(axis=tuple(a for a in range(3) if a != axis))
    return int(np.argmax(counts)) if counts.any() else mask.shape[axis] // 2


def scan_figure(
    image: Any,
    prediction: Any,
    affine: Any = None,
    label: Any = None,
    class_names: Optional[Sequence[str]] = None,
    colours: Colours = None,
    hu_window: Optional[Tuple[float, float]] = (-125, 275),
    title: Optional[str] = None,
    panel_size: int = PANEL_SIZE,
) -> np.ndarray:
    """An axial and a coronal slice of a 3D scan with its prediction (and ground truth), in radiological orientation.

    The slices are those with the most foreground voxels in ``label`` when given, else in ``prediction`` (the
    middle ones when both are empty). Rows: axial (patient's right on the viewer's left, anterior at the top),
    coronal (right on the left, superior at the top); columns: the image alone | ground truth (when ``label`` is
    given) | prediction; the legend lists classes ``1..n-1``. See the module docstring and :class:`FigureLayout` for
    the pixel layout.

    Args:
        image: the scan ``(X, Y, Z)`` or ``(1, X, Y, Z)`` (array, tensor or ``MetaTensor``), in HU for CT.
        prediction: label map ``(X, Y, Z)`` / ``(1, X, Y, Z)``, or one-hot / probabilities ``(C, X, Y, Z)``, on the
            image's grid.
        affine: the 4 x 4 voxel-to-world (RAS, as nibabel and MONAI give it) matrix; ``None``: ``image.affine``.
        label: the ground truth, like ``prediction`` (``None``: no ground-truth column).
        class_names: names by class index (index 0 the background); missing ones are ``"class k"``.
        colours: colours by class index (sequence or mapping), see
            :func:`~xattnres_monai.visualize.palette.class_colours`; default: the fixed palette.
        hu_window: grey-level window ``(low, high)`` (default: abdomen, -125..275 HU); ``None``: the image's 0.5-99.5
            percentiles (MR).
        title: text of the title band (e.g. the scan name).
        panel_size: side of the square panels in pixels, at least 512.

    Returns:
        the figure, ``(H, W, 3)`` uint8, ``H, W = FigureLayout(2, columns, panel_size).height / .width``.

    Raises:
        ValueError: arrays of different grids or that are not 3D, a non-integer label map, a bad window or affine.

    Example::

        >>> volume = nib.load("img0001.nii.gz")
        >>> rgb = scan_figure(volume.get_fdata(), prediction, volume.affine, class_names=["background", "aorta"])
        >>> rgb.shape
        (1132, 1384, 3)
    """
    from nibabel.orientations import apply_orientation

    panel = _panel_size(panel_size)
    if affine is None:
        affine = getattr(image, "affine", None)
        if affine is None:
            raise ValueError("scan_figure: no affine given and the image has none")
    affine = _to_numpy(affine).astype(np.float64)
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise ValueError(f"scan_figure: expected an invertible 4 x 4 affine, got {affine.tolist()}")
    volume = _to_numpy(image).astype(np.float32, copy=False)
    if volume.ndim == 4 and volume.shape[0] == 1:
        volume = volume[0]
    if volume.ndim != 3:
        raise ValueError(f"scan_figure: expected a 3D image (X, Y, Z), got shape {tuple(volume.shape)}")
    masks = {"prediction": _label_map(prediction, 3, "prediction")}
    if label is not None:
        masks = {"ground truth": _label_map(label, 3, "label"), **masks}
    for name, mask in masks.items():
        if mask.shape != volume.shape:
            raise ValueError(f"scan_figure: {name} shape {mask.shape} differs from the image's {volume.shape}")

    ornt = _display_orientation(affine)
    zooms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    spacing = np.empty(3)
    spacing[ornt[:, 0].astype(int)] = zooms
    lpi = apply_orientation(volume, ornt)
    lpi_masks = [apply_orientation(m, ornt) for m in masks.values()]
    reference = lpi_masks[0]  # the label when given, else the prediction
    n_classes = max([len(class_names or [])] + [int(m.max()) + 1 for m in lpi_masks] + [2])
    legend, rgb = _legend(n_classes, class_names, colours)

    rows, row_names = [], []
    # LPI arrays: a transposed slice has rows towards posterior (axial) / inferior (coronal), columns towards left
    views = (("axial", 2, lambda a, k: a[:, :, k].T, (spacing[1], spacing[0])),
             ("coronal", 1, lambda a, k: a[:, k, :].T, (spacing[2], spacing[0])))  # fmt: skip
    for name, axis, take, view_spacing in views:
        k = _best_slice(reference, axis)
        source_axis, source_index = _original_index(ornt, volume.shape, axis, k)
        size = _fitted_size(take(lpi, k).shape, view_spacing, panel)
        grey = np.repeat(np.rint(_window(_resize(take(lpi, k), size, labels=False), hu_window))
                         .astype(np.uint8)[..., None], 3, axis=-1)  # fmt: skip
        rows.append(_panels(grey, [_resize(take(m, k), size, labels=True) for m in lpi_masks], rgb, panel))
        last = volume.shape[source_axis] - 1
        row_names.append(f"{name}: slice {source_index} of 0-{last} (array axis {source_axis})")
    letters = [("A", "P", "R", "L"), ("S", "I", "R", "L")]
    layout = FigureLayout(2, len(rows[0]), panel)
    return _compose(layout, rows, ["image"] + list(masks), row_names, legend, title, letters)


def write_png(path: PathLike, rgb: np.ndarray, overwrite: bool = False) -> Path:
    """Write an ``(H, W, 3)`` uint8 array as a PNG, atomically (a reader never sees a partial file).

    Args:
        path: the destination ``.png``.
        rgb: the picture.
        overwrite: replace an existing file (else :class:`FileExistsError`).

    Example::

        >>> write_png("out/case0001_figure.png", scan_figure(image, prediction, affine), overwrite=True)
        PosixPath('out/case0001_figure.png')
    """
    from PIL import Image

    with atomic_write(path, overwrite=overwrite) as tmp:
        Image.fromarray(np.asarray(rgb, dtype=np.uint8), mode="RGB").save(tmp, format="PNG")
    return Path(path)


def save_scan_figure(path: PathLike, image: Any, prediction: Any, affine: Any = None, overwrite: bool = False,
                     **kwargs: Any) -> Path:  # fmt: skip
    """:func:`scan_figure` written to ``path`` as a PNG with :func:`write_png` (atomic).

    Args:
        path: the destination ``.png``.
        image, prediction, affine: see :func:`scan_figure`.
        overwrite: replace an existing file (else :class:`FileExistsError`, before anything is drawn).
        kwargs: the other arguments of :func:`scan_figure` (``label``, ``class_names``, ``colours``, ...).

    Example::

        >>> save_scan_figure("out/img0001_figure.png", image, prediction, affine, label=label, title="img0001")
        PosixPath('out/img0001_figure.png')
    """
    if not overwrite and os.path.lexists(path):
        raise FileExistsError(17, "already exists (pass overwrite=True to replace it)", str(path))
    return write_png(path, scan_figure(image, prediction, affine, **kwargs), overwrite=overwrite)


# ------------------------------------------------------------------------------------------------------------ photos


def _photo_rgb(image: Any) -> np.ndarray:
    """An ``(H, W, 3)`` uint8 picture from ``(H, W)``, ``(H, W, C)`` or channel-first ``(C, H, W)``, C in 1, 3, 4."""
    array = _to_numpy(image)
    if array.ndim == 3 and array.shape[-1] not in (1, 3, 4) and array.shape[0] in (1, 3, 4):
        array = np.moveaxis(array, 0, -1)
    if array.ndim == 3:
        array = array[..., :3] if array.shape[-1] >= 3 else array[..., 0]
    if array.ndim != 2 and not (array.ndim == 3 and array.shape[-1] == 3):
        shape = tuple(_to_numpy(image).shape)
        raise ValueError(f"image_figure: expected an (H, W) or (H, W, 3) image, got shape {shape}")
    if array.dtype != np.uint8:
        values = np.nan_to_num(array.astype(np.float64))
        high = float(values.max()) if values.size else 1.0
        if np.issubdtype(array.dtype, np.floating) and high <= 1.0:
            values = values * 255.0
        elif high > 255.0:
            low = float(values.min())
            values = (values - low) / (high - low) * 255.0
        array = np.clip(np.rint(values), 0, 255).astype(np.uint8)
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=-1)
    return np.ascontiguousarray(array)


def image_figure(
    image: Any,
    prediction: Any,
    label: Any = None,
    class_names: Optional[Sequence[str]] = None,
    colours: Colours = None,
    title: Optional[str] = None,
    panel_size: int = PANEL_SIZE,
) -> np.ndarray:
    """A photo (endoscopy, dermoscopy) with its prediction (and ground truth): one row of panels and a legend.

    Same layout as :func:`scan_figure` with one row: image | ground truth (when ``label`` is given) | prediction,
    each fitted into a square panel of ``panel_size`` pixels with its aspect ratio (square pixels). No orientation
    letters.

    Args:
        image: ``(H, W)`` grey, ``(H, W, 3|4)`` or channel-first ``(3, H, W)``; uint8, or floats in 0..1 (other
            ranges are scaled to 0..255).
        prediction: label map ``(H, W)`` / ``(1, H, W)`` (a binary mask is classes 0 / 1) or one-hot ``(C, H, W)``.
        label: the ground truth, like ``prediction``.
        class_names: names by class index (0 = background), e.g. ``["background", "polyp"]``.
        colours: colours by class index, see :func:`scan_figure`.
        title: text of the title band.
        panel_size: side of the panels in pixels, at least 512.

    Returns:
        ``(H, W, 3)`` uint8, of ``FigureLayout(1, columns, panel_size)``'s size.

    Example::

        >>> rgb = image_figure(photo, mask, label=truth, class_names=["background", "polyp"])
        >>> rgb.shape
        (608, 1908, 3)
    """
    panel = _panel_size(panel_size)
    rgb_image = _photo_rgb(image)
    masks = {"prediction": _label_map(prediction, 2, "prediction")}
    if label is not None:
        masks = {"ground truth": _label_map(label, 2, "label"), **masks}
    for name, mask in masks.items():
        if mask.shape != rgb_image.shape[:2]:
            raise ValueError(f"image_figure: {name} shape {mask.shape} differs from the image's {rgb_image.shape[:2]}")
    n_classes = max([len(class_names or [])] + [int(m.max()) + 1 for m in masks.values()] + [2])
    legend, rgb = _legend(n_classes, class_names, colours)
    size = _fitted_size(rgb_image.shape[:2], (1.0, 1.0), panel)
    row = _panels(_resize(rgb_image, size, labels=False), [_resize(m, size, labels=True) for m in masks.values()],
                  rgb, panel)  # fmt: skip
    layout = FigureLayout(1, len(row), panel)
    return _compose(layout, [row], ["image"] + list(masks), [""], legend, title)


def save_image_figure(path: PathLike, image: Any, prediction: Any, overwrite: bool = False, **kwargs: Any) -> Path:
    """:func:`image_figure` written to ``path`` as a PNG with :func:`write_png` (atomic).

    Example::

        >>> save_image_figure("out/polyp_012_figure.png", photo, mask, class_names=["background", "polyp"])
        PosixPath('out/polyp_012_figure.png')
    """
    if not overwrite and os.path.lexists(path):
        raise FileExistsError(17, "already exists (pass overwrite=True to replace it)", str(path))
    return write_png(path, image_figure(image, prediction, **kwargs), overwrite=overwrite)
