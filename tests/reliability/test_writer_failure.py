"""A writer failing midway (issue 8, item 2): no partial file, earlier outputs intact, the error names the file.

The failure is injected in the writer of each entry point, after it wrote part of the file (a full disk: the
most common way a write fails midway); a read-only output folder is the other variant (skipped as root, whose
writes permissions do not stop). Every output goes through a temporary file renamed into place, so the
destination of the failed write does not exist, no temporary file remains, and what was written before is
complete and readable.
"""

from __future__ import annotations

import csv
import errno
import json
import os
import shutil
import stat
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from tests.reliability.helpers import files_under, make_datalist, masks_under, run_inprocess, run_workflow, write_model

DISK_FULL = OSError(errno.ENOSPC, "No space left on device")


def failing_on_call(original, fail_at: int, target_arg: int = 1, name_filter: str = ""):
    """Wrap ``original`` so that its ``fail_at``-th call (counting calls whose target contains ``name_filter``)
    writes a few bytes to its target file and then fails like a full disk."""
    calls = []

    def wrapper(*args, **kwargs):
        target = args[target_arg] if len(args) > target_arg else kwargs.get("filename", "")
        name = getattr(target, "name", target)  # a path, or an open file (torch.save gets one: byte-identical files)
        if name_filter in str(name):
            calls.append(str(name))
            if len(calls) == fail_at:
                if hasattr(target, "write"):
                    target.write(b"partial")
                else:
                    with open(target, "wb") as f:
                        f.write(b"partial")
                raise OSError(DISK_FULL.errno, DISK_FULL.strerror)
        return original(*args, **kwargs)

    wrapper.calls = calls
    return wrapper


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("writers")
    make_datalist(root)
    write_model(root / "bundle")
    return root


def _scans(source: Path, folder: Path, names=("a", "b", "c")) -> Path:
    folder.mkdir()
    for name in names:
        shutil.copy(source / "raw" / "img0001.nii.gz", folder / f"{name}.nii.gz")
    return folder


def _assert_mask(path: Path, scan: Path) -> None:
    mask, image = nib.load(str(path)), nib.load(str(scan))
    assert mask.shape == image.shape and np.asanyarray(mask.dataobj).max() < 9


def _permissions_ignored(tmp_path: Path) -> bool:
    probe = tmp_path / "probe"
    probe.mkdir()
    os.chmod(probe, stat.S_IRUSR | stat.S_IXUSR)
    try:
        (probe / "x").write_bytes(b"")
        return True
    except PermissionError:
        return False
    finally:
        os.chmod(probe, stat.S_IRWXU)


@pytest.mark.parametrize("failure", ["disk_full", "read_only_folder"])
def test_inference_mask_writer_fails_on_the_second_scan(source, tmp_path, monkeypatch, failure):
    from monai.data import NibabelWriter

    if failure == "read_only_folder" and _permissions_ignored(tmp_path):
        pytest.skip("this user ignores folder permissions (root)")
    scans, out = _scans(source, tmp_path / "scans"), tmp_path / "masks"
    original = NibabelWriter.write
    if failure == "disk_full":
        monkeypatch.setattr(NibabelWriter, "write", failing_on_call(original, fail_at=2))
    else:
        calls = []

        def lock_after_first(self, filename, *args, **kwargs):  # the folder turns read-only after the first mask
            calls.append(filename)
            if len(calls) == 2:
                os.chmod(out, stat.S_IRUSR | stat.S_IXUSR)
            return original(self, filename, *args, **kwargs)

        monkeypatch.setattr(NibabelWriter, "write", lock_after_first)
    try:
        outcome = run_workflow(["inference.json"], source / "bundle", "infer", dataset_dir=str(scans),
                               output_dir=str(out))  # fmt: skip
    finally:
        os.chmod(out, stat.S_IRWXU) if out.exists() else None
    assert outcome.code == 2, outcome.stderr[-3000:]
    assert "Traceback" not in outcome.stderr
    assert masks_under(out)[0] == "a_seg.nii.gz"  # the first mask, complete and readable
    _assert_mask(out / "a_seg.nii.gz", scans / "a.nii.gz")
    assert not (out / "b_seg.nii.gz").exists() and not [f for f in files_under(out) if f.startswith(".tmp")]
    lines = outcome.error_lines
    assert any(f"{out / 'b_seg.nii.gz'}: cannot write the mask" in line for line in lines), outcome.stderr
    if failure == "disk_full":  # the run went on with the next scan
        assert masks_under(out) == ["a_seg.nii.gz", "c_seg.nii.gz"] and "No space left on device" in outcome.stderr
        _assert_mask(out / "c_seg.nii.gz", scans / "c.nii.gz")
        monkeypatch.setattr(NibabelWriter, "write", original)
        again = run_workflow(["inference.json"], source / "bundle", "infer", dataset_dir=str(scans),
                             output_dir=str(out))  # fmt: skip
        assert again.code == 0 and "skipped" in again.stdout  # the existing masks are kept, b is written now
        assert masks_under(out) == ["a_seg.nii.gz", "b_seg.nii.gz", "c_seg.nii.gz"]


def test_data_preparation_label_writer_fails_on_the_second_case(source, tmp_path, monkeypatch):
    from xattnres_monai.cli.synapse import main
    from xattnres_monai.data import synapse

    out = tmp_path / "prepared"
    monkeypatch.setattr(synapse.nib, "save", failing_on_call(nib.save, fail_at=2, name_filter=str(out)))
    outcome = run_inprocess(lambda: main(["--input", str(source / "raw"), "--output", str(out / "d.json")]))
    assert outcome.code == 2
    assert outcome.stderr == f"error: {out / 'labels_9class' / 'label0002.nii.gz'}: No space left on device\n"
    # each label is staged while its case is checked and committed only once every case passed: a failure leaves
    # nothing (no datalist, no label of an earlier case, no partial label, no temporary)
    assert files_under(out) == []


def test_evaluation_report_writer_fails_midway(source, tmp_path, monkeypatch):
    from xattnres_monai.metrics import segmentation

    root = tmp_path / "work"
    shutil.copytree(source, root)
    eval_dir = root / "bundle" / "eval"

    def failing_csv(path, rows, fieldnames=None, overwrite=False):
        calls.append(path)
        if len(calls) == 2:  # the second report: a partial temporary file, then a full disk
            with segmentation.atomic_write(path, overwrite=overwrite) as tmp:
                tmp.write_text("case,dice\n0001,")
                raise OSError(DISK_FULL.errno, DISK_FULL.strerror)
        return original(path, rows, fieldnames=fieldnames, overwrite=overwrite)

    calls, original = [], segmentation.write_csv_atomic
    monkeypatch.setattr(segmentation, "write_csv_atomic", failing_csv)
    datalist = str(root / "data" / "datalist.json")
    outcome = run_workflow(["train.json", "evaluate.json"], root / "bundle", datalist=datalist)
    assert outcome.code == 2 and "Traceback" not in outcome.stderr, outcome.stderr[-3000:]
    assert outcome.error_lines == [f"error: {eval_dir / 'per_case_physical.csv'}: No space left on device"]
    assert files_under(eval_dir) == ["per_case_literature.csv"]
    with open(eval_dir / "per_case_literature.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1 and rows[0]["case"]  # complete


@pytest.mark.slow
def test_training_checkpoint_writer_fails_at_epoch_2(source, tmp_path, monkeypatch):
    from xattnres_monai.handlers import resume

    root = tmp_path / "work"
    shutil.copytree(source / "data", root / "data")
    shutil.copytree(source / "raw", root / "raw")
    datalist, bundle = root / "data" / "datalist.json", root / "bundle"
    models = bundle / "models"
    original = torch.save
    monkeypatch.setattr(resume.torch, "save", failing_on_call(original, fail_at=1, name_filter="checkpoint_epoch=2"))
    outcome = run_workflow(["train.json"], bundle, datalist=str(datalist), max_epochs=3, val_interval=1)
    assert outcome.code == 2, outcome.stderr[-3000:]
    assert outcome.error_lines == [f"error: {models / 'checkpoint_epoch=2.pt'}: No space left on device"]
    assert files_under(models) == ["checkpoint_epoch=1.pt", "model.pt"]
    checkpoint = torch.load(models / "checkpoint_epoch=1.pt", weights_only=True)
    assert checkpoint["trainer"]["iteration"] == checkpoint["trainer"]["epoch_length"]

    monkeypatch.setattr(resume.torch, "save", original)  # space freed: the same command resumes from epoch 1
    again = run_workflow(["train.json"], bundle, datalist=str(datalist), max_epochs=3, val_interval=1)
    assert again.code == 0, again.stderr[-3000:]
    assert files_under(models) == ["checkpoint_epoch=3.pt", "model.pt"]
    final = torch.load(models / "checkpoint_epoch=3.pt", weights_only=True)
    assert final["trainer"]["iteration"] == 3 * final["trainer"]["epoch_length"]
    assert json.loads(datalist.read_text())["training"]  # the inputs are untouched
