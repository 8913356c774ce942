"""A trained bundle is a bundle: training records its settings in ``models/model.pt`` and the bundle's configs.

Fast tests: the settings comparison and the config rewriting (``xattnres_monai.bundle``), and the checkpoint
loader's refusal. Slow tests (one training of the Synapse bundle, 1 epoch at a non-default 32 x 32 input size, in a
copy of the bundle as ``make demo`` makes it): the bundle's documented inference and evaluation commands with no
overrides use the trained settings; a configuration that disagrees is refused with one line naming both values;
``python -m xattnres_monai predict`` on a phantom NIfTI file, a generated DICOM series folder and a real scanner
DICOM series (pyCERR) and NIfTI (tptbox) writes masks on each input's grid (checked with pydicom / nibabel).
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

from tests.independent_geometry import dicom_series_geometry, nifti_geometry
from tests.reliability.helpers import REPO, bundle_env
from xattnres_monai.bundle import check_settings, settings_differences, update_bundle_configs
from xattnres_monai.networks.definition import network_definition
from xattnres_monai.networks.nets import XAttnResUNet
from xattnres_monai.utils.files import InputError

BUNDLE = REPO / "bundles" / "synapse_ct_segmentation"
SIZE = [32, 32]


# ------------------------------------------------------------------------------------------------------- fast


def test_network_definition_records_checked_arguments():
    definition = network_definition(XAttnResUNet(2, 1, 9, skip="false", xattnres="decoder"))
    assert definition["_target_"].endswith("XAttnResUNet")
    assert definition["skip"] is False and definition["xattnres"] == "decoder" and definition["out_channels"] == 9
    wrapped = torch.nn.DataParallel(XAttnResUNet(2, 1, 9))
    assert network_definition(wrapped)["skip"] is True


def test_settings_differences_name_each_setting_and_argument():
    recorded = {"roi_size": [96, 96], "hu_window": [-125, 275], "num_classes": 9, "class_names": None,
                "network_def": {"_target_": "a.B", "skip": True, "xattnres": "full"}}  # fmt: skip
    configured = {"roi_size": (224, 224), "hu_window": [-125.0, 275.0], "num_classes": 9, "class_names": ["x"],
                  "network_def": {"_target_": "a.B", "skip": False, "xattnres": "full"}}  # fmt: skip
    assert settings_differences(recorded, configured) == [
        ("roi_size", [96, 96], [224, 224]),
        ("network_def#skip", True, False),
    ]
    with pytest.raises(InputError) as err:
        check_settings("models/model.pt", recorded, configured)
    message = str(err.value)
    assert "\n" not in message and "models/model.pt" in message
    assert "roi_size [96, 96] (this configuration: [224, 224])" in message and "--roi_size [96,96]" in message
    check_settings("m.pt", None, configured)  # a checkpoint without settings: nothing to compare
    check_settings("m.pt", recorded, dict(recorded))


def test_update_bundle_configs_writes_settings_and_keeps_overlays(tmp_path):
    shutil.copytree(BUNDLE / "configs", tmp_path / "configs")
    before = {p.name: p.read_bytes() for p in (tmp_path / "configs").iterdir()}
    net = XAttnResUNet(2, 1, 9, skip=False, xattnres="full")
    settings = {"network_def": network_definition(net), "roi_size": [64, 48], "hu_window": [-100, 200],
                "num_classes": 9, "class_names": None}  # fmt: skip
    changed = {Path(p).name for p in update_bundle_configs(str(tmp_path), settings)}
    assert changed == {"train.json", "inference.json", "metadata.json"}
    for name in ("train.json", "inference.json"):
        config = json.loads((tmp_path / "configs" / name).read_text())
        assert config["roi_size"] == [64, 48] and config["hu_window"] == [-100, 200]
        assert config["network_def"]["skip"] is False
        assert config["network_def"]["out_channels"] == "@num_classes"  # the reference still gives 9: kept
    inference = json.loads((tmp_path / "configs" / "inference.json").read_text())
    assert inference["network_def"]["_target_"] == "xattnres_monai.networks.utils.strict_network"
    meta = json.loads((tmp_path / "configs" / "metadata.json").read_text())
    assert meta["network_data_format"]["inputs"]["image"]["spatial_shape"] == [64, 48]
    for overlay in ("emcad.json", "dca.json", "evaluate.json", "multi_gpu_train.json", "logging.conf"):
        assert (tmp_path / "configs" / overlay).read_bytes() == before[overlay], overlay
    # stating the same settings again changes nothing
    assert update_bundle_configs(str(tmp_path), settings) == []


# ------------------------------------------------------------------------------------------------------- slow


def _cli(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, encoding="utf-8", errors="replace",
                          timeout=900, cwd=cwd, env=bundle_env())  # fmt: skip


def _ok(result: subprocess.CompletedProcess, what: str) -> subprocess.CompletedProcess:
    assert result.returncode == 0, f"{what} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-4000:]}"
    return result


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A copy of the Synapse bundle trained 1 epoch at 32 x 32 on 3 phantoms (data inside it, as the demo does)."""
    from xattnres_monai.demo import make_bundle

    root = tmp_path_factory.mktemp("trained_bundle")
    bundle = root / "synapse_bundle"
    make_bundle("synapse", bundle, fresh=False)
    data = bundle / "data"
    _ok(_cli("-m", "xattnres_monai.data.phantoms", "--output", str(data / "raw"), "--cases", "3", "--seed", "0",
             "--size", "48", "48", "16"), "phantoms")  # fmt: skip
    _ok(_cli("-m", "xattnres_monai.data.synapse", "--input", str(data / "raw"), "--output",
             str(data / "datalist.json")), "prepare")  # fmt: skip
    train = _ok(_cli("-m", "monai.bundle", "run", "--config_file", str(bundle / "configs" / "train.json"),
                     "--bundle_root", str(bundle), "--roi_size", json.dumps(SIZE), "--max_epochs", "1", "--val_interval", "1",
                     "--num_workers", "0", "--batch_size", "8"), "train")  # fmt: skip
    return {"bundle": bundle, "data": data, "train": train}


@pytest.mark.slow
def test_training_records_settings_in_checkpoint_and_configs(trained):
    bundle = trained["bundle"]
    checkpoint = torch.load(bundle / "models" / "model.pt", weights_only=True)
    assert set(checkpoint) == {"model", "settings"}
    assert checkpoint["settings"]["roi_size"] == SIZE and checkpoint["settings"]["num_classes"] == 9
    assert checkpoint["settings"]["network_def"]["xattnres"] == "full"
    for name in ("train.json", "inference.json"):
        assert json.loads((bundle / "configs" / name).read_text())["roi_size"] == SIZE
    # one console line per epoch, no per-iteration loss lines
    log = trained["train"].stdout + trained["train"].stderr
    assert log.count("epoch 1/1:") == 1 and "Iter:" not in log, log[-2000:]
    # the training curves: a picture and its table, with the routing entropy of every XAttnRes block (uniform
    # routing at the zero-initialised start is 1; after one epoch it has moved, but only a little)
    with open(bundle / "eval" / "training_curves.csv", newline="") as f:
        (row,) = list(csv.DictReader(f))
    entropy = {k.split("/", 1)[1]: float(v) for k, v in row.items() if k.startswith("routing_entropy/")}
    assert sorted(entropy) == sorted(["e2", "e3", "e4", "e5", "d1", "d2", "d3", "d4"]), sorted(row)
    assert all(0.5 < v <= 1.0 + 1e-6 for v in entropy.values()), entropy
    assert (bundle / "eval" / "training_curves.png").stat().st_size > 0


@pytest.mark.slow
def test_documented_inference_and_evaluation_need_no_overrides(trained, tmp_path):
    bundle = trained["bundle"]
    scans = sorted((trained["data"] / "raw").glob("img*.nii.gz"))[:1]
    new = tmp_path / "new"
    new.mkdir()
    shutil.copy(scans[0], new / scans[0].name)
    out = tmp_path / "out"
    _ok(_cli("-m", "monai.bundle", "run", "--config_file", str(bundle / "configs" / "inference.json"),
             "--bundle_root", str(bundle), "--dataset_dir", str(new), "--output_dir", str(out)), "inference")  # fmt: skip
    mask = out / scans[0].name.replace(".nii.gz", "_seg.nii.gz")
    source = nifti_geometry(scans[0])
    written = nib.load(str(mask))
    assert written.shape == source.shape and np.allclose(written.affine, source.affine, atol=1e-4)
    config = f"['{bundle / 'configs' / 'train.json'}','{bundle / 'configs' / 'evaluate.json'}']"
    _ok(_cli("-m", "monai.bundle", "run", "--config_file", config, "--bundle_root", str(bundle)), "evaluate")
    assert (bundle / "eval" / "summary.csv").is_file()


@pytest.mark.slow
def test_a_config_that_disagrees_is_refused_naming_both_values(trained, tmp_path):
    bundle = trained["bundle"]
    # the repository's own inference.json says 224 x 224: it is refused for this model, in one line
    result = _cli("-m", "monai.bundle", "run", "--config_file", str(BUNDLE / "configs" / "inference.json"),
                  "--bundle_root", str(bundle), "--dataset_dir", str(trained["data"] / "raw"), "--output_dir",
                  str(tmp_path / "out"))  # fmt: skip
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("error:")]
    assert len(lines) == 1, lines
    assert "model.pt" in lines[0] and "roi_size [32, 32] (this configuration: [224, 224])" in lines[0], lines[0]
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    # a network option that disagrees is named too
    result = _cli("-m", "monai.bundle", "run", "--config_file", str(bundle / "configs" / "inference.json"),
                  "--bundle_root", str(bundle), "--network_def#skip", "false", "--dataset_dir", str(trained["data"] / "raw"),
                  "--output_dir", str(tmp_path / "o2"))  # fmt: skip
    assert result.returncode == 2 and "network_def#skip true (this configuration: false)" in result.stdout + result.stderr


@pytest.mark.slow
def test_predict_on_nifti_file_and_dicom_folders(trained, tmp_path, corpus_pycerr_series, corpus_tptbox):
    from xattnres_monai.testing.dicom import write_ct_series

    bundle = trained["bundle"]
    scan = sorted((trained["data"] / "raw").glob("img*.nii.gz"))[0]
    series = tmp_path / "generated_series"
    volume = np.asarray(nib.load(str(scan)).dataobj, dtype=np.int16)
    write_ct_series(series, volume[:, :, :6], spacing=(1.5, 1.5, 3.0))
    real_series = corpus_pycerr_series[0]
    cases = {
        "nifti": (scan, nifti_geometry(scan)),
        "dicom": (series, dicom_series_geometry(series)),
        "real dicom": (real_series, dicom_series_geometry(real_series)),
        "real nifti": (corpus_tptbox["ct"], nifti_geometry(corpus_tptbox["ct"])),
    }
    for what, (source, geometry) in cases.items():
        out = tmp_path / f"out_{what.replace(' ', '_')}"
        result = _ok(_cli("-m", "xattnres_monai", "predict", "-i", str(source), "-o", str(out), "--bundle",
                          str(bundle)), f"predict {what}")  # fmt: skip
        masks = sorted(out.glob("*_seg.nii.gz"))
        assert len(masks) == 1, (what, sorted(out.iterdir()))
        mask = nib.load(str(masks[0]))
        assert tuple(mask.shape) == tuple(geometry.shape), (what, mask.shape, geometry.shape)
        assert np.allclose(mask.affine, geometry.affine, atol=1e-4), (what, mask.affine, geometry.affine)
        assert "[1/1]" in result.stdout + result.stderr  # one line per scan
