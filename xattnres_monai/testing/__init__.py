"""Synthetic data for tests, smoke runs and demos, without the real releases.

- :mod:`xattnres_monai.testing.phantoms`: abdominal-CT-like phantoms in the raw BTCV layout (``img00XX.nii.gz`` /
  ``label00XX.nii.gz``, raw label ids), read by :mod:`xattnres_monai.data.synapse`;
- :mod:`xattnres_monai.testing.image_phantoms`: 2D binary releases laid out like CVC-ClinicDB, CVC-ColonDB and
  ISIC 2017, read by :mod:`xattnres_monai.data.images`;
- :mod:`xattnres_monai.testing.dicom`: a CT DICOM series written slice by slice as a scanner exports it (tests of
  damaged series, ``benchmarks/input_path.py``).

Commands: ``python -m xattnres_monai.data.phantoms`` and ``python -m xattnres_monai.data.image_phantoms``
(:mod:`xattnres_monai.cli`).
"""

from xattnres_monai.testing.image_phantoms import PHANTOM_DATASETS, generate_image_case, write_image_release
from xattnres_monai.testing.phantoms import ORGAN_HU, generate_phantom, phantom_affine, write_phantoms

__all__ = [
    "ORGAN_HU",
    "PHANTOM_DATASETS",
    "generate_image_case",
    "generate_phantom",
    "phantom_affine",
    "write_image_release",
    "write_phantoms",
]
