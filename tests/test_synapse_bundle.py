"""The Synapse bundle end to end on generated phantoms: train, evaluate, infer (NIfTI and DICOM), metadata."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from xattnres_monai.data.synapse import prepare_synapse
from xattnres_monai.testing.phantoms import write_phantoms

BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "synapse_ct_segmentation"
CONFIGS = BUNDLE / "configs"
TINY = ["--roi_size", "[32,32]", "--num_workers", "0", "--batch_size", "4"]
ORGANS = ["Aorta", "GB", "KL", "KR", "Liver", "PC", "Spleen", "SM"]


def run_bundle(configs, bundle_root, *args, check=True):
    config_file = "[" + ",".join(f"'{CONFIGS / c}'" for c in configs) + "]"
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", config_file, "--bundle_root", str(bundle_root)]
    result = subprocess.run(cmd + TINY + list(args), capture_output=True, encoding="utf-8", errors="replace")
    if check and result.returncode != 0:
        raise AssertionError(f"bundle run failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
    return result


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("synapse")
    write_phantoms(root / "raw", cases=6, size=(40, 40, 16), seed=0)
    prepare_synapse(root / "raw", root / "datalist.json", split="random", num_val=1)
    bundle_root = root / "bundle"
    # the Python API (ConfigWorkflow) for training, as MONAI Label uses it
    from monai.bundle import ConfigWorkflow

    workflow = ConfigWorkflow(
        config_file=str(CONFIGS / "train.json"),
        meta_file=str(CONFIGS / "metadata.json"),
        logging_file=str(CONFIGS / "logging.conf"),
        workflow_type="train",
        bundle_root=str(bundle_root),
        datalist=str(root / "datalist.json"),
        max_epochs=1,
        val_interval=1,
        roi_size=[32, 32],
        num_workers=0,
        batch_size=4,
    )
    workflow.initialize()
    assert not workflow.check_properties()
    workflow.run()
    workflow.finalize()
    return root, bundle_root


@pytest.mark.slow
def test_train_writes_checkpoints(trained):
    _, bundle_root = trained
    assert (bundle_root / "models" / "model.pt").is_file()
    assert (bundle_root / "models" / "checkpoint_epoch=1.pt").is_file()
    import torch

    state = torch.load(bundle_root / "models" / "model.pt", weights_only=True)["model"]
    assert any(k.startswith("decoder.3.routing.query") for k in state)


@pytest.mark.slow
def test_evaluate_writes_one_row_per_case_with_every_organ(trained):
    root, bundle_root = trained
    run_bundle(["train.json", "evaluate.json"], bundle_root, "--datalist", str(root / "datalist.json"))
    datalist = json.loads((root / "datalist.json").read_text())
    for convention in ("literature", "physical"):
        with open(bundle_root / "eval" / f"per_case_{convention}.csv") as f:
            rows = list(csv.DictReader(f))
        assert len(rows) == len(datalist["test"])
        header = rows[0].keys()
        assert sum(1 for k in header if k.startswith("dice_")) == 8
    with open(bundle_root / "eval" / "summary.csv") as f:
        summary = list(csv.DictReader(f))
    assert {r["convention"] for r in summary} == {"literature", "physical"}
    for column in ["DSC", "HD95", "mIoU"] + ORGANS:
        assert column in summary[0]
    # existing reports are not overwritten without being asked
    again = run_bundle(["train.json", "evaluate.json"], bundle_root, "--datalist", str(root / "datalist.json"), check=False)
    assert again.returncode != 0 and "already exists" in (again.stdout + again.stderr)


def _write_dicom_series(image: np.ndarray, folder: Path) -> None:
    import SimpleITK as sitk

    folder.mkdir(parents=True)
    volume = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(image, (2, 1, 0))).astype(np.int16))
    volume.SetSpacing((0.8, 0.8, 2.5))
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for z in range(volume.GetDepth()):
        slice_ = volume[:, :, z]
        slice_.SetMetaData("0020|000e", "1.2.826.0.1.3680043.2.1125.1")  # series instance UID
        slice_.SetMetaData("0020|0032", f"0\\0\\{z * 2.5}")  # image position (patient)
        slice_.SetMetaData("0020|0013", str(z + 1))  # instance number
        slice_.SetMetaData("0020|0037", "1\\0\\0\\0\\1\\0")
        slice_.SetMetaData("0008|0060", "CT")
        slice_.SetMetaData("0028|0030", "0.8\\0.8")
        slice_.SetMetaData("0018|0050", "2.5")
        writer.SetFileName(str(folder / f"slice{z:03d}.dcm"))
        writer.Execute(slice_)


@pytest.mark.slow
def test_inference_on_nifti_and_dicom_keeps_geometry(trained):
    root, bundle_root = trained
    scans = root / "new_scans"
    write_phantoms(root / "new_raw", cases=1, size=(44, 36, 17), seed=5, first_case=50)
    scans.mkdir()
    nifti = scans / "patient1.nii.gz"
    (root / "new_raw" / "img0050.nii.gz").rename(nifti)
    image = np.asanyarray(nib.load(str(nifti)).dataobj)
    _write_dicom_series(image, scans / "patient2_dicom")
    out = root / "masks"
    from monai.bundle import ConfigWorkflow

    workflow = ConfigWorkflow(
        config_file=str(CONFIGS / "inference.json"), workflow_type="infer", bundle_root=str(bundle_root),
        dataset_dir=str(scans), output_dir=str(root / "unused"),
    )
    workflow.initialize()
    assert not workflow.check_properties()
    run_bundle(["inference.json"], bundle_root, "--dataset_dir", str(scans), "--output_dir", str(out))

    mask = nib.load(str(out / "patient1_seg.nii.gz"))
    source = nib.load(str(nifti))
    assert mask.shape == source.shape
    np.testing.assert_allclose(mask.affine, source.affine, atol=1e-4)
    assert mask.get_data_dtype() == np.uint8
    assert set(np.unique(np.asanyarray(mask.dataobj))) <= set(range(9))

    import SimpleITK as sitk

    dicom_mask = nib.load(str(out / "patient2_dicom_seg.nii.gz"))
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(scans / "patient2_dicom")))
    series = reader.Execute()
    assert dicom_mask.shape == series.GetSize()
    # DICOM (LPS) geometry in RAS, as nibabel stores it
    lps_to_ras = np.diag([-1.0, -1.0, 1.0])
    direction = np.array(series.GetDirection()).reshape(3, 3)
    expected = np.eye(4)
    expected[:3, :3] = lps_to_ras @ direction @ np.diag(series.GetSpacing())
    expected[:3, 3] = lps_to_ras @ np.array(series.GetOrigin())
    np.testing.assert_allclose(dicom_mask.affine, expected, atol=1e-3)
    assert set(np.unique(np.asanyarray(dicom_mask.dataobj))) <= set(range(9))

    # a rerun does not overwrite; a corrupt scan is reported by name, the others still run, exit code 2
    (scans / "broken.nii.gz").write_bytes(b"\x1f\x8b\x08truncated")
    before = (out / "patient1_seg.nii.gz").stat().st_mtime_ns
    result = run_bundle(["inference.json"], bundle_root, "--dataset_dir", str(scans), "--output_dir", str(out), check=False)
    assert result.returncode == 2
    assert "broken.nii.gz" in result.stdout + result.stderr
    assert (out / "patient1_seg.nii.gz").stat().st_mtime_ns == before
    assert not (out / "broken_seg.nii.gz").exists()
    assert not [p for p in out.iterdir() if p.name.startswith(".tmp")]


@pytest.mark.slow
@pytest.mark.parametrize("overlay", ["dca.json", "emcad.json"])
def test_routing_overlays_train_one_epoch(trained, overlay, tmp_path):
    root, _ = trained
    run_bundle(["train.json", overlay], tmp_path, "--datalist", str(root / "datalist.json"), "--max_epochs", "1",
               "--val_interval", "1")
    import torch

    state = torch.load(tmp_path / "models" / "model.pt", weights_only=True)["model"]
    marker = "dca." if overlay == "dca.json" else "encoder.patch_embed1"
    assert any(marker in k for k in state), sorted(state)[:5]
