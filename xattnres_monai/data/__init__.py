"""Data: the input layer shared by the bundles, and the preparation of datalists.

Library modules (functions only; none imports a command-line module, none parses arguments):

- :mod:`~xattnres_monai.data.inputs`, :mod:`~xattnres_monai.data.dicom`, :mod:`~xattnres_monai.data.image_inputs`:
  reading and checking volumes, DICOM series and 2D images (training, evaluation, inference);
- :mod:`~xattnres_monai.data.datasets`, :mod:`~xattnres_monai.data.slices`: checked datasets for the bundles;
- :mod:`xattnres_monai.data.synapse`: the Synapse multi-organ CT datalist (raw BTCV or TransUNet's form);
- :mod:`xattnres_monai.data.images`: the 2D binary datalists (CVC-ClinicDB, CVC-ColonDB, ISIC 2017) and the mask
  reading the 2D transforms share;
- :mod:`~xattnres_monai.data.collection`: any labelled CT / MR collection.

Synthetic data (phantoms) are in :mod:`xattnres_monai.testing`, not here.

Command-line programs live in :mod:`xattnres_monai.cli` (argparse + calls). The documented commands keep their
names through entry points that only call the program's ``main``:

- ``python -m xattnres_monai.data.synapse`` and ``python -m xattnres_monai.data.images``: the ``__main__.py`` of
  the library packages ``synapse/`` and ``images/`` (a package with ``__main__``, so importing the library here does
  not make ``runpy`` warn that the module was imported before being run);
- ``python -m xattnres_monai.data.prepare``, ``python -m xattnres_monai.data.phantoms``,
  ``python -m xattnres_monai.data.image_phantoms``: the modules ``prepare.py``, ``phantoms.py`` and
  ``image_phantoms.py`` of this folder, which are entry points only (nothing imports them).

This package imports no torch / MONAI: the preparation commands start in a fraction of a second.
"""

from xattnres_monai.data.images import check_mask_values, checked_image_datalist, detect_layout, prepare_images
from xattnres_monai.data.synapse import (
    BTCV_TO_SYNAPSE,
    HU_WINDOW,
    SYNAPSE_LABELS,
    TEST_CASES,
    TRAIN_CASES,
    check_btcv_case,
    detect_format,
    find_btcv_cases,
    find_transunet_cases,
    load_transunet_case,
    prepare_synapse,
    remap_btcv_label,
    split_cases,
)

__all__ = [
    "BTCV_TO_SYNAPSE",
    "HU_WINDOW",
    "SYNAPSE_LABELS",
    "TEST_CASES",
    "TRAIN_CASES",
    "check_btcv_case",
    "check_mask_values",
    "checked_image_datalist",
    "detect_format",
    "detect_layout",
    "find_btcv_cases",
    "find_transunet_cases",
    "load_transunet_case",
    "prepare_images",
    "prepare_synapse",
    "remap_btcv_label",
    "split_cases",
]
