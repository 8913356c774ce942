"""The three 2D binary bundles (ColonDB, ClinicDB, ISIC 2017) end to end on generated releases.

Each bundle is trained for one epoch on a small fake release laid out exactly like the public one
(TIFF for ClinicDB, ISIC file naming with superpixels and metadata CSVs), then evaluated (per-image CSV at
the original size) and run for inference on images of several formats and colour modes.
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from xattnres_monai.data.images import prepare_images
from xattnres_monai.testing.image_phantoms import write_image_release

BUNDLES = Path(__file__).resolve().parents[1] / "bundles"
DATASETS = {
    "colondb": "colondb_polyp_segmentation",
    "clinicdb": "clinicdb_polyp_segmentation",
    "isic2017": "isic2017_skin_segmentation",
}
TINY = ["--roi_size", "[64,64]", "--num_workers", "0", "--batch_size", "4"]


def run_bundle(bundle: str, configs, bundle_root, *args, check=True):
    config_dir = BUNDLES / bundle / "configs"
    config_file = "[" + ",".join(f"'{config_dir / c}'" for c in configs) + "]"
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", config_file, "--bundle_root", str(bundle_root)]
    result = subprocess.run(cmd + TINY + list(args), capture_output=True, encoding="utf-8", errors="replace")
    if check and result.returncode != 0:
        raise AssertionError(f"bundle run failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
    return result


@pytest.fixture(scope="module", params=sorted(DATASETS))
def trained(request, tmp_path_factory):
    """(dataset, bundle folder name, data root, trained bundle root): one epoch through ``ConfigWorkflow``."""
    from monai.bundle import ConfigWorkflow

    dataset = request.param
    bundle = DATASETS[dataset]
    root = tmp_path_factory.mktemp(dataset)
    write_image_release(dataset, root / "raw", n_cases=10, size=(64, 80), seed=1)
    prepare_images(dataset, root / "raw", root / "datalist.json")
    bundle_root = root / "bundle"
    configs = BUNDLES / bundle / "configs"
    workflow = ConfigWorkflow(
        config_file=str(configs / "train.json"),
        meta_file=str(configs / "metadata.json"),
        logging_file=str(configs / "logging.conf"),
        workflow_type="train",
        bundle_root=str(bundle_root),
        datalist=str(root / "datalist.json"),
        max_epochs=1,
        roi_size=[64, 64],
        num_workers=0,
        batch_size=4,
    )
    workflow.initialize()
    assert not workflow.check_properties()
    workflow.run()
    workflow.finalize()
    return dataset, bundle, root, bundle_root


@pytest.mark.slow
def test_train_writes_best_and_epoch_checkpoints(trained):
    _, _, _, bundle_root = trained
    models = bundle_root / "models"
    best = torch.load(models / "model.pt", weights_only=True)["model"]
    last = torch.load(models / "checkpoint_epoch=1.pt", weights_only=True)
    assert any(k.endswith("xattnres.query") or "query" in k for k in best), sorted(best)[:5]
    assert set(last) >= {"model", "optimizer"}
    assert (bundle_root / "eval").is_dir()  # TensorBoard events
    # the training curves with the routing entropy of the XAttnRes blocks (1 = the uniform start)
    with open(bundle_root / "eval" / "training_curves.csv", newline="") as f:
        (row,) = list(csv.DictReader(f))
    entropy = [float(v) for k, v in row.items() if k.startswith("routing_entropy/")]
    assert entropy and all(0.5 < v <= 1.0 + 1e-6 for v in entropy), row


@pytest.mark.slow
def test_evaluate_writes_one_row_per_test_image_at_original_size(trained):
    _, bundle, root, bundle_root = trained
    run_bundle(bundle, ["train.json", "evaluate.json"], bundle_root, "--datalist", str(root / "datalist.json"))
    datalist = json.loads((root / "datalist.json").read_text())
    with open(bundle_root / "eval" / "per_image.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(datalist["test"])
    for row in rows:
        label = Image.open(row["label"])
        assert (int(row["width"]), int(row["height"])) == label.size  # scored at the original size
        assert 0.0 <= float(row["dice"]) <= 1.0 and 0.0 <= float(row["iou"]) <= float(row["dice"]) + 1e-6
    with open(bundle_root / "eval" / "summary.csv") as f:
        summary = next(csv.DictReader(f))
    assert int(summary["images"]) == len(rows)
    assert int(summary["params"]) > 1_000_000 and float(summary["gflops"]) > 0
    assert summary["flops_input_shape"] == "1x3x64x64"
    # an existing report is never replaced without --overwrite
    again = run_bundle(bundle, ["train.json", "evaluate.json"], bundle_root, "--datalist", str(root / "datalist.json"),
                       check=False)
    assert again.returncode != 0 and "per_image.csv" in again.stdout + again.stderr


def _inference_inputs(folder: Path, source: Path) -> dict:
    """Copies of one test image in every accepted format and colour mode; name -> (width, height)."""
    folder.mkdir()
    image = Image.open(source).convert("RGB")
    image.save(folder / "frame.png")
    image.save(folder / "frame_jpeg.jpg", quality=95)
    image.save(folder / "frame_tiff.tif")
    image.save(folder / "frame_bmp.bmp")
    image.convert("L").save(folder / "gray.png")
    rgba = image.convert("RGBA")
    rgba.putalpha(128)
    rgba.save(folder / "rgba.png")
    wide = image.resize((image.width + 37, image.height - 5))
    wide.save(folder / "wide.png")
    return {p.stem: Image.open(p).size for p in folder.iterdir()}


@pytest.mark.slow
def test_inference_writes_binary_masks_at_input_size(trained, tmp_path):
    _, bundle, root, bundle_root = trained
    datalist = json.loads((root / "datalist.json").read_text())
    sizes = _inference_inputs(tmp_path / "new", root / datalist["test"][0]["image"])
    out = tmp_path / "out"
    result = run_bundle(bundle, ["inference.json"], bundle_root, "--dataset_dir", str(tmp_path / "new"),
                        "--output_dir", str(out), "--save_probabilities", "True")
    log = result.stdout + result.stderr
    assert "gray.png: converted L image to RGB" in log and "rgba.png: converted RGBA image to RGB" in log
    for name, size in sizes.items():
        mask = Image.open(out / f"{name}_mask.png")
        assert mask.mode == "L" and mask.size == size, (name, mask.size, size)
        assert set(np.unique(np.asarray(mask))) <= {0, 255}
        assert Image.open(out / f"{name}_prob.png").size == size
    # same image, same prediction whatever the container (lossless formats)
    reference = np.asarray(Image.open(out / "frame_mask.png"))
    for name in ("frame_tiff", "frame_bmp"):
        assert np.array_equal(np.asarray(Image.open(out / f"{name}_mask.png")), reference)

    # rerun with a damaged image and an unsupported file: existing masks untouched, the bad files named, exit 2
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    (tmp_path / "new" / "broken.png").write_bytes((tmp_path / "new" / "frame.png").read_bytes()[:120])
    shutil.copy(tmp_path / "new" / "frame.png", tmp_path / "new" / "extra.png")
    result = run_bundle(bundle, ["inference.json"], bundle_root, "--dataset_dir", str(tmp_path / "new"),
                        "--output_dir", str(out), check=False)
    log = result.stdout + result.stderr
    assert result.returncode == 2 and "broken.png" in log and "truncated" in log
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.name in before} == before
    assert (out / "extra_mask.png").exists() and not (out / "broken_mask.png").exists()
    assert not [p for p in out.iterdir() if p.name.startswith(".tmp")]


@pytest.mark.slow
@pytest.mark.parametrize("overlay", ["emcad.json", "dca.json", "structure_loss.json"])
def test_colondb_overlays_train_one_epoch(overlay, tmp_path):
    """EMCAD (deep supervision + mutation loss), DCA and the structure loss, each one merged config file."""
    write_image_release("colondb", tmp_path / "raw", n_cases=6, size=(64, 80), seed=2)
    prepare_images("colondb", tmp_path / "raw", tmp_path / "datalist.json")
    bundle = DATASETS["colondb"]
    result = run_bundle(bundle, ["train.json", overlay], tmp_path / "bundle", "--datalist",
                        str(tmp_path / "datalist.json"), "--max_epochs", "1")
    state = torch.load(tmp_path / "bundle" / "models" / "model.pt", weights_only=True)["model"]
    marker = {"emcad.json": "encoder.patch_embed1", "dca.json": "dca.", "structure_loss.json": "query"}[overlay]
    assert any(marker in k for k in state), sorted(state)[:5]
    assert "epoch 1/1: loss" in result.stdout + result.stderr
    if overlay == "emcad.json":  # the trained EMCAD bundle also runs inference with the same overlay
        new = tmp_path / "new"
        new.mkdir()
        datalist = json.loads((tmp_path / "datalist.json").read_text())
        source = tmp_path / datalist["test"][0]["image"]
        shutil.copy(source, new / "frame.png")
        run_bundle(bundle, ["inference.json", overlay], tmp_path / "bundle", "--dataset_dir", str(new),
                   "--output_dir", str(tmp_path / "out"))
        assert Image.open(tmp_path / "out" / "frame_mask.png").size == Image.open(source).size


@pytest.mark.slow
@pytest.mark.parametrize(
    "routing, expected",
    [
        (["--network_def#xattnres", "none"], "baseline"),  # plain U-Net: no pseudo-queries
        (["--network_def#skip", "False", "--network_def#xattnres", "full"], "replace"),  # XAttnRes instead of skips
    ],
)
def test_routing_configurations_selectable_by_override(routing, expected, tmp_path):
    """The paper's routing configurations (Tables 3-4) are command-line overrides of the 2D bundles too."""
    write_image_release("isic2017", tmp_path / "raw", n_cases=6, size=(64, 80), seed=3)
    prepare_images("isic2017", tmp_path / "raw", tmp_path / "datalist.json")
    run_bundle(DATASETS["isic2017"], ["train.json"], tmp_path / "bundle", "--datalist", str(tmp_path / "datalist.json"),
               "--max_epochs", "1", *routing)
    state = torch.load(tmp_path / "bundle" / "models" / "model.pt", weights_only=True)["model"]
    queries = [k for k in state if k.endswith(".query")]
    finest_decoder_in = state["decoder.3.conv.conv_0.conv.weight"].shape[1]
    if expected == "baseline":
        assert not queries and finest_decoder_in == 16 + 16  # upsampled features + skip
    else:
        assert len(queries) == 8 and finest_decoder_in == 16  # no skip concatenated
