"""Shared pieces of the reliability tests: tiny data, bundle runners and a table of bad inputs.

The bad inputs are described once (:data:`BAD_VOLUMES`, :data:`BAD_LABELS`, :data:`BAD_SCANS`) and applied to
every entry point that takes such a file; a 2D bundle (PNG inputs) adds its own rows and runners.
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import nibabel as nib
import numpy as np

REPO = Path(__file__).resolve().parents[2]
BUNDLE = REPO / "bundles" / "synapse_ct_segmentation"
CONFIGS = BUNDLE / "configs"
#: tiny bundle settings (as tests/test_synapse_bundle.py): the network sees 16 x 16 slices.
TINY = {"roi_size": [16, 16], "num_workers": 0, "batch_size": 4}
TINY_ARGS = ["--roi_size", "[16,16]", "--num_workers", "0", "--batch_size", "4"]
NUM_CLASSES = 9


# ------------------------------------------------------------------------------------------------------ small data


def save_nifti(path: Path, data: np.ndarray, affine: Optional[np.ndarray] = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.diag([0.8, 0.8, 2.5, 1.0]) if affine is None else affine), str(path))
    return path


def make_datalist(root: Path, cases: int = 3, size: Sequence[int] = (16, 16, 16)) -> Path:
    """Phantoms -> ``root/data/datalist.json`` (random split: 1 training, 1 validation, 1 test case for 3 cases)."""
    from xattnres_monai.data.synapse import prepare_synapse
    from xattnres_monai.testing.phantoms import write_phantoms

    write_phantoms(root / "raw", cases=cases, size=size, seed=0)
    datalist = root / "data" / "datalist.json"
    prepare_synapse(root / "raw", datalist, split="random", num_val=1)
    return datalist


def write_model(bundle_root: Path, seed: int = 0, **network_kwargs) -> Path:
    """A ``models/model.pt`` of randomly initialised weights (enough to run evaluation and inference)."""
    import torch

    from xattnres_monai.networks.nets import XAttnResUNet

    torch.manual_seed(seed)
    kwargs = {"spatial_dims": 2, "in_channels": 1, "out_channels": NUM_CLASSES, **network_kwargs}
    path = bundle_root / "models" / "model.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(XAttnResUNet(**kwargs).state_dict(), path)
    return path


def files_under(folder: Path) -> List[str]:
    """Relative paths of every file under ``folder`` (hidden temporary files included), sorted."""
    if not folder.exists():
        return []
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def masks_under(folder: Path) -> List[str]:
    """The masks (``*_seg.nii.gz``) and any temporary file under an inference output folder, sorted: what inference
    wrote for which scan, without the organ reports and cohort records that go with each finished mask."""
    return [f for f in files_under(folder) if f.endswith("_seg.nii.gz") or Path(f).name.startswith(".tmp")]


# ------------------------------------------------------------------------------------------------------ runners


@dataclass
class Outcome:
    code: int
    stdout: str
    stderr: str

    @property
    def error_lines(self) -> List[str]:
        return [line for line in self.stderr.splitlines() if line.startswith("error: ")]


def run_inprocess(fn: Callable[[], object]) -> Outcome:
    """Run ``fn`` capturing stdout/stderr; the exit code of a ``SystemExit`` (0 if it returns)."""
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            fn()
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 1
    return Outcome(code, out.getvalue(), err.getvalue())


def run_workflow(configs: Sequence[str], bundle_root: Path, workflow_type: str = "train", **overrides) -> Outcome:
    """A bundle run in this process, as ``python -m monai.bundle run`` does it (initialize, run, finalize)."""
    from monai.bundle import ConfigWorkflow

    def go() -> None:
        workflow = ConfigWorkflow(
            config_file=[str(CONFIGS / c) for c in configs],
            workflow_type=workflow_type,
            bundle_root=str(bundle_root),
            **{**TINY, **overrides},
        )
        workflow.initialize()
        workflow.run()
        workflow.finalize()

    return run_inprocess(go)


def run_bundle_cli(configs: Sequence[str], bundle_root: Path, *args: str, extra_configs: Sequence[Path] = (),
                   timeout: float = 600, **popen) -> subprocess.CompletedProcess:  # fmt: skip
    """``python -m monai.bundle run`` in a subprocess (output decoded as UTF-8 whatever the locale)."""
    files = [str(CONFIGS / c) for c in configs] + [str(p) for p in extra_configs]
    config_file = "[" + ",".join(f"'{f}'" for f in files) + "]"
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", config_file, "--bundle_root", str(bundle_root)]
    return subprocess.run(cmd + TINY_ARGS + list(args), capture_output=True, encoding="utf-8", errors="replace",
                          timeout=timeout, env=bundle_env(), **popen)  # fmt: skip


def bundle_env() -> Dict[str, str]:
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")  # two processes of a test share the 2 CI cores
    env["PYTHONUNBUFFERED"] = "1"
    return env


# -------------------------------------------------------------------------------------------------- bad inputs


@dataclass(frozen=True)
class Bad:
    """One bad input: ``make(path, reference)`` writes it at (or next to) ``path`` and returns what it wrote.

    ``reference`` is a good volume of the same role (its shape / affine / values are reused). ``message`` is a
    fragment of the expected one-line error.
    """

    name: str
    make: Callable[[Path, Path], Path]
    message: str


def _load(reference: Path) -> Tuple[np.ndarray, np.ndarray]:
    image = nib.load(str(reference))
    return np.asanyarray(image.dataobj), image.affine


def _replace(path: Path, data: np.ndarray, affine: np.ndarray) -> Path:
    if path.exists():
        path.unlink()
    return save_nifti(path, data, affine)


def zero_byte(path: Path, reference: Path) -> Path:
    path.write_bytes(b"")
    return path


def truncated(path: Path, reference: Path) -> Path:
    data, affine = _load(reference)
    noisy = np.random.default_rng(0).integers(-1000, 1000, size=data.shape).astype(np.int16)  # incompressible
    _replace(path, noisy, affine)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path


def not_nifti(path: Path, reference: Path) -> Path:
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)  # a PNG header under a NIfTI name
    return path


def wrong_extension(path: Path, reference: Path) -> Path:
    target = path.with_name(path.name.split(".")[0] + ".png")
    target.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64))
    if path.exists():
        path.unlink()
    return target


def volume_2d(path: Path, reference: Path) -> Path:
    data, affine = _load(reference)
    return _replace(path, data[:, :, 0], affine)


def volume_4d(path: Path, reference: Path) -> Path:
    data, affine = _load(reference)
    return _replace(path, np.stack([data] * 3, axis=-1), affine)  # three channels


def nan_voxels(path: Path, reference: Path) -> Path:
    data, affine = _load(reference)
    data = data.astype(np.float32)
    data[1, 2, 3] = np.nan
    return _replace(path, data, affine)


def inf_voxels(path: Path, reference: Path) -> Path:
    data, affine = _load(reference)
    data = data.astype(np.float32)
    data[0, 0, 0] = np.inf
    return _replace(path, data, affine)


def constant(path: Path, reference: Path) -> Path:
    data, affine = _load(reference)
    return _replace(path, np.full(data.shape, -1000, np.int16), affine)


def huge_header(path: Path, reference: Path) -> Path:
    """A header announcing 2048 x 2048 x 1024 int16 voxels (8 GiB as float32) and no data: refused unread."""
    header = nib.Nifti1Header()
    header.set_data_shape((2048, 2048, 1024))
    header.set_data_dtype(np.int16)
    header.set_qform(np.eye(4), code=1)
    header["vox_offset"] = 352
    target = path.with_name(path.name.replace(".nii.gz", ".nii"))
    if path.exists():
        path.unlink()
    target.write_bytes(header.binaryblock + b"\x00" * 4 + b"\x00" * 64)
    return target


def missing(path: Path, reference: Path) -> Path:
    if path.exists():
        path.unlink()
    return path


#: problems of a volume file (any role).
BAD_VOLUMES = [
    Bad("zero_byte", zero_byte, "zero-byte file"),
    Bad("truncated", truncated, "corrupt or truncated"),
    Bad("not_nifti", not_nifti, "not a readable NIfTI file"),
    Bad("wrong_extension", wrong_extension, "unsupported file type"),
    Bad("volume_2d", volume_2d, "expected a 3D volume, got 2D"),
    Bad("volume_4d_channels", volume_4d, "expected a 3D volume, got 4D"),
    Bad("huge_header", huge_header, "voxel limit"),
    Bad("missing", missing, "no such file"),
]
#: problems of an image's values.
BAD_IMAGE_VALUES = [
    Bad("nan_voxels", nan_voxels, "NaN/Inf"),
    Bad("inf_voxels", inf_voxels, "NaN/Inf"),
    Bad("constant", constant, "constant image"),
]


def label_out_of_range(path: Path, reference: Path) -> Path:
    data, affine = _load(reference)
    data = data.astype(np.uint8)
    data[0, 0, 0] = 20  # outside the 9 Synapse classes and the 14 raw BTCV ids
    return _replace(path, data, affine)


def label_non_integer(path: Path, reference: Path) -> Path:
    data, affine = _load(reference)
    data = data.astype(np.float32)
    data[0, 0, 0] = 1.5
    return _replace(path, data, affine)


def label_shape(path: Path, reference: Path) -> Path:
    data, affine = _load(reference)
    return _replace(path, data[:, :, :-1], affine)


def label_affine(path: Path, reference: Path) -> Path:
    data, affine = _load(reference)
    moved = affine.copy()
    moved[0, 3] += 5.0
    return _replace(path, data, moved)


#: problems of a label volume relative to the class map and its image.
BAD_LABELS = [
    Bad("label_out_of_range", label_out_of_range, "unknown label values [20]"),
    Bad("label_non_integer", label_non_integer, "non-integer label values"),
    Bad("label_shape_mismatch", label_shape, "differs from the image's"),
    Bad("label_affine_mismatch", label_affine, "affine differs from the image's"),
]


# ------------------------------------------------------------------------------------------------------- DICOM


def write_dicom_series(image: np.ndarray, folder: Path, uid: str = "1.2.826.0.1.3680043.2.1125.1",
                       prefix: str = "slice") -> None:  # fmt: skip
    """``image`` (x, y, z) as a CT DICOM series of one file per slice in ``folder``."""
    import SimpleITK as sitk

    folder.mkdir(parents=True, exist_ok=True)
    volume = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(image, (2, 1, 0))).astype(np.int16))
    volume.SetSpacing((0.8, 0.8, 2.5))
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for z in range(volume.GetDepth()):
        slice_ = volume[:, :, z]
        slice_.SetMetaData("0020|000e", uid)  # series instance UID
        slice_.SetMetaData("0020|0032", f"0\\0\\{z * 2.5}")
        slice_.SetMetaData("0020|0013", str(z + 1))
        slice_.SetMetaData("0020|0037", "1\\0\\0\\0\\1\\0")
        slice_.SetMetaData("0008|0060", "CT")
        slice_.SetMetaData("0028|0030", "0.8\\0.8")
        slice_.SetMetaData("0018|0050", "2.5")
        writer.SetFileName(str(folder / f"{prefix}{z:03d}.dcm"))
        writer.Execute(slice_)


def _dicom_folder(path: Path) -> Path:
    if path.exists():
        path.unlink()
    return path.with_name(path.name.split(".")[0] + "_dicom")


def dicom_two_series(path: Path, reference: Path) -> Path:
    data, _ = _load(reference)
    folder = _dicom_folder(path)
    write_dicom_series(data, folder, uid="1.2.826.0.1.3680043.2.1125.1", prefix="a")
    write_dicom_series(data, folder, uid="1.2.826.0.1.3680043.2.1125.2", prefix="b")
    return folder


def dicom_corrupt(path: Path, reference: Path) -> Path:
    folder = _dicom_folder(path)
    folder.mkdir()
    (folder / "slice000.dcm").write_bytes(b"not a dicom file" * 10)
    return folder


def empty_folder(path: Path, reference: Path) -> Path:
    folder = _dicom_folder(path)
    folder.mkdir()
    return folder


#: problems only a scan given to inference can have (DICOM series folders).
BAD_DICOM = [
    Bad("dicom_two_series", dicom_two_series, "2 DICOM series"),
    Bad("dicom_corrupt", dicom_corrupt, "slice000.dcm: not a DICOM file"),
    Bad("dicom_empty_folder", empty_folder, "holds no DICOM series"),
]
