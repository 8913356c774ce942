"""Each bundle's "From zero" section, run as written (slow).

The ``bash`` block under ``## From zero`` in ``bundles/<bundle>/docs/README.md`` is run with ``bash -e`` in a fresh
folder that holds, like the repository root, ``bundles/`` (a link to the repository's), with this environment's
``python`` first on ``PATH`` (as ``source .venv/bin/activate`` gives) and ``XATTNRES_DEMO_QUICK=1`` (the demo trains
1 epoch on 4 cases). The ``make label-server`` line starts a server that runs until stopped, so it is left out here;
serving a trained bundle is tested in tests/test_monai_label.py. Then the trained bundle, its reports, masks,
figures, curves and TorchScript export are checked, and the masks are compared with their inputs' grids by an
independent reader (nibabel, Pillow).

The three 2D bundles are one family (configs generated from one source, ``python -m xattnres_monai.tools.bundles``)
and their From zero blocks are one block with the task's names: a fast test holds them to that, the block runs as
written for ClinicDB (the ``make demo-2d`` default), and for ColonDB and ISIC 2017 the one step that differs, the
demo's generated data for that task (its release layout, preparation and new images), runs on its own.
"""

from __future__ import annotations

import json
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


#: the bundles whose From zero block runs end to end (the other 2D bundles: the same block, see the module docstring)
RUN = ("clinicdb_polyp_segmentation", "synapse_ct_3d_segmentation", "synapse_ct_segmentation")
IMAGE_FAMILY = ("clinicdb_polyp_segmentation", "colondb_polyp_segmentation", "isic2017_skin_segmentation")


def _commands(block: str, task: str, bundle: str) -> str:
    """The block's commands (comments dropped) with the task and bundle names as placeholders."""
    lines = [line.split(" #", 1)[0].rstrip() for line in block.splitlines() if not line.lstrip().startswith("#")]
    return "\n".join(lines).replace(bundle, "<bundle>").replace(task, "<task>")


def test_the_2d_from_zero_blocks_are_one_block_with_the_tasks_names():
    reference = _commands(from_zero_block(RUN[0]), BUNDLES[RUN[0]], RUN[0])
    assert "<task>" in reference and reference.count("\n") >= 7
    for bundle in IMAGE_FAMILY:
        assert _commands(from_zero_block(bundle), BUNDLES[bundle], bundle) == reference, bundle


@pytest.mark.slow
@pytest.mark.parametrize("bundle", [b for b in IMAGE_FAMILY if b not in RUN])
def test_the_demo_data_of_the_other_2d_tasks(bundle, tmp_path):
    """The step of the block that depends on the task: the bundle copy and the demo's generated data."""
    from xattnres_monai.demo import make_bundle, make_data

    task = BUNDLES[bundle]
    root = tmp_path / f"{task}_bundle"
    make_bundle(task, root, fresh=True)
    assert json.loads((root / "configs" / "metadata.json").read_text()) == json.loads(
        (REPO / "bundles" / bundle / "configs" / "metadata.json").read_text()
    )
    make_data(task, root / "data", cases=2)
    data = root / "data"
    datalist = json.loads((data / "datalist.json").read_text())
    pairs = [item for section in ("training", "validation", "test") for item in datalist.get(section, [])]
    assert len(pairs) == 8, datalist  # 4 x cases generated images, every one paired and split
    for item in pairs:
        image_path, label_path = (Path(item[k]) if Path(item[k]).is_absolute() else data / item[k] for k in ("image", "label"))
        with Image.open(image_path) as image, Image.open(label_path) as label:
            assert image.size == label.size and min(image.size) >= 64, (item, image.size, label.size)
            assert set(np.unique(np.asarray(label.convert("L")))) <= {0, 255}, item
    new = sorted((data / "new_images").iterdir())
    assert len(new) == 2, new
    for path in new:
        with Image.open(path) as image:
            assert min(image.size) >= 64, (path, image.size)


@pytest.mark.slow
@pytest.mark.parametrize("bundle", RUN)
def test_from_zero_section_runs_as_written(bundle, tmp_path):
    task = BUNDLES[bundle]
    block = from_zero_block(bundle)
    lines = [line for line in block.splitlines() if not line.startswith("make label-server")]
    assert len(lines) < len(block.splitlines())  # the server line was there
    (tmp_path / "bundles").symlink_to(REPO / "bundles")
    env = dict(os.environ, XATTNRES_DEMO_QUICK="1", PYTHONUNBUFFERED="1")
    env.setdefault("OMP_NUM_THREADS", "2")  # (make test-slow gives 1 where two test processes share the cores)
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
