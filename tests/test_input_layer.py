"""The one input layer (xattnres_monai.data.inputs / .dicom, transforms.LoadVolumed) on scanner-like and damaged input.

Geometry is checked against pydicom / nibabel read directly (tests/independent_geometry.py), not against our code.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from xattnres_monai.testing.dicom import write_ct_series
from tests.independent_geometry import dicom_series_geometry
from tests.reliability.helpers import NUM_CLASSES, run_bundle_cli, save_nifti, write_model
from xattnres_monai.data.inputs import load_datalist, read_header, read_volume
from xattnres_monai.transforms import LoadVolumed
from xattnres_monai.utils.files import InputError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ct_series(tmp_path_factory) -> Path:
    """A scanner-sized series: 20 slices of 512 x 512, 0.98 x 0.98 x 2 mm (what crashed the interpreter before)."""
    folder = tmp_path_factory.mktemp("dicom") / "study"
    hu = np.random.default_rng(0).integers(-1000, 1500, size=(512, 512, 20)).astype(np.float32)
    write_ct_series(folder, hu)
    return folder


def _damaged(series: Path, tmp_path: Path, kind: str) -> Path:
    folder = tmp_path / f"{kind}_study"
    shutil.copytree(series, folder)
    if kind == "truncated":
        victim = folder / "IM0005.dcm"
        victim.write_bytes(victim.read_bytes()[:-1000])
    elif kind == "missing":
        (folder / "IM0007.dcm").unlink()
    elif kind == "foreign":
        other = write_ct_series(tmp_path / "other", np.zeros((512, 512, 1), np.float32))
        shutil.copy(other[0], folder / "IM9999.dcm")
    elif kind == "not_dicom":
        (folder / "notes.dcm").write_bytes(b"not a DICOM file at all" * 10)
    return folder


def test_scanner_sized_series_reads_with_the_pydicom_geometry(ct_series):
    # in a child process: the old reader's use-after-free killed the interpreter (exit 139), which pytest cannot catch
    code = (
        "import sys, numpy as np; from xattnres_monai.data.inputs import read_volume; "
        "v = read_volume(sys.argv[1]); a = np.asarray(v.data); "
        "print(v.shape, float(a.min()), float(a.max()), float(a.sum()))"
    )
    result = subprocess.run([sys.executable, "-c", code, str(ct_series)], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr[-2000:]
    volume = read_volume(ct_series)
    geometry = dicom_series_geometry(ct_series)
    assert volume.shape == tuple(geometry.shape) == (512, 512, 20)
    np.testing.assert_allclose(volume.affine, geometry.affine, atol=1e-4)
    np.testing.assert_allclose(read_header(ct_series).affine, geometry.affine, atol=1e-4)
    assert volume.data.meta["filename_or_obj"] == str(ct_series)


@pytest.mark.parametrize(
    "kind, culprit, message",
    [
        ("truncated", "IM0005.dcm", "truncated DICOM file"),
        ("missing", "IM0006.dcm and IM0008.dcm", "1 slice(s) missing"),
        ("foreign", "IM9999.dcm", "slice of another series"),
        ("not_dicom", "notes.dcm", "not a DICOM file"),
    ],
)
def test_damaged_series_is_refused_naming_the_file(ct_series, tmp_path, kind, culprit, message):
    folder = _damaged(ct_series, tmp_path, kind)
    with pytest.raises(InputError) as err:
        read_header(folder)
    assert culprit in str(err.value) and message in str(err.value)
    assert "\n" not in str(err.value)


def test_series_beside_its_rtstruct_reads_the_image_only(ct_series, tmp_path):
    import pydicom
    from pydicom.uid import generate_uid

    folder = tmp_path / "with_contours"
    shutil.copytree(ct_series, folder)
    ds = pydicom.dcmread(str(folder / "IM0000.dcm"))
    del ds.PixelData
    ds.Modality, ds.SeriesInstanceUID = "RTSTRUCT", generate_uid()
    ds.save_as(str(folder / "RS.dcm"))
    assert read_header(folder).shape == (512, 512, 20)


def test_two_series_in_one_folder_are_refused(tmp_path):
    folder = tmp_path / "two"
    write_ct_series(folder / "a", np.zeros((8, 8, 3), np.float32))
    write_ct_series(folder / "b", np.ones((8, 8, 3), np.float32), origin=(0, 0, 500))
    for f in list((folder / "b").iterdir()):
        f.rename(folder / "a" / f"B_{f.name}")
    with pytest.raises(InputError, match="holds 2 DICOM series"):
        read_header(folder / "a")


def test_one_slice_volumes_stay_3d(tmp_path):
    nifti = save_nifti(tmp_path / "one.nii.gz", np.arange(48, dtype=np.int16).reshape(8, 6, 1))
    assert read_volume(nifti).shape == (8, 6, 1) and tuple(read_volume(nifti).data.shape) == (8, 6, 1)
    files = write_ct_series(tmp_path / "single", np.arange(48, dtype=np.float32).reshape(8, 6, 1))
    volume = read_volume(files[0].parent)
    assert volume.shape == (8, 6, 1) and tuple(volume.data.shape) == (8, 6, 1)
    expected = dicom_series_geometry(files[0].parent).affine  # one slice: its through-plane spacing is arbitrary
    np.testing.assert_allclose(volume.affine[:, [0, 1, 3]], expected[:, [0, 1, 3]], atol=1e-4)


def test_folder_named_like_a_nifti_file_is_named_as_such(tmp_path):
    (tmp_path / "case.nii.gz").mkdir()
    with pytest.raises(InputError, match="is a folder named like a NIfTI file"):
        read_header(tmp_path / "case.nii.gz")


def test_load_volumed_checks_the_array_it_returns(tmp_path):
    image = save_nifti(tmp_path / "img.nii.gz", np.random.default_rng(0).normal(size=(8, 8, 4)).astype(np.float32))
    label = save_nifti(tmp_path / "lab.nii.gz", np.full((8, 8, 4), 3, np.uint8))
    load = LoadVolumed(["image", "label"], label_keys="label", num_classes=4, keep_original="label")
    item = load({"image": str(image), "label": str(label)})
    assert tuple(item["image"].shape) == (8, 8, 4) and item["image_meta_dict"]["filename_or_obj"] == str(image)
    assert torch.equal(item["original_label"], item["label"]) and item["original_label"] is not item["label"]
    with pytest.raises(InputError, match=r"lab.nii.gz: unknown label values \[3\] \(expected 0-2\)"):
        LoadVolumed(["image", "label"], label_keys="label", num_classes=3)({"image": str(image), "label": str(label)})
    shifted = save_nifti(tmp_path / "shifted.nii.gz", np.zeros((8, 8, 4), np.uint8), np.diag([1.0, 1, 1, 1]))
    with pytest.raises(InputError, match="shifted.nii.gz: affine differs"):
        load({"image": str(image), "label": str(shifted)})


def test_each_entry_point_decodes_each_volume_once(tmp_path, monkeypatch):
    """Count the decodes of a whole bundle inference run (header checks, loading, voxel checks, writing)."""
    import xattnres_monai.data.inputs as inputs
    from tests.reliability.helpers import run_workflow

    scans = tmp_path / "scans"
    for k in range(2):
        save_nifti(scans / f"s{k}.nii.gz", np.random.default_rng(k).normal(size=(12, 12, 3)).astype(np.float32))
    write_model(tmp_path)
    decoded = []
    real_load = inputs._load
    monkeypatch.setattr(inputs, "_load", lambda volume: decoded.append(str(volume.path)) or real_load(volume))
    outcome = run_workflow(["inference.json"], tmp_path, "infer", dataset_dir=str(scans))
    assert outcome.code == 0, outcome.stderr
    assert sorted(decoded) == sorted(str(p) for p in scans.iterdir())


def test_checkpoint_files_are_byte_identical_for_identical_contents(tmp_path):
    from xattnres_monai.handlers.resume import save_checkpoint

    state = {"w": torch.arange(10.0), "nested": {"step": 3}}
    save_checkpoint(state, str(tmp_path / "a.pt"))
    save_checkpoint(state, str(tmp_path / "b" / "model.pt"))
    digests = {hashlib.sha256(p.read_bytes()).hexdigest() for p in (tmp_path / "a.pt", tmp_path / "b" / "model.pt")}
    assert len(digests) == 1


def test_inference_datalist_forms_share_the_datalist_reader(tmp_path):
    scan = save_nifti(tmp_path / "a.nii.gz", np.ones((4, 4, 2), np.float32))
    for content in (["a.nii.gz"], [{"image": "a.nii.gz"}], {"testing": [{"image": "a.nii.gz"}]}):
        path = tmp_path / "list.json"
        path.write_text(json.dumps(content))
        assert [i["image"] for i in load_datalist(path, "test", keys=("image",))] == [str(scan)]


# ------------------------------------------------------------------------------------------- bundle, real CLI


@pytest.mark.slow
def test_inference_refuses_damaged_studies_and_segments_the_others(ct_series, tmp_path):
    """Acceptance: truncated / missing / foreign slices refused naming the file, nothing written for them; a good
    series, a 1-slice NIfTI volume and a folder named like a NIfTI file in the same run."""
    studies = tmp_path / "studies"
    studies.mkdir()
    shutil.copytree(ct_series, studies / "good_series")
    for kind in ("truncated", "missing", "foreign"):
        shutil.move(str(_damaged(ct_series, tmp_path, kind)), studies / f"{kind}_study")
    save_nifti(studies / "one_slice.nii.gz", np.random.default_rng(1).normal(size=(20, 16, 1)).astype(np.float32))
    (studies / "folder.nii.gz").mkdir()
    nan = np.random.default_rng(2).normal(size=(10, 10, 3)).astype(np.float32)
    nan[1, 1, 1] = np.nan
    save_nifti(studies / "nan.nii.gz", nan)
    write_model(tmp_path)
    out = tmp_path / "masks"
    result = run_bundle_cli(["inference.json"], tmp_path, "--dataset_dir", str(studies), "--output_dir", str(out))
    assert result.returncode == 2, result.stdout + result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    for culprit in ("IM0005.dcm", "IM0006.dcm and IM0008.dcm", "IM9999.dcm", "folder named like a NIfTI", "NaN"):
        assert any(culprit in line for line in errors), (culprit, errors)
    # the two good scans: mask and organ report each; the cohort table and records; nothing for the refused ones
    outputs = [f"{s}{x}" for s in ("good_series", "one_slice") for x in ("_seg.nii.gz", "_organs.csv", "_organs.json")]
    assert sorted(p.name for p in out.iterdir()) == sorted(outputs + [".cohort", "cohort.csv"])
    assert sorted(p.name for p in (out / ".cohort").iterdir()) == ["good_series_seg.json", "one_slice_seg.json",
                                                                   "rank0-of-1.csv"]  # fmt: skip
    mask = nib.load(str(out / "good_series_seg.nii.gz"))
    geometry = dicom_series_geometry(studies / "good_series")
    assert mask.shape == tuple(geometry.shape)
    np.testing.assert_allclose(mask.affine, geometry.affine, atol=1e-4)
    one = nib.load(str(out / "one_slice_seg.nii.gz"))
    assert one.shape == (20, 16, 1)
    assert np.asanyarray(one.dataobj).max() < NUM_CLASSES


@pytest.mark.slow
def test_training_into_an_unwritable_models_folder_is_refused_before_training(tmp_path):
    from tests.reliability.helpers import make_datalist

    make_datalist(tmp_path)
    (tmp_path / "models").write_text("a file where the models folder should be")
    result = run_bundle_cli(["train.json"], tmp_path, "--max_epochs", "1")
    assert result.returncode == 2, result.stdout + result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and str(tmp_path / "models") in errors[0] and "cannot write checkpoints" in errors[0]
    assert "epoch 1/" not in result.stdout + result.stderr and "Traceback" not in result.stderr


def test_folders_named_like_input_files_are_named_as_folders(tmp_path):
    from xattnres_monai.data.image_inputs import ImageInferenceInputs
    from xattnres_monai.data.synapse import prepare_synapse

    (tmp_path / "images" / "image.png").mkdir(parents=True)
    inputs = ImageInferenceInputs(str(tmp_path / "out"), dataset_dir=str(tmp_path / "images"))
    assert inputs.failures == [(str(tmp_path / "images" / "image.png"), inputs.failures[0][1])]
    assert inputs.failures[0][1].startswith("is a folder, not an input file")
    raw = tmp_path / "raw"
    for case in ("0001", "0002", "0003"):
        image = np.random.default_rng(int(case)).normal(size=(8, 8, 4)).astype(np.float32)
        (raw / f"img{case}.nii.gz").mkdir(parents=True) if case == "0002" else save_nifti(raw / f"img{case}.nii.gz", image)
        save_nifti(raw / f"label{case}.nii.gz", np.zeros((8, 8, 4), np.uint8))
    with pytest.raises(InputError, match=r"img0002.nii.gz: is a folder named like a NIfTI file"):
        prepare_synapse(raw, tmp_path / "prepared" / "datalist.json", split="random", num_val=1)
    assert not (tmp_path / "prepared").exists()
