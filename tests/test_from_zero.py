"""Each bundle's "From zero" section, run as written (slow).

The ``bash`` block under ``## From zero`` in ``bundles/<bundle>/docs/README.md`` is run with ``bash -e`` in a fresh
folder that holds, like the repository root, ``bundles/`` (a link to the repository's), with this environment's
``python`` first on ``PATH`` (as ``source .venv/bin/activate`` gives) and ``XATTNRES_DEMO_QUICK=1`` (the demo trains
1 epoch on 4 cases). The ``make label-server`` line starts a server that runs until stopped, so it is left out here;
serving a trained bundle is tested in tests/test_monai_label.py. Then the trained bundle, its reports, masks,
figures, curves and TorchScript export are checked, and the masks are compared with their inputs' grids by an
independent reader (nibabel, Pillow).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from tests.independent_geometry import dicom_series_geometry, nifti_geometry

REPO = Path(__file__).resolve().parents[1]
BUNDLES = {
    "synapse_ct_segmentation": "synapse",
    "synapse_ct_3d_segmentation": "synapse_3d",
    "clinicdb_polyp_segmentation": "clinicdb",
    "colondb_polyp_segmentation": "colondb",
    "isic2017_skin_segmentation": "isic2017",
}


def from_zero_block(bundle: str) -> str:
    """The first ``bash`` block of the bundle's ``## From zero`` section."""
    text = (REPO / "bundles" / bundle / "docs" / "README.md").read_text(encoding="utf-8")
    section = text.split("## From zero", 1)[1].split("\n## ", 1)[0]
    match = re.search(r"```bash\n(.*?)```", section, re.S)
    assert match, f"{bundle}: no bash block in its From zero section"
    return match.group(1)


def test_every_bundle_has_a_from_zero_section_first():
    for bundle in BUNDLES:
        text = (REPO / "bundles" / bundle / "docs" / "README.md").read_text(encoding="utf-8")
        headings = [line for line in text.splitlines() if line.startswith("## ")]
        assert headings[0] == "## From zero", (bundle, headings[:2])
        block = from_zero_block(bundle)
        for step in ("xattnres_monai demo", "evaluate.json", "xattnres_monai predict", "verify_metadata",
                     "verify_net_in_out", "ckpt_export", "label-server"):  # fmt: skip
            assert step in block, (bundle, step)


@pytest.mark.slow
@pytest.mark.parametrize("bundle", sorted(BUNDLES))
def test_from_zero_section_runs_as_written(bundle, tmp_path):
    task = BUNDLES[bundle]
    block = from_zero_block(bundle)
    lines = [line for line in block.splitlines() if not line.startswith("make label-server")]
    assert len(lines) < len(block.splitlines())  # the server line was there
    (tmp_path / "bundles").symlink_to(REPO / "bundles")
    env = dict(os.environ, XATTNRES_DEMO_QUICK="1", OMP_NUM_THREADS="2", PYTHONUNBUFFERED="1")
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    result = subprocess.run(["bash", "-e", "-c", "\n".join(lines)], cwd=tmp_path, env=env, capture_output=True,
                            encoding="utf-8", errors="replace", timeout=1500)  # fmt: skip
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-6000:]

    trained = tmp_path / "demo_output" / f"{task}_bundle"
    checkpoint = torch.load(trained / "models" / "model.pt", weights_only=True)
    assert set(checkpoint) == {"model", "settings"} and checkpoint["settings"]["roi_size"] in ([96, 96], [64, 64], [32, 32, 32])
    assert (trained / "models" / "model.ts").stat().st_size > 0
    assert (trained / "eval" / "summary.csv").is_file() and (trained / "eval" / "training_curves.png").is_file()
    assert "metadata is verified with no error" in log and "data shape of network is verified with no error" in log
    masks = tmp_path / "demo_output" / ("masks" if task == "synapse" else f"{task}_masks")
    figures = sorted(masks.glob("*_figure.png"))
    assert figures, sorted(masks.iterdir())
    for figure in figures:
        with Image.open(figure) as image:
            assert min(image.size) >= 512, (figure, image.size)
    if task in ("synapse", "synapse_3d"):
        checked = 0
        for mask in masks.glob("*_seg.nii.gz"):
            # each mask on its input's grid, read by pydicom (the DICOM series) or nibabel (the NIfTI phantom)
            name = mask.name[: -len("_seg.nii.gz")]
            folder = trained / "data" / "new_scans" / name
            source = dicom_series_geometry(folder) if folder.is_dir() else nifti_geometry(f"{folder}.nii.gz")
            written = nib.load(str(mask))
            assert written.shape == tuple(source.shape), (mask, written.shape, source.shape)
            np.testing.assert_allclose(written.affine, source.affine, atol=1e-4, err_msg=str(mask))
            checked += 1
        assert checked >= 2, sorted(masks.iterdir())  # the NIfTI phantom and its DICOM series
    else:
        sources = {p.stem: p for p in (trained / "data" / "new_images").iterdir()}
        written = sorted(masks.glob("*_mask.png"))
        assert len(written) == len(sources)
        for mask in written:
            with Image.open(mask) as m, Image.open(sources[mask.name[: -len("_mask.png")]]) as s:
                assert m.size == s.size
