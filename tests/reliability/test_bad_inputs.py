"""Bad inputs at every entry point: one line ``error: <file>: <problem>``, exit code 2, no output (issue 8, item 1).

Entry points (:data:`ENTRY_POINTS`), each run the way its command runs it, in this process:

``prepare``   ``python -m xattnres_monai.data.synapse`` (its ``main``): all-or-nothing, every bad file reported;
``train``     the Synapse bundle's ``train.json`` (``ConfigWorkflow``, as ``python -m monai.bundle run``): the
              training *and* validation items are checked before anything is built;
``evaluate``  ``train.json`` + ``evaluate.json``: the evaluated items, then the checkpoint;
``infer``     ``inference.json``: every scan is checked, bad ones are reported, the good ones still segmented;
``network``   network construction (``ValueError``; the configurations refused are in ``tests/test_unet.py``).

The bad inputs come from a table (:mod:`tests.reliability.helpers`); a 2D bundle (PNG inputs) adds an entry
point and its own rows. The command-line exit codes themselves are checked in the slow tests at the end.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import nibabel as nib
import numpy as np
import pytest

from tests.reliability.helpers import (
    BAD_DICOM,
    CONFIGS,
    BAD_IMAGE_VALUES,
    BAD_LABELS,
    BAD_VOLUMES,
    Bad,
    Outcome,
    files_under,
    make_datalist,
    masks_under,
    run_bundle_cli,
    run_inprocess,
    run_workflow,
    save_nifti,
    write_dicom_series,
    write_model,
)


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """3 tiny phantom cases, their datalist (1 training, 1 validation, 1 test case) and a random model.pt."""
    root = tmp_path_factory.mktemp("reliability")
    make_datalist(root)
    write_model(root / "bundle")
    return root


def _copy(source: Path, tmp_path: Path) -> Tuple[Path, Dict]:
    root = tmp_path / "work"
    shutil.copytree(source, root)
    datalist = root / "data" / "datalist.json"
    return root, json.loads(datalist.read_text())


def _make(bad: Bad, target: Path, tmp_path: Path) -> Path:
    """Replace ``target`` (a good file) by ``bad``; returns the path of what was written."""
    reference = tmp_path / ("reference" + "".join(target.suffixes))
    shutil.copy(target, reference)
    return bad.make(target, reference)


# --------------------------------------------------------------------------------------------------- entry points
# each returns (outcome, the bad file as the message must name it, the folders that must hold no new file)


def run_prepare(source: Path, tmp_path: Path, bad: Bad, role: str):
    from xattnres_monai.cli.synapse import main

    root, _ = _copy(source, tmp_path)
    raw = root / "raw"
    named = _make(bad, raw / f"{'img' if role == 'image' else 'label'}0002.nii.gz", tmp_path)
    if bad.name in ("missing", "wrong_extension"):
        named = raw / "label0002.nii.gz"  # an image without its label pair is reported by its label
    out = tmp_path / "prepared"
    outcome = run_inprocess(lambda: main(["--input", str(raw), "--output", str(out / "datalist.json")]))
    return outcome, named, [out]


def _datalist_entry(source: Path, tmp_path: Path, bad: Bad, subset: str, key: str) -> Tuple[Path, Path, Path]:
    root, datalist = _copy(source, tmp_path)
    item = datalist[subset][0]
    target = (root / "data" / item[key]).resolve()
    named = _make(bad, target, tmp_path)
    item[key] = str(named)
    path = root / "data" / "datalist.json"
    path.write_text(json.dumps(datalist))
    return root, path, named


def run_train(source: Path, tmp_path: Path, bad: Bad, role: str):
    # a bad training image, or a bad *validation* label: both are found before training starts
    subset, key = ("training", "image") if role == "image" else ("validation", "label")
    root, datalist, named = _datalist_entry(source, tmp_path, bad, subset, key)
    bundle = tmp_path / "train_bundle"
    outcome = run_workflow(["train.json"], bundle, datalist=str(datalist), max_epochs=1)
    return outcome, named, [bundle]


def run_evaluate(source: Path, tmp_path: Path, bad: Bad, role: str):
    root, datalist, named = _datalist_entry(source, tmp_path, bad, "test", role)
    bundle = root / "bundle"
    outcome = run_workflow(["train.json", "evaluate.json"], bundle, datalist=str(datalist))
    return outcome, named, [bundle / "eval"]


def run_infer(source: Path, tmp_path: Path, bad: Bad, role: str):
    root, datalist = _copy(source, tmp_path)
    scans = tmp_path / "scans"
    scans.mkdir()
    good = (root / "data" / datalist["test"][0]["image"]).resolve()
    shutil.copy(good, scans / "good.nii.gz")
    shutil.copy(good, scans / "patient.nii.gz")
    args = {"dataset_dir": str(scans)}
    named = _make(bad, scans / "patient.nii.gz", tmp_path)
    if bad.name == "missing":  # a scan listed but absent can only come from a list
        (tmp_path / "list.json").write_text(json.dumps([str(scans / "good.nii.gz"), str(named)]))
        args = {"datalist": str(tmp_path / "list.json")}
    out = tmp_path / "masks"
    outcome = run_workflow(["inference.json"], root / "bundle", "infer", output_dir=str(out), **args)
    # the good scan is still segmented, and nothing else is written
    assert masks_under(out) == ["good_seg.nii.gz"], outcome.stdout + outcome.stderr
    return outcome, named, []


ENTRY_POINTS: Dict[str, Callable] = {
    "prepare": run_prepare,
    "train": run_train,
    "evaluate": run_evaluate,
    "infer": run_infer,
}
#: damaged label files (the label is read by the same checked reader as the image)
BAD_LABEL_FILES = [bad for bad in BAD_VOLUMES if bad.name in ("zero_byte", "truncated", "volume_2d")]
#: which bad inputs each entry point takes, in which role
CASES: List[Tuple[str, Bad, str]] = (
    [("prepare", bad, "image") for bad in BAD_VOLUMES + BAD_IMAGE_VALUES]
    + [("prepare", bad, "label") for bad in BAD_LABELS + BAD_LABEL_FILES]
    + [("train", bad, "image") for bad in BAD_VOLUMES + BAD_IMAGE_VALUES]
    + [("train", bad, "label") for bad in BAD_LABELS + BAD_LABEL_FILES]
    + [("evaluate", bad, "image") for bad in BAD_VOLUMES + BAD_IMAGE_VALUES]
    + [("evaluate", bad, "label") for bad in BAD_LABELS + BAD_LABEL_FILES]
    + [("infer", bad, "image") for bad in BAD_VOLUMES + BAD_IMAGE_VALUES + BAD_DICOM]
)
#: messages that differ by entry point
MESSAGES = {
    ("prepare", "missing"): "no matching image file",
    ("prepare", "wrong_extension"): "no matching image file",
}


def check_refused(outcome: Outcome, named: Path, message: str, outputs: List[Path]) -> None:
    text = outcome.stdout + outcome.stderr
    assert outcome.code == 2, text[-3000:]
    assert "Traceback" not in outcome.stderr, outcome.stderr[-3000:]
    matching = [line for line in outcome.error_lines if named.name in line and message in line]
    assert len(matching) == 1, f"no one-line error naming {named.name} with {message!r}:\n{outcome.stderr[-3000:]}"
    for folder in outputs:
        assert masks_under(folder) == [] if folder.name == "masks" else files_under(folder) == [], files_under(folder)


@pytest.mark.parametrize(
    "entry, bad, role", CASES, ids=[f"{entry}-{role}-{bad.name}" for entry, bad, role in CASES]
)
def test_bad_file_is_refused_with_its_name(source, tmp_path, entry, bad, role):
    outcome, named, outputs = ENTRY_POINTS[entry](source, tmp_path, bad, role)
    check_refused(outcome, named, MESSAGES.get((entry, bad.name), bad.message), outputs)


def test_every_bad_file_is_reported_in_one_run(source, tmp_path):
    """Several bad files in training and validation: all named, one line each, in a single run."""
    root, datalist = _copy(source, tmp_path)
    data = root / "data"
    (data / datalist["training"][0]["image"]).write_bytes(b"")
    label = (data / datalist["validation"][0]["label"]).resolve()
    save_nifti(label, np.full((16, 16, 16), 12, np.uint8), nib.load(str(label)).affine)  # raw id, not a class
    bundle = tmp_path / "bundle"
    outcome = run_workflow(["train.json"], bundle, datalist=str(data / "datalist.json"))
    assert outcome.code == 2 and len(outcome.error_lines) == 2, outcome.stderr
    assert "zero-byte" in outcome.error_lines[0] and "[12] (expected 0-8)" in outcome.error_lines[1]
    assert not bundle.exists()


# ------------------------------------------------------------------------------------------ folders and lists


def test_prepare_refuses_missing_and_empty_folders(tmp_path):
    from xattnres_monai.cli.synapse import main

    (tmp_path / "empty").mkdir()
    for folder, message in ((tmp_path / "nowhere", "does not exist"), (tmp_path / "empty", "no Synapse data")):
        out = tmp_path / "out"
        outcome = run_inprocess(lambda f=folder, o=out: main(["--input", str(f), "--output", str(o / "d.json")]))
        check_refused(outcome, folder, message, [out])


@pytest.mark.parametrize("problem", ["missing", "not_json", "no_subset", "empty_subset", "item_without_label"])
@pytest.mark.parametrize("entry", ["train", "evaluate"])
def test_bad_datalist_is_refused(source, tmp_path, entry, problem):
    root, datalist = _copy(source, tmp_path)
    path = root / "data" / "datalist.json"
    subset = "training" if entry == "train" else "test"
    message = {
        "missing": "datalist file does not exist",
        "not_json": "cannot read datalist JSON",
        "no_subset": f"no '{subset}' section",
        "empty_subset": f"'{subset}' lists no items",
        "item_without_label": "needs 'image' and 'label' paths",
    }[problem]
    if problem == "missing":
        path.unlink()
    elif problem == "not_json":
        path.write_text("{not json")
    else:
        if problem == "no_subset":
            del datalist[subset]
        elif problem == "empty_subset":
            datalist[subset] = []
        else:
            del datalist[subset][0]["label"]
        path.write_text(json.dumps(datalist))
    bundle = tmp_path / "bundle"
    configs = ["train.json"] if entry == "train" else ["train.json", "evaluate.json"]
    outcome = run_workflow(configs, bundle, datalist=str(path))
    check_refused(outcome, path, message, [bundle])


@pytest.mark.parametrize("problem", ["nonexistent_folder", "empty_folder", "not_a_folder", "missing_datalist"])
def test_inference_refuses_missing_and_empty_inputs(source, tmp_path, problem):
    target = tmp_path / "scans"
    args = {"dataset_dir": str(target)}
    message = {
        "nonexistent_folder": "input folder does not exist",
        "empty_folder": "input folder is empty",
        "not_a_folder": "not a folder",
        "missing_datalist": "datalist file does not exist",
    }[problem]
    if problem == "empty_folder":
        target.mkdir()
    elif problem == "not_a_folder":
        target.write_text("x")
    elif problem == "missing_datalist":
        target = tmp_path / "list.json"
        args = {"datalist": str(target)}
    out = tmp_path / "masks"
    outcome = run_workflow(["inference.json"], source / "bundle", "infer", output_dir=str(out), **args)
    check_refused(outcome, target, message, [out])


# ------------------------------------------------------------------------------------------------ size limit


def test_size_limit_is_configurable(source, tmp_path):
    """``max_voxels`` (bundle) / ``--max-voxels`` (data preparation): 16**3 = 4096 voxels > 4000."""
    from xattnres_monai.cli.synapse import main

    root, datalist = _copy(source, tmp_path)
    out = tmp_path / "masks"
    scans = tmp_path / "scans"
    scans.mkdir()
    shutil.copy(root / "data" / datalist["test"][0]["image"], scans / "scan.nii.gz")
    write_dicom_series(np.asanyarray(nib.load(str(scans / "scan.nii.gz")).dataobj), scans / "series")
    outcome = run_workflow(["inference.json"], root / "bundle", "infer", output_dir=str(out), dataset_dir=str(scans),
                           max_voxels=4000)  # fmt: skip
    check_refused(outcome, scans / "scan.nii.gz", "exceeds the 4,000-voxel limit", [out])
    check_refused(outcome, scans / "series", "exceeds the 4,000-voxel limit", [out])  # from the DICOM headers
    bundle = tmp_path / "bundle"
    outcome = run_workflow(["train.json"], bundle, datalist=str(root / "data" / "datalist.json"), max_voxels=4000)
    assert outcome.code == 2 and all("4,000-voxel limit" in line for line in outcome.error_lines), outcome.stderr
    assert not bundle.exists()
    prepared = tmp_path / "prepared"
    outcome = run_inprocess(
        lambda: main(["--input", str(root / "raw"), "--output", str(prepared / "d.json"), "--max-voxels", "4000"])
    )
    assert outcome.code == 2 and len(outcome.error_lines) == 6 and not prepared.exists()  # 3 images, 3 labels


# ----------------------------------------------------------------------------------------------------- checkpoints


class NotWeights:
    """An arbitrary Python object: a checkpoint holding one is not loadable with ``weights_only=True``."""


def _bad_checkpoint(problem: str, model: Path) -> str:
    if problem == "missing":
        model.unlink()
        return "checkpoint file does not exist"
    if problem == "zero_byte":
        model.write_bytes(b"")
        return "zero-byte checkpoint file"
    if problem == "truncated":
        model.write_bytes(model.read_bytes()[:1000])
        return "not a readable checkpoint"
    if problem == "not_weights_only":
        import torch

        torch.save({"model": NotWeights()}, model)  # needs full unpickling: refused by weights_only=True
        return "not a readable checkpoint (UnpicklingError"
    write_model(model.parents[1], xattnres="none")  # another network configuration
    return "does not match this network configuration (model): missing keys: encoder.1.routing.query"


CHECKPOINT_PROBLEMS = ["missing", "zero_byte", "truncated", "not_weights_only", "other_configuration"]


@pytest.mark.parametrize("problem", CHECKPOINT_PROBLEMS)
@pytest.mark.parametrize("entry", ["evaluate", "infer"])
def test_bad_checkpoint_is_refused_before_any_output(source, tmp_path, entry, problem):
    root, datalist = _copy(source, tmp_path)
    model = root / "bundle" / "models" / "model.pt"
    message = _bad_checkpoint(problem, model)
    if entry == "evaluate":
        out = root / "bundle" / "eval"
        outcome = run_workflow(["train.json", "evaluate.json"], root / "bundle",
                               datalist=str(root / "data" / "datalist.json"))  # fmt: skip
    else:
        out = tmp_path / "masks"
        outcome = run_workflow(["inference.json"], root / "bundle", "infer", output_dir=str(out),
                               dataset_dir=str(root / "raw"))  # fmt: skip
    check_refused(outcome, model, message, [out])


# ------------------------------------------------------------------------------------------------------ network


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"in_channels": 0}, "in_channels must be an integer >= 1, got 0"),
        ({"out_channels": 0}, "out_channels must be an integer >= 1, got 0"),
        ({"spatial_dims": "two"}, "spatial_dims must be an integer, got 'two'"),  # "2" is parsed (tests/test_options.py)
        ({"spatial_dims": 4}, "spatial_dims must be 2 or 3, got 4"),
        ({"skip": False, "dca": True}, "dca=True refines the skip connections"),
    ],
)
def test_network_construction_refuses_bad_arguments(kwargs, message):
    # complements tests/test_unet.py::test_bad_configuration_raises_value_error (other arguments)
    from xattnres_monai.networks.nets import XAttnResUNet

    with pytest.raises(ValueError, match=message):
        XAttnResUNet(**{"spatial_dims": 2, "in_channels": 1, "out_channels": 2, **kwargs})


def test_bundle_network_override_fails_naming_the_argument(source, tmp_path):
    """A bad ``--network_def#...`` override fails before anything is written. MONAI's config system wraps the
    ``ValueError`` in a ``RuntimeError`` while instantiating the component (so the command prints a traceback whose
    last line names the argument: a documented limitation)."""
    from monai.bundle import ConfigWorkflow

    root, _ = _copy(source, tmp_path)
    bundle = tmp_path / "bundle"
    overrides = {"network_def#xattnres": "middle", "roi_size": [16, 16], "num_workers": 0}
    workflow = ConfigWorkflow(config_file=str(CONFIGS / "train.json"), workflow_type="train", bundle_root=str(bundle),
                              datalist=str(root / "data" / "datalist.json"), **overrides)  # fmt: skip
    workflow.initialize()
    with pytest.raises(RuntimeError) as info:
        workflow.run()
    cause = info.value
    while cause.__cause__ is not None:
        cause = cause.__cause__
    assert isinstance(cause, ValueError) and "xattnres must be one of" in str(cause) and "'middle'" in str(cause)
    assert not (bundle / "models").exists()


# ---------------------------------------------------------------------------------------- the commands themselves


@pytest.mark.slow
def test_commands_exit_with_code_2_and_one_line(source, tmp_path):
    """The real command lines (``python -m monai.bundle run`` for training and evaluation, ``python -m
    xattnres_monai.data.synapse``); inference: tests/test_synapse_bundle.py."""
    import subprocess
    import sys

    root, datalist = _copy(source, tmp_path)
    data = root / "data"
    bad = (data / datalist["training"][0]["image"]).resolve()
    bad.write_bytes(b"")
    train = run_bundle_cli(["train.json"], tmp_path / "b", "--datalist", str(data / "datalist.json"))
    assert train.returncode == 2, train.stderr[-3000:]
    errors = [line for line in train.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: {bad}: zero-byte file"]
    assert "Traceback" not in train.stderr and not (tmp_path / "b").exists()

    write_model(root / "bundle", xattnres="decoder")  # not the configuration of train.json
    evaluate = run_bundle_cli(["train.json", "evaluate.json"], root / "bundle", "--datalist",
                              str(data / "datalist.json"))  # fmt: skip
    assert evaluate.returncode == 2, evaluate.stderr[-3000:]
    errors = [line for line in evaluate.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "model.pt: does not match this network configuration (model)" in errors[0]
    assert "Traceback" not in evaluate.stderr and files_under(root / "bundle" / "eval") == []

    prepare = subprocess.run([sys.executable, "-m", "xattnres_monai.data.synapse", "--input", str(root / "nowhere"),
                              "--output", str(tmp_path / "p" / "d.json")], capture_output=True, encoding="utf-8",
                             errors="replace")  # fmt: skip
    assert prepare.returncode == 2 and prepare.stderr == f"error: {root / 'nowhere'}: input folder does not exist\n"
