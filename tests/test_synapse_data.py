"""Synapse data preparation: both on-disk forms, the datalist, the split and every refused input (through the CLI)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from xattnres_monai.data.synapse import (
    BTCV_TO_SYNAPSE,
    TEST_CASES,
    TRAIN_CASES,
    prepare_synapse,
    remap_btcv_label,
    split_cases,
)

REPO = Path(__file__).resolve().parents[1]
SHAPE = (8, 7, 3)
STANDARD = sorted(TRAIN_CASES + TEST_CASES)


# ------------------------------------------------------------------------------------------------ fake data writers


def save_nifti(path: Path, data: np.ndarray, affine: np.ndarray = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.diag([0.8, 0.8, 2.5, 1.0]) if affine is None else affine), str(path))
    return path


def make_btcv(root: Path, cases, layout: str = "flat", seed: int = 0) -> dict:
    """Raw BTCV pairs with random HU images and raw labels 0-13; returns case -> raw label array."""
    rng = np.random.default_rng(seed)
    img_dir, label_dir = (root, root) if layout == "flat" else (root / "img", root / "label")
    labels = {}
    for case in cases:
        labels[case] = rng.integers(0, 14, size=SHAPE).astype(np.uint8)
        save_nifti(img_dir / f"img{case}.nii.gz", rng.integers(-1000, 1000, size=SHAPE).astype(np.int16))
        save_nifti(label_dir / f"label{case}.nii.gz", labels[case])
    return labels


def make_transunet(root: Path, npz_cases: dict, h5_cases, hw=(6, 5), seed: int = 0) -> dict:
    """TransUNet's form: npz slices (case -> number of slices) and Z x H x W h5 volumes; returns case -> volumes."""
    h5py = pytest.importorskip("h5py")
    rng = np.random.default_rng(seed)
    volumes = {}
    (root / "train_npz").mkdir(parents=True, exist_ok=True)
    (root / "test_vol_h5").mkdir(parents=True, exist_ok=True)
    for case, n in npz_cases.items():
        image = rng.random((n, *hw)).astype(np.float32)
        label = rng.integers(0, 9, size=(n, *hw)).astype(np.uint8)
        for k in range(n):
            np.savez(root / "train_npz" / f"case{case}_slice{k:03d}.npz", image=image[k], label=label[k])
        volumes[case] = (image, label)
    for case in h5_cases:
        image = rng.random((4, *hw)).astype(np.float32)
        label = rng.integers(0, 9, size=(4, *hw)).astype(np.uint8)
        with h5py.File(root / "test_vol_h5" / f"case{case}.npy.h5", "w") as f:
            f.create_dataset("image", data=image)
            f.create_dataset("label", data=label)
        volumes[case] = (image, label)
    return volumes


def run_cli(*args) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "xattnres_monai.data.synapse", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=120)


@pytest.fixture(scope="module")
def standard_btcv(tmp_path_factory):
    root = tmp_path_factory.mktemp("RawData") / "Training"
    return root, make_btcv(root, STANDARD, layout="subfolders")


# ----------------------------------------------------------------------------------------------------- raw BTCV


def test_remap_table():
    raw = np.arange(14)
    assert remap_btcv_label(raw).tolist() == [0, 1, 2, 3, 4, 0, 6, 7, 8, 0, 0, 5, 0, 0]
    assert remap_btcv_label(raw).dtype == np.uint8
    assert {BTCV_TO_SYNAPSE[r] for r in (5, 9, 10, 12, 13)} == {0}


def test_btcv_standard_split_via_cli(standard_btcv, tmp_path):
    root, raw_labels = standard_btcv
    output = tmp_path / "prepared" / "datalist.json"
    result = run_cli("--input", root, "--output", output)
    assert result.returncode == 0, result.stderr
    assert "split: standard" in result.stdout
    assert re.search(r"training\s+15 cases\s+45 axial slices", result.stdout)
    assert re.search(r"validation\s+3 cases\s+9 axial slices", result.stdout)
    assert re.search(r"test\s+12 cases\s+36 axial slices", result.stdout)

    datalist = json.loads(output.read_text())
    assert datalist["format"] == "btcv" and datalist["intensity"] == "hu"
    labels = datalist["labels"]
    assert labels["0"] == "background" and labels["8"] == "aorta" and len(labels) == 9
    cases = {subset: [item["case"] for item in datalist[subset]] for subset in ("training", "validation", "test")}
    assert cases == datalist["split"]["cases"]
    assert sorted(cases["test"]) == sorted(TEST_CASES)
    assert len(cases["validation"]) == 3 and set(cases["validation"]) <= set(TRAIN_CASES)
    assert sorted(cases["training"] + cases["validation"]) == sorted(TRAIN_CASES)
    assert not set(cases["training"]) & set(cases["validation"])
    assert datalist["split"]["slices"] == {"training": 45, "validation": 9, "test": 36}

    from monai.data import load_decathlon_datalist

    for subset in ("training", "validation", "test"):
        for item in load_decathlon_datalist(output, data_list_key=subset):  # base_dir: the datalist's folder
            case = item["case"]
            assert Path(item["image"]).samefile(root / "img" / f"img{case}.nii.gz")  # referenced in place
            assert Path(item["label"]).samefile(output.parent / "labels_9class" / f"label{case}.nii.gz")
            label = nib.load(item["label"])
            assert label.get_data_dtype() == np.uint8
            np.testing.assert_array_equal(np.asanyarray(label.dataobj), remap_btcv_label(raw_labels[case]))
            np.testing.assert_allclose(label.affine, nib.load(item["image"]).affine)
    assert not item["image"].startswith(str(output.parent / "labels_9class"))
    for entry in datalist["test"]:
        assert not Path(entry["image"]).is_absolute() and not Path(entry["label"]).is_absolute()

    again = run_cli("--input", root, "--output", output)
    assert again.returncode == 2 and "datalist.json" in again.stderr and "already exists" in again.stderr
    assert run_cli("--input", root, "--output", output, "--overwrite", "--num-val", "4").returncode == 0
    assert len(json.loads(output.read_text())["validation"]) == 4


def test_validation_subset_is_seeded(standard_btcv, tmp_path):
    root, _ = standard_btcv
    first = prepare_synapse(root, tmp_path / "a" / "d.json", seed=7)["split"]["cases"]
    second = prepare_synapse(root, tmp_path / "b" / "d.json", seed=7)["split"]["cases"]
    assert first == second
    draws = {tuple(split_cases(STANDARD, seed=s)["validation"]) for s in range(6)}
    assert len(draws) > 1
    assert len(split_cases(STANDARD, val_fraction=0.17)["validation"]) == 3
    assert len(split_cases(STANDARD, num_val=5)["validation"]) == 5


def test_btcv_flat_layout_random_split(tmp_path):
    cases = [f"{i:04d}" for i in range(41, 51)]  # outside the standard 30
    raw = make_btcv(tmp_path / "in", cases, layout="flat")
    output = tmp_path / "out" / "datalist.json"
    result = run_cli("--input", tmp_path / "in", "--output", output, "--seed", "3")
    assert result.returncode == 0, result.stderr
    assert "split: random" in result.stdout
    split = json.loads(output.read_text())["split"]
    sizes = [len(split["cases"][s]) for s in ("training", "validation", "test")]
    assert sizes == [6, 2, 2]
    assert sorted(sum(split["cases"].values(), [])) == cases
    label = nib.load(output.parent / "labels_9class" / "label0041.nii.gz")
    np.testing.assert_array_equal(np.asanyarray(label.dataobj), remap_btcv_label(raw["0041"]))
    assert split == prepare_synapse(tmp_path / "in", tmp_path / "again" / "d.json", seed=3)["split"]


def test_phantoms_through_the_pipeline(tmp_path):
    from xattnres_monai.testing.phantoms import write_phantoms

    write_phantoms(tmp_path / "ph", cases=4, size=(32, 32, 16), seed=1)
    datalist = prepare_synapse(tmp_path / "ph", tmp_path / "out" / "datalist.json")
    assert datalist["split"]["mode"] == "random" and len(datalist["test"]) == 1
    label = nib.load(tmp_path / "out" / "labels_9class" / "label0001.nii.gz")
    assert set(np.unique(np.asanyarray(label.dataobj)).tolist()) == set(range(9))


# ------------------------------------------------------------------------------------------- TransUNet's preprocessed


def test_transunet_form_is_converted_not_remapped(tmp_path):
    volumes = make_transunet(tmp_path / "in", {"0005": 3, "0006": 2, "0007": 4}, ["0001", "0002"])
    output = tmp_path / "out" / "datalist.json"
    result = run_cli("--input", tmp_path / "in", "--output", output, "--num-val", "1")
    assert result.returncode == 0, result.stderr
    assert "format: transunet" in result.stdout and "split: random" in result.stdout
    datalist = json.loads(output.read_text())
    assert datalist["format"] == "transunet" and datalist["intensity"] == "normalised"
    assert sorted(item["case"] for s in ("training", "validation", "test") for item in datalist[s]) == sorted(volumes)
    for case, (image, label) in volumes.items():
        img = nib.load(output.parent / "transunet_nifti" / f"img{case}.nii.gz")
        lab = nib.load(output.parent / "transunet_nifti" / f"label{case}.nii.gz")
        assert img.shape == (6, 5, image.shape[0])  # (H, W, Z)
        np.testing.assert_allclose(img.affine, np.eye(4))
        for k in range(image.shape[0]):  # axial slice k is TransUNet's slice k, labels unchanged (5 stays 5)
            np.testing.assert_array_equal(np.asanyarray(img.dataobj)[:, :, k], image[k])
            np.testing.assert_array_equal(np.asanyarray(lab.dataobj)[:, :, k], label[k])
    slices = datalist["split"]["slices"]
    assert sum(slices.values()) == 3 + 2 + 4 + 4 + 4


def test_transunet_standard_split(tmp_path):
    make_transunet(tmp_path / "in", {c: 2 for c in TRAIN_CASES}, TEST_CASES, hw=(4, 4))
    datalist = prepare_synapse(tmp_path / "in", tmp_path / "out" / "datalist.json")
    assert datalist["split"]["mode"] == "standard"
    assert sorted(item["case"] for item in datalist["test"]) == sorted(TEST_CASES)
    assert datalist["split"]["slices"]["training"] + datalist["split"]["slices"]["validation"] == 36


# ---------------------------------------------------------------------------------------------------- bad inputs


def _good(root: Path) -> Path:
    make_btcv(root, ["0001", "0002", "0003"])
    return root


def _replace(path: Path, data: np.ndarray, affine: np.ndarray = None) -> None:
    path.unlink()
    save_nifti(path, data, affine)


def bad_shape(root):
    _replace(_good(root) / "label0002.nii.gz", np.zeros((8, 7, 4), np.uint8))
    return "label0002.nii.gz"


def bad_affine(root):
    _replace(_good(root) / "label0002.nii.gz", np.zeros(SHAPE, np.uint8), np.diag([1.0, 0.8, 2.5, 1.0]))
    return "label0002.nii.gz"


def bad_label_value(root):
    label = np.zeros(SHAPE, np.uint8)
    label[0, 0, 0] = 14
    _replace(_good(root) / "label0002.nii.gz", label)
    return "label0002.nii.gz"


def missing_label(root):
    (_good(root) / "label0002.nii.gz").unlink()
    return "img0002.nii.gz"


def missing_image(root):
    (_good(root) / "img0003.nii.gz").unlink()
    return "label0003.nii.gz"


def zero_byte(root):
    (_good(root) / "img0002.nii.gz").write_bytes(b"")
    return "img0002.nii.gz"


def truncated_gz(root):
    big = np.random.default_rng(0).integers(-1000, 1000, size=(32, 32, 8)).astype(np.int16)
    path = _good(root) / "img0002.nii.gz"
    _replace(path, big)
    _replace(root / "label0002.nii.gz", np.zeros(big.shape, np.uint8))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return "img0002.nii.gz"


def volume_4d(root):
    _replace(_good(root) / "img0002.nii.gz", np.zeros((*SHAPE, 2), np.int16))
    return "img0002.nii.gz"


def volume_2d(root):
    _replace(_good(root) / "img0002.nii.gz", np.zeros(SHAPE[:2], np.int16))
    return "img0002.nii.gz"


def nan_image(root):
    image = np.zeros(SHAPE, np.float32)
    image[1, 2, 0] = np.nan
    _replace(_good(root) / "img0002.nii.gz", image)
    return "img0002.nii.gz"


def empty_folder(root):
    root.mkdir()
    return str(root)


def nonexistent_folder(root):
    return str(root)


def standard_split_missing(root):
    _good(root)
    return "img0021.nii.gz"


def transunet_label_value(root):
    make_transunet(root, {"0005": 2, "0006": 2, "0007": 2}, [])
    path = root / "train_npz" / "case0006_slice001.npz"
    np.savez(path, image=np.zeros((6, 5), np.float32), label=np.full((6, 5), 9, np.uint8))
    return "case0006_slice001.npz"


def transunet_zero_byte_h5(root):
    make_transunet(root, {"0005": 2, "0006": 2}, ["0001"])
    (root / "test_vol_h5" / "case0001.npy.h5").write_bytes(b"")
    return "case0001.npy.h5"


BAD_INPUTS = [
    bad_shape,
    bad_affine,
    bad_label_value,
    missing_label,
    missing_image,
    zero_byte,
    truncated_gz,
    volume_4d,
    volume_2d,
    nan_image,
    empty_folder,
    nonexistent_folder,
    standard_split_missing,
    transunet_label_value,
    transunet_zero_byte_h5,
]


@pytest.mark.parametrize("make_bad", BAD_INPUTS, ids=[f.__name__ for f in BAD_INPUTS])
def test_bad_input_is_refused(tmp_path, make_bad):
    root = tmp_path / "in"
    name = make_bad(root)
    out_dir = tmp_path / "out"
    extra = ["--split", "standard"] if make_bad is standard_split_missing else []
    result = run_cli("--input", root, "--output", out_dir / "datalist.json", *extra)
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and name in lines[0], result.stderr
    assert "Traceback" not in result.stderr
    assert not out_dir.exists()


def test_all_bad_cases_are_reported(tmp_path):
    root = _good(tmp_path / "in")
    (root / "img0001.nii.gz").write_bytes(b"")
    label = np.full(SHAPE, 20, np.uint8)
    _replace(root / "label0003.nii.gz", label)
    result = run_cli("--input", root, "--output", tmp_path / "out" / "datalist.json")
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 2 and all(line.startswith("error: ") for line in lines)
    assert "img0001.nii.gz" in lines[0] and "zero-byte" in lines[0]
    assert "label0003.nii.gz" in lines[1] and "[20]" in lines[1]
    assert not (tmp_path / "out").exists()
