"""Pictures: CT scans and photos with their masks (radiological orientation, legend) and training curves.

Every function renders with a matplotlib ``Figure`` on its Agg canvas (no ``pyplot``: thread-safe, headless) and
every file is written atomically through :func:`xattnres_monai.utils.files.atomic_write`.
"""

from .curves import (
    CURVES_HEIGHT,
    CURVES_WIDTH,
    read_curves_csv,
    save_training_curves,
    training_curves_figure,
    write_curves_csv,
)
from .palette import DEFAULT_PALETTE, class_colours, colours_from_channel_def, default_colour, parse_colour
from .scan_figure import (
    PANEL_SIZE,
    FigureLayout,
    image_figure,
    save_image_figure,
    save_scan_figure,
    scan_figure,
    write_png,
)

__all__ = [
    "CURVES_HEIGHT",
    "CURVES_WIDTH",
    "DEFAULT_PALETTE",
    "FigureLayout",
    "PANEL_SIZE",
    "class_colours",
    "colours_from_channel_def",
    "default_colour",
    "image_figure",
    "parse_colour",
    "read_curves_csv",
    "save_image_figure",
    "save_scan_figure",
    "save_training_curves",
    "scan_figure",
    "training_curves_figure",
    "write_curves_csv",
    "write_png",
]
