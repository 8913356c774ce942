"""Data preparation: the Synapse multi-organ CT datalist (raw BTCV or TransUNet's form), the 2D binary datalists
(CVC-ClinicDB, CVC-ColonDB, ISIC 2017), and synthetic phantoms / releases of both.

The submodules are also command-line programs (``python -m xattnres_monai.data.synapse``,
``python -m xattnres_monai.data.phantoms``, ``python -m xattnres_monai.data.images``,
``python -m xattnres_monai.data.image_phantoms``), so they are imported lazily here: importing them eagerly would make
``runpy`` warn that the module was already imported before running it as ``__main__``.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "synapse": (
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
    ),
    "phantoms": ("generate_phantom", "write_phantoms"),
    "images": ("check_mask_values", "detect_layout", "prepare_images"),
    "image_phantoms": ("generate_image_case", "write_image_release"),
}
_OWNER = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_OWNER)


def __getattr__(name: str) -> Any:
    if name in _OWNER:
        return getattr(importlib.import_module(f"{__name__}.{_OWNER[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
