"""The 3D Synapse bundle (DynUNet + XAttnRes plug-in) end to end on generated CT phantoms.

A copy of the bundle is trained for one epoch on phantoms whose spacing differs from the bundle's ``pixdim`` (so
``Spacingd`` resamples and ``Invertd`` must bring the masks back), then evaluated (both metric conventions) and run
on new scans (a NIfTI file and a DICOM series of another size and spacing): masks on each input's own grid. Also
the baseline override. (The shipped metadata and network input / output: tests/test_bundle_metadata.py; export
against eager: tests/test_export.py; the command-line checks and export of a trained copy: tests/test_from_zero.py.)
A small network (``filters`` 4 .. 16) and 32^3 patches keep it to a few minutes on two CPU cores.
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from xattnres_monai.data.synapse import prepare_synapse
from xattnres_monai.testing.phantoms import write_phantoms

pytestmark = pytest.mark.slow

BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "synapse_ct_3d_segmentation"
ORGANS = ["Aorta", "GB", "KL", "KR", "Liver", "PC", "Spleen", "SM"]
#: the CPU-sized training: a small DynUNet, 32^3 patches
SMALL = ["--roi_size", "[32,32,32]", "--network_def#filters", "[4,8,16,16,16]", "--num_workers", "0",
         "--batch_size", "1", "--num_samples", "1"]  # fmt: skip


def run_bundle(bundle_root: Path, configs, *args, check: bool = True, source: Path = None) -> subprocess.CompletedProcess:
    """``monai.bundle run`` with the configs of ``source`` (default: the bundle itself) in ``bundle_root``."""
    folder = (source or bundle_root) / "configs"
    config_file = "[" + ",".join(f"'{folder / c}'" for c in configs) + "]"
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", config_file, "--bundle_root", str(bundle_root),
           "--meta_file", str(folder / "metadata.json"), "--logging_file", str(folder / "logging.conf"), *args]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, encoding="utf-8", errors="replace", timeout=900)
    if check and result.returncode != 0:
        raise AssertionError(f"bundle run failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
    return result


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("synapse3d")
    # 1.2 x 1.2 x 2.5 mm phantoms: resampled to the bundle's 1.5 x 1.5 x 2 mm
    write_phantoms(root / "raw", cases=5, size=(40, 40, 20), spacing=(1.2, 1.2, 2.5), seed=0)
    prepare_synapse(root / "raw", root / "data" / "datalist.json", split="random", num_val=1)
    bundle = root / "bundle"
    shutil.copytree(BUNDLE, bundle, ignore=shutil.ignore_patterns("eval", "data"))
    run_bundle(bundle, ["train.json"], "--datalist", str(root / "data" / "datalist.json"), "--max_epochs", "1",
               "--val_interval", "1", *SMALL)  # fmt: skip
    return root, bundle


def test_training_writes_the_model_and_its_settings_into_the_bundle(trained):
    _, bundle = trained
    checkpoint = torch.load(bundle / "models" / "model.pt", weights_only=True)
    assert any(k.startswith("routing.upsamples.3.") for k in checkpoint["model"])  # the finest decoder block
    assert any(k.startswith("deep_supervision_heads.1.") for k in checkpoint["model"])
    settings = checkpoint["settings"]
    assert settings["pixdim"] == [1.5, 1.5, 2.0] and settings["roi_size"] == [32, 32, 32]
    assert settings["network_def"]["_target_"] == "xattnres_monai.networks.plugins.dynunet.XAttnResDynUNet"
    assert settings["network_def"]["filters"] == [4, 8, 16, 16, 16]
    # the trained settings were written into the copy's configs: evaluate / inference need no overrides
    inference = json.loads((bundle / "configs" / "inference.json").read_text())
    assert inference["roi_size"] == [32, 32, 32] and inference["network_def"]["filters"] == [4, 8, 16, 16, 16]
    assert inference["network_def"]["_target_"] == "xattnres_monai.networks.utils.strict_network"
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    assert meta["network_data_format"]["inputs"]["image"]["spatial_shape"] == [32, 32, 32]
    assert (bundle / "models" / "checkpoint_epoch=1.pt").is_file()


def test_evaluate_reports_both_conventions_on_the_original_grid(trained):
    root, bundle = trained
    run_bundle(bundle, ["train.json", "evaluate.json"], "--datalist", str(root / "data" / "datalist.json"),
               "--num_workers", "0")  # fmt: skip
    datalist = json.loads((root / "data" / "datalist.json").read_text())
    for convention in ("literature", "physical"):
        with open(bundle / "eval" / f"per_case_{convention}.csv") as f:
            rows = list(csv.DictReader(f))
        assert len(rows) == len(datalist["test"])
        assert sum(1 for k in rows[0] if k.startswith("dice_")) == 8
    with open(bundle / "eval" / "summary.csv") as f:
        summary = list(csv.DictReader(f))
    assert {r["convention"] for r in summary} == {"literature", "physical"}
    assert all(column in summary[0] for column in ["DSC", "HD95", "mIoU"] + ORGANS)


def test_inference_on_nifti_and_dicom_writes_masks_on_the_input_grid(trained):
    root, bundle = trained
    from xattnres_monai.testing.dicom import write_ct_series

    scans = root / "new_scans"
    write_phantoms(root / "new_raw", cases=1, size=(44, 36, 17), spacing=(0.9, 1.1, 3.0), seed=5, first_case=50)
    scans.mkdir()
    nifti = scans / "patient1.nii.gz"
    shutil.copy(root / "new_raw" / "img0050.nii.gz", nifti)
    hu = np.asanyarray(nib.load(str(nifti)).dataobj).astype(np.float32)
    spacing, origin = (0.8, 0.9, 2.5), (-20.0, -15.0, 40.0)
    write_ct_series(scans / "patient2_dicom", hu[:, :, :14], spacing=spacing, origin=origin)
    out = root / "masks"
    run_bundle(bundle, ["inference.json"], "--dataset_dir", str(scans), "--output_dir", str(out))

    mask, source = nib.load(str(out / "patient1_seg.nii.gz")), nib.load(str(nifti))
    assert mask.shape == source.shape and mask.get_data_dtype() == np.uint8
    np.testing.assert_allclose(mask.affine, source.affine, atol=1e-4)
    assert set(np.unique(np.asanyarray(mask.dataobj))) <= set(range(9))

    dicom_mask = nib.load(str(out / "patient2_dicom_seg.nii.gz"))
    assert dicom_mask.shape == (44, 36, 14)  # columns, rows, slices
    # the series' geometry (LPS, axial, head first) in RAS, as nibabel stores it
    expected = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
    expected[:3, 3] = [-origin[0], -origin[1], origin[2]]
    np.testing.assert_allclose(dicom_mask.affine, expected, atol=1e-3)
    assert set(np.unique(np.asanyarray(dicom_mask.dataobj))) <= set(range(9))
    organs = json.loads((out / "patient1_organs.json").read_text())
    assert organs  # the organ report of the NIfTI scan


def test_baseline_override_trains_the_plain_dynunet(trained, tmp_path):
    root, _ = trained
    run_bundle(tmp_path, ["train.json"], "--datalist", str(root / "data" / "datalist.json"), "--max_epochs", "1",
               "--val_interval", "1", "--network_def#xattnres", "none", *SMALL, source=BUNDLE)  # fmt: skip
    state = torch.load(tmp_path / "models" / "model.pt", weights_only=True)
    assert state["settings"]["network_def"]["xattnres"] == "none"
    assert not [k for k in state["model"] if k.startswith("routing.")]
    from monai.networks.nets import DynUNet

    plain = DynUNet(3, 1, 9, [[3, 3, 3]] * 5, [[1, 1, 1]] + [[2, 2, 2]] * 4, [[2, 2, 2]] * 4, filters=[4, 8, 16, 16, 16],
                    deep_supervision=True, deep_supr_num=2)  # fmt: skip
    plain.load_state_dict(state["model"], strict=True)  # the baseline's weights are a plain MONAI DynUNet's
