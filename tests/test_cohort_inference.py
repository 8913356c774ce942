"""The Synapse bundle's inference on cohorts, run as a user runs it (``python -m monai.bundle run``, ``torchrun``).

One tiny trained copy of the bundle (3 epochs at 32 x 32 on 3 phantoms, as ``make demo`` makes it; the learning rate
is raised so that the model's masks are not one constant class and the voxel-for-voxel comparisons mean something)
is shared by every test:

- a cohort of 50 generated scans is killed with SIGKILL midway (while an output file is being written) and rerun:
  the rerun skips the finished scans (records and masks untouched, listed as skipped, not segmented again), finishes
  the others, leaves no temporary file, and its masks equal those of an uninterrupted run;
- ``torchrun --nproc_per_node 2`` gives the same masks as one process and one ``cohort.csv`` of every scan;
- the documented options end to end on a DICOM series and a NIfTI file: TTA, DICOM-SEG (read back with highdicom,
  referencing the source SOP instances), largest component, probabilities, figures; data loader workers (the same
  masks, probabilities and DICOM-SEG as without; ``--save_figures false`` writes no figure) and the documented in-plane
  spacing override (masks on the input grid).

Every test is slow (each subprocess first imports MONAI and torch).
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Sequence

import nibabel as nib
import numpy as np
import pytest

from tests.independent_geometry import dicom_series_geometry, nifti_geometry
from tests.reliability.helpers import bundle_env
from xattnres_monai.engines.cohort import record_problem

pytestmark = pytest.mark.slow

COHORT = 50
#: the scans of the uninterrupted reference run (and of the torchrun test): the first ones are finished before the
#: kill, the kill happens after 5 records, so those around 5-9 are cut or redone by the rerun.
SUBSET = [f"s{i:02d}" for i in range(10)]
ORGAN_OUTPUTS = ("_organs.csv", "_organs.json")
PROGRESS = re.compile(r"\[(\d+)/(\d+)\] (\S+?): ")


# ------------------------------------------------------------------------------------------------------ helpers


def _python(*args: str, timeout: float = 900, cwd: Path = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, encoding="utf-8", errors="replace",
                          timeout=timeout, env=bundle_env(), cwd=cwd)  # fmt: skip


def _ok(result: subprocess.CompletedProcess, what: str) -> str:
    log = result.stdout + result.stderr
    assert result.returncode == 0, f"{what} failed ({result.returncode}):\n{log[-5000:]}"
    return log


def _inference_args(bundle: Path, scans: Path, out: Path, *options: str) -> List[str]:
    return ["-m", "monai.bundle", "run", "--config_file", str(bundle / "configs" / "inference.json"),
            "--bundle_root", str(bundle), "--dataset_dir", str(scans), "--output_dir", str(out), *options]  # fmt: skip


def _masks(out: Path) -> Dict[str, np.ndarray]:
    return {p.name[: -len("_seg.nii.gz")]: np.asanyarray(nib.load(str(p)).dataobj)
            for p in sorted(out.glob("*_seg.nii.gz"))}  # fmt: skip


def _records(out: Path) -> List[Path]:
    folder = out / ".cohort"
    return sorted(p for p in folder.glob("*.json") if not p.name.startswith(".")) if folder.is_dir() else []


def _temporary_files(out: Path) -> List[str]:
    return sorted(str(p.relative_to(out)) for p in out.rglob(".tmp-*"))


def _cohort_rows(out: Path) -> List[Dict[str, str]]:
    with open(out / "cohort.csv", encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def _segmented(log: str) -> List[str]:
    """The scans a run segmented, from its per-scan progress lines ``[k/n] name: ...``."""
    return [m.group(3) for m in PROGRESS.finditer(log)]


def _assert_same_masks(got: Dict[str, np.ndarray], expected: Dict[str, np.ndarray], what: str) -> None:
    assert sorted(got) == sorted(expected), what
    for name in expected:
        assert got[name].shape == expected[name].shape, (what, name)
        np.testing.assert_array_equal(got[name], expected[name], err_msg=f"{what}: {name}")


def _stopped(pid: int) -> bool:
    """Stopped (or already ended: a zombie waits for ``wait``)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        return f.read().rsplit(")", 1)[1].split()[0] in ("T", "t", "Z", "X")


def _kill_while_writing(proc: subprocess.Popen, out: Path, after: int, latest: int, timeout: float = 600) -> List[str]:
    """SIGKILL ``proc`` once ``after`` scans have records, at a moment an output is half written (the process is
    stopped while a ``.tmp-*`` file exists, then killed); once ``latest`` records exist, kill it anyway.

    Returns the temporary files the kill left behind."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the run ended ({proc.returncode}) before it could be killed midway"
        done = len(_records(out))
        if done >= after and (_temporary_files(out) or done >= latest):
            os.kill(proc.pid, signal.SIGSTOP)
            while not _stopped(proc.pid):
                time.sleep(0.0005)
            left = _temporary_files(out)
            if left or done >= latest:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=60)
                return left
            os.kill(proc.pid, signal.SIGCONT)  # the file was moved into place meanwhile: try the next one
        time.sleep(0.001)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    pytest.fail("the cohort run did not reach the kill point in time")


def _write_cohort(folder: Path, count: int) -> List[Path]:
    """``count`` small CT-like scans (about 32 x 32 x 8): sizes, spacings, orientations and contents vary."""
    folder.mkdir(parents=True)
    paths = []
    for i in range(count):
        rng = np.random.default_rng([7, i])
        shape = (32 + 2 * (i % 3), 30 + (i % 5), 8 + (i % 3))
        x, y = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
        body = ((x - shape[0] / 2) / (0.45 * shape[0])) ** 2 + ((y - shape[1] / 2) / (0.4 * shape[1])) ** 2 < 1
        hu = np.where(body[..., None], rng.uniform(20, 60), -900.0) * np.ones(shape)
        for _ in range(int(rng.integers(1, 4))):  # bright organs of varying size and position
            cx, cy, cz = rng.uniform(0.25, 0.75, size=3) * shape
            rx, ry, rz = rng.uniform(3, 7), rng.uniform(3, 7), rng.uniform(1.5, 4)
            z = np.arange(shape[2])[None, None, :]
            inside = ((x[..., None] - cx) / rx) ** 2 + ((y[..., None] - cy) / ry) ** 2 + ((z - cz) / rz) ** 2 < 1
            hu[inside] = rng.uniform(180, 400)
        hu += rng.normal(0, 15, size=shape)
        spacing = (0.7 + 0.05 * (i % 4), 0.7 + 0.05 * (i % 4), 2.5 + 0.5 * (i % 2))
        signs = (-1, -1, 1) if i % 5 == 0 else (1, 1, 1)  # some stored LPS-like, the others RAS
        affine = np.diag([*(s * d for s, d in zip(signs, spacing)), 1.0])
        affine[:3, 3] = rng.uniform(-100, 100, size=3)
        path = folder / f"s{i:02d}.nii.gz"
        nib.save(nib.Nifti1Image(np.round(hu).astype(np.int16), affine), str(path))
        paths.append(path)
    return paths


# ------------------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A copy of the Synapse bundle trained on 3 phantoms at 32 x 32 (its configs then state these settings)."""
    from xattnres_monai.data.synapse import prepare_synapse
    from xattnres_monai.demo import make_bundle
    from xattnres_monai.testing.phantoms import write_phantoms

    bundle = tmp_path_factory.mktemp("cohort_bundle") / "synapse_bundle"
    make_bundle("synapse", bundle, fresh=False)
    write_phantoms(bundle / "data" / "raw", cases=3, size=(48, 48, 16), seed=0)
    prepare_synapse(bundle / "data" / "raw", bundle / "data" / "datalist.json")
    # 3 epochs at a high learning rate: enough for masks with background and organs (1 epoch at the default rate
    # gives one class everywhere, and equal masks would prove nothing)
    _ok(_python("-m", "monai.bundle", "run", "--config_file", str(bundle / "configs" / "train.json"),
                "--bundle_root", str(bundle), "--roi_size", "[32,32]", "--max_epochs", "3", "--val_interval", "3",
                "--learning_rate", "0.01", "--num_workers", "0", "--batch_size", "8"), "training")  # fmt: skip
    assert json.loads((bundle / "configs" / "inference.json").read_text())["roi_size"] == [32, 32]
    return bundle


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("cohort") / "scans"
    _write_cohort(folder, COHORT)
    return folder


@pytest.fixture(scope="module")
def reference(trained, cohort, tmp_path_factory) -> Dict[str, object]:
    """One uninterrupted process over the scans of :data:`SUBSET` (copied into their own folder)."""
    root = tmp_path_factory.mktemp("reference")
    scans = root / "scans"
    scans.mkdir()
    for name in SUBSET:
        shutil.copy2(cohort / f"{name}.nii.gz", scans / f"{name}.nii.gz")
    out = root / "out"
    log = _ok(_python(*_inference_args(trained, scans, out)), "uninterrupted reference run")
    masks = _masks(out)
    assert sorted(masks) == SUBSET and sorted(_segmented(log)) == [f"{n}.nii.gz" for n in SUBSET]
    labels = [set(np.unique(m).tolist()) for m in masks.values()]
    assert all(0 in found and len(found) > 1 for found in labels), labels  # background and organs in each mask
    assert len({m.tobytes() for m in masks.values()}) == len(masks)
    return {"scans": scans, "masks": masks}


# ------------------------------------------------------------------------------------------------------ cohort


def test_a_cohort_killed_midway_resumes_without_redoing_finished_scans(trained, cohort, reference, tmp_path):
    out = tmp_path / "out"
    args = _inference_args(trained, cohort, out)
    first_log = tmp_path / "killed.log"
    with open(first_log, "w", encoding="utf-8") as log:
        proc = subprocess.Popen([sys.executable, *args], stdout=log, stderr=subprocess.STDOUT, env=bundle_env())
        try:
            left = _kill_while_writing(proc, out, after=5, latest=COHORT - 10)
        finally:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "cohort.csv").exists()

    finished = {p.name[: -len("_seg.json")]: p for p in _records(out) if record_problem(p) is None}
    assert 5 <= len(finished) < COHORT - 5, sorted(finished)
    assert left, "the kill did not catch a file being written"  # the hard case: a half-written output
    before = {}
    for name, record in finished.items():
        files = [record, *(out / f"{name}{suffix}" for suffix in ("_seg.nii.gz", *ORGAN_OUTPUTS))]
        before[name] = [(f, f.read_bytes(), f.stat().st_mtime_ns, f.stat().st_ino) for f in files]

    rerun = _ok(_python(*args), "the rerun")

    names = [f"s{i:02d}" for i in range(COHORT)]
    unfinished = sorted(set(names) - set(finished))
    # the finished scans were not segmented again: listed as skipped, their files untouched
    segmented = _segmented(rerun)
    assert sorted(segmented) == [f"{n}.nii.gz" for n in unfinished], segmented
    assert {int(m.group(2)) for m in PROGRESS.finditer(rerun)} == {len(unfinished)}
    assert f"cohort: {len(finished)} scan(s) finished earlier are skipped" in rerun
    skipped = re.findall(r"skipped (\S+): finished earlier \(completion record", rerun)
    assert sorted(Path(s).name for s in skipped) == [f"{n}.nii.gz" for n in sorted(finished)]
    for name, files in before.items():
        for path, content, mtime, inode in files:
            assert path.read_bytes() == content, path
            assert (path.stat().st_mtime_ns, path.stat().st_ino) == (mtime, inode), path

    # every scan: a mask on its own grid, an organ report, a valid record listing them
    for name in names:
        scan = cohort / f"{name}.nii.gz"
        record = out / ".cohort" / f"{name}_seg.json"
        assert record_problem(record) is None, (name, record_problem(record))
        content = json.loads(record.read_text())
        assert content["scan"] == str(scan)
        expected = {"mask": f"{name}_seg.nii.gz", "organ_csv": f"{name}_organs.csv",
                    "organ_json": f"{name}_organs.json"}  # fmt: skip
        assert {kind: Path(entry["path"]).name for kind, entry in content["outputs"].items()} == expected
        mask, source = nib.load(str(out / f"{name}_seg.nii.gz")), nifti_geometry(scan)
        assert mask.shape == source.shape and np.allclose(mask.affine, source.affine, atol=1e-4), name
        json.loads((out / f"{name}_organs.json").read_text())
    rows = _cohort_rows(out)
    assert len(rows) == COHORT and sorted(r["scan"] for r in rows) == [str(cohort / f"{n}.nii.gz") for n in names]
    assert {r["status"] for r in rows} == {"done"} and all(r["reason"] == "" for r in rows)
    visible = {p.name for p in out.iterdir() if not p.name.startswith(".")}
    assert visible == {"cohort.csv"} | {f"{n}{s}" for n in names for s in ("_seg.nii.gz", *ORGAN_OUTPUTS)}

    # killed + resumed = uninterrupted, voxel for voxel (scans finished before the kill, cut by it, and after it)
    masks = _masks(out)
    _assert_same_masks({n: masks[n] for n in SUBSET}, reference["masks"], "killed and resumed vs uninterrupted")
    assert any(n in finished for n in SUBSET) and any(n not in finished for n in SUBSET)
    # nothing partial left: the half-written file of the killed run was removed when its scan was redone
    assert _temporary_files(out) == [], f"left by the killed run: {left}"


def test_torchrun_on_two_processes_gives_the_masks_of_one_process(trained, reference, tmp_path):
    out = tmp_path / "out"
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    _ok(_python(*launcher, *_inference_args(trained, reference["scans"], out)), "torchrun inference")
    _assert_same_masks(_masks(out), reference["masks"], "2 processes vs 1")
    rows = _cohort_rows(out)
    assert sorted(r["scan"] for r in rows) == [str(reference["scans"] / f"{n}.nii.gz") for n in SUBSET]
    assert {r["status"] for r in rows} == {"done"}
    # each rank segmented its half: disjoint tables that together cover the cohort
    shards = []
    for rank in range(2):
        with open(out / ".cohort" / f"rank{rank}-of-2.csv", encoding="utf-8", newline="") as f:
            shards.append({r["scan"] for r in csv.DictReader(f) if r["status"] == "done"})
    assert len(shards[0]) == len(shards[1]) == len(SUBSET) // 2 and not shards[0] & shards[1]
    assert all(record_problem(out / ".cohort" / f"{n}_seg.json") is None for n in SUBSET)
    assert _temporary_files(out) == []


def test_torchrun_a_corrupt_scan_in_one_shard_does_not_stop_the_other_shard(trained, reference, tmp_path):
    """torchrun stops every rank as soon as one exits non-zero: the rank holding only corrupt scans (done in no time)
    must wait for the other rank's scans before it exits with its error."""
    scans = tmp_path / "scans"
    scans.mkdir()
    good = SUBSET[:3]
    for name in good:
        shutil.copy2(reference["scans"] / f"{name}.nii.gz", scans / f"{name}.nii.gz")
        # "s00-broken" sorts just before "s00": round robin gives rank 0 every corrupt scan, rank 1 every good one
        data = (reference["scans"] / f"{name}.nii.gz").read_bytes()
        (scans / f"{name}-broken.nii.gz").write_bytes(data[: len(data) // 2])
    out = tmp_path / "out"
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    result = _python(*launcher, *_inference_args(trained, scans, out))
    log = result.stdout + result.stderr
    assert result.returncode != 0, log[-3000:]
    for name in good:
        assert f"error: {scans / f'{name}-broken.nii.gz'}: corrupt or truncated NIfTI data" in log, log[-3000:]
    # rank 1 was not stopped: every good scan segmented (as one process does), and rank 0 merged the cohort table
    _assert_same_masks(_masks(out), {n: reference["masks"][n] for n in good}, "the shard beside the corrupt one")
    rows = {Path(r["scan"]).name: r for r in _cohort_rows(out)}
    assert {n: r["status"] for n, r in rows.items()} == {
        **{f"{n}.nii.gz": "done" for n in good}, **{f"{n}-broken.nii.gz": "failed" for n in good}}
    # only the failing rank is reported failed by torchrun (the other one exited by itself, not by its signal)
    assert "SIGTERM" not in log and re.search(r"exitcode\s*:\s*2", log), log[-3000:]
    assert _temporary_files(out) == []


# ------------------------------------------------------------------------------------------------------ options

OPTIONS = ["--tta_flip_axes", "[0,1]", "--save_dicom_seg", "true", "--largest_component", "all",
           "--save_probabilities", "true", "--save_figures", "true"]  # fmt: skip
SPACING = "{'_target_': 'Spacingd', 'keys': 'image', 'pixdim': [0.8, 0.8, -1], 'mode': 'bilinear'}"


def _option_scans(folder: Path) -> Dict[str, object]:
    """A DICOM series (0.7 mm pixels) and a NIfTI file (LPS-stored, 0.9 mm pixels) of two phantoms."""
    from xattnres_monai.testing.dicom import write_ct_series
    from xattnres_monai.testing.phantoms import generate_phantom

    series_hu, _ = generate_phantom((48, 40, 12), np.random.default_rng(11))
    files = write_ct_series(folder / "series2", series_hu.astype(np.float64), spacing=(0.7, 0.7, 2.5))
    nifti_hu, _ = generate_phantom((44, 46, 10), np.random.default_rng(12))
    affine = np.diag([-0.9, -0.9, 3.0, 1.0])
    affine[:3, 3] = (20.0, 30.0, -40.0)
    nib.save(nib.Nifti1Image(nifti_hu, affine), str(folder / "ct1.nii.gz"))
    return {"series": folder / "series2", "nifti": folder / "ct1.nii.gz", "files": files}


def _probabilities(path: Path) -> np.ndarray:
    return np.asarray(nib.load(str(path)).get_fdata(), dtype=np.float32)


def _seg_frames(seg_path: Path, files: Sequence[Path]) -> np.ndarray:
    import highdicom as hd
    import pydicom

    seg = hd.seg.segread(str(seg_path))
    uids = [str(pydicom.dcmread(str(f), stop_before_pixels=True).SOPInstanceUID) for f in files]  # slice order
    assert {uid for _, _, uid in seg.get_source_image_uids()} == set(uids)
    return seg.get_pixels_by_source_instance(uids, combine_segments=True, assert_missing_frames_are_empty=True)


@pytest.fixture(scope="module")
def all_options(trained, tmp_path_factory) -> Dict[str, object]:
    """A DICOM series and a NIfTI file, run with every option of :data:`OPTIONS` (no data loader workers)."""
    root = tmp_path_factory.mktemp("options")
    scans = root / "scans"
    scans.mkdir()
    inputs = _option_scans(scans)
    out = root / "all_options"
    _ok(_python(*_inference_args(trained, scans, out, *OPTIONS)), "inference with every option")
    geometry = {"series2": dicom_series_geometry(inputs["series"]), "ct1": nifti_geometry(inputs["nifti"])}
    return {**inputs, "scans": scans, "out": out, "geometry": geometry}


def test_every_option_on_a_dicom_series_and_a_nifti_file(all_options):
    from scipy import ndimage

    out, geometry = all_options["out"], all_options["geometry"]
    names = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    per_scan = ["_figure.png", "_organs.csv", "_organs.json", "_prob.nii.gz", "_seg.nii.gz"]
    expected = ["cohort.csv", "series2_seg.dcm"] + [f"{n}{s}" for n in ("ct1", "series2") for s in per_scan]
    assert names == sorted(expected)
    masks = _masks(out)
    for name, source in geometry.items():  # on the input grid (pydicom / nibabel, not the project's readers)
        mask = nib.load(str(out / f"{name}_seg.nii.gz"))
        assert mask.shape == tuple(source.shape) and np.allclose(mask.affine, source.affine, atol=1e-4), name
        probabilities = nib.load(str(out / f"{name}_prob.nii.gz"))
        assert probabilities.shape == (*mask.shape, 9) and np.allclose(probabilities.affine, mask.affine, atol=1e-4)
        np.testing.assert_allclose(_probabilities(out / f"{name}_prob.nii.gz").sum(-1), 1.0, atol=9 * 0.5 / 255 + 1e-3)
        labels = masks[name]
        assert len(np.unique(labels)) > 1, name
        for label in np.unique(labels)[1:]:  # largest component of every class: one component left
            assert ndimage.label(labels == label, structure=np.ones((3, 3, 3)))[1] == 1, (name, label)
        report = json.loads((out / f"{name}_organs.json").read_text())
        assert [step["step"] for step in report["postprocessing"]] == ["largest_component"]
        assert (out / f"{name}_figure.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the DICOM-SEG references every source slice and holds the mask, slice by slice (identity orientation:
    # row r, column c of slice k is voxel (c, r, k))
    frames = _seg_frames(out / "series2_seg.dcm", all_options["files"])
    assert frames.shape == (12, 40, 48)
    for k, frame in enumerate(frames):
        np.testing.assert_array_equal(frame, masks["series2"][:, :, k].T)
    record = json.loads((out / ".cohort" / "series2_seg.json").read_text())
    assert set(record["outputs"]) == {"mask", "probabilities", "dicom_seg", "organ_csv", "organ_json"}
    rows = _cohort_rows(out)
    assert len(rows) == 2 and {r["status"] for r in rows} == {"done"}


def test_data_loader_workers_give_the_outputs_of_none(trained, all_options, tmp_path):
    out, workers = all_options["out"], tmp_path / "workers"
    options = [*OPTIONS[:-1], "false", "--dataloader#num_workers", "2"]  # figures off: they play no part here
    _ok(_python(*_inference_args(trained, all_options["scans"], workers, *options)), "2 data loader workers")
    _assert_same_masks(_masks(workers), _masks(out), "2 data loader workers vs none")
    for name in all_options["geometry"]:
        np.testing.assert_array_equal(_probabilities(workers / f"{name}_prob.nii.gz"),
                                      _probabilities(out / f"{name}_prob.nii.gz"))  # fmt: skip
    np.testing.assert_array_equal(_seg_frames(workers / "series2_seg.dcm", all_options["files"]),
                                  _seg_frames(out / "series2_seg.dcm", all_options["files"]))  # fmt: skip
    assert {r["status"] for r in _cohort_rows(workers)} == {"done"}
    # "--save_figures false" (the documented default, as a command line passes it) writes no figure
    assert sorted(p.name for p in workers.glob("*_figure.png")) == []


def test_the_documented_in_plane_spacing_override_keeps_masks_on_the_input_grid(trained, all_options, tmp_path):
    """Spacingd at 0.8 mm instead of the resize to the network's size (README, "In-plane spacing")."""
    out, spacing = all_options["out"], tmp_path / "spacing"
    options = [*OPTIONS[:-2], "--preprocessing#transforms#4", SPACING]
    _ok(_python(*_inference_args(trained, all_options["scans"], spacing, *options)), "in-plane spacing override")
    for name, source in all_options["geometry"].items():
        mask = nib.load(str(spacing / f"{name}_seg.nii.gz"))
        assert mask.shape == tuple(source.shape) and np.allclose(mask.affine, source.affine, atol=1e-4), name
        resampled = _probabilities(spacing / f"{name}_prob.nii.gz")
        assert resampled.shape == (*source.shape, 9)
        # other network inputs than the default resize's (0.7 / 0.9 mm pixels at 0.8 mm, not at 32 x 32)
        assert not np.allclose(resampled, _probabilities(out / f"{name}_prob.nii.gz"), atol=0.02), name
    frames = _seg_frames(spacing / "series2_seg.dcm", all_options["files"])
    np.testing.assert_array_equal(frames, np.transpose(_masks(spacing)["series2"], (2, 1, 0)))
    assert {r["status"] for r in _cohort_rows(spacing)} == {"done"}
