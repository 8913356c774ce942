"""Atomic writers, InputError and the common command-line error handling."""

from __future__ import annotations

import csv
import json

import nibabel as nib
import numpy as np
import pytest

from xattnres_monai.utils import (
    InputError,
    InputErrorGroup,
    atomic_write,
    check_writable,
    cli_main,
    raise_if_any,
    write_csv_atomic,
    write_json_atomic,
)


def test_atomic_write_keeps_suffixes_and_moves_into_place(tmp_path):
    target = tmp_path / "sub" / "label0001.nii.gz"
    with atomic_write(target) as tmp:
        assert tmp.parent == target.parent and tmp != target
        assert tmp.name.endswith("label0001.nii.gz") and tmp.suffixes[-2:] == [".nii", ".gz"]
        nib.save(nib.Nifti1Image(np.zeros((2, 2, 2), np.uint8), np.eye(4)), str(tmp))
        assert not target.exists()
    with open(target, "rb") as f:
        assert f.read(2) == b"\x1f\x8b"  # nibabel chose gzip from the temporary name
    assert sorted(p.name for p in target.parent.iterdir()) == ["label0001.nii.gz"]


def test_atomic_write_removes_temporary_on_error(tmp_path):
    target = tmp_path / "out.json"
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_write(target) as tmp:
            tmp.write_text("partial")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_refuses_existing_unless_overwrite(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(FileExistsError) as err:
        with atomic_write(target) as tmp:
            tmp.write_text("new")
    assert str(target) in str(err.value)
    assert target.read_text() == "old" and list(tmp_path.iterdir()) == [target]
    with atomic_write(target, overwrite=True) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "new"


def test_atomic_write_does_not_replace_a_file_created_meanwhile(tmp_path):
    target = tmp_path / "out.txt"
    with pytest.raises(FileExistsError):
        with atomic_write(target) as tmp:
            tmp.write_text("mine")
            target.write_text("theirs")
    assert target.read_text() == "theirs" and list(tmp_path.iterdir()) == [target]


def test_json_and_csv_writers(tmp_path):
    data = {"training": [{"image": "a.nii.gz", "case": "0001"}], "n": 1}
    path = write_json_atomic(tmp_path / "d.json", data)
    assert json.loads(path.read_text()) == data and path.read_text().endswith("\n")
    with pytest.raises(FileExistsError):
        write_json_atomic(path, {})
    write_json_atomic(path, {}, overwrite=True)
    assert json.loads(path.read_text()) == {}

    rows = [{"case": "0001", "dice": 0.5}, {"case": "0002", "hd95": 3.0}]
    path = write_csv_atomic(tmp_path / "r.csv", rows)
    with open(path, newline="") as f:
        read = list(csv.DictReader(f))
    assert list(read[0]) == ["case", "dice", "hd95"]
    assert read[1] == {"case": "0002", "dice": "", "hd95": "3.0"}
    path = write_csv_atomic(tmp_path / "s.csv", rows, fieldnames=["hd95", "case", "dice"])
    assert path.read_text().splitlines()[0] == "hd95,case,dice"


def test_check_writable(tmp_path):
    (tmp_path / "a").write_text("x")
    (tmp_path / "b").write_text("x")
    check_writable([tmp_path / "c"])
    check_writable([tmp_path / "a"], overwrite=True)
    with pytest.raises(FileExistsError, match="1 more"):
        check_writable([tmp_path / "c", tmp_path / "a", tmp_path / "b"])


def test_input_error_is_one_line():
    err = InputError("data/img0001.nii.gz", "corrupt\n  data (EOFError)")
    assert isinstance(err, ValueError)
    assert str(err) == "data/img0001.nii.gz: corrupt data (EOFError)"
    assert (err.path, err.problem) == ("data/img0001.nii.gz", "corrupt data (EOFError)")
    group = InputErrorGroup([err, InputError("b", "bad")])
    assert str(group).splitlines() == [str(err), "b: bad"]
    with pytest.raises(InputError, match="^b: bad$"):
        raise_if_any([InputError("b", "bad")])
    with pytest.raises(InputErrorGroup):
        raise_if_any([err, err])
    raise_if_any([])


@pytest.mark.parametrize(
    "error, expected",
    [
        (InputError("x.nii.gz", "zero-byte file"), ["error: x.nii.gz: zero-byte file"]),
        (InputErrorGroup([InputError("a", "p"), InputError("b", "q")]), ["error: a: p", "error: b: q"]),
        (FileExistsError(17, "already exists", "out.json"), ["error: out.json: already exists"]),
        (FileNotFoundError(2, "No such file or directory", "in.json"), ["error: in.json: No such file or directory"]),
    ],
)
def test_cli_main_reports_expected_errors(capsys, error, expected):
    @cli_main
    def main():
        raise error

    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert captured.err.splitlines() == expected and captured.out == ""


def test_cli_main_passes_results_and_bugs_through():
    @cli_main
    def ok(x):
        return x + 1

    @cli_main
    def buggy():
        raise KeyError("bug")

    assert ok(1) == 2 and ok.__name__ == "ok"
    with pytest.raises(KeyError):
        buggy()
