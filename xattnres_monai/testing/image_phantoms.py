"""Synthetic 2D binary releases laid out exactly like CVC-ClinicDB, CVC-ColonDB and ISIC 2017, for tests and smoke
runs without the real data (read them with :mod:`xattnres_monai.data.images`).

Layouts written under ``root``:

``clinicdb``
    ``Original/1.tif``, ``2.tif``, ... (RGB TIFF) + ``Ground Truth/1.tif``, ... (single-channel 8-bit TIFF, 0 / 255).
``colondb``
    ``images/1.png``, ... (RGB PNG) + ``masks/1.png``, ... (single-channel 8-bit PNG, 0 / 255).
``isic2017``
    ``ISIC-2017_{Training,Validation,Test_v2}_Data/ISIC_00000NN.jpg`` (RGB JPEG) +
    ``ISIC-2017_{Training,Validation,Test_v2}_Part1_GroundTruth/ISIC_00000NN_segmentation.png`` (0 / 255), numbered
    consecutively over the three subsets (about 60 / 20 / 20 %, at least one case each when ``n_cases >= 3``), with
    an ``ISIC_00000NN_superpixels.png`` next to every other image and ``ISIC-2017_<subset>_Data_metadata.csv`` in
    each data folder, as in the real release (the preparation must ignore both).

Each image is a textured background (a low-frequency colour pattern plus pixel noise) with one rotated ellipse in a
clearly different colour (polyp: pale yellow on red mucosa; lesion: dark brown on skin), and the mask is exactly
that ellipse, so a tiny network learns it in a few epochs. Image sizes vary per case (``size`` +- 8 pixels, never a
multiple of 32) so that code restoring the original size is exercised. Case ``k`` depends only on ``(seed, k)``.

Command line (argparse in :mod:`xattnres_monai.cli.image_phantoms`)::

    python -m xattnres_monai.data.image_phantoms clinicdb /tmp/clinicdb --n 10
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image

from xattnres_monai.utils.files import atomic_write, check_writable

__all__ = ["PHANTOM_DATASETS", "generate_image_case", "isic_subset_sizes", "write_image_release"]

PathLike = Union[str, "os.PathLike[str]"]

PHANTOM_DATASETS: Tuple[str, ...] = ("clinicdb", "colondb", "isic2017")
SIZE_JITTER = 8
#: (background colour, blob colour) in RGB.
_COLOURS: Dict[str, Tuple[Tuple[int, int, int], Tuple[int, int, int]]] = {
    "clinicdb": ((170, 70, 60), (235, 205, 130)),
    "colondb": ((170, 70, 60), (235, 205, 130)),
    "isic2017": ((225, 180, 150), (95, 55, 40)),
}
_ISIC = (("training", "Training"), ("validation", "Validation"), ("test", "Test_v2"))


def _case_size(size: Sequence[int], rng: np.random.Generator) -> Tuple[int, int]:
    out = []
    for extent in size:
        value = int(extent) + int(rng.integers(-SIZE_JITTER, SIZE_JITTER + 1))
        if value % 32 == 0:
            value += 1
        out.append(max(value, 9))
    return out[0], out[1]


def generate_image_case(
    size: Sequence[int], rng: np.random.Generator, dataset: str = "clinicdb"
) -> Tuple[np.ndarray, np.ndarray]:
    """One synthetic case: an ``(H, W, 3)`` uint8 RGB image and its ``(H, W)`` uint8 mask (0 / 255).

    Args:
        size: nominal ``(H, W)``; the case's size is drawn within +-8 pixels (never a multiple of 32).
        rng: the generator (all randomness of the case comes from it).
        dataset: picks the colours (polyp or skin lesion).

    Example::

        >>> image, mask = generate_image_case((64, 80), np.random.default_rng(0))
        >>> image.dtype, mask.dtype, sorted(np.unique(mask).tolist())
        (dtype('uint8'), dtype('uint8'), [0, 255])
    """
    if dataset not in _COLOURS:
        raise ValueError(f"dataset must be one of {', '.join(PHANTOM_DATASETS)}; got {dataset!r}.")
    h, w = _case_size(size, rng)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    background, blob = (np.asarray(c, dtype=np.float64) for c in _COLOURS[dataset])
    # textured background: two random low-frequency waves per channel plus pixel noise
    texture = np.zeros((h, w, 3))
    for _ in range(2):
        fy, fx = rng.uniform(0.05, 0.25, size=2)
        phase = rng.uniform(0, 2 * np.pi)
        texture += rng.uniform(8, 16, size=3) * np.sin(fy * yy + fx * xx + phase)[..., None]
    image = background + texture
    # the ellipse: centre away from the border, semi-axes 15-30 % of the size, any angle
    cy, cx = rng.uniform(0.35, 0.65) * h, rng.uniform(0.35, 0.65) * w
    ay, ax = rng.uniform(0.15, 0.3) * h, rng.uniform(0.15, 0.3) * w
    angle = rng.uniform(0, np.pi)
    u = (xx - cx) * np.cos(angle) + (yy - cy) * np.sin(angle)
    v = -(xx - cx) * np.sin(angle) + (yy - cy) * np.cos(angle)
    inside = (u / ax) ** 2 + (v / ay) ** 2 <= 1.0
    shade = 1.0 - 0.15 * np.clip(np.sqrt((u / ax) ** 2 + (v / ay) ** 2), 0, 1)  # slightly darker rim
    image[inside] = blob * shade[inside, None] + 0.3 * texture[inside]
    image += rng.normal(0, 6, size=image.shape)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), inside.astype(np.uint8) * 255


def isic_subset_sizes(n_cases: int) -> Tuple[int, int, int]:
    """Training / validation / test counts of an ISIC phantom: about 60 / 20 / 20 %, each >= 1 when n >= 3.

    Example::

        >>> isic_subset_sizes(10)
        (6, 2, 2)
    """
    n_val = max(1, int(round(0.2 * n_cases))) if n_cases >= 3 else 0
    n_test = max(1, int(round(0.2 * n_cases))) if n_cases >= 2 else 0
    return n_cases - n_val - n_test, n_val, n_test


def _plan(dataset: str, root: Path, n_cases: int) -> List[Tuple[int, Path, Path, Optional[Path]]]:
    """(case number, image path, mask path, superpixel path or None) for every case."""
    if dataset == "clinicdb":
        return [
            (k, root / "Original" / f"{k}.tif", root / "Ground Truth" / f"{k}.tif", None) for k in range(1, n_cases + 1)
        ]
    if dataset == "colondb":
        return [(k, root / "images" / f"{k}.png", root / "masks" / f"{k}.png", None) for k in range(1, n_cases + 1)]
    plan, k = [], 0
    for (_, infix), count in zip(_ISIC, isic_subset_sizes(n_cases)):
        data, truth = root / f"ISIC-2017_{infix}_Data", root / f"ISIC-2017_{infix}_Part1_GroundTruth"
        for _ in range(count):
            name = f"ISIC_{k:07d}"
            superpixels = data / f"{name}_superpixels.png" if k % 2 == 0 else None
            plan.append((k, data / f"{name}.jpg", truth / f"{name}_segmentation.png", superpixels))
            k += 1
    return plan


def _save(array: np.ndarray, path: Path, overwrite: bool, **kwargs) -> None:
    fmt = {".tif": "TIFF", ".png": "PNG", ".jpg": "JPEG"}[path.suffix]
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt, **kwargs)
    with atomic_write(path, overwrite=overwrite) as tmp:
        tmp.write_bytes(buffer.getvalue())


def _superpixels(shape: Tuple[int, int]) -> np.ndarray:
    """ISIC-style superpixel map: the index of an 8 x 8 grid cell, encoded in the RGB channels (little-endian)."""
    h, w = shape
    index = (np.arange(h)[:, None] // 8) * ((w + 7) // 8) + np.arange(w)[None, :] // 8
    return np.stack([index & 255, (index >> 8) & 255, (index >> 16) & 255], axis=-1).astype(np.uint8)


def write_image_release(
    dataset: str,
    root: PathLike,
    n_cases: int = 10,
    size: Sequence[int] = (64, 80),
    seed: int = 0,
    overwrite: bool = False,
) -> Path:
    """Write a small synthetic release of ``dataset`` under ``root``, laid out like the public one.

    All outputs are checked first (nothing is replaced unless ``overwrite``), then written atomically.

    Args:
        dataset: ``"clinicdb"``, ``"colondb"`` or ``"isic2017"``.
        root: destination folder (the ``--input`` of :mod:`xattnres_monai.data.images`).
        n_cases: number of image / mask pairs (for ISIC spread over the three official subsets).
        size: nominal ``(H, W)``; each case varies by +-8 pixels and is never a multiple of 32.
        seed: base seed; case ``k`` uses ``numpy.random.default_rng([seed, k])``.
        overwrite: replace existing files.

    Returns:
        ``root``.

    Example::

        >>> root = write_image_release("isic2017", "/tmp/isic", n_cases=10)
        >>> sorted(p.name for p in root.iterdir())[:2]
        ['ISIC-2017_Test_v2_Data', 'ISIC-2017_Test_v2_Part1_GroundTruth']
    """
    if dataset not in PHANTOM_DATASETS:
        raise ValueError(f"dataset must be one of {', '.join(PHANTOM_DATASETS)}; got {dataset!r}.")
    if n_cases < 1 or len(size) != 2 or min(size) < 17:
        raise ValueError("need n_cases >= 1 and a 2D size (H, W) of at least 17 pixels per axis.")
    root = Path(root)
    plan = _plan(dataset, root, n_cases)
    metadata: Dict[Path, List[str]] = {}
    if dataset == "isic2017":
        for _, image_path, _, _ in plan:
            csv_path = image_path.parent / f"{image_path.parent.name}_metadata.csv"
            metadata.setdefault(csv_path, []).append(image_path.stem)
    outputs = [p for _, image, mask, sp in plan for p in (image, mask, sp) if p is not None] + list(metadata)
    check_writable(outputs, overwrite=overwrite)
    if dataset == "isic2017":  # the real release has all six folders, even where a tiny phantom has no case
        for _, infix in _ISIC:
            for suffix in ("Data", "Part1_GroundTruth"):
                (root / f"ISIC-2017_{infix}_{suffix}").mkdir(parents=True, exist_ok=True)
    for k, image_path, mask_path, superpixel_path in plan:
        image, mask = generate_image_case(size, np.random.default_rng([seed, k]), dataset)
        _save(image, image_path, overwrite, **({"quality": 92} if image_path.suffix == ".jpg" else {}))
        _save(mask, mask_path, overwrite)
        if superpixel_path is not None:
            _save(_superpixels(mask.shape), superpixel_path, overwrite)
    for csv_path, names in metadata.items():
        with atomic_write(csv_path, overwrite=overwrite) as tmp:
            with open(tmp, "w", encoding="utf-8", newline="") as f:
                writer = csv.writer(f)
                writer.writerow(["image_id", "age_approximate", "sex"])
                for i, name in enumerate(names):
                    writer.writerow([name, 30 + 5 * (i % 10), ("male", "female", "unknown")[i % 3]])
    return root
