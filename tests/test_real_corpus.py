"""The project's reader on real files (tests/corpus.py), checked against independent readers
(tests/independent_geometry.py: pydicom / nibabel only).

- every corpus volume: ``read_volume`` gives the same shape, RAS affine (1e-4 mm) and voxel values (DICOM: pydicom's
  pixels with RescaleSlope / RescaleIntercept applied) as the independent reader;
- the independent tooling itself: pyCERR GTV voxel counts from the RTSTRUCT polygons, lossless DICOM transfer
  syntaxes decoding to identical pixels;
- label checks on real masks: the tptbox vertebra mask {21, 22, 23} is refused for a 9-class map and accepted for 24;
  the AAL atlas pairs with Colin27 (``check_pair``).

``read_volume`` runs in a child process (:class:`_IsolatedReader`): a reader that crashes the interpreter (a segfault
in a native DICOM library) fails one test with the signal instead of killing the whole test session.

The corpus is fetched on demand (skip without network) or beforehand with ``make corpus`` (CI, where
``XATTNRES_REQUIRE_CORPUS=1`` turns a missing corpus into a failure).
"""

from __future__ import annotations

import select
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Dict

import numpy as np
import pytest

from tests.independent_geometry import (
    dicom_series_data,
    dicom_series_geometry,
    nifti_data,
    nifti_geometry,
    rtstruct_to_label,
)

REPO = Path(__file__).resolve().parents[1]
AFFINE_TOL = 1e-4

# ------------------------------------------------------------------------------------------- read_volume, isolated

#: a child process that reads one path per stdin line with read_volume and answers one line per path
_WORKER = r"""
import sys, traceback
import numpy as np
from xattnres_monai.data.inputs import read_volume
from xattnres_monai.utils.files import InputError
M = "@@read_volume@@ "  # marks the answers: anything else a library prints on stdout is skipped
print(M + "ready", flush=True)
for line in sys.stdin:
    path, out = line.rstrip("\n").split("\t")
    print(f"reading\t{path}", file=sys.stderr, flush=True)
    try:
        volume = read_volume(path)
        np.savez(out, shape=np.asarray(volume.shape), affine=np.asarray(volume.affine), data=np.asarray(volume.data))
        print(M + "ok", flush=True)
    except InputError as err:
        print(M + "error\tInputError: " + " ".join(str(err).split()), flush=True)
    except Exception as err:
        print(M + "error\t" + " ".join(traceback.format_exc().split())[-1500:], flush=True)
"""
_TIMEOUT_S = 300
_MARK = "@@read_volume@@ "


class _IsolatedReader:
    """``read_volume`` in one long-lived child process (its imports are paid once): a reader that crashes the
    interpreter (a segfault in a native DICOM library) fails that one test with the signal, and the next read
    starts a fresh child, instead of the whole test session dying."""

    def __init__(self) -> None:
        self.tmp = tempfile.TemporaryDirectory(prefix="read_volume-")
        self.proc: "subprocess.Popen[str] | None" = None
        self.cache: Dict[str, SimpleNamespace] = {}
        self.count = 0

    def _start(self) -> "subprocess.Popen[str]":
        self.stderr = open(Path(self.tmp.name) / f"stderr{self.count}.txt", "w+")
        proc = subprocess.Popen(
            [sys.executable, "-c", _WORKER], cwd=str(REPO), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=self.stderr, text=True,
        )
        self._answer(proc, "starting the read_volume worker")
        return proc

    def _answer(self, proc: "subprocess.Popen[str]", what: str) -> str:
        deadline = time.monotonic() + _TIMEOUT_S
        ready = line = True
        while ready and line:
            ready, _, _ = select.select([proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
            line = proc.stdout.readline() if ready else ""
            if line.startswith(_MARK):
                return line[len(_MARK):].rstrip("\n")
        if not ready:
            proc.kill()
        code = proc.wait()
        self.proc = None
        self.stderr.seek(0)
        tail = self.stderr.read().strip()[-1500:]
        if code < 0:
            pytest.fail(f"{what}: crashed the interpreter ({signal.Signals(-code).name}); stderr: {tail}")
        pytest.fail(f"{what}: no answer (exit {code}, timeout {_TIMEOUT_S} s); stderr: {tail}")

    def read(self, path: Path) -> SimpleNamespace:
        """``read_volume(path)``: ``.shape`` (tuple), ``.affine``, ``.data`` (cached per path)."""
        key = str(path)
        if key not in self.cache:
            if self.proc is None:
                self.proc = self._start()
            self.count += 1
            out = Path(self.tmp.name) / f"volume{self.count}.npz"
            self.proc.stdin.write(f"{key}\t{out}\n")
            self.proc.stdin.flush()
            answer = self._answer(self.proc, f"read_volume({key})")
            if answer != "ok":
                pytest.fail(f"read_volume({key}) failed: {answer.partition(chr(9))[2]}")
            with np.load(out) as saved:
                self.cache[key] = SimpleNamespace(
                    shape=tuple(int(s) for s in saved["shape"]), affine=saved["affine"], data=saved["data"]
                )
            out.unlink()
        return self.cache[key]

    def close(self) -> None:
        if self.proc is not None:  # nothing to flush: the worker only answers requests
            self.proc.kill()
            self.proc.wait()
            self.proc.stdin.close()
            self.proc.stdout.close()
            self.proc = None
            self.stderr.close()
        self.tmp.cleanup()


@pytest.fixture(scope="module")
def reader():
    isolated = _IsolatedReader()
    yield isolated
    isolated.close()


def _assert_values_equal(actual: np.ndarray, expected: np.ndarray, what: str) -> None:
    assert actual.shape == expected.shape, f"{what}: data shape {actual.shape} != {expected.shape}"
    actual = np.asarray(actual, dtype=np.float64)
    if np.array_equal(expected, np.round(expected)):  # integer-valued (HU, uint8 T1, labels): exact
        mismatch = int(np.count_nonzero(actual != expected))
        assert mismatch == 0, f"{what}: {mismatch} voxel(s) differ (max |diff| {np.abs(actual - expected).max():g})"
    else:  # a non-integer RescaleSlope: the reader may keep float32
        np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-4, err_msg=what)


# ------------------------------------------------------------------------------------------------- pyCERR DICOM CT

#: (x, y, z) shape, GTV-1 voxels, slices holding GTV-1 (real_data.md)
PYCERR = {
    "pat_1": ((204, 201, 60), 128674, 26),
    "pat_2": ((141, 138, 41), 2453, 7),
    "pat_3": ((136, 137, 46), 4520, 12),
    "pat_4": ((178, 172, 56), 45196, 23),
}


@pytest.mark.parametrize("index, patient", list(enumerate(PYCERR)))
def test_pycerr_series_independent_geometry(corpus_pycerr_series, index, patient):
    folder = corpus_pycerr_series[index]
    geometry = dicom_series_geometry(folder)
    assert geometry.shape == PYCERR[patient][0]
    assert geometry.spacing[2] == pytest.approx(3.0, abs=1e-3)
    np.testing.assert_allclose(np.diff(geometry.positions @ geometry.direction[:, 2]), 3.0, atol=1e-3)


@pytest.mark.parametrize("index, patient", list(enumerate(PYCERR)))
def test_pycerr_series_read_volume(corpus_pycerr_series, reader, index, patient):
    folder = corpus_pycerr_series[index]
    geometry = dicom_series_geometry(folder)
    volume = reader.read(folder)
    assert volume.shape == geometry.shape
    np.testing.assert_allclose(volume.affine, geometry.affine, atol=AFFINE_TOL, rtol=0, err_msg=f"{folder} affine")
    _assert_values_equal(volume.data, dicom_series_data(folder), str(folder))


@pytest.mark.parametrize("index, patient", list(enumerate(PYCERR)))
def test_pycerr_rtstruct_gtv_counts(corpus_pycerr_series, index, patient):
    from tests import corpus

    folder = corpus_pycerr_series[index]
    label = rtstruct_to_label(folder, corpus.obtain(corpus.pycerr_rtstruct, patient), roi_name="GTV-1")
    _, voxels, slices = PYCERR[patient]
    assert label.shape == PYCERR[patient][0]
    assert int(label.sum()) == voxels
    assert int(np.count_nonzero(label.any(axis=(0, 1)))) == slices


# ------------------------------------------------------------------------------------------- single DICOM slices

SINGLE = {  # stem -> (x, y) in-plane shape
    "693_UNCR": (512, 512),
    "693_J2KR": (512, 512),
    "MR2_UNCR": (1024, 1024),
    "MR2_J2KR": (1024, 1024),
    "CT_small": (128, 128),
    "MR_small": (64, 64),
    "MR_small_implicit": (64, 64),
    "MR_small_bigendian": (64, 64),
    "MR_small_RLE": (64, 64),
    "MR_small_jp2klossless": (64, 64),
}


@pytest.mark.parametrize("stem", list(SINGLE))
def test_single_slice_dicom_read_volume(corpus_single_dicoms, reader, stem):
    """A one-slice series: the slice spacing is a reader's convention, so only the in-plane columns of the affine
    and its translation are compared."""
    folder = corpus_single_dicoms[stem]
    geometry = dicom_series_geometry(folder)
    assert geometry.shape == (*SINGLE[stem], 1)
    volume = reader.read(folder)
    assert volume.shape == geometry.shape
    np.testing.assert_allclose(volume.affine[:, [0, 1, 3]], geometry.affine[:, [0, 1, 3]], atol=AFFINE_TOL, rtol=0)
    _assert_values_equal(volume.data, dicom_series_data(folder), str(folder))


@pytest.mark.parametrize(
    "stem, reference",
    [
        ("693_J2KR", "693_UNCR"),
        ("MR2_J2KR", "MR2_UNCR"),
        ("MR_small_implicit", "MR_small"),
        ("MR_small_bigendian", "MR_small"),
        ("MR_small_RLE", "MR_small"),
        ("MR_small_jp2klossless", "MR_small"),
    ],
)
def test_lossless_transfer_syntaxes_decode_identically(corpus_single_dicoms, stem, reference):
    """The independent decoder (pydicom + Pillow's OpenJPEG) agrees with the uncompressed copy, geometry included."""
    compressed, plain = corpus_single_dicoms[stem], corpus_single_dicoms[reference]
    np.testing.assert_array_equal(dicom_series_data(compressed), dicom_series_data(plain))
    np.testing.assert_allclose(dicom_series_geometry(compressed).affine, dicom_series_geometry(plain).affine, atol=1e-6)


# ------------------------------------------------------------------------------------------------- tptbox NIfTI


@pytest.mark.parametrize(
    "key, shape, orientation",
    [
        ("ct", (73, 47, 73), "PIR"),
        ("ct_vert_mask", (73, 47, 73), "PIR"),
        ("mr", (68, 52, 67), None),
        ("mr_vert_mask", (68, 52, 67), None),
    ],
)
def test_tptbox_read_volume(corpus_tptbox, reader, key, shape, orientation):
    path = corpus_tptbox[key]
    geometry = nifti_geometry(path)
    assert geometry.shape == shape
    if orientation:
        assert geometry.orientation == orientation
    volume = reader.read(path)
    assert volume.shape == geometry.shape
    np.testing.assert_allclose(volume.affine, geometry.affine, atol=AFFINE_TOL, rtol=0)
    _assert_values_equal(volume.data, nifti_data(path), str(path))


def test_tptbox_masks_share_the_image_grid(corpus_tptbox):
    for image, mask in (("ct", "ct_vert_mask"), ("ct", "ct_subreg_mask"), ("mr", "mr_vert_mask")):
        a, b = nifti_geometry(corpus_tptbox[image]), nifti_geometry(corpus_tptbox[mask])
        assert a.shape == b.shape
        np.testing.assert_allclose(a.affine, b.affine, atol=1e-3)
    assert set(np.unique(nifti_data(corpus_tptbox["ct_vert_mask"])).tolist()) == {0, 21, 22, 23}


def test_vertebra_mask_label_range(corpus_tptbox):
    from xattnres_monai.data.inputs import label_errors

    path = corpus_tptbox["ct_vert_mask"]
    data = nifti_data(path)
    errors = label_errors(path, data, max_label=8)
    assert len(errors) == 1
    message = str(errors[0])
    assert str(path) in message
    for value in ("21", "22", "23"):
        assert value in message, message
    assert label_errors(path, data, max_label=23) == []


def test_vertebra_mask_check_pair(corpus_tptbox):
    from xattnres_monai.data.inputs import check_pair

    image, mask = corpus_tptbox["ct"], corpus_tptbox["ct_vert_mask"]
    slices, errors = check_pair(image, mask, max_label=8)
    assert slices == 0 and len(errors) == 1 and str(mask) in str(errors[0])
    assert check_pair(image, mask, max_label=23) == (73, [])


# ---------------------------------------------------------------------------------------------- MRIcron Colin27


@pytest.mark.parametrize("key", ["ch2", "aal"])
def test_mricron_read_volume(corpus_mricron, reader, key):
    path = corpus_mricron[key]
    geometry = nifti_geometry(path)
    assert geometry.shape == (181, 217, 181) and geometry.orientation == "RAS"
    volume = reader.read(path)
    assert volume.shape == geometry.shape
    np.testing.assert_allclose(volume.affine, geometry.affine, atol=AFFINE_TOL, rtol=0)
    _assert_values_equal(volume.data, nifti_data(path), str(path))


def test_mricron_aal_pairs_with_ch2(corpus_mricron):
    from xattnres_monai.data.inputs import check_pair

    labels = np.unique(nifti_data(corpus_mricron["aal"]))
    assert labels.tolist() == list(range(117))
    names = corpus_mricron["aal_names"].read_text().split("\n")
    assert len([line for line in names if line.strip()]) == 116
    assert check_pair(corpus_mricron["ch2"], corpus_mricron["aal"], max_label=116) == (181, [])
    slices, errors = check_pair(corpus_mricron["ch2"], corpus_mricron["aal"], max_label=8)
    assert slices == 0 and len(errors) == 1 and str(corpus_mricron["aal"]) in str(errors[0])
