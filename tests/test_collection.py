"""Bring your own dataset: pairing rules, label maps, remapping, refusals, outputs, and the documented commands."""

from __future__ import annotations

import ast
import csv
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from xattnres_monai.data import collection
from xattnres_monai.data.collection import (
    build_label_map,
    find_pairs,
    parse_label_spec,
    prepare_collection,
    remap_label,
)
from xattnres_monai.utils.files import InputError

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundles" / "synapse_ct_segmentation"
README = BUNDLE / "docs" / "README.md"
SHAPE = (8, 7, 3)
AFFINE = np.diag([0.8, 0.8, 2.5, 1.0])
#: as tests/reliability/helpers.py TINY_ARGS: the network sees 16 x 16 slices
TINY_ARGS = "--roi_size [16,16] --num_workers 0 --batch_size 4"


def save(path: Path, data: np.ndarray, affine: np.ndarray = AFFINE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


def make_case(image: Path, label: Path, ids=(1, 2, 3), seed: int = 0) -> np.ndarray:
    """A random int16 image and a label holding each of ``ids`` (and background); returns the label."""
    rng = np.random.default_rng(seed)
    save(image, rng.integers(-500, 500, size=SHAPE).astype(np.int16))
    data = rng.choice(np.array([0, *ids]), size=SHAPE).astype(np.int16)
    data.flat[: len(ids) + 1] = [0, *ids]  # every id present
    save(label, data)
    return data


def files_under(folder: Path):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def messages():
    lines = []
    return lines, lines.append


# ------------------------------------------------------------------------------------------------------- pairing


def test_pairs_images_and_labels_folders_strip_nnunet_channel(tmp_path):
    make_case(tmp_path / "imagesTr" / "liver_003_0000.nii.gz", tmp_path / "labelsTr" / "liver_003.nii.gz")
    make_case(tmp_path / "imagesTr" / "liver_007_0000.nii.gz", tmp_path / "labelsTr" / "liver_007_seg.nii.gz")
    (tmp_path / "imagesTs").mkdir()
    pairs, errors, notes, known = find_pairs(tmp_path)
    assert not errors and known is None
    assert [(p.case, p.image.name, p.label.name) for p in pairs] == [
        ("liver_003", "liver_003_0000.nii.gz", "liver_003.nii.gz"),
        ("liver_007", "liver_007_0000.nii.gz", "liver_007_seg.nii.gz"),
    ]


def test_pairs_images_labels_same_name(tmp_path):
    make_case(tmp_path / "images" / "Patient 1.nii.gz", tmp_path / "labels" / "Patient 1.nii.gz")
    make_case(tmp_path / "images" / "b.nii", tmp_path / "labels" / "b.nii")
    pairs, errors, _, _ = find_pairs(tmp_path)
    assert not errors and [p.case for p in pairs] == ["Patient 1", "b"]


def test_pairs_side_by_side_suffixes_case_folders_and_dicom_folders(tmp_path):
    make_case(tmp_path / "abdomen_ct_A.nii.gz", tmp_path / "abdomen_ct_A_seg.nii.gz")
    make_case(tmp_path / "scan-0042.nii.gz", tmp_path / "scan-0042_mask.nii.gz")
    make_case(tmp_path / "x.nii", tmp_path / "x_label.nii.gz")
    make_case(tmp_path / "case_00000" / "imaging.nii.gz", tmp_path / "case_00000" / "segmentation.nii.gz")
    (tmp_path / "series7").mkdir()  # a DICOM series folder (pairing does not read it)
    (tmp_path / "series7" / "IM0001").write_bytes(b"")
    save(tmp_path / "series7_seg.nii.gz", np.zeros(SHAPE, np.uint8))
    (tmp_path / "README.txt").write_text("notes")
    pairs, errors, notes, _ = find_pairs(tmp_path)
    assert not errors
    got = {p.case: (p.image.name, p.label.name) for p in pairs}
    assert got == {
        "abdomen_ct_A": ("abdomen_ct_A.nii.gz", "abdomen_ct_A_seg.nii.gz"),
        "scan-0042": ("scan-0042.nii.gz", "scan-0042_mask.nii.gz"),
        "x": ("x.nii", "x_label.nii.gz"),
        "case_00000": ("imaging.nii.gz", "segmentation.nii.gz"),
        "series7": ("series7", "series7_seg.nii.gz"),
    }
    assert any("README.txt" in n and "ignored" in n for n in notes)


def test_pairing_problems_are_all_reported_naming_the_file(tmp_path):
    make_case(tmp_path / "good.nii.gz", tmp_path / "good_seg.nii.gz")
    save(tmp_path / "lonely.nii.gz", np.ones(SHAPE, np.int16))
    save(tmp_path / "orphan_seg.nii.gz", np.zeros(SHAPE, np.uint8))
    save(tmp_path / "two.nii.gz", np.ones(SHAPE, np.int16))
    save(tmp_path / "two_seg.nii.gz", np.zeros(SHAPE, np.uint8))
    save(tmp_path / "two_mask.nii.gz", np.zeros(SHAPE, np.uint8))
    save(tmp_path / "mr_0001.nii.gz", np.ones(SHAPE, np.int16))
    (tmp_path / "ct.nrrd").write_bytes(b"NRRD0004")
    pairs, errors, _, _ = find_pairs(tmp_path)
    assert [p.case for p in pairs] == ["good"]
    text = "\n".join(map(str, errors))
    for name, problem in [("lonely.nii.gz", "image without label"), ("orphan_seg.nii.gz", "label without image"),
                          ("two_", "second label"), ("mr_0001.nii.gz", "channel 0001"),
                          ("ct.nrrd", "unsupported file type")]:  # fmt: skip
        assert re.search(rf"{re.escape(name)}\S*: .*{problem}", text), (name, text)
    assert all("\n" not in str(e) for e in errors)


def test_empty_or_missing_input_is_refused(tmp_path):
    with pytest.raises(InputError, match="no image/label pairs"):
        find_pairs(tmp_path)
    with pytest.raises(InputError, match="does not exist"):
        find_pairs(tmp_path / "nope")


# ------------------------------------------------------------------------------------------------------ label map


def test_label_spec_parsing():
    assert parse_label_spec("liver=1,spleen=2,kidney=3") == [("liver", [1]), ("spleen", [2]), ("kidney", [3])]
    assert parse_label_spec(" liver = 7 , right kidney=2+3") == [("liver", [7]), ("right_kidney", [2, 3])]
    assert parse_label_spec("liver,tumour", known={"liver": 1, "tumour": 2}) == [("liver", [1]), ("tumour", [2])]


@pytest.mark.parametrize(
    "spec, problem",
    [
        ("liver=1,liver=2", "'liver' is given twice"),
        ("liver=x", "id 'x' is not an integer"),
        ("liver=1,spleen=1", "id 1 is given to both 'liver' and 'spleen'"),
        ("liver=1,kidney=2+1", "id 1 is given to both"),
        ("liver", "has no id"),
        ("liver=0", "must be positive"),
        ("liver=-3", "must be positive"),
        ("background=1", "background is class 0"),
        ("liver=1,,spleen=2", "empty item"),
        ("", "empty label map"),
        ("$import_os=1", "class name"),
        ("a#b=1", "class name"),
    ],
)
def test_bad_label_specs_are_refused(spec, problem):
    with pytest.raises(InputError) as info:
        parse_label_spec(spec)
    assert problem in str(info.value) and str(info.value).startswith("--labels: ")


def test_every_label_spec_problem_is_reported_at_once():
    with pytest.raises(InputError) as info:
        parse_label_spec("liver=1,liver=2,spleen=x,kidney=1")
    assert len(str(info.value).splitlines()) == 3


def test_label_map_new_classes_and_onto_synapse():
    new = build_label_map(parse_label_spec("liver=7,spleen=2,kidney=3+4"))
    assert new.num_classes == 4 and new.source == {7: 1, 2: 2, 3: 3, 4: 3}
    assert new.labels == {"0": "background", "1": "liver", "2": "spleen", "3": "kidney"}
    onto = build_label_map(parse_label_spec("Liver=1,spleen=2,right-kidney=3,Gall_Bladder=9"), onto="synapse")
    assert onto.num_classes == 9 and onto.source == {1: 6, 2: 1, 3: 2, 9: 4}
    assert onto.labels["6"] == "liver" and len(onto.labels) == 9
    with pytest.raises(InputError) as info:
        build_label_map(parse_label_spec("liver=1,kidney=3,tumour=4"), onto="synapse")
    text = str(info.value)
    assert "'kidney' is not a Synapse class" in text and "'tumour' is not a Synapse class" in text
    assert "spleen, right_kidney, left_kidney, gallbladder, pancreas, liver, stomach, aorta" in text


def test_remap_label_maps_listed_ids_and_zeros_the_rest():
    source = {7: 1, 2: 2, 3: 3, 4: 3}
    data = np.array([[0, 7, 2], [3, 4, 5]], dtype=np.int16)
    out = remap_label(data, source)
    assert out.dtype == np.uint8 and out.tolist() == [[0, 1, 2], [3, 3, 0]]
    assert remap_label(data.astype(np.float32), source).tolist() == out.tolist()
    big = np.array([0, 70000, 7], dtype=np.int64)  # large ids: no lookup table
    assert remap_label(big, {70000: 1, 7: 2}).tolist() == [0, 1, 2]


# --------------------------------------------------------------------------------------------------- dataset.json


@pytest.mark.parametrize("orientation", ["id_to_name", "name_to_id"])
def test_msd_dataset_json_both_label_orientations(tmp_path, orientation):
    for k in (0, 1):
        make_case(tmp_path / "imagesTr" / f"liver_{k}.nii.gz", tmp_path / "labelsTr" / f"liver_{k}.nii.gz", ids=(1, 2),
                  seed=k)  # fmt: skip
    labels = {"0": "background", "1": "liver", "2": "cancer"}
    if orientation == "name_to_id":
        labels = {v: int(k) for k, v in labels.items()}
    training = [{"image": f"./imagesTr/liver_{k}.nii.gz", "label": f"./labelsTr/liver_{k}.nii.gz"} for k in (0, 1)]
    (tmp_path / "dataset.json").write_text(json.dumps({"name": "Liver", "labels": labels, "training": training}))
    pairs, errors, _, known = find_pairs(tmp_path / "dataset.json")
    assert not errors and known == {"liver": 1, "cancer": 2}
    assert [p.case for p in pairs] == ["liver_0", "liver_1"]
    lines, log = messages()
    datalist = prepare_collection(tmp_path, tmp_path / "out" / "datalist.json", log=log)  # labels from the file
    assert datalist["labels"] == {"0": "background", "1": "liver", "2": "cancer"} and datalist["num_classes"] == 3
    datalist = prepare_collection(tmp_path, tmp_path / "out2" / "datalist.json", labels="cancer", ignore_unlisted=True,
                                  log=log)  # fmt: skip
    assert datalist["labels"] == {"0": "background", "1": "cancer"}
    label = nib.load(str(tmp_path / "out2" / datalist["training"][0]["label"])).get_fdata()
    assert set(np.unique(label)) == {0, 1}


def test_nnunet_v2_dataset_json_without_training_list(tmp_path):
    make_case(tmp_path / "imagesTr" / "la_003_0000.nii.gz", tmp_path / "labelsTr" / "la_003.nii.gz", ids=(1,))
    content = {"labels": {"background": 0, "left_atrium": 1}, "channel_names": {"0": "MRI"}, "file_ending": ".nii.gz"}
    (tmp_path / "dataset.json").write_text(json.dumps(content))
    pairs, errors, _, known = find_pairs(tmp_path)
    assert not errors and known == {"left_atrium": 1} and [p.case for p in pairs] == ["la_003"]


def test_bad_dataset_json_labels_are_refused(tmp_path):
    path = tmp_path / "dataset.json"
    path.write_text(json.dumps({"labels": {"0": "background", "liver": 1}, "training": []}))
    with pytest.raises(InputError, match="dataset.json: 'labels' must map ids to names"):
        find_pairs(path)


# --------------------------------------------------------------------------------------------------- prepare


def test_prepare_remaps_and_writes_datalist_overlay_and_metadata(tmp_path):
    raw = {}
    folder = tmp_path / "in"
    raw["abdomen_ct_A"] = make_case(folder / "abdomen_ct_A.nii.gz", folder / "abdomen_ct_A_seg.nii.gz", ids=(7, 3, 12),
                                    seed=1)  # fmt: skip
    raw["scan-0042"] = make_case(tmp_path / "in" / "scan-0042.nii.gz", tmp_path / "in" / "scan-0042_mask.nii.gz",
                                 ids=(7, 3, 12), seed=2)  # fmt: skip
    output = tmp_path / "out" / "datalist.json"
    lines, log = messages()
    datalist = prepare_collection(tmp_path / "in", output, labels="liver=12,spleen=3,kidney=7", log=log)
    on_disk = json.loads(output.read_text())
    assert on_disk == datalist
    # the format of prepare_synapse, plus num_classes
    for key in ("name", "format", "intensity", "labels", "split", "training", "validation", "test", "num_classes"):
        assert key in datalist
    assert datalist["labels"] == {"0": "background", "1": "liver", "2": "spleen", "3": "kidney"}
    assert datalist["num_classes"] == 4
    for item in datalist["training"]:
        assert set(item) == {"image", "label", "case"} and not os.path.isabs(item["image"])
        label = nib.load(str(output.parent / item["label"]))
        source = nib.load(str(output.parent / item["image"]))
        assert label.get_data_dtype() == np.uint8 and label.shape == source.shape
        np.testing.assert_allclose(label.affine, source.affine)
        expected = np.select([raw[item["case"]] == 12, raw[item["case"]] == 3, raw[item["case"]] == 7], [1, 2, 3], 0)
        np.testing.assert_array_equal(np.asanyarray(label.dataobj), expected)
    assert json.loads((output.parent / "classes.json").read_text()) == {
        "num_classes": 4, "class_names": ["background", "liver", "spleen", "kidney"]
    }  # fmt: skip
    meta = json.loads((output.parent / "classes_metadata.json").read_text())
    assert meta["network_data_format#outputs#pred#num_channels"] == 4
    assert meta["network_data_format#outputs#pred#channel_def"]["3"] == "kidney"
    # fewer than 3 cases: validation = test = training, with a plain warning
    assert datalist["validation"] == datalist["training"] == datalist["test"]
    warning = [line for line in lines if line.startswith("warning: only 2 case(s)")]
    assert warning and "validation and test use the TRAINING cases" in warning[0]


def test_three_or_more_cases_get_a_seeded_disjoint_split(tmp_path):
    for k in range(5):
        make_case(tmp_path / "in" / "images" / f"c{k}.nii.gz", tmp_path / "in" / "labels" / f"c{k}.nii.gz", ids=(1,),
                  seed=k)  # fmt: skip
    lines, log = messages()
    datalist = prepare_collection(tmp_path / "in", tmp_path / "out" / "datalist.json", labels="tumour=1", seed=3,
                                  log=log)  # fmt: skip
    cases = datalist["split"]["cases"]
    assert sorted(cases["training"] + cases["validation"] + cases["test"]) == [f"c{k}" for k in range(5)]
    assert cases["test"] and cases["validation"] and cases["training"]
    assert not any(line.startswith("warning: only") for line in lines)
    again = prepare_collection(tmp_path / "in", tmp_path / "out2" / "datalist.json", labels="tumour=1", seed=3, log=log)
    assert again["split"]["cases"] == cases


def test_unlisted_ids_are_refused_unless_ignored(tmp_path):
    make_case(tmp_path / "in" / "a.nii.gz", tmp_path / "in" / "a_seg.nii.gz", ids=(1, 2, 5))
    output = tmp_path / "out" / "datalist.json"
    with pytest.raises(InputError) as info:
        prepare_collection(tmp_path / "in", output, labels="liver=1,spleen=2", log=lambda line: None)
    assert "a_seg.nii.gz: label ids [5] are not in --labels" in str(info.value)
    assert "--ignore-unlisted" in str(info.value)
    assert not (tmp_path / "out").exists()
    lines, log = messages()
    prepare_collection(tmp_path / "in", output, labels="liver=1,spleen=2", ignore_unlisted=True, log=log)
    note = r"note: unlisted label id 5 set to background: \d+ voxel\(s\) in a_seg.nii.gz"
    assert any(re.match(note, line) for line in lines)
    data = np.asanyarray(nib.load(str(output.parent / "labels_3class" / "a.nii.gz")).dataobj)
    assert set(np.unique(data)) == {0, 1, 2}


def test_listed_class_absent_from_every_file_gets_a_warning(tmp_path):
    make_case(tmp_path / "in" / "a.nii.gz", tmp_path / "in" / "a_seg.nii.gz", ids=(1,))
    lines, log = messages()
    prepare_collection(tmp_path / "in", tmp_path / "out" / "d.json", labels="liver=1,spleen=2", log=log)
    assert any("spleen (id 2)" in line and line.startswith("warning:") for line in lines)


def test_bad_files_are_all_refused_by_name_and_nothing_is_written(tmp_path):
    make_case(tmp_path / "in" / "good.nii.gz", tmp_path / "in" / "good_seg.nii.gz")
    make_case(tmp_path / "in" / "empty.nii.gz", tmp_path / "in" / "empty_seg.nii.gz")
    (tmp_path / "in" / "empty_seg.nii.gz").write_bytes(b"")
    save(tmp_path / "in" / "shifted.nii.gz", np.arange(np.prod(SHAPE), dtype=np.int16).reshape(SHAPE))
    save(tmp_path / "in" / "shifted_seg.nii.gz", np.zeros(SHAPE, np.uint8), affine=np.diag([1.0, 1.0, 1.0, 1.0]))
    save(tmp_path / "in" / "frac.nii.gz", np.arange(np.prod(SHAPE), dtype=np.int16).reshape(SHAPE))
    save(tmp_path / "in" / "frac_seg.nii.gz", np.full(SHAPE, 0.5, np.float32))
    save(tmp_path / "in" / "lonely.nii.gz", np.ones(SHAPE, np.int16))
    output = tmp_path / "out" / "datalist.json"
    with pytest.raises(InputError) as info:
        prepare_collection(tmp_path / "in", output, labels="liver=1,spleen=2,kidney=3", log=lambda line: None)
    lines = str(info.value).splitlines()
    for name in ("empty_seg.nii.gz", "shifted_seg.nii.gz", "frac_seg.nii.gz", "lonely.nii.gz"):
        assert any(re.search(rf"{re.escape(name)}: \S", line) for line in lines), (name, lines)
    assert not any("good" in line for line in lines)
    assert files_under(tmp_path / "out") == []


def test_no_overwrite_without_asking(tmp_path):
    make_case(tmp_path / "in" / "a.nii.gz", tmp_path / "in" / "a_seg.nii.gz")
    output = tmp_path / "out" / "datalist.json"
    quiet = lambda line: None  # noqa: E731
    prepare_collection(tmp_path / "in", output, labels="liver=1,spleen=2,kidney=3", log=quiet)
    before = {p: (output.parent / p).stat().st_mtime_ns for p in files_under(output.parent)}
    with pytest.raises(FileExistsError, match="already exists"):
        prepare_collection(tmp_path / "in", output, labels="liver=1,spleen=2,kidney=3", log=quiet)
    assert {p: (output.parent / p).stat().st_mtime_ns for p in files_under(output.parent)} == before
    prepare_collection(tmp_path / "in", output, labels="liver=1,spleen=2,kidney=3", overwrite=True, log=quiet)
    assert not [p for p in files_under(output.parent) if ".tmp" in p]


def test_check_only_writes_nothing(tmp_path):
    make_case(tmp_path / "in" / "a.nii.gz", tmp_path / "in" / "a_seg.nii.gz")
    datalist = prepare_collection(tmp_path / "in", tmp_path / "out" / "d.json", labels="a=1,b=2,c=3", check_only=True,
                                  log=lambda line: None)  # fmt: skip
    assert datalist["num_classes"] == 4 and not (tmp_path / "out").exists()


def test_output_replacing_an_input_is_refused(tmp_path):
    make_case(tmp_path / "images" / "a.nii.gz", tmp_path / "labels_4class" / "a.nii.gz")
    training = [{"image": "images/a.nii.gz", "label": "labels_4class/a.nii.gz"}]
    (tmp_path / "dataset.json").write_text(json.dumps({"training": training}))
    with pytest.raises(InputError, match="would replace an input file"):
        prepare_collection(tmp_path, tmp_path / "d.json", labels="a=1,b=2,c=3", overwrite=True, log=lambda line: None)


def test_window_auto_goes_to_the_overlay(tmp_path):
    make_case(tmp_path / "in" / "a.nii.gz", tmp_path / "in" / "a_seg.nii.gz")
    prepare_collection(tmp_path / "in", tmp_path / "out" / "d.json", labels="a=1,b=2,c=3", window="auto",
                       log=lambda line: None)  # fmt: skip
    low, high = json.loads((tmp_path / "out" / "classes.json").read_text())["hu_window"]
    assert -500 <= low < high <= 500
    with pytest.raises(InputError, match="--window"):
        prepare_collection(tmp_path / "in", tmp_path / "x" / "d.json", labels="a=1", window="5,1")


def test_bundle_copy_gets_num_classes_and_metadata(tmp_path):
    make_case(tmp_path / "in" / "a.nii.gz", tmp_path / "in" / "a_seg.nii.gz")
    copy = tmp_path / "my_bundle"
    shutil.copytree(BUNDLE / "configs", copy / "configs")
    prepare_collection(tmp_path / "in", copy / "data" / "datalist.json", labels="liver=1,spleen=2,kidney=3",
                       bundle=copy, log=lambda line: None)  # fmt: skip
    for name in ("train.json", "inference.json"):
        assert json.loads((copy / "configs" / name).read_text())["num_classes"] == 4
    meta = json.loads((copy / "configs" / "metadata.json").read_text())
    assert meta["network_data_format"]["outputs"]["pred"]["num_channels"] == 4
    assert meta["network_data_format"]["outputs"]["pred"]["channel_def"] == {
        "0": "background", "1": "liver", "2": "spleen", "3": "kidney"
    }  # fmt: skip
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(copy / "configs" / "train.json"), str(copy / "configs" / "evaluate.json")])
    assert parser.get_parsed_content("num_classes") == 4
    assert parser.get_parsed_content("network_def#out_channels") == 4
    # the repository's own bundle and folders that are not a bundle are refused, before anything is written
    with pytest.raises(InputError, match="repository's bundle"):
        prepare_collection(tmp_path / "in", tmp_path / "o1" / "d.json", labels="a=1,b=2,c=3", bundle=BUNDLE)
    with pytest.raises(InputError, match="not a copy of the bundle"):
        prepare_collection(tmp_path / "in", tmp_path / "o2" / "d.json", labels="a=1,b=2,c=3", bundle=tmp_path / "in")
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()


def test_overlay_sets_num_classes_in_every_bundle_config(tmp_path):
    from monai.bundle import ConfigParser

    (tmp_path / "classes.json").write_text(json.dumps({"num_classes": 4}))
    configs = BUNDLE / "configs"
    for files in (["train.json"], ["train.json", "evaluate.json"], ["inference.json"]):
        parser = ConfigParser()
        parser.read_config([str(configs / f) for f in files] + [str(tmp_path / "classes.json")])
        assert parser.get_parsed_content("num_classes") == 4
        assert parser.get_parsed_content("network_def#out_channels") == 4


# ------------------------------------------------------------------------------------------------------- the CLI


def test_cli_reports_every_problem_with_exit_code_2(tmp_path, capsys):
    from xattnres_monai.cli.prepare import main

    make_case(tmp_path / "in" / "a.nii.gz", tmp_path / "in" / "a_seg.nii.gz", ids=(1, 2, 9))
    save(tmp_path / "in" / "b.nii.gz", np.ones(SHAPE, np.int16))
    with pytest.raises(SystemExit) as info:
        main(["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out" / "d.json"), "--labels", "x=1,y=2"])
    assert info.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 2
    assert any("b.nii.gz: image without label" in e for e in errors)
    assert any("a_seg.nii.gz: label ids [9] are not in --labels" in e for e in errors)
    assert not (tmp_path / "out").exists()
    with pytest.raises(SystemExit) as info:
        main(["--input", str(tmp_path / "in"), "--output", str(tmp_path / "o" / "d.json"), "--labels", "x=1,x=2"])
    assert info.value.code == 2 and "error: --labels: class 'x' is given twice" in capsys.readouterr().err


def test_preset_synapse_calls_prepare_synapse_with_the_same_arguments(tmp_path, monkeypatch, capsys):
    from xattnres_monai.cli import prepare

    calls = []
    monkeypatch.setattr(prepare, "prepare_synapse", lambda *a, **k: calls.append((a, k)) or {})
    monkeypatch.setattr(prepare, "format_synapse_report", lambda datalist, output: "ok")
    prepare.main(["--preset", "synapse", "--input", "raw", "--output", "d.json", "--split", "random", "--num-val",
                  "2", "--seed", "5", "--overwrite", "--max-voxels", "1000", "--format", "btcv"])  # fmt: skip
    assert calls == [(("raw", "d.json"), {"fmt": "btcv", "split": "random", "num_val": 2, "val_fraction": None,
                                          "seed": 5, "overwrite": True, "max_voxels": 1000})]  # fmt: skip
    with pytest.raises(SystemExit) as info:
        prepare.main(["--preset", "synapse", "--input", "raw", "--output", "d.json", "--labels", "a=1"])
    assert info.value.code == 2 and "--labels" in capsys.readouterr().err


def test_preset_synapse_writes_what_the_synapse_command_writes(tmp_path):
    from xattnres_monai.cli import prepare, synapse
    from xattnres_monai.testing.phantoms import write_phantoms

    write_phantoms(tmp_path / "raw", cases=3, size=(16, 16, 16), seed=0)
    args = ["--input", str(tmp_path / "raw"), "--split", "random", "--num-val", "1"]
    a = synapse.main(args + ["--output", str(tmp_path / "a" / "datalist.json")])
    b = prepare.main(["--preset", "synapse"] + args + ["--output", str(tmp_path / "b" / "datalist.json")])
    assert a == b


def test_library_does_not_import_the_cli():
    tree = ast.parse(Path(collection.__file__).read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert "argparse" not in imported and "xattnres_monai.data.prepare" not in imported
    assert not any(m and m.startswith("xattnres_monai.cli") for m in imported)


# ---------------------------------------------------------------------------------------------- documented commands


def _documented_blocks():
    text = README.read_text(encoding="utf-8")
    section = text.split("## Your own dataset", 1)[1].split("\n## ", 1)[0]
    return [re.sub(r"(?m)^  ", "", b) for b in re.findall(r"```bash\n(.*?)```", section, flags=re.S)]


@pytest.fixture(scope="module")
def documented_run(tmp_path_factory):
    """The README's "Your own dataset" commands, as written, from a folder that looks like the repository root
    (``bundles`` linked), with the tiny slice size of the test suite added to every bundle run."""
    root = tmp_path_factory.mktemp("byod")
    (root / "bundles").symlink_to(REPO / "bundles", target_is_directory=True)
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
               PYTHONPATH=str(REPO))  # fmt: skip
    outputs = []
    start = time.perf_counter()
    for block in _documented_blocks():
        script = block.replace("python -m monai.bundle run", f"python -m monai.bundle run {TINY_ARGS}")
        result = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=root, env=env, capture_output=True,
                                encoding="utf-8", errors="replace")  # fmt: skip
        outputs.append(result)
        assert result.returncode == 0, f"{script}\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    return root / "runs" / "byod", outputs, time.perf_counter() - start


@pytest.mark.slow
def test_documented_commands_prepare_train_evaluate_infer(documented_run):
    byod, outputs, seconds = documented_run
    print(f"documented commands ran in {seconds:.0f} s")
    assert len(outputs) == 2  # the walk-through and the --bundle variant
    assert "warning: only 2 case(s)" in outputs[0].stderr
    datalist = json.loads((byod / "data" / "datalist.json").read_text())
    assert datalist["num_classes"] == 4 and datalist["labels"]["3"] == "kidney"
    assert {i["case"] for i in datalist["training"]} == {"abdomen_ct_A", "scan-0042"}
    # the trained network has 4 output channels
    import torch

    state = torch.load(byod / "run" / "models" / "model.pt", weights_only=True)["model"]
    assert tuple(state["head.weight"].shape[:1]) == (4,) and tuple(state["head.bias"].shape) == (4,)
    # the evaluation report has one row per test case and 3 foreground classes
    with open(byod / "run" / "eval" / "per_case_physical.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 and sum(k.startswith("dice_") for k in rows[0]) == 3
    # masks on the input grid, labels 0-3
    for case in ("abdomen_ct_A", "scan-0042"):
        mask = nib.load(str(byod / "masks" / f"{case}_seg.nii.gz"))
        source = nib.load(str(byod / "my_ct" / f"{case}.nii.gz"))
        assert mask.shape == source.shape, (mask.shape, source.shape)
        np.testing.assert_allclose(mask.affine, source.affine, atol=1e-4)
        assert set(np.unique(np.asanyarray(mask.dataobj)).tolist()) <= {0, 1, 2, 3}
    # the --bundle copy: 4 classes without an overlay
    from monai.bundle import ConfigParser

    copy = byod / "my_bundle" / "configs"
    parser = ConfigParser()
    parser.read_config([str(copy / "train.json"), str(copy / "evaluate.json")])
    assert parser.get_parsed_content("num_classes") == 4
    meta = json.loads((copy / "metadata.json").read_text())
    assert meta["network_data_format"]["outputs"]["pred"]["num_channels"] == 4


@pytest.mark.slow
def test_documented_evaluation_report_names_the_users_classes(documented_run):
    byod, _, _ = documented_run
    with open(byod / "run" / "eval" / "summary.csv") as f:
        header = next(csv.reader(f))
    assert {"liver", "spleen", "kidney"} <= set(header), header
