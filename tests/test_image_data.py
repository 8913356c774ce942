"""2D binary data preparation (CVC-ClinicDB, CVC-ColonDB, ISIC 2017) and the synthetic releases: layouts, pairing,
the seeded 8:1:1 split and its reuse, the official ISIC split, and every refused input (through the CLI)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from xattnres_monai.cli import image_phantoms
from xattnres_monai.cli.images import main
from xattnres_monai.data.images import (
    check_mask_values,
    load_split_file,
    natural_key,
    prepare_images,
    split_cases,
)
from xattnres_monai.testing.image_phantoms import generate_image_case, isic_subset_sizes, write_image_release

REPO = Path(__file__).resolve().parents[1]
SIZE = (24, 28)  # tiny: +-8 px per case
SUBSETS = ("training", "validation", "test")
MASK_DIRS = {"clinicdb": "Ground Truth", "colondb": "masks"}
IMAGE_DIRS = {"clinicdb": "Original", "colondb": "images"}
EXT = {"clinicdb": ".tif", "colondb": ".png"}


def release(tmp_path: Path, dataset: str, n: int = 10, seed: int = 0) -> Path:
    return write_image_release(dataset, tmp_path / f"src_{dataset}", n_cases=n, size=SIZE, seed=seed)


def image_path(root: Path, dataset: str, case) -> Path:
    return root / IMAGE_DIRS[dataset] / f"{case}{EXT[dataset]}"


def mask_path(root: Path, dataset: str, case) -> Path:
    return root / MASK_DIRS[dataset] / f"{case}{EXT[dataset]}"


def load_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def cli_fails(argv, capsys) -> str:
    """Run the CLI in-process, expect exit code 2, return stderr."""
    with pytest.raises(SystemExit) as info:
        main([str(a) for a in argv])
    assert info.value.code == 2
    return capsys.readouterr().err


def subsets(datalist: dict) -> dict:
    return {s: [e["case"] for e in datalist[s]] for s in SUBSETS}


# ------------------------------------------------------------------------------------------------ layouts, pairing


@pytest.mark.parametrize("dataset", ["clinicdb", "colondb", "isic2017"])
def test_each_layout_prepared(tmp_path, dataset, capsys):
    src = release(tmp_path, dataset)
    out = tmp_path / "out" / "datalist.json"
    main([dataset, "--input", str(src), "--output", str(out)])
    report = capsys.readouterr().out
    datalist = load_json(out)
    assert datalist["labels"] == {"0": "background", "1": "lesion" if dataset == "isic2017" else "polyp"}
    assert datalist["skipped"] == [] and datalist["name"]
    cases = [e["case"] for s in SUBSETS for e in datalist[s]]
    assert len(cases) == len(set(cases)) == 10
    assert [len(datalist[s]) for s in SUBSETS] == [datalist["split"]["counts"][s] for s in SUBSETS]
    for subset in SUBSETS:
        assert subset in report
        for entry in datalist[subset]:
            image, label = (out.parent / entry["image"]).resolve(), (out.parent / entry["label"]).resolve()
            assert image.is_file() and label.is_file() and src.resolve() in image.parents
            assert not Path(entry["image"]).is_absolute()
            assert image.stem == entry["case"]  # paired by name
            assert label.stem == entry["case"] + ("_segmentation" if dataset == "isic2017" else "")
            with Image.open(image) as im, Image.open(label) as lb:
                assert im.size == lb.size and im.mode == "RGB"
    assert (out.parent / "split.json").is_file()
    if dataset == "isic2017":
        assert not any("superpixels" in e["image"] for s in SUBSETS for e in datalist[s])
        assert sum(datalist["ignored"].values()) == 5 + 3  # 5 superpixel files, 3 metadata csv files
        assert "superpixel" in report


def test_clinicdb_kaggle_layout_and_png_rerelease(tmp_path, capsys):
    src = release(tmp_path, "clinicdb", n=4)
    kaggle = tmp_path / "kaggle"
    for sub, ext in (("TIF", ".tif"), ("PNG", ".png")):
        for folder in ("Original", "Ground Truth"):
            (kaggle / sub / folder).mkdir(parents=True)
            for f in (src / folder).iterdir():
                Image.open(f).save(kaggle / sub / folder / (f.stem + ext))
    (kaggle / ".DS_Store").write_bytes(b"\0\1")
    (kaggle / "TIF" / "Original" / "Thumbs.db").write_bytes(b"\0\1")
    datalist = prepare_images("clinicdb", kaggle, tmp_path / "k" / "datalist.json")
    assert "TIF/Original/" in datalist["layout"] and "PNG/" in capsys.readouterr().out  # PNG copy named, not used
    assert all(e["image"].endswith(".tif") and "/TIF/" in e["image"] for s in SUBSETS for e in datalist[s])

    rerelease = tmp_path / "rerelease"  # PNG re-release: images/ + masks/, image and mask in different formats
    for folder, new, ext in (("Original", "images", ".bmp"), ("Ground Truth", "masks", ".png")):
        (rerelease / new).mkdir(parents=True)
        for f in (src / folder).iterdir():
            Image.open(f).save(rerelease / new / (f.stem + ext))
    datalist = prepare_images("clinicdb", rerelease, tmp_path / "r" / "datalist.json")
    assert sorted(e["case"] for s in SUBSETS for e in datalist[s]) == ["1", "2", "3", "4"]


# ------------------------------------------------------------------------------------------------------------ split


@pytest.mark.parametrize(
    "n, counts",
    [
        (3, (1, 1, 1)),
        (4, (2, 1, 1)),
        (5, (3, 1, 1)),
        (10, (8, 1, 1)),
        (20, (16, 2, 2)),
        (380, (304, 38, 38)),
        (612, (490, 61, 61)),
        (2, (2, 0, 0)),
    ],
)
def test_split_counts_disjoint(n, counts):
    cases = [str(i) for i in range(1, n + 1)]
    split = split_cases(cases, seed=2222)
    assert tuple(len(split[s]) for s in SUBSETS) == counts
    assert sorted(c for s in SUBSETS for c in split[s]) == sorted(cases)  # disjoint and complete
    assert all(split[s] == sorted(split[s], key=natural_key) for s in SUBSETS)


def test_split_seeded():
    cases = [f"ISIC_{i:07d}" for i in range(50)]
    assert split_cases(cases, seed=7) == split_cases(list(reversed(cases)), seed=7)  # input order is irrelevant
    assert split_cases(cases, seed=7) != split_cases(cases, seed=8)


def test_split_file_written_and_reused(tmp_path, capsys):
    src = release(tmp_path, "colondb", n=20)
    first = prepare_images("colondb", src, tmp_path / "a" / "datalist.json", seed=1)
    record = load_split_file(tmp_path / "a" / "split.json")
    assert record["seed"] == 1 and {s: record[s] for s in SUBSETS} == subsets(first)
    assert [len(record[s]) for s in SUBSETS] == [16, 2, 2]
    # the same seed elsewhere gives the same split, another seed another one
    assert subsets(prepare_images("colondb", src, tmp_path / "b" / "datalist.json", seed=1)) == subsets(first)
    assert subsets(prepare_images("colondb", src, tmp_path / "c" / "datalist.json", seed=2)) != subsets(first)
    capsys.readouterr()
    # rerun with another seed: the split file is reused
    main(
        [
            "colondb",
            "--input",
            str(src),
            "--output",
            str(tmp_path / "a" / "datalist.json"),
            "--seed",
            "2",
            "--overwrite",
        ]
    )
    out = capsys.readouterr().out
    assert "reusing split file" in out and "--seed 2 is ignored" in out
    again = load_json(tmp_path / "a" / "datalist.json")
    assert subsets(again) == subsets(first) and again["split"]["reused"] and again["split"]["seed"] == 1
    # an explicit --split-file is reused the same way
    shared = tmp_path / "published_split.json"
    shutil.copy(tmp_path / "a" / "split.json", shared)
    datalist = prepare_images("colondb", src, tmp_path / "d" / "datalist.json", seed=99, split_file=shared)
    assert subsets(datalist) == subsets(first) and not (tmp_path / "d" / "split.json").exists()


@pytest.mark.parametrize("change", ["added", "removed"])
def test_stale_split_file_fails(tmp_path, capsys, change):
    src = release(tmp_path, "clinicdb", n=10)
    out = tmp_path / "out" / "datalist.json"
    prepare_images("clinicdb", src, out)
    out.unlink()
    if change == "added":
        write_image_release("clinicdb", tmp_path / "more", n_cases=11, size=SIZE)
        for folder in ("Original", "Ground Truth"):
            shutil.copy(tmp_path / "more" / folder / "11.tif", src / folder / "11.tif")
        expected = "lacks 1 case(s) present there:"
    else:
        image_path(src, "clinicdb", 7).unlink()
        mask_path(src, "clinicdb", 7).unlink()
        expected = "names 1 case(s) not present"
    err = cli_fails(["clinicdb", "--input", src, "--output", out, "--seed", "5"], capsys)
    assert str(out.parent / "split.json") in err and expected in err
    assert ("11" if change == "added" else "7") in err.split(expected)[1]
    assert not out.exists()


def test_isic_official_split(tmp_path, capsys):
    src = release(tmp_path, "isic2017", n=10)
    out = tmp_path / "out" / "datalist.json"
    datalist = prepare_images("isic2017", src, out, seed=123)
    expected = {}
    for subset, infix in (("training", "Training"), ("validation", "Validation"), ("test", "Test_v2")):
        folder = src / f"ISIC-2017_{infix}_Data"
        expected[subset] = sorted(p.stem for p in folder.glob("ISIC_*.jpg"))
    assert subsets(datalist) == expected
    assert [len(expected[s]) for s in SUBSETS] == list(isic_subset_sizes(10)) == [6, 2, 2]
    assert datalist["split"]["mode"] == "official" and datalist["split"]["seed"] is None
    assert all(
        f"_{infix}_" in e["image"]
        for s, infix in zip(SUBSETS, ("Training", "Validation", "Test_v2"))
        for e in datalist[s]
    )
    # a split file that moves a case out of its official subset is refused
    record = load_json(out.parent / "split.json")
    record["training"], record["test"] = record["training"][1:], record["test"] + record["training"][:1]
    (out.parent / "split.json").write_text(json.dumps(record))
    out.unlink()
    err = cli_fails(["isic2017", "--input", src, "--output", out], capsys)
    assert "official ISIC 2017 split" in err and expected["training"][0] in err and not out.exists()


# ------------------------------------------------------------------------------------------------------- bad inputs


def _write_gradient_mask(path: Path) -> None:
    with Image.open(path) as im:
        w, h = im.size
    Image.fromarray(np.tile(np.linspace(0, 255, w), (h, 1)).astype(np.uint8)).save(path)


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _resize(path: Path) -> None:
    with Image.open(path) as im:
        im.load()
        small = im.resize((im.size[0] - 3, im.size[1]), Image.NEAREST)
    small.save(path)


def _bad_unpaired_image(src):
    mask_path(src, "clinicdb", 3).unlink()
    return image_path(src, "clinicdb", 3), "unpaired image"


def _bad_unpaired_mask(src):
    image_path(src, "clinicdb", 4).unlink()
    return mask_path(src, "clinicdb", 4), "unpaired mask"


def _bad_zero_byte_image(src):
    image_path(src, "clinicdb", 5).write_bytes(b"")
    return image_path(src, "clinicdb", 5), "zero-byte image"


def _bad_truncated_png(src):
    _truncate(image_path(src, "colondb", 2))
    return image_path(src, "colondb", 2), "truncated or corrupt image"


def _bad_truncated_tiff_mask(src):
    _truncate(mask_path(src, "clinicdb", 2))
    return mask_path(src, "clinicdb", 2), "truncated or corrupt mask"


def _bad_truncated_jpeg(src):
    path = src / "ISIC-2017_Validation_Data" / "ISIC_0000006.jpg"
    _truncate(path)
    return path, "truncated or corrupt image"


def _bad_not_an_image(src):
    mask_path(src, "colondb", 6).write_text("this is not a PNG file\n")
    return mask_path(src, "colondb", 6), "not a readable mask"


def _bad_non_binary_mask(src):
    _write_gradient_mask(mask_path(src, "colondb", 7))
    return mask_path(src, "colondb", 7), "not binary after thresholding"


def _bad_zero_one_mask(src):
    path = mask_path(src, "colondb", 8)
    with Image.open(path) as im:
        Image.fromarray((np.asarray(im) > 0).astype(np.uint8)).save(path)
    return path, "0/1"


def _bad_size_mismatch(src):
    _resize(mask_path(src, "clinicdb", 8))
    return mask_path(src, "clinicdb", 8), "differs from its image 8.tif"


def _bad_duplicate(src):
    Image.open(image_path(src, "colondb", 1)).save(src / "images" / "1.bmp")
    return image_path(src, "colondb", 1), "duplicate image for case 1 (also 1.bmp)"


def _bad_unexpected_file(src):
    path = src / "Original" / "notes.xyz"
    path.write_text("x")
    return path, "unexpected file type"


def _bad_isic_mask_name(src):
    folder = src / "ISIC-2017_Training_Part1_GroundTruth"
    path = folder / "ISIC_0000001.png"
    (folder / "ISIC_0000001_segmentation.png").rename(path)
    return path, "mask name does not end in _segmentation"


BAD = {
    "unpaired_image": ("clinicdb", _bad_unpaired_image),
    "unpaired_mask": ("clinicdb", _bad_unpaired_mask),
    "zero_byte_image": ("clinicdb", _bad_zero_byte_image),
    "truncated_png": ("colondb", _bad_truncated_png),
    "truncated_tiff_mask": ("clinicdb", _bad_truncated_tiff_mask),
    "truncated_jpeg": ("isic2017", _bad_truncated_jpeg),
    "not_an_image": ("colondb", _bad_not_an_image),
    "non_binary_mask": ("colondb", _bad_non_binary_mask),
    "zero_one_mask": ("colondb", _bad_zero_one_mask),
    "size_mismatch": ("clinicdb", _bad_size_mismatch),
    "duplicate_case": ("colondb", _bad_duplicate),
    "unexpected_file": ("clinicdb", _bad_unexpected_file),
    "isic_mask_name": ("isic2017", _bad_isic_mask_name),
}


@pytest.mark.parametrize("bad", sorted(BAD))
def test_bad_file_refused_and_named(tmp_path, capsys, bad):
    dataset, corrupt = BAD[bad]
    src = release(tmp_path, dataset)
    path, problem = corrupt(src)
    out = tmp_path / "out" / "datalist.json"
    err = cli_fails([dataset, "--input", src, "--output", out], capsys)
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == (2 if bad == "isic_mask_name" else 1), err  # a misnamed mask also leaves its image unpaired
    assert lines[0].startswith(f"error: {path}: ") and problem in lines[0], err
    assert not out.parent.exists() or not any(out.parent.iterdir())  # neither datalist nor split file


def test_non_binary_message_gives_percentage(tmp_path, capsys):
    src = release(tmp_path, "colondb", n=3)
    _write_gradient_mask(mask_path(src, "colondb", 2))
    err = cli_fails(["colondb", "--input", src, "--output", tmp_path / "o" / "d.json"], capsys)
    assert "% of the pixels lie between 10% and 90%" in err and "at most 1% allowed" in err


@pytest.mark.parametrize("case", ["empty", "missing", "unknown_layout", "half_layout", "isic_incomplete"])
def test_bad_folder_refused(tmp_path, capsys, case):
    dataset, expected = "clinicdb", "input folder"
    src = named = tmp_path / "src"
    if case == "empty":
        src.mkdir()
        (src / ".DS_Store").write_bytes(b"\0")  # hidden files do not count
        expected = "input folder is empty"
    elif case == "missing":
        expected = "input folder does not exist"
    elif case == "unknown_layout":
        (src / "frames").mkdir(parents=True)
        (src / "labels").mkdir()
        expected = "expected Original/ + Ground Truth/"
    elif case == "half_layout":
        (src / "Original").mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(src / "Original" / "1.tif")
        named, expected = src / "Original", "no mask folder Ground Truth/"
    else:
        dataset = "isic2017"
        src = named = release(tmp_path, "isic2017", n=4)
        shutil.rmtree(src / "ISIC-2017_Validation_Part1_GroundTruth")
        expected = "missing ISIC-2017_Validation_Part1_GroundTruth/"
    out = tmp_path / "out" / "datalist.json"
    err = cli_fails([dataset, "--input", src, "--output", out], capsys)
    assert f"error: {named}: " in err and expected in err, err
    assert not (tmp_path / "out").exists()


def test_all_problems_reported_one_line_each(tmp_path, capsys):
    src = release(tmp_path, "colondb")
    bad = [f(src)[0] for f in (_bad_truncated_png, _bad_not_an_image, _bad_non_binary_mask)]
    bad.append(_bad_size_mismatch_colondb(src))
    err = cli_fails(["colondb", "--input", src, "--output", tmp_path / "out" / "datalist.json"], capsys)
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == len(bad)
    for path in bad:
        assert any(line.startswith(f"error: {path}: ") for line in lines), (path, err)
    assert not (tmp_path / "out").exists()


def _bad_size_mismatch_colondb(src) -> Path:
    _resize(mask_path(src, "colondb", 9))
    return mask_path(src, "colondb", 9)


def test_cli_subprocess_exit_code(tmp_path):
    src = release(tmp_path, "colondb", n=3)
    mask_path(src, "colondb", 2).unlink()
    out = tmp_path / "out" / "datalist.json"
    cmd = [sys.executable, "-m", "xattnres_monai.data.images", "colondb", "--input", str(src), "--output", str(out)]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 2, result.stderr
    assert f"error: {image_path(src, 'colondb', 2)}: unpaired image" in result.stderr
    assert "Traceback" not in result.stderr and not out.exists()


# ---------------------------------------------------------------------------------------------- skip-bad, overwrite


def test_skip_bad_writes_good_pairs_and_lists_bad(tmp_path, capsys):
    src = release(tmp_path, "colondb", n=10)
    bad = {
        "2": _bad_truncated_png(src)[0],
        "7": _bad_non_binary_mask(src)[0],
        "3": image_path(src, "colondb", 3),
    }
    mask_path(src, "colondb", 3).unlink()  # unpaired image 3
    out = tmp_path / "out" / "datalist.json"
    main(["colondb", "--input", str(src), "--output", str(out), "--skip-bad"])
    captured = capsys.readouterr()
    datalist = load_json(out)
    used = [e["case"] for s in SUBSETS for e in datalist[s]]
    assert sorted(used, key=natural_key) == ["1", "4", "5", "6", "8", "9", "10"]
    skipped = {e["case"]: e for e in datalist["skipped"]}
    assert set(skipped) == set(bad)
    for case, path in bad.items():
        assert (out.parent / skipped[case]["file"]).resolve() == path.resolve()
        assert f"warning: {path}: " in captured.err
    assert "skipped: 3 file(s)" in captured.out
    record = load_split_file(out.parent / "split.json")  # bad pairs stay in the split, unpaired files do not
    listed = {c for s in SUBSETS for c in record[s]}
    assert {"2", "7"} <= listed and "3" not in listed
    assert sum(datalist["split"]["counts"].values()) == 7 and sum(datalist["split"]["cases"].values()) == 9


def test_refuses_to_overwrite_datalist(tmp_path, capsys):
    src = release(tmp_path, "colondb", n=4)
    out = tmp_path / "out" / "datalist.json"
    prepare_images("colondb", src, out)
    before = out.read_text()
    with pytest.raises(FileExistsError):
        prepare_images("colondb", src, out)
    err = cli_fails(["colondb", "--input", src, "--output", out], capsys)
    assert str(out) in err and "--overwrite" in err
    assert out.read_text() == before
    main(["colondb", "--input", str(src), "--output", str(out), "--overwrite"])
    assert load_json(out)["split"]["reused"]


# ------------------------------------------------------------------------------------------------------ mask values


def test_mask_value_rules():
    mask = np.zeros((20, 20), np.uint8)
    mask[5:15, 5:15] = 255
    assert check_mask_values(mask, 255.0) is None
    assert check_mask_values(np.zeros_like(mask), 255.0) is None  # empty masks are accepted
    edge = mask.copy()
    edge[5, 5:9] = 128  # 4 of 400 pixels = 1%: JPEG / resampling edges
    assert check_mask_values(edge, 255.0) is None
    edge[6, 5] = 128  # 1.25%
    assert "1.25%" in check_mask_values(edge, 255.0)
    assert check_mask_values(mask.astype(np.uint16) * 257, 65535.0) is None
    assert "0/1" in check_mask_values((mask > 0).astype(np.uint8), 255.0)


def test_mask_modes_read(tmp_path):
    """1-bit, 16-bit and RGB masks with their own full scale."""
    src = release(tmp_path, "colondb", n=3)
    for case, convert in (
        (1, lambda a: Image.fromarray(a > 0).convert("1")),
        (2, lambda a: Image.fromarray(a.astype(np.uint16) * 257)),
        (3, lambda a: Image.fromarray(np.stack([a] * 3, -1))),
    ):
        path = mask_path(src, "colondb", case)
        with Image.open(path) as im:
            array = np.asarray(im)
        convert(array).save(path)
    datalist = prepare_images("colondb", src, tmp_path / "out" / "datalist.json")
    assert sum(len(datalist[s]) for s in SUBSETS) == 3 and datalist["skipped"] == []


# --------------------------------------------------------------------------------------------------------- phantoms


def test_phantom_cases():
    sizes = set()
    for k in range(8):
        image, mask = generate_image_case((64, 80), np.random.default_rng([0, k]), "clinicdb")
        assert image.shape[:2] == mask.shape and image.shape[2] == 3 and image.dtype == mask.dtype == np.uint8
        assert all(abs(a - b) <= 9 and a % 32 for a, b in zip(mask.shape, (64, 80)))
        assert set(np.unique(mask).tolist()) == {0, 255}
        inside, outside = image[mask > 0].mean(0), image[mask == 0].mean(0)
        assert np.abs(inside - outside).max() > 60  # clearly different colour
        assert 0.03 < (mask > 0).mean() < 0.5
        sizes.add(mask.shape)
    assert len(sizes) > 1
    first, _ = generate_image_case((64, 80), np.random.default_rng([0, 3]), "isic2017")
    again, _ = generate_image_case((64, 80), np.random.default_rng([0, 3]), "isic2017")
    np.testing.assert_array_equal(first, again)


def test_phantom_release_layout_and_cli(tmp_path, capsys):
    root = image_phantoms.main(["clinicdb", str(tmp_path / "c"), "--n", "3", "--size", "20", "24"])
    assert sorted(p.name for p in (root / "Original").iterdir()) == ["1.tif", "2.tif", "3.tif"]
    with Image.open(root / "Original" / "1.tif") as im, Image.open(root / "Ground Truth" / "1.tif") as lb:
        assert (im.format, im.mode, lb.format, lb.mode) == ("TIFF", "RGB", "TIFF", "L")
    with pytest.raises(SystemExit) as info:  # never replaced without --overwrite
        image_phantoms.main(["clinicdb", str(tmp_path / "c"), "--n", "3"])
    assert info.value.code == 2 and "1.tif" in capsys.readouterr().err
    root = write_image_release("isic2017", tmp_path / "i", n_cases=4, size=(20, 24))
    names = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}
    assert "ISIC-2017_Training_Data/ISIC_0000000.jpg" in names
    assert "ISIC-2017_Training_Data/ISIC_0000000_superpixels.png" in names
    assert "ISIC-2017_Training_Data/ISIC-2017_Training_Data_metadata.csv" in names
    assert "ISIC-2017_Test_v2_Part1_GroundTruth/ISIC_0000003_segmentation.png" in names
    assert "ISIC-2017_Validation_Part1_GroundTruth/ISIC_0000002_segmentation.png" in names
