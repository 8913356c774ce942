"""Every entry point on real medical files (tests/corpus.py), through the real command lines.

1. ``python -m xattnres_monai.data.prepare`` on real labelled data:

   - pyCERR: 3 CT DICOM series folders side by side with ``<case>_seg.nii.gz``, the GTV-1 of each RTSTRUCT drawn
     by the independent reader (tests/independent_geometry.py: pydicom + PIL) and written with nibabel on the
     series' RAS affine; ``--labels gtv=1``;
   - tptbox: the spine CT and its vertebra mask {21, 22, 23}, ``--labels L2=21,L3=22,L4=23`` (one case: the
     "validation and test are the training cases" warning).

2. ``python -m monai.bundle run`` train (1 tiny epoch) with the prepared ``classes.json`` overlay: the network has
   one output channel per class (2; 4).
3. evaluate (``train.json`` + ``evaluate.json`` + ``classes.json``): the reports name the user's classes.
4. inference (``inference.json`` + ``classes.json``) over a folder of every kind of real scan: the 4 pyCERR DICOM
   series, the tptbox CT and MR NIfTI, Colin27 ``ch2`` and single-slice DICOM folders. Every mask has the source's
   shape, affine (1e-4 mm) and orientation as read by pydicom / nibabel, uint8 values 0..num_classes-1.
5. the same folder plus a copy of a pyCERR series with one slice truncated: that scan is refused naming the slice,
   no mask for it, every other mask written, exit code 2.

The MONAI Label server on a real study is in tests/test_monai_label.py
(``test_infer_on_a_real_ct_study_keeps_its_grid``).

Every bundle run is a subprocess with ``OMP_NUM_THREADS=1`` (tests/reliability/helpers.py) at a 16 x 16 slice size.
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

import nibabel as nib
import numpy as np
import pytest

from tests import corpus
from tests.independent_geometry import dicom_series_geometry, nifti_geometry, rtstruct_to_label
from tests.reliability.helpers import REPO, bundle_env, run_bundle_cli

pytestmark = pytest.mark.slow

AFFINE_TOL = 1e-4
#: pyCERR patients prepared for training (all 4 are segmented by inference)
TRAIN_PATIENTS = ("pat_2", "pat_3", "pat_4")
#: single-slice DICOM folders segmented by inference: uncompressed CT, JPEG 2000 lossless CT, big-endian MR
SINGLE_SLICES = ("CT_small", "693_J2KR", "MR_small_bigendian")
#: the slice of the damaged copy of pat_2 that is truncated (index in the sorted file list)
DAMAGED_SLICE = 20


def _prepare(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "xattnres_monai.data.prepare", *args]
    return subprocess.run(cmd, capture_output=True, encoding="utf-8", errors="replace", timeout=600, cwd=REPO,
                          env=bundle_env())  # fmt: skip


def _ok(result: subprocess.CompletedProcess, what: str) -> subprocess.CompletedProcess:
    assert result.returncode == 0, f"{what}: exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    return result


def _timed(timings: Dict[str, float], name: str, fn):
    start = time.perf_counter()
    try:
        return fn()
    finally:
        timings[name] = time.perf_counter() - start


def _train_and_evaluate(data: Path, run: Path, timings: Dict[str, float], name: str) -> Dict[str, object]:
    overlay = [data / "classes.json"]
    datalist = str(data / "datalist.json")
    train = _timed(timings, f"{name} train", lambda: run_bundle_cli(
        ["train.json"], run, "--datalist", datalist, "--max_epochs", "1", "--val_interval", "1",
        extra_configs=overlay))  # fmt: skip
    _ok(train, f"{name}: train")
    evaluate = _timed(timings, f"{name} evaluate", lambda: run_bundle_cli(
        ["train.json", "evaluate.json"], run, "--datalist", datalist, extra_configs=overlay))  # fmt: skip
    _ok(evaluate, f"{name}: evaluate")
    return {"data": data, "run": run, "train": train, "evaluate": evaluate}


# ------------------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def timings():
    measured: Dict[str, float] = {}
    yield measured
    print("\nreal entry points, seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in measured.items()))


@pytest.fixture(scope="module")
def pycerr_prepared(tmp_path_factory, corpus_pycerr_series, timings):
    """Side-by-side layout ``<patient>/`` (a copy of its DICOM series) + ``<patient>_seg.nii.gz`` (GTV-1), prepared
    with the real CLI."""
    root = tmp_path_factory.mktemp("real_pycerr")
    raw = root / "raw"
    raw.mkdir()
    series = dict(zip(corpus.pycerr_patients(), corpus_pycerr_series))
    expected = {}
    for patient in TRAIN_PATIENTS:
        folder = series[patient]
        shutil.copytree(folder, raw / patient)
        label = rtstruct_to_label(folder, corpus.obtain(corpus.pycerr_rtstruct, patient), roi_name="GTV-1")
        assert label.any(), patient
        affine = dicom_series_geometry(folder).affine
        nib.save(nib.Nifti1Image(label, affine), str(raw / f"{patient}_seg.nii.gz"))
        expected[patient] = label
    data = root / "data"
    result = _timed(timings, "pycerr prepare", lambda: _prepare(
        "--input", str(raw), "--output", str(data / "datalist.json"), "--labels", "gtv=1"))  # fmt: skip
    _ok(result, "prepare pyCERR")
    return {"root": root, "raw": raw, "data": data, "prepare": result, "labels": expected}


@pytest.fixture(scope="module")
def tptbox_prepared(tmp_path_factory, corpus_tptbox, timings):
    """The tptbox spine CT + vertebra mask, side by side, one case."""
    root = tmp_path_factory.mktemp("real_tptbox")
    raw = root / "raw"
    raw.mkdir()
    shutil.copy(corpus_tptbox["ct"], raw / "spine.nii.gz")
    shutil.copy(corpus_tptbox["ct_vert_mask"], raw / "spine_seg.nii.gz")
    data = root / "data"
    result = _timed(timings, "tptbox prepare", lambda: _prepare(
        "--input", str(raw), "--output", str(data / "datalist.json"), "--labels", "L2=21,L3=22,L4=23"))  # fmt: skip
    _ok(result, "prepare tptbox")
    return {"root": root, "raw": raw, "data": data, "prepare": result}


@pytest.fixture(scope="module")
def pycerr_trained(pycerr_prepared, timings):
    return _train_and_evaluate(pycerr_prepared["data"], pycerr_prepared["root"] / "run", timings, "pycerr")


@pytest.fixture(scope="module")
def tptbox_trained(tptbox_prepared, timings):
    return _train_and_evaluate(tptbox_prepared["data"], tptbox_prepared["root"] / "run", timings, "tptbox")


@pytest.fixture(scope="module")
def scans(tmp_path_factory, corpus_pycerr_series, corpus_tptbox, corpus_mricron, corpus_single_dicoms) -> dict:
    """A folder of every kind of real scan, and for each the source geometry read by pydicom / nibabel."""
    folder = tmp_path_factory.mktemp("real_scans")
    sources = {}  # output stem -> (scan path, "dicom" | "nifti")
    for patient, series in zip(corpus.pycerr_patients(), corpus_pycerr_series):
        shutil.copytree(series, folder / patient)  # the corpus folders are all named "ct"
        sources[patient] = (folder / patient, "dicom")
    for name, path in (("spine_ct", corpus_tptbox["ct"]), ("spine_mr", corpus_tptbox["mr"]),
                       ("ch2", corpus_mricron["ch2"])):  # fmt: skip
        shutil.copy(path, folder / f"{name}.nii.gz")
        sources[name] = (folder / f"{name}.nii.gz", "nifti")
    for stem in SINGLE_SLICES:
        shutil.copytree(corpus_single_dicoms[stem], folder / stem)
        sources[stem] = (folder / stem, "dicom")
    geometry = {}
    for stem, (path, kind) in sources.items():
        if kind == "dicom":
            g = dicom_series_geometry(path)
            geometry[stem] = (tuple(g.shape), g.affine)
        else:
            g = nifti_geometry(path)
            geometry[stem] = (tuple(g.shape), g.affine)
    return {"folder": folder, "sources": sources, "geometry": geometry}


@pytest.fixture(scope="module")
def inference_clean(pycerr_trained, scans, timings, tmp_path_factory):
    out = tmp_path_factory.mktemp("real_masks_clean")
    result = _timed(timings, "inference clean", lambda: run_bundle_cli(
        ["inference.json"], pycerr_trained["run"], "--dataset_dir", str(scans["folder"]), "--output_dir", str(out),
        extra_configs=[pycerr_trained["data"] / "classes.json"]))  # fmt: skip
    return {"result": result, "out": out}


@pytest.fixture(scope="module")
def inference_damaged(pycerr_trained, scans, timings, tmp_path_factory):
    """The scans folder of :func:`scans` plus ``pat_2_damaged/``: pat_2 with one slice cut by 1000 bytes."""
    folder = tmp_path_factory.mktemp("real_scans_damaged")
    for entry in scans["folder"].iterdir():
        target = folder / entry.name
        target.symlink_to(entry, target_is_directory=entry.is_dir())
    damaged = folder / "pat_2_damaged"
    shutil.copytree(scans["folder"] / "pat_2", damaged)
    slice_file = damaged / dicom_series_geometry(damaged).files[DAMAGED_SLICE].name
    content = slice_file.read_bytes()
    slice_file.write_bytes(content[:-1000])
    out = tmp_path_factory.mktemp("real_masks_damaged")
    result = _timed(timings, "inference damaged", lambda: run_bundle_cli(
        ["inference.json"], pycerr_trained["run"], "--dataset_dir", str(folder), "--output_dir", str(out),
        extra_configs=[pycerr_trained["data"] / "classes.json"]))  # fmt: skip
    return {"result": result, "out": out, "slice": slice_file, "folder": folder}


# ------------------------------------------------------------------------------------------------------ helpers


def _head_channels(run: Path) -> int:
    import torch

    state = torch.load(run / "models" / "model.pt", map_location="cpu", weights_only=True)["model"]
    assert tuple(state["head.bias"].shape) == tuple(state["head.weight"].shape[:1])
    return int(state["head.weight"].shape[0])


def _csv_header(path: Path) -> List[str]:
    with open(path, newline="") as f:
        return next(csv.reader(f))


def _csv_rows(path: Path) -> List[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _check_mask(mask_path: Path, shape, affine, num_classes: int, what: str) -> List[str]:
    """Problems of one mask against its source's grid (empty when it is right)."""
    if not mask_path.is_file():
        return [f"{what}: no mask {mask_path.name}"]
    mask = nib.load(str(mask_path))
    data = np.asanyarray(mask.dataobj)
    problems = []
    if tuple(mask.shape) != tuple(shape):
        problems.append(f"{what}: shape {tuple(mask.shape)} != source {tuple(shape)}")
    if not np.allclose(mask.affine, affine, atol=AFFINE_TOL, rtol=0):
        problems.append(f"{what}: affine\n{np.round(mask.affine, 5)}\n!= source\n{np.round(affine, 5)}")
    if nib.aff2axcodes(mask.affine) != nib.aff2axcodes(affine):
        problems.append(f"{what}: orientation {nib.aff2axcodes(mask.affine)} != source {nib.aff2axcodes(affine)}")
    if mask.get_data_dtype() != np.uint8 or data.dtype != np.uint8:
        problems.append(f"{what}: dtype {mask.get_data_dtype()} / {data.dtype}, expected uint8")
    values = np.unique(data)
    if values.min() < 0 or values.max() > num_classes - 1:
        problems.append(f"{what}: values {values.tolist()} outside 0..{num_classes - 1}")
    return problems


# --------------------------------------------------------------------------------------------------- 1. prepare


def test_prepare_pycerr_dicom_series_with_rtstruct_labels(pycerr_prepared):
    data = pycerr_prepared["data"]
    datalist = json.loads((data / "datalist.json").read_text())
    assert datalist["num_classes"] == 2 and datalist["labels"]["1"] == "gtv", datalist["labels"]
    items = datalist["training"] + datalist["validation"] + datalist["test"]
    assert {item["case"] for item in items} == set(TRAIN_PATIENTS)
    overlay = json.loads((data / "classes.json").read_text())
    assert overlay["num_classes"] == 2 and overlay["class_names"][1:] == ["gtv"], overlay
    for item in items:  # the image is the DICOM folder itself; the remapped label keeps the GTV voxels and grid
        image = (data / item["image"]).resolve()
        assert image.is_dir() and image == (pycerr_prepared["raw"] / item["case"]).resolve(), item
        label = nib.load(str(data / item["label"]))
        source = dicom_series_geometry(image)
        assert label.shape == source.shape and np.allclose(label.affine, source.affine, atol=AFFINE_TOL)
        assert label.get_data_dtype() == np.uint8
        np.testing.assert_array_equal(np.asanyarray(label.dataobj), pycerr_prepared["labels"][item["case"]])


def test_prepare_tptbox_vertebrae_one_case_warns(tptbox_prepared, corpus_tptbox):
    data = tptbox_prepared["data"]
    assert "warning: only 1 case(s)" in tptbox_prepared["prepare"].stderr, tptbox_prepared["prepare"].stderr
    datalist = json.loads((data / "datalist.json").read_text())
    assert datalist["num_classes"] == 4
    assert [datalist["labels"][k] for k in ("1", "2", "3")] == ["L2", "L3", "L4"]
    # validation and test are the training case
    assert [i["case"] for i in datalist["training"]] == [i["case"] for i in datalist["test"]] == ["spine"]
    label = nib.load(str(data / datalist["training"][0]["label"]))
    raw = np.asanyarray(nib.load(str(corpus_tptbox["ct_vert_mask"])).dataobj)
    remapped = np.asanyarray(label.dataobj)
    for new, old in ((1, 21), (2, 22), (3, 23)):
        np.testing.assert_array_equal(remapped == new, raw == old)
    np.testing.assert_allclose(label.affine, nifti_geometry(corpus_tptbox["ct"]).affine, atol=AFFINE_TOL)


# ------------------------------------------------------------------------------------------ 2. train, 3. evaluate


def test_train_pycerr_gives_a_two_channel_network(pycerr_trained):
    assert _head_channels(pycerr_trained["run"]) == 2


def test_train_tptbox_gives_a_four_channel_network(tptbox_trained):
    assert _head_channels(tptbox_trained["run"]) == 4


@pytest.mark.parametrize("name, classes, cases", [("pycerr", ["gtv"], None), ("tptbox", ["L2", "L3", "L4"], ["spine"])])
def test_evaluate_reports_name_the_users_classes(request, name, classes, cases):
    trained = request.getfixturevalue(f"{name}_trained")
    eval_dir = trained["run"] / "eval"
    header = _csv_header(eval_dir / "summary.csv")
    assert set(classes) <= set(header), header
    datalist = json.loads((trained["data"] / "datalist.json").read_text())
    expected_cases = cases or [i["case"] for i in datalist["test"]]
    for convention in ("physical", "literature"):
        rows = _csv_rows(eval_dir / f"per_case_{convention}.csv")
        assert len(rows) == len(expected_cases), rows
        dice = sorted(k for k in rows[0] if k.startswith("dice_"))
        assert dice == sorted(f"dice_{c}" for c in classes), list(rows[0])


# ------------------------------------------------------------------------------------------------ 4. inference


def _expected_outputs(stems) -> list:
    """Per scan its mask and organ report (``organ_report`` is on by default); the cohort table; the records."""
    names = [f"{stem}{suffix}" for stem in stems for suffix in ("_seg.nii.gz", "_organs.csv", "_organs.json")]
    return sorted(names + ["cohort.csv", ".cohort"])


def _check_records(out, stems) -> None:
    """``.cohort/`` holds one completion record per finished scan and the rank table: no temporary file."""
    records = sorted(p.name for p in (out / ".cohort").iterdir())
    assert records == sorted([f"{stem}_seg.json" for stem in stems] + ["rank0-of-1.csv"]), records


def test_inference_on_every_kind_of_real_scan(inference_clean, scans):
    result, out = inference_clean["result"], inference_clean["out"]
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    written = sorted(p.name for p in out.iterdir())
    assert written == _expected_outputs(scans["sources"]), written
    _check_records(out, scans["sources"])
    with open(out / "cohort.csv", newline="") as f:
        rows = {row["scan"]: row["status"] for row in csv.DictReader(f)}
    assert sorted(rows.values()) == ["done"] * len(scans["sources"]), rows
    assert f"inference: {len(scans['sources'])} mask(s) written" in result.stdout
    problems = []
    for stem, (shape, affine) in scans["geometry"].items():
        problems += _check_mask(out / f"{stem}_seg.nii.gz", shape, affine, 2, stem)
    assert not problems, "\n".join(problems)


def test_inference_refuses_a_truncated_slice_and_segments_the_rest(inference_damaged, scans):
    result, out, slice_file = inference_damaged["result"], inference_damaged["out"], inference_damaged["slice"]
    assert result.returncode == 2, f"exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert any(slice_file.name in line and "truncated" in line for line in errors), errors
    assert errors[-1] == "error: 1 scan(s) failed; the others were processed", errors
    assert not (out / "pat_2_damaged_seg.nii.gz").exists()
    written = sorted(p.name for p in out.iterdir())
    assert written == _expected_outputs(scans["sources"]), f"temporary or partial files left: {written}"
    _check_records(out, scans["sources"])
    with open(out / "cohort.csv", newline="") as f:
        rows = {Path(row["scan"]).name: row for row in csv.DictReader(f)}
    failed = [row for row in rows.values() if row["status"] == "failed"]
    assert len(failed) == 1 and slice_file.name in failed[0]["reason"], rows
    problems = []
    for stem, (shape, affine) in scans["geometry"].items():
        problems += _check_mask(out / f"{stem}_seg.nii.gz", shape, affine, 2, stem)
    assert not problems, "\n".join(problems)
