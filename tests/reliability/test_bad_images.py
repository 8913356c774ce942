"""Bad inputs at every entry point of the 2D binary bundles (ColonDB here; the three share their configs).

Entry points, each run the way its command runs it, in this process:

``prepare``   ``python -m xattnres_monai.data.images`` (its ``main``): all-or-nothing, every bad file reported;
``train``     ``train.json`` through ``ConfigWorkflow``: training and validation pairs checked before anything is built;
``evaluate``  ``train.json`` + ``evaluate.json``: the evaluated pairs checked before the checkpoint is read;
``infer``     ``inference.json``: every image checked, bad ones reported (exit 2), the good ones still segmented.

Each check: exit code 2, the bad file named in an ``error:`` line with the problem, and no output file written
(for inference: none for the bad image, while the good image's mask is written).
"""

from __future__ import annotations

import json
import shutil
import struct
import zlib
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import numpy as np
import pytest
import torch
from PIL import Image

from xattnres_monai.testing.image_phantoms import write_image_release
from tests.reliability.helpers import run_inprocess
from xattnres_monai.data.images import prepare_images

BUNDLE = Path(__file__).resolve().parents[2] / "bundles" / "colondb_polyp_segmentation"
CONFIGS = BUNDLE / "configs"
TINY = {"roi_size": [32, 32], "num_workers": 0, "batch_size": 2, "max_epochs": 1}


# ------------------------------------------------------------------------------------------------------ bad files
# each maker replaces a good file (image or mask) and returns (path written, message fragment)


def zero_byte(path: Path) -> Tuple[Path, str]:
    path.write_bytes(b"")
    return path, "zero-byte"


def truncated(path: Path) -> Tuple[Path, str]:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path, "truncated"


def not_an_image(path: Path) -> Tuple[Path, str]:
    path.write_text("this is not an image\n")
    return path, "not a readable"


def multi_frame(path: Path) -> Tuple[Path, str]:
    frame = Image.open(path)
    frame.load()
    target = path.with_suffix(".tif")
    frame.save(target, save_all=True, append_images=[frame.copy()])
    path.unlink()
    return target, "2-frame"


def huge_header(path: Path) -> Tuple[Path, str]:
    """A PNG whose header claims 60000 x 60000 pixels (and no data): refused before decoding."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 60000, 60000, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b""))
    return path, "too large"


def nan_pixels(path: Path) -> Tuple[Path, str]:
    data = np.asarray(Image.open(path).convert("L"), dtype=np.float32)
    data[0, :3] = np.nan
    target = path.with_suffix(".tif")
    Image.fromarray(data, mode="F").save(target)
    path.unlink()
    return target, "NaN or Inf"


def inf_pixels(path: Path) -> Tuple[Path, str]:
    data = np.asarray(Image.open(path).convert("L"), dtype=np.float32)
    data[-1, -2:] = np.inf
    target = path.with_suffix(".tif")
    Image.fromarray(data, mode="F").save(target)
    path.unlink()
    return target, "NaN or Inf"


def constant(path: Path) -> Tuple[Path, str]:
    size = Image.open(path).size
    Image.new("RGB", size, (120, 60, 50)).save(path)
    return path, "constant image"


def missing(path: Path) -> Tuple[Path, str]:
    path.unlink()
    return path, "no such file"


def not_binary_mask(path: Path) -> Tuple[Path, str]:
    size = Image.open(path).size
    noise = np.random.default_rng(0).integers(0, 256, (size[1], size[0]), dtype=np.uint8)
    Image.fromarray(noise, mode="L").save(path)
    return path, "not binary"


def size_mismatch(path: Path) -> Tuple[Path, str]:
    mask = Image.open(path)
    mask.resize((mask.width + 5, mask.height), resample=Image.NEAREST).save(path)
    return path, "differs from its image"


IMAGE_PROBLEMS: Dict[str, Callable[[Path], Tuple[Path, str]]] = {
    f.__name__: f
    for f in (zero_byte, truncated, not_an_image, multi_frame, huge_header, nan_pixels, inf_pixels, constant, missing)
}
MASK_PROBLEMS: Dict[str, Callable[[Path], Tuple[Path, str]]] = {
    f.__name__: f for f in (zero_byte, truncated, multi_frame, not_binary_mask, size_mismatch, missing)
}


# ---------------------------------------------------------------------------------------------------------- setup


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """A 10-case ColonDB-like release, its datalist (8 / 1 / 1) and a random ``model.pt``."""
    from xattnres_monai.networks.nets import XAttnResUNet

    root = tmp_path_factory.mktemp("bad_images")
    write_image_release("colondb", root / "raw", n_cases=10, size=(40, 48), seed=3)
    prepare_images("colondb", root / "raw", root / "data" / "datalist.json")
    (root / "bundle" / "models").mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(XAttnResUNet(2, 3, 1).state_dict(), root / "bundle" / "models" / "model.pt")
    return root


def _workdir(source: Path, tmp_path: Path) -> Tuple[Path, Dict]:
    root = tmp_path / "work"
    shutil.copytree(source, root)
    return root, json.loads((root / "data" / "datalist.json").read_text())


def _files(folder: Path) -> List[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def _run(fn: Callable[[], object], capsys=None) -> Tuple[int, str]:
    # redirected to buffers that stay open: the bundle's logging.conf binds its handler to the current stdout,
    # and pytest's capsys stream is closed after the test (later tests would log to a closed file)
    outcome = run_inprocess(fn)
    return outcome.code, outcome.stdout + outcome.stderr


def _workflow(configs: List[str], bundle_root: Path, workflow_type: str, **overrides) -> None:
    from monai.bundle import ConfigWorkflow

    workflow = ConfigWorkflow(
        config_file=[str(CONFIGS / c) for c in configs], workflow_type=workflow_type, bundle_root=str(bundle_root),
        **{**TINY, **overrides},
    )
    workflow.initialize()
    workflow.run()
    workflow.finalize()


def _replace_in_datalist(root: Path, datalist: Dict, subset: str, key: str, maker) -> Tuple[Path, str]:
    entry = datalist[subset][0]
    target = (root / "data" / entry[key]).resolve()
    written, fragment = maker(target)
    entry[key] = str(written)
    (root / "data" / "datalist.json").write_text(json.dumps(datalist))
    return written, fragment


# ----------------------------------------------------------------------------------------------------------- tests


@pytest.mark.parametrize("problem", sorted(IMAGE_PROBLEMS))
@pytest.mark.parametrize("entry", ["train", "evaluate"])
def test_bad_image_in_datalist_is_refused(source, tmp_path, capsys, entry, problem):
    root, datalist = _workdir(source, tmp_path)
    subset = "validation" if entry == "train" else "test"  # train checks its validation pairs too
    bad, fragment = _replace_in_datalist(root, datalist, subset, "image", IMAGE_PROBLEMS[problem])
    before = _files(root / "bundle")
    configs = ["train.json"] + (["evaluate.json"] if entry == "evaluate" else [])
    code, log = _run(lambda: _workflow(configs, root / "bundle", "train", datalist=str(root / "data" / "datalist.json")), capsys)
    assert code == 2, log[-2000:]
    errors = [ln for ln in log.splitlines() if ln.startswith("error:") and bad.name in ln]
    assert any(fragment in ln for ln in errors), log[-2000:]
    assert _files(root / "bundle") == before  # no checkpoint, no report, no log folder


@pytest.mark.parametrize("problem", sorted(MASK_PROBLEMS))
@pytest.mark.parametrize("entry", ["train", "evaluate"])
def test_bad_mask_in_datalist_is_refused(source, tmp_path, capsys, entry, problem):
    root, datalist = _workdir(source, tmp_path)
    subset = "training" if entry == "train" else "test"
    bad, fragment = _replace_in_datalist(root, datalist, subset, "label", MASK_PROBLEMS[problem])
    before = _files(root / "bundle")
    configs = ["train.json"] + (["evaluate.json"] if entry == "evaluate" else [])
    code, log = _run(
        lambda: _workflow(configs, root / "bundle", "train", datalist=str(root / "data" / "datalist.json")), capsys
    )
    assert code == 2
    errors = [ln for ln in log.splitlines() if ln.startswith("error:") and bad.name in ln]
    assert any(fragment in ln for ln in errors), log[-2000:]
    assert _files(root / "bundle") == before  # no checkpoint, no report, no log folder


@pytest.mark.parametrize("problem", ["multi_frame", "huge_header", "nan_pixels", "inf_pixels", "constant"])
def test_bad_image_in_release_is_refused_at_preparation(tmp_path, capsys, problem):
    """The image checks of inference (frames, size from the header, NaN, constant) also guard data preparation."""
    from xattnres_monai.cli.images import main

    write_image_release("colondb", tmp_path / "raw", n_cases=6, size=(40, 48), seed=4)
    first = sorted((tmp_path / "raw" / "images").iterdir())[0]
    bad, fragment = IMAGE_PROBLEMS[problem](first)
    out = tmp_path / "out" / "datalist.json"
    code, log = _run(lambda: main(["colondb", "--input", str(tmp_path / "raw"), "--output", str(out)]), capsys)
    assert code == 2, log[-2000:]
    assert any(bad.name in ln and fragment in ln for ln in log.splitlines() if ln.startswith("error:")), log[-2000:]
    assert _files(tmp_path / "out") == []


@pytest.mark.parametrize("problem", sorted(set(IMAGE_PROBLEMS) - {"missing"}))
def test_bad_image_at_inference_is_reported_and_the_good_one_still_segmented(source, tmp_path, capsys, problem):
    root, datalist = _workdir(source, tmp_path)
    images = tmp_path / "new"
    images.mkdir()
    shutil.copy(root / "data" / datalist["test"][0]["image"], images / "good.png")
    shutil.copy(root / "data" / datalist["test"][0]["image"], images / "bad.png")
    bad, fragment = IMAGE_PROBLEMS[problem](images / "bad.png")
    out = tmp_path / "out"
    code, log = _run(
        lambda: _workflow(["inference.json"], root / "bundle", "inference", dataset_dir=str(images), output_dir=str(out)),
        capsys,
    )
    assert code == 2, log[-2000:]
    assert any(bad.name in ln and fragment in ln for ln in log.splitlines() if ln.startswith("error:")), log[-2000:]
    assert _files(out) == ["good_mask.png"]


@pytest.mark.parametrize(
    "extra,fragment",
    [("scan.nii.gz", "unsupported file type"), ("notes.txt", "unsupported file type"), ("frame.gif", "unsupported")],
)
def test_inference_names_unsupported_files(source, tmp_path, capsys, extra, fragment):
    root, datalist = _workdir(source, tmp_path)
    images = tmp_path / "new"
    images.mkdir()
    shutil.copy(root / "data" / datalist["test"][0]["image"], images / "good.png")
    (images / extra).write_bytes(b"\x00" * 64)
    code, log = _run(
        lambda: _workflow(["inference.json"], root / "bundle", "inference", dataset_dir=str(images),
                          output_dir=str(tmp_path / "out")),
        capsys,
    )
    assert code == 2 and any(extra in ln and fragment in ln for ln in log.splitlines() if ln.startswith("error:"))
    assert _files(tmp_path / "out") == ["good_mask.png"]


@pytest.mark.parametrize("problem", ["nonexistent_folder", "empty_folder"])
def test_inference_refuses_missing_and_empty_folders(source, tmp_path, capsys, problem):
    folder = tmp_path / "images"
    if problem == "empty_folder":
        folder.mkdir()
    code, log = _run(
        lambda: _workflow(["inference.json"], source / "bundle", "inference", dataset_dir=str(folder),
                          output_dir=str(tmp_path / "out")),
        capsys,
    )
    assert code == 2 and any(str(folder) in ln for ln in log.splitlines() if ln.startswith("error:")), log[-1500:]
    assert not (tmp_path / "out").exists()


def test_checkpoint_of_another_network_is_refused_at_inference(source, tmp_path, capsys):
    from xattnres_monai.networks.nets import XAttnResUNet

    root, datalist = _workdir(source, tmp_path)
    torch.save(XAttnResUNet(2, 3, 1, xattnres="none").state_dict(), root / "bundle" / "models" / "model.pt")
    images = tmp_path / "new"
    images.mkdir()
    shutil.copy(root / "data" / datalist["test"][0]["image"], images / "good.png")
    code, log = _run(
        lambda: _workflow(["inference.json"], root / "bundle", "inference", dataset_dir=str(images),
                          output_dir=str(tmp_path / "out")),
        capsys,
    )
    assert code == 2 and "model.pt" in log and "missing keys" in log, log[-1500:]
    assert _files(tmp_path / "out") == []


def test_png_mask_writer_fails_on_the_second_image(source, tmp_path, capsys, monkeypatch):
    """A full disk while the second mask is written: no partial file, the first mask intact, the file named."""
    from tests.reliability.test_writer_failure import failing_on_call

    root, datalist = _workdir(source, tmp_path)
    images = tmp_path / "new"
    images.mkdir()
    for name in ("a", "b", "c"):
        shutil.copy(root / "data" / datalist["test"][0]["image"], images / f"{name}.png")
    out = tmp_path / "out"
    failing = failing_on_call(Image.Image.save, fail_at=2)  # Image.save(self, fp, ...): the (temporary) mask file
    monkeypatch.setattr(Image.Image, "save", failing)
    code, log = _run(
        lambda: _workflow(["inference.json"], root / "bundle", "inference", dataset_dir=str(images), output_dir=str(out)),
        capsys,
    )
    monkeypatch.undo()
    assert code == 2, log[-2000:]
    assert any(f"{out / 'b_mask.png'}: cannot write the mask" in ln for ln in log.splitlines() if ln.startswith("error:"))
    assert _files(out) == ["a_mask.png", "c_mask.png"]  # no partial b_mask.png, no temporary file; c still written
    for name in ("a", "c"):
        mask = Image.open(out / f"{name}_mask.png")
        assert mask.size == Image.open(images / f"{name}.png").size and set(np.unique(np.asarray(mask))) <= {0, 255}
