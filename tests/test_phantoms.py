"""Synthetic abdominal phantoms: determinism, raw BTCV labels, HU values, geometry, CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy.ndimage import binary_erosion

from xattnres_monai.cli.phantoms import main
from xattnres_monai.data.synapse import remap_btcv_label
from xattnres_monai.testing.phantoms import ORGAN_HU, generate_phantom, phantom_affine, write_phantoms

REPO = Path(__file__).resolve().parents[1]
SIZE = (48, 48, 24)
ORGANS = (1, 2, 3, 4, 6, 7, 8, 11)  # raw ids of the 8 evaluated organs
TO_BACKGROUND = (5, 9, 12, 13)  # raw ids that the remap sends to background


def load(path: Path) -> np.ndarray:
    return np.asanyarray(nib.load(str(path)).dataobj)


def test_seed_determinism(tmp_path):
    first = write_phantoms(tmp_path / "a", cases=2, size=SIZE, seed=5)
    second = write_phantoms(tmp_path / "b", cases=2, size=SIZE, seed=5)
    for pa, pb in zip(first, second):
        for a, b in zip(pa, pb):
            np.testing.assert_array_equal(load(a), load(b))
    other = write_phantoms(tmp_path / "c", cases=1, size=SIZE, seed=6)
    assert not np.array_equal(load(first[0][1]), load(other[0][1]))
    assert not np.array_equal(load(first[0][1]), load(first[1][1]))  # cases differ from each other
    # case k depends only on (seed, k), not on how many cases are written
    np.testing.assert_array_equal(load(first[0][0]), load(write_phantoms(tmp_path / "d", 1, SIZE, seed=5)[0][0]))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_labels_and_hu(seed):
    image, label = generate_phantom((96, 96, 32), np.random.default_rng(seed))  # the default in-plane size
    assert image.shape == label.shape == (96, 96, 32) and image.dtype == np.int16 and label.dtype == np.uint8
    present = set(np.unique(label).tolist())
    assert set(ORGANS) | set(TO_BACKGROUND) | {0} == present
    assert set(np.unique(remap_btcv_label(label)).tolist()) == set(range(9))
    assert image.min() >= -1024 and image.max() <= 600
    assert abs(float(np.median(image[:3, :3, :]) + 1000)) < 40  # air in the corners
    core = {raw: binary_erosion(label == raw) for raw in (1, 6, 8, 2, 7, 4, 11)}  # away from partial volume
    means = {raw: float(np.median(image[mask])) for raw, mask in core.items()}
    for raw, value in means.items():  # organ centres close to their nominal HU, inside the window
        assert abs(value - ORGAN_HU[raw]) < 35, (raw, value)
        assert -125 < value < 275
    ordered = [means[r] for r in (4, 7, 11, 1, 6, 2, 8)]  # gallbladder < stomach < ... < aorta
    assert ordered == sorted(ordered)


def test_anatomy_and_affine(tmp_path):
    image_path, label_path = write_phantoms(tmp_path, cases=1, size=SIZE, spacing=(0.8, 0.8, 2.5), seed=0)[0]
    img = nib.load(str(image_path))
    np.testing.assert_allclose(img.header.get_zooms(), (0.8, 0.8, 2.5))
    np.testing.assert_allclose(img.affine, phantom_affine(SIZE, (0.8, 0.8, 2.5)))
    assert nib.aff2axcodes(img.affine) == ("R", "A", "S")
    label = load(label_path)
    centre = {raw: np.argwhere(label == raw).mean(0) for raw in ORGANS}
    assert centre[6][0] > centre[1][0]  # liver on the right (+x), spleen on the left
    assert centre[2][0] > centre[3][0]  # right kidney right of the left kidney
    assert centre[8][1] < centre[6][1]  # aorta posterior to the liver
    assert (label == 6).sum() == max((label == raw).sum() for raw in ORGANS)  # liver is the largest


def test_cli(tmp_path):
    cmd = [sys.executable, "-m", "xattnres_monai.data.phantoms", "--output", str(tmp_path), "--cases", "2"]
    result = subprocess.run([*cmd, "--size", "32", "32", "16"], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "img0001.nii.gz",
        "img0002.nii.gz",
        "label0001.nii.gz",
        "label0002.nii.gz",
    ]
    assert nib.load(str(tmp_path / "img0002.nii.gz")).shape == (32, 32, 16)
    with pytest.raises(SystemExit) as exit_info:  # existing files are not replaced without --overwrite
        main(["--output", str(tmp_path), "--cases", "1", "--size", "32", "32", "16"])
    assert exit_info.value.code == 2
    main(["--output", str(tmp_path), "--cases", "1", "--size", "32", "32", "16", "--overwrite", "--seed", "1"])
