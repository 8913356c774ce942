"""Synthetic abdominal-CT-like phantoms in the raw BTCV layout, for tests and smoke runs without the real data.

Each case is an ``int16`` CT-like volume in Hounsfield units, ``img00XX.nii.gz``, and a label volume with **raw**
BTCV ids, ``label00XX.nii.gz`` (so the 14 -> 9 class remap of :mod:`xattnres_monai.data.synapse` is exercised):

- air (-1000 HU) outside an elliptic body, a subcutaneous fat ring (-100), an abdominal wall of muscle (45),
  intra-abdominal fat (-80) and a vertebral body (400, background);
- the 8 evaluated organs with raw ids and organ-typical, well separated values inside the HU window [-125, 275]:
  liver (6, 110 HU, large, right upper), spleen (1, 80, left posterior), right / left kidney (2 / 3, 170,
  contrast-enhanced, posterior on both sides), aorta (8, 235, a tube in front of the spine), stomach (7, 20, left
  anterior), gallbladder (4, -20, at the liver's inferior edge) and pancreas (11, 55, elongated across the middle);
- structures whose raw ids map to background: inferior vena cava (9, 200), esophagus (5, 40) and adrenal glands
  (12 / 13, 40).

Shapes are ellipsoids (``skimage.draw.ellipsoid``, rotated in-plane with ``skimage.transform.rotate``) and tubes
(``skimage.draw.disk``), varied per case in position, size and orientation; the image is smoothed
(``skimage.filters.gaussian``, partial volume) and gets Gaussian noise. Case ``k`` depends only on ``(seed, k)``.
The affine is RAS (+x towards the patient's right, +y anterior, +z superior; the liver lies at high x) with the
given spacing, centred on the volume.

Command line (argparse in :mod:`xattnres_monai.cli.phantoms`)::

    python -m xattnres_monai.data.phantoms --output /tmp/phantoms --cases 12 --size 96 96 48 --seed 0
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import nibabel as nib
import numpy as np
from skimage.draw import disk, ellipse, ellipsoid
from skimage.filters import gaussian
from skimage.transform import rotate

from xattnres_monai.utils.files import atomic_write, check_writable

__all__ = ["ORGAN_HU", "generate_phantom", "phantom_affine", "write_phantoms"]

PathLike = Union[str, Path]

AIR, SUBCUTANEOUS_FAT, MUSCLE, ABDOMINAL_FAT, BONE = -1000.0, -100.0, 45.0, -80.0, 400.0
#: Raw BTCV label id -> mean HU of the structure in the phantom.
ORGAN_HU: Dict[int, float] = {
    1: 80.0,  # spleen
    2: 170.0,  # right kidney (contrast)
    3: 170.0,  # left kidney
    4: -20.0,  # gallbladder
    5: 40.0,  # esophagus (-> background)
    6: 110.0,  # liver
    7: 20.0,  # stomach
    8: 235.0,  # aorta (contrast)
    9: 200.0,  # inferior vena cava (-> background)
    11: 55.0,  # pancreas
    12: 40.0,  # right adrenal gland (-> background)
    13: 40.0,  # left adrenal gland (-> background)
}


@dataclass(frozen=True)
class _Ellipsoid:
    """An organ as an ellipsoid: centre (u, v) in body semi-axes (+u right, +v anterior), w as fraction of the
    height; semi-axes as fractions of (body x semi-axis, body y semi-axis, height); in-plane angle in degrees."""

    raw_id: int
    centre: Tuple[float, float, float]
    semi_axes: Tuple[float, float, float]
    angle: float = 0.0


@dataclass(frozen=True)
class _Tube:
    """A vessel as a tube along z: centre (u, v), radius as fraction of the body x semi-axis, z extent (fractions)."""

    raw_id: int
    centre: Tuple[float, float]
    radius: float
    z_range: Tuple[float, float]


# painting order: later structures overwrite earlier ones
_STRUCTURES: List[Union[_Ellipsoid, _Tube]] = [
    _Ellipsoid(6, (0.40, 0.05, 0.62), (0.42, 0.55, 0.30), 10.0),  # liver, right lobe
    _Ellipsoid(6, (0.05, 0.35, 0.72), (0.28, 0.20, 0.14), -15.0),  # liver, left lobe
    _Ellipsoid(4, (0.45, 0.45, 0.42), (0.10, 0.12, 0.10), 20.0),  # gallbladder
    _Ellipsoid(1, (-0.55, -0.35, 0.62), (0.16, 0.24, 0.18), -30.0),  # spleen
    _Ellipsoid(7, (-0.30, 0.30, 0.66), (0.26, 0.20, 0.16), -20.0),  # stomach
    _Ellipsoid(11, (-0.05, 0.02, 0.48), (0.36, 0.08, 0.07), 15.0),  # pancreas
    _Ellipsoid(2, (0.36, -0.50, 0.38), (0.12, 0.17, 0.17), -20.0),  # right kidney
    _Ellipsoid(3, (-0.36, -0.50, 0.42), (0.12, 0.17, 0.17), 20.0),  # left kidney
    _Ellipsoid(12, (0.26, -0.42, 0.60), (0.05, 0.06, 0.05), 0.0),  # right adrenal
    _Ellipsoid(13, (-0.26, -0.42, 0.62), (0.05, 0.06, 0.05), 0.0),  # left adrenal
    _Tube(8, (-0.08, -0.42), 0.075, (0.05, 0.95)),  # aorta
    _Tube(9, (0.14, -0.38), 0.07, (0.05, 0.85)),  # inferior vena cava
    _Tube(5, (-0.08, -0.22), 0.045, (0.86, 1.0)),  # esophagus
]


def phantom_affine(size: Sequence[int], spacing: Sequence[float]) -> np.ndarray:
    """RAS affine with the given spacing whose world origin is the volume centre.

    Example::

        >>> phantom_affine((96, 96, 48), (0.8, 0.8, 2.5))[:3, 3]
        array([-38. , -38. , -58.75])
    """
    affine = np.diag([*map(float, spacing), 1.0])
    affine[:3, 3] = -(np.asarray(size, dtype=float) - 1) / 2 * np.asarray(spacing, dtype=float)
    return affine


def _paste(volume: np.ndarray, patch: np.ndarray, centre: Sequence[float], value: int) -> None:
    """Set ``volume`` to ``value`` where the boolean ``patch`` (centred at ``centre``) is True, clipped to bounds."""
    start = [int(round(c - s / 2)) for c, s in zip(centre, patch.shape)]
    dst, src = [], []
    for begin, size, limit in zip(start, patch.shape, volume.shape):
        lo, hi = max(begin, 0), min(begin + size, limit)
        if hi <= lo:
            return
        dst.append(slice(lo, hi))
        src.append(slice(lo - begin, hi - begin))
    region = volume[tuple(dst)]
    region[patch[tuple(src)]] = value


def _ellipsoid_patch(semi_axes: Sequence[float], angle: float) -> np.ndarray:
    """Boolean ellipsoid with the given voxel semi-axes, rotated by ``angle`` degrees in the axial plane."""
    patch = ellipsoid(*[max(float(a), 1.0) for a in semi_axes])
    if angle:
        patch = rotate(patch.astype(np.float32), angle, resize=True, order=1, preserve_range=True) > 0.5
    return patch


def generate_phantom(
    size: Sequence[int] = (96, 96, 48), rng: Optional[np.random.Generator] = None
) -> Tuple[np.ndarray, np.ndarray]:
    """One phantom: an ``int16`` HU image and a ``uint8`` label volume with raw BTCV ids, both of shape ``size``.

    Args:
        size: volume shape ``(X, Y, Z)``: left-right, posterior-anterior, inferior-superior.
        rng: random generator for the per-case variation (position, size, orientation, intensities, noise).

    Example::

        >>> image, label = generate_phantom((96, 96, 48), np.random.default_rng(0))
        >>> image.dtype, sorted(np.unique(label))[:4]
        (dtype('int16'), [0, 1, 2, 3])
    """
    rng = np.random.default_rng() if rng is None else rng
    nx, ny, nz = (int(s) for s in size)
    scale = rng.uniform(0.92, 1.04)
    cx, cy = (nx - 1) / 2 + rng.uniform(-2, 2), (ny - 1) / 2 + rng.uniform(-2, 2)
    ax, ay = 0.46 * nx * scale, 0.37 * ny * scale

    tissue = np.full((nx, ny), AIR, dtype=np.float32)
    for factor, value in ((1.0, SUBCUTANEOUS_FAT), (0.90, MUSCLE), (0.84, ABDOMINAL_FAT)):
        tissue[ellipse(cx, cy, factor * ax, factor * ay, shape=(nx, ny))] = value
    tissue[disk((cx, cy - 0.72 * ay), 0.14 * ax, shape=(nx, ny))] = BONE
    image = np.repeat(tissue[:, :, None], nz, axis=2)
    label = np.zeros((nx, ny, nz), dtype=np.uint8)

    for item in _STRUCTURES:
        du, dv = rng.uniform(-0.05, 0.05, size=2)
        x, y = cx + (item.centre[0] + du) * ax, cy + (item.centre[1] + dv) * ay
        if isinstance(item, _Ellipsoid):
            z = (item.centre[2] + rng.uniform(-0.04, 0.04)) * (nz - 1)
            semi = np.multiply(item.semi_axes, (ax, ay, nz)) * rng.uniform(0.85, 1.15, size=3)
            _paste(label, _ellipsoid_patch(semi, item.angle + rng.uniform(-15, 15)), (x, y, z), item.raw_id)
        else:
            radius = item.radius * ax * rng.uniform(0.85, 1.15)
            z0, z1 = (int(round(f * nz)) for f in item.z_range)
            for k in range(z0, z1):
                drift = 0.6 * np.sin(np.pi * k / nz)  # vessels curve slightly along z
                label[(*disk((x + drift, y), radius, shape=(nx, ny)), k)] = item.raw_id

    for raw_id, hu in ORGAN_HU.items():
        image[label == raw_id] = hu + rng.uniform(-5, 5)
    image = gaussian(image, sigma=(0.7, 0.7, 0.3), preserve_range=True)
    image += rng.normal(0.0, rng.uniform(8.0, 12.0), size=image.shape)
    return np.clip(np.round(image), -1024, 3071).astype(np.int16), label


def _nifti(data: np.ndarray, affine: np.ndarray) -> nib.Nifti1Image:
    image = nib.Nifti1Image(data, affine)
    image.header.set_xyzt_units("mm")
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    return image


def write_phantoms(
    output_dir: PathLike,
    cases: int = 12,
    size: Sequence[int] = (96, 96, 48),
    spacing: Sequence[float] = (0.8, 0.8, 2.5),
    seed: int = 0,
    first_case: int = 1,
    overwrite: bool = False,
) -> List[Tuple[Path, Path]]:
    """Write ``cases`` phantoms as ``img00XX.nii.gz`` / ``label00XX.nii.gz`` (raw BTCV layout) into ``output_dir``.

    Case ``k`` (numbered from ``first_case``) is generated from ``np.random.default_rng([seed, k])``, so it does not
    depend on how many cases are written. All outputs are checked first, then written atomically.

    Args:
        output_dir: destination folder (created if needed).
        cases: number of cases.
        size: volume shape ``(X, Y, Z)``.
        spacing: voxel spacing in mm.
        seed: base seed.
        first_case: number of the first case.
        overwrite: replace existing files.

    Returns:
        The (image, label) paths.

    Example::

        >>> pairs = write_phantoms("/tmp/phantoms", cases=2, size=(64, 64, 32), seed=0)
        >>> [p.name for p in pairs[0]]
        ['img0001.nii.gz', 'label0001.nii.gz']
    """
    if cases < 1 or len(size) != 3 or min(size) < 16 or len(spacing) != 3:
        raise ValueError("need cases >= 1, a 3D size of at least 16 voxels per axis and 3 spacings.")
    output_dir = Path(output_dir)
    numbers = range(first_case, first_case + cases)
    pairs = [(output_dir / f"img{k:04d}.nii.gz", output_dir / f"label{k:04d}.nii.gz") for k in numbers]
    check_writable([p for pair in pairs for p in pair], overwrite=overwrite)
    affine = phantom_affine(size, spacing)
    for k, (image_path, label_path) in zip(numbers, pairs):
        image, label = generate_phantom(size, np.random.default_rng([seed, k]))
        for data, path in ((image, image_path), (label, label_path)):
            with atomic_write(path, overwrite=overwrite) as tmp:
                nib.save(_nifti(data, affine), str(tmp))
    return pairs
