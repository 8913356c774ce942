"""Inference that clinicians' pipelines expect: test-time mirroring and ensembles, post-processing, probability maps,
DICOM-SEG, organ reports, resumable sharded cohorts and in-plane resampling."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import DataLoader, MetaTensor
from monai.inferers import SimpleInferer, SliceInferer
from monai.transforms import AsDiscreted, Compose, EnsureChannelFirstd, Invertd, Orientationd, ScaleIntensityd, Spacingd

from xattnres_monai.data.datasets import InferenceDataset
from xattnres_monai.engines.cohort import (
    CohortInputs,
    CohortRecorder,
    merge_cohort_csv,
    rank_csv_path,
    record_problem,
    shard,
)
from xattnres_monai.engines.inference import InferenceEvaluator
from xattnres_monai.inferers.probability import ProbabilityInferer, flip_sets
from xattnres_monai.metrics.organ_report import OrganReportd, sibling_path
from xattnres_monai.testing.dicom import write_ct_series
from xattnres_monai.transforms.dicom_seg import SaveDicomSegd
from xattnres_monai.transforms.io import LoadVolumed, SaveSegmentationd
from xattnres_monai.transforms.outputs import SaveProbabilitiesd
from xattnres_monai.transforms.postprocess import LargestComponentd, PostProcessd, RemoveSmallComponentsd
from xattnres_monai.utils.files import InputError


def _net2d(seed: int = 0, out_channels: int = 3) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Conv2d(1, out_channels, 3, padding=1).eval()


# ------------------------------------------------------------------------------------------------ TTA and ensembles


def test_flip_sets_are_all_subsets_or_the_given_list():
    assert flip_sets((0, 1)) == [(), (0,), (1,), (0, 1)]
    assert flip_sets(flips=[[], [2]]) == [(), (2,)]
    assert flip_sets() == [()]


def test_tta_equals_the_mean_of_flipped_predictions_computed_by_hand():
    net = _net2d()
    x = MetaTensor(torch.rand(1, 1, 12, 10, 4))
    slices = SliceInferer(roi_size=(12, 10), spatial_dim=2)
    tta = ProbabilityInferer(slices, flip_axes=[0, 1])
    assert tta.passes == 4
    with torch.no_grad():
        got = tta(x, net)
        by_hand = []
        for dims in ([], [2], [3], [2, 3]):
            flipped = torch.flip(x, dims) if dims else x
            p = torch.softmax(slices(flipped, net), dim=1)
            by_hand.append(torch.flip(p, dims) if dims else p)
        expected = torch.stack([t.as_tensor() for t in by_hand]).mean(0)
        plain = torch.softmax(slices(x, net), dim=1)
    assert got.shape == (1, 3, 12, 10, 4)
    torch.testing.assert_close(got.as_tensor(), expected, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(got.as_tensor(), plain.as_tensor(), atol=1e-4)  # the mirrorings do change the result
    torch.testing.assert_close(got.sum(1), torch.ones(1, 12, 10, 4))  # still probabilities


def test_tta_3d_with_an_explicit_list_and_sigmoid():
    torch.manual_seed(1)
    net = torch.nn.Conv3d(1, 1, 3, padding=1).eval()
    x = torch.rand(1, 1, 6, 5, 4)
    with torch.no_grad():
        got = ProbabilityInferer(SimpleInferer(), flips=[[], [2]], activation="sigmoid")(x, net)
        expected = (torch.sigmoid(net(x)) + torch.flip(torch.sigmoid(net(torch.flip(x, [4]))), [4])) / 2
    torch.testing.assert_close(got, expected)


def test_ensemble_of_two_copies_of_one_model_equals_that_model(tmp_path):
    net = _net2d(0)
    torch.save({"model": net.state_dict()}, tmp_path / "copy_a.pt")
    torch.save(net.state_dict(), tmp_path / "copy_b.pt")  # a bare state dict works too
    x = torch.rand(1, 1, 9, 8)
    ensemble = ProbabilityInferer(model_files=[tmp_path / "copy_a.pt", tmp_path / "copy_b.pt"], network=net)
    assert ensemble.passes == 3
    with torch.no_grad():
        torch.testing.assert_close(ensemble(x, net), torch.softmax(net(x), 1))
        other = _net2d(5)
        torch.save({"model": other.state_dict()}, tmp_path / "other.pt")
        mixed = ProbabilityInferer(model_files=[str(tmp_path / "other.pt")])(x, net)  # loaded on the first call
        torch.testing.assert_close(mixed, (torch.softmax(net(x), 1) + torch.softmax(other(x), 1)) / 2)


def test_a_mismatched_model_file_is_refused_naming_it(tmp_path):
    net = _net2d(0)
    wrong = tmp_path / "fold3_other_config.pt"
    torch.save({"model": _net2d(0, out_channels=4).state_dict()}, wrong)
    with pytest.raises(InputError, match="fold3_other_config.pt: does not match this network configuration"):
        ProbabilityInferer(model_files=[wrong], network=net)
    with pytest.raises(InputError, match="missing.pt: checkpoint file does not exist"):
        ProbabilityInferer(model_files=[tmp_path / "missing.pt"], network=net)
    torch.save({"optimizer": {}}, tmp_path / "no_model.pt")
    with pytest.raises(InputError, match="no_model.pt: has no 'model' entry"):
        ProbabilityInferer(model_files=[tmp_path / "no_model.pt"], network=net)


# ------------------------------------------------------------------------------------------------ post-processing


def _blobs() -> torch.Tensor:
    label = torch.zeros(1, 20, 18, 8)
    label[0, 2:10, 2:10, 1:6] = 6  # large liver component
    label[0, 14:16, 14:16, 6:8] = 6  # small planted liver blob, far from the first
    label[0, 12:15, 2:5, 1:3] = 3  # two spleen-class components
    label[0, 17:19, 9:11, 5:6] = 3
    return label


def test_largest_component_removes_a_planted_blob():
    label = _blobs()
    out = LargestComponentd("pred", classes=[6])({"pred": label.clone()})
    result = out["pred"]
    assert int((result == 6).sum()) == 8 * 8 * 5  # the planted blob is gone, the large component intact
    assert int(result[0, 14:16, 14:16, 6:8].abs().sum()) == 0
    assert torch.equal(result == 3, label == 3)  # other classes untouched
    (step,) = out["postprocessing"]
    assert step["step"] == "largest_component" and step["classes"] == [6] and step["removed_voxels"] == {"6": 8}
    everything = LargestComponentd("pred", classes="all")({"pred": label})["pred"]
    assert int((everything == 3).sum()) == 3 * 3 * 2


def test_min_size_in_ml_removes_a_blob_below_and_keeps_one_above():
    label = torch.zeros(1, 16, 16, 8)
    label[0, 1:3, 1:3, 1:3] = 5  # 8 voxels x 10 mm^3 = 0.08 mL
    label[0, 8:11, 8:11, 4:7] = 5  # 27 voxels = 0.27 mL
    label[0, 13:15, 1:3, 1:3] = 2  # 0.08 mL of another class: no threshold for it
    mt = MetaTensor(label, affine=torch.diag(torch.tensor([2.0, 2.0, 2.5, 1.0], dtype=torch.float64)))
    out = RemoveSmallComponentsd("pred", min_size={"5": 0.2}, unit="mL")({"pred": mt})
    result = out["pred"]
    assert int(result[0, 1:3, 1:3, 1:3].abs().sum()) == 0
    assert int((result == 5).sum()) == 27
    assert int((result == 2).sum()) == 8
    (step,) = out["postprocessing"]
    assert step["min_size"] == {"5": 0.2} and step["min_voxels"] == {"5": 20} and step["removed_voxels"] == {"5": 8}
    # one number for every class, in voxels (pixels for 2D images)
    image_2d = torch.zeros(1, 10, 10)
    image_2d[0, 0:2, 0:2] = 1
    image_2d[0, 5:9, 5:9] = 1
    kept = RemoveSmallComponentsd("pred", min_size=5, unit="pixels")({"pred": image_2d})["pred"]
    assert int(kept.sum()) == 16


def test_postprocessd_runs_both_steps_in_order_and_records_them():
    mt = MetaTensor(_blobs(), affine=torch.eye(4, dtype=torch.float64))
    out = PostProcessd("pred", largest_component="all", min_size=10, unit="voxels")({"pred": mt})
    assert [s["step"] for s in out["postprocessing"]] == ["largest_component", "min_size"]
    assert int((out["pred"] == 3).sum()) == 18 and int((out["pred"] == 6).sum()) == 320
    json.dumps(out["postprocessing"])  # JSON-ready for the reports
    assert PostProcessd("pred")({"pred": mt})["pred"] is mt  # nothing asked, nothing done


@pytest.mark.parametrize("shape, connectivity", [((40, 36, 12), None), ((40, 36, 12), 1), ((64, 48), None),
                                                 ((64, 48), 1)])  # fmt: skip
def test_postprocessing_equals_monais_transforms_voxel_for_voxel(shape, connectivity):
    """The bounding-box labelling gives what MONAI's KeepLargestConnectedComponent / RemoveSmallObjects give."""
    import warnings

    from monai.transforms import KeepLargestConnectedComponent, RemoveSmallObjects

    rng = np.random.default_rng(len(shape) * 10 + (connectivity or 0))
    coarse = rng.integers(0, 5, size=[s // 2 for s in shape])  # 4 classes in 2-voxel patches: many components
    for axis in range(len(shape)):
        coarse = coarse.repeat(2, axis)
    for cls in range(1, 5):  # one component per class clearly the largest (MONAI leaves ties unspecified)
        coarse[tuple(slice(9 * cls - 9, 9 * cls - 1 + cls) for _ in shape)] = cls
    label = torch.as_tensor(coarse[None].astype(np.float32))
    full = connectivity or len(shape)
    classes = [1, 2, 3, 4]
    reference = KeepLargestConnectedComponent(applied_labels=classes, independent=True, connectivity=full)(
        label.clone())  # fmt: skip
    assert torch.equal(LargestComponentd("pred", "all", connectivity)({"pred": label.clone()})["pred"], reference)

    small = label.clone()
    for cls in classes:
        mask = label == cls
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            kept = torch.as_tensor(np.asarray(RemoveSmallObjects(min_size=9, connectivity=full)(mask.numpy()))).bool()
        small[mask & ~kept] = 0
    ours = RemoveSmallComponentsd("pred", min_size=9, unit="voxels", connectivity=connectivity)({"pred": label})
    assert torch.equal(ours["pred"], small)
    assert sum(ours["postprocessing"][0]["removed_voxels"].values()) == int((label != small).sum()) > 0


# ------------------------------------------------------------------------------------------------ outputs


def test_probability_maps_on_the_input_grid(tmp_path):
    affine = torch.tensor([[0.0, -0.8, 0, 10], [0.9, 0, 0, -5], [0, 0, 2.5, 3], [0, 0, 0, 1]], dtype=torch.float64)
    p = torch.softmax(torch.randn(3, 7, 6, 4), 0)
    item = {"pred": MetaTensor(p, affine=affine), "output": str(tmp_path / "case1_seg.nii.gz")}
    out = SaveProbabilitiesd("pred")(item)
    path = tmp_path / "case1_prob.nii.gz"
    assert out["outputs"] == {"probabilities": str(path)}
    image = nib.load(str(path))
    assert image.shape == (7, 6, 4, 3) and image.get_data_dtype() == np.uint8
    np.testing.assert_allclose(image.affine, affine.numpy(), atol=1e-6)
    np.testing.assert_allclose(image.get_fdata(), np.moveaxis(p.numpy(), 0, -1), atol=0.5 / 255 + 1e-6)
    with pytest.raises(FileExistsError):
        SaveProbabilitiesd("pred")(item)
    SaveProbabilitiesd("pred", dtype="float32", overwrite=True)(item)
    np.testing.assert_allclose(nib.load(str(path)).get_fdata(), np.moveaxis(p.numpy(), 0, -1), atol=1e-6)


HU_BACKGROUND = -500.0


def _hu_of(label: np.ndarray) -> np.ndarray:
    return np.where(label > 0, 100.0 + 30.0 * label, HU_BACKGROUND)


def _class_of(hu):
    return np.where(hu > 50, np.clip(np.rint((hu - 100.0) / 30.0), 0, 8), 0).astype(np.int64)


def _ct_series(folder: Path, orientation=None) -> np.ndarray:
    """An asymmetric label volume written as a CT series whose file names run against the slice order."""
    label = np.zeros((20, 16, 6), np.int64)  # x = columns, y = rows, z = slices
    label[2:6, 3:9, 1:4] = 6
    label[10:14, 2:5, 2:5] = 3
    label[15:18, 10:14, 0:2] = 1
    label[0:3, 12:16, 3] = 4  # slice 5 stays empty
    files = write_ct_series(folder, _hu_of(label))
    import pydicom

    for k, path in enumerate(files):
        if orientation is not None:
            ds = pydicom.dcmread(str(path))
            ds.ImageOrientationPatient = list(orientation)
            ds.save_as(str(path))
        path.rename(folder / f"X{len(files) - 1 - k:04d}.dcm")  # name order != position order
    return label


class _PredFromImage:
    """The 'network' of the DICOM-SEG test: the class of each voxel from its HU value, one-hot (RAS grid)."""

    def __call__(self, d):
        d = dict(d)
        image = d["image"]
        label = torch.as_tensor(_class_of(image.as_tensor().numpy()[0]))
        onehot = torch.nn.functional.one_hot(label, 9).permute(3, 0, 1, 2).float()
        d["pred"] = MetaTensor(onehot, meta=dict(image.meta))  # the image's affine and metadata
        return d


@pytest.mark.parametrize("orientation", [None, (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0)], ids=["supine", "rotated"])
def test_dicom_seg_matches_the_source_slices_frame_by_frame(tmp_path, orientation):
    import highdicom as hd
    import pydicom

    folder = tmp_path / "ct_series"
    _ct_series(folder, orientation)
    pre = Compose([LoadVolumed("image"), EnsureChannelFirstd("image"), Orientationd("image", axcodes="RAS")])
    post = Compose([
        Invertd("pred", transform=pre, orig_keys="image", nearest_interp=False),
        AsDiscreted("pred", argmax=True),
        SaveDicomSegd("pred", num_classes=9),
    ])  # fmt: skip
    item = post(_PredFromImage()(pre({"image": str(folder), "output": str(tmp_path / "ct_series_seg.nii.gz")})))
    path = tmp_path / "ct_series_seg.dcm"
    assert item["outputs"] == {"dicom_seg": str(path)}

    seg = hd.seg.segread(str(path))
    sources = {}
    for file in sorted(folder.iterdir()):  # read independently: pydicom's pixels and positions
        ds = pydicom.dcmread(str(file))
        hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        sources[str(ds.SOPInstanceUID)] = (float(ds.ImagePositionPatient[2]), _class_of(hu))
    assert {uid for _, _, uid in seg.get_source_image_uids()} == set(sources)
    by_position = sorted(sources, key=lambda uid: sources[uid][0])
    frames = seg.get_pixels_by_source_instance(by_position, combine_segments=True,
                                               assert_missing_frames_are_empty=True)  # fmt: skip
    assert frames.shape == (6, 16, 20)
    for frame, uid in zip(frames, by_position):
        np.testing.assert_array_equal(frame, sources[uid][1])
    assert frames.any(axis=(1, 2)).tolist() == [True, True, True, True, True, False]
    for n, description in enumerate(seg.SegmentSequence, start=1):
        assert description.SegmentNumber == n
    kidney = seg.SegmentSequence[2]  # class 3: left kidney (Synapse ids)
    assert kidney.SegmentLabel == "left kidney"
    assert kidney.SegmentedPropertyTypeCodeSequence[0].CodeValue == "64033007"
    assert kidney.SegmentedPropertyTypeModifierCodeSequence[0].CodeMeaning == "Left"
    liver = seg.SegmentSequence[5]
    assert (liver.SegmentLabel, liver.SegmentedPropertyTypeCodeSequence[0].CodeValue) == ("liver", "10200004")
    assert liver.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "91723000"


def test_dicom_seg_codes_of_every_synapse_organ_and_unknown_names():
    from xattnres_monai.metrics.segmentation import SYNAPSE_ORGANS
    from xattnres_monai.transforms.dicom_seg import segment_codes

    expected = {"aorta": "15825003", "gallbladder": "28231008", "spleen": "78961009", "left_kidney": "64033007",
                "right_kidney": "64033007", "liver": "10200004", "pancreas": "15776009", "stomach": "69695003"}
    for name in SYNAPSE_ORGANS.values():
        category, kind, side = segment_codes(name)
        assert (category.value, kind.value, kind.scheme_designator) == ("91723000", expected[name], "SCT")
        assert (side.value if side else None) == {"left_kidney": "7771000", "right_kidney": "24028007"}.get(name)
    category, kind, side = segment_codes("polyp")
    assert (category.value, kind.value, side) == ("85756007", "85756007", None)


def test_dicom_seg_is_not_written_for_nifti_input(tmp_path):
    image = MetaTensor(torch.zeros(1, 4, 4, 2), meta={"filename_or_obj": str(tmp_path / "a.nii.gz")})
    item = {"pred": MetaTensor(torch.zeros(1, 4, 4, 2)), "image": image, "output": str(tmp_path / "a_seg.nii.gz")}
    assert "outputs" not in SaveDicomSegd("pred", num_classes=9)(item)


def test_organ_volumes_are_voxel_count_times_voxel_volume(tmp_path):
    angle = np.deg2rad(30)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([0.7, 0.9, 2.5])
    affine[:3, 3] = [-20, 14, 3]
    label = _blobs()
    hu = torch.as_tensor(np.random.default_rng(0).normal(40, 30, size=label.shape[1:])).float()
    item = {
        "pred": MetaTensor(label, affine=torch.as_tensor(affine)),
        "original_image": MetaTensor(hu, affine=torch.as_tensor(affine), meta={"filename_or_obj": "scan.nii.gz"}),
        "output": str(tmp_path / "scan_seg.nii.gz"),
    }
    item = PostProcessd("pred", largest_component=[6])(item)
    item = SaveSegmentationd("pred")(item)
    item = OrganReportd("pred", num_classes=9)(item)
    mask = nib.load(str(tmp_path / "scan_seg.nii.gz"))  # independently: nibabel's voxels and zooms
    voxels = np.asanyarray(mask.dataobj)
    voxel_ml = float(np.prod(mask.header.get_zooms()[:3])) / 1000.0
    with open(tmp_path / "scan_organs.csv") as f:
        rows = {int(r["class"]): r for r in csv.DictReader(f)}
    assert set(rows) == set(range(1, 9))
    for cls, row in rows.items():
        count = int((voxels == cls).sum())
        assert int(row["voxels"]) == count
        assert float(row["volume_ml"]) == pytest.approx(count * voxel_ml, rel=1e-6)  # NIfTI zooms are float32
        if count:
            assert float(row["mean_hu"]) == pytest.approx(float(hu.numpy()[voxels == cls].mean()), abs=1e-4)
        else:
            assert row["mean_hu"] == ""
    assert rows[6]["name"] == "liver" and int(rows[6]["voxels"]) == 320
    report = json.loads((tmp_path / "scan_organs.json").read_text())
    assert [s["step"] for s in report["postprocessing"]] == ["largest_component"]
    assert report["postprocessing"][0]["removed_voxels"] == {"6": 8}
    assert report["organs"][5]["volume_ml"] == pytest.approx(320 * voxel_ml)
    assert item["outputs"] == {"organ_csv": str(tmp_path / "scan_organs.csv"),
                               "organ_json": str(tmp_path / "scan_organs.json")}  # fmt: skip


def test_sibling_paths():
    assert sibling_path("out/p1_seg.nii.gz", "_prob.nii.gz") == "out/p1_prob.nii.gz"
    assert sibling_path("out/dicom_dir_seg.nii.gz", "_seg.dcm") == "out/dicom_dir_seg.dcm"
    with pytest.raises(ValueError):
        sibling_path("out/p1_seg.nii.gz", "_seg.nii.gz")


# ------------------------------------------------------------------------------------------------ cohorts


def test_shards_are_disjoint_and_complete():
    items = [f"scan{i:02d}" for i in range(11)]
    for world in (1, 2, 3, 4, 16):
        shards = [shard(items, rank, world) for rank in range(world)]
        assert sorted(sum(shards, [])) == items
        assert sum(len(s) for s in shards) == len(items)
        assert max(map(len, shards)) - min(map(len, shards)) <= 1
    grouped = [shard(["a.nii", "a.nii.gz", "b.nii"], r, 2, key=lambda s: s.split(".")[0]) for r in range(2)]
    assert grouped == [["a.nii", "a.nii.gz"], ["b.nii"]]  # same output: same rank
    with pytest.raises(ValueError):
        shard(items, 2, 2)


def _write_scans(folder: Path, count: int) -> list:
    folder.mkdir()
    rng = np.random.default_rng(3)
    paths = []
    for i in range(count):
        data = rng.normal(50, 80, size=(6, 5, 3)).astype(np.float32)
        path = folder / f"p{i}.nii.gz"
        nib.save(nib.Nifti1Image(data, np.diag([0.8, 0.8, 2.5, 1.0])), str(path))
        paths.append(str(path))
    return paths


def test_cohort_inputs_shard_by_rank(tmp_path, monkeypatch):
    scans = _write_scans(tmp_path / "scans", 5)
    shards = [CohortInputs(str(tmp_path / "out"), str(tmp_path / "scans"), rank=r, world_size=3) for r in range(3)]
    listed = [item["image"] for inputs in shards for item in inputs.items]
    assert sorted(listed) == scans and len(set(listed)) == 5
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "3")
    from_env = CohortInputs(str(tmp_path / "out"), str(tmp_path / "scans"))
    assert (from_env.rank, from_env.world_size) == (1, 3)
    assert [i["image"] for i in from_env.items] == [i["image"] for i in shards[1].items]


def _run_cohort(scans: Path, out: Path, rank: int = 0, world_size: int = 1, before_run=None):
    inputs = CohortInputs(str(out), str(scans), suffixes=["_organs.csv", "_organs.json"], rank=rank,
                          world_size=world_size)  # fmt: skip
    recorder = CohortRecorder(inputs, num_classes=3)
    if before_run is not None:
        before_run()
    if inputs.items:
        torch.manual_seed(0)
        net = torch.nn.Conv3d(1, 3, 1).eval()
        pre = Compose([LoadVolumed("image", keep_original="image"), EnsureChannelFirstd("image"),
                       ScaleIntensityd("image")])  # fmt: skip
        post = Compose([
            AsDiscreted("pred", argmax=True),
            SaveSegmentationd("pred", failures=inputs.failures),
            OrganReportd("pred", num_classes=3, failures=inputs.failures),
        ])  # fmt: skip
        loader = DataLoader(InferenceDataset(inputs.items, pre), batch_size=1, num_workers=0)
        evaluator = InferenceEvaluator(failures=inputs.failures, device=torch.device("cpu"), val_data_loader=loader,
                                       network=net, inferer=ProbabilityInferer(), postprocessing=post,
                                       val_handlers=[recorder])  # fmt: skip
        evaluator.run()
    return inputs, recorder()


def _cohort_rows(out: Path) -> dict:
    with open(out / "cohort.csv") as f:
        return {Path(r["scan"]).name: r for r in csv.DictReader(f)}


def test_a_rerun_skips_finished_scans_and_redoes_partial_ones(tmp_path):
    scans, out = tmp_path / "scans", tmp_path / "out"
    _write_scans(scans, 3)
    inputs, merged = _run_cohort(scans, out)
    assert merged == out / "cohort.csv" and len(inputs.items) == 3
    rows = _cohort_rows(out)
    assert set(rows) == {"p0.nii.gz", "p1.nii.gz", "p2.nii.gz"}
    assert {r["status"] for r in rows.values()} == {"done"}
    with open(out / "p0_organs.csv") as f:
        organs = {f"volume_ml_{r['name']}": float(r["volume_ml"]) for r in csv.DictReader(f)}
    assert {k: float(rows["p0.nii.gz"][k]) for k in organs} == pytest.approx(organs, abs=5e-4)
    assert sum(organs.values()) <= 6 * 5 * 3 * 0.8 * 0.8 * 2.5 / 1000 * (1 + 1e-6)  # at most the whole scan
    assert rows["p0.nii.gz"]["outputs"].count(";") == 2  # mask, organ CSV, organ JSON
    for name in ("p0", "p1", "p2"):
        assert record_problem(out / ".cohort" / f"{name}_seg.json") is None

    finished = out / "p0_seg.nii.gz"
    before = (finished.stat().st_mtime_ns, finished.stat().st_ino)
    (out / ".cohort" / "p1_seg.json").unlink()  # killed before its record: partial
    (out / "p2_organs.json").write_text("{")  # a cut-short output: partial
    assert "p2_organs.json has 1 bytes" in record_problem(out / ".cohort" / "p2_seg.json")

    inputs, merged = _run_cohort(scans, out)
    assert sorted(Path(i["image"]).name for i in inputs.items) == ["p1.nii.gz", "p2.nii.gz"]
    assert [Path(s).name for s, _ in inputs.skipped] == ["p0.nii.gz"]
    assert (finished.stat().st_mtime_ns, finished.stat().st_ino) == before  # not redone
    json.loads((out / "p2_organs.json").read_text())
    rows = _cohort_rows(out)
    assert len(rows) == 3 and {r["status"] for r in rows.values()} == {"done"}
    assert merged is not None and not inputs.failures

    inputs, _ = _run_cohort(scans, out)  # all finished: nothing to do, the table is still written
    assert not inputs.items and len(inputs.finished) == 3 and len(_cohort_rows(out)) == 3


def test_a_scan_whose_writer_failed_gets_no_record_and_is_redone(tmp_path):
    scans, out = tmp_path / "scans", tmp_path / "out"
    _write_scans(scans, 2)
    blocker = out / "p1_organs.csv"
    inputs, _ = _run_cohort(scans, out, before_run=lambda: (out.mkdir(exist_ok=True), blocker.write_text("in the way")))
    rows = _cohort_rows(out)
    assert rows["p0.nii.gz"]["status"] == "done"
    assert rows["p1.nii.gz"]["status"] == "failed" and "p1_organs.csv" in rows["p1.nii.gz"]["reason"]
    assert "no completion record" == record_problem(out / ".cohort" / "p1_seg.json")
    assert [p for p, _ in inputs.failures] == [str(blocker)]
    inputs, _ = _run_cohort(scans, out)  # the rerun removes the partial outputs and redoes the scan
    assert [Path(i["image"]).name for i in inputs.items] == ["p1.nii.gz"]
    assert {r["status"] for r in _cohort_rows(out).values()} == {"done"}
    assert blocker.read_text().startswith("class,name,voxels")


def test_ranks_write_their_tables_and_the_last_one_merges(tmp_path):
    scans, out = tmp_path / "scans", tmp_path / "out"
    _write_scans(scans, 3)
    _, merged = _run_cohort(scans, out, rank=1, world_size=2)
    assert merged is None and os.path.isfile(rank_csv_path(out, 1, 2)) and not (out / "cohort.csv").exists()
    _, merged = _run_cohort(scans, out, rank=0, world_size=2)
    assert merged == out / "cohort.csv"
    assert sorted(_cohort_rows(out)) == ["p0.nii.gz", "p1.nii.gz", "p2.nii.gz"]
    assert merge_cohort_csv(out) == out / "cohort.csv"


# ------------------------------------------------------------------------------------------------ in-plane spacing


def test_in_plane_spacing_keeps_z_and_is_inverted(tmp_path):
    path = tmp_path / "scan.nii.gz"
    affine = np.diag([-0.8, -0.8, 2.5, 1.0])
    nib.save(nib.Nifti1Image(np.random.default_rng(0).normal(size=(37, 29, 7)).astype(np.float32), affine), str(path))
    pre = Compose([
        LoadVolumed("image"),
        EnsureChannelFirstd("image"),
        Orientationd("image", axcodes="RAS"),
        Spacingd("image", pixdim=[1.5, 1.5, -1], mode="bilinear"),  # <= 0: that axis keeps its spacing
    ])  # fmt: skip
    d = pre({"image": str(path)})
    assert tuple(d["image"].shape) == (1, 20, 16, 7)
    np.testing.assert_allclose(d["image"].pixdim.numpy(), [1.5, 1.5, 2.5])
    d["pred"] = MetaTensor(torch.rand(3, 20, 16, 7))
    inverted = Invertd("pred", transform=pre, orig_keys="image", nearest_interp=False)(d)["pred"]
    assert tuple(inverted.shape) == (3, 37, 29, 7)
    np.testing.assert_allclose(inverted.affine.numpy(), affine, atol=1e-6)


# ------------------------------------------------------------------------------------------------ the bundle, wired

SYNAPSE_BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "synapse_ct_segmentation"
INFERENCE_JSON = SYNAPSE_BUNDLE / "configs" / "inference.json"
_AS_BOOL = "xattnres_monai.utils.options.as_bool"
#: the options of inference.json as config overrides: the snippets handed over for the bundle (one source, tested)
BUNDLE_OPTIONS = {
    "tta_flip_axes": [],
    "ensemble_model_files": [],
    "save_probabilities": False,
    "probability_dtype": "uint8",
    "save_dicom_seg": True,
    "organ_report": True,
    "largest_component": None,
    "min_size": None,
    "min_size_unit": "mL",
    "preprocessing#transforms#0#keep_original": f"$'image' if {_AS_BOOL}(@organ_report, 'organ_report') else []",
    "inputs": {
        "_target_": "xattnres_monai.engines.cohort.CohortInputs",
        "output_dir": "@output_dir",
        "dataset_dir": "@dataset_dir",
        "datalist": "@datalist",
        "overwrite": "@overwrite",
        "max_voxels": "@max_voxels",
        "suffixes": ["_prob.nii.gz", "_seg.dcm", "_organs.csv", "_organs.json"],
    },
    "inferer": {
        "_target_": "xattnres_monai.inferers.probability.ProbabilityInferer",
        "inferer": {"_target_": "SliceInferer", "roi_size": "@roi_size", "sw_batch_size": 16, "spatial_dim": 2,
                    "progress": False},
        "flip_axes": "@tta_flip_axes",
        "model_files": "$[os.path.join(@bundle_root, f) for f in @ensemble_model_files]",
        "network": "@network",
        "activation": "softmax",
    },
    "postprocessing": {
        "_target_": "Compose",
        "transforms": [
            {"_target_": "Invertd", "keys": "pred", "transform": "@preprocessing", "orig_keys": "image",
             "nearest_interp": False, "to_tensor": True},
            {"_target_": "xattnres_monai.transforms.outputs.SaveProbabilitiesd", "keys": "pred",
             "dtype": "@probability_dtype", "overwrite": "@overwrite", "failures": "$@inputs.failures",
             "_disabled_": f"$not {_AS_BOOL}(@save_probabilities, 'save_probabilities')"},
            {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
            {"_target_": "xattnres_monai.transforms.postprocess.PostProcessd", "keys": "pred",
             "largest_component": "@largest_component", "min_size": "@min_size", "unit": "@min_size_unit"},
        ],
    },
    "writer": {
        "_target_": "Compose",
        "transforms": [
            {"_target_": "xattnres_monai.transforms.SaveSegmentationd", "keys": "pred", "output_key": "output",
             "overwrite": "@overwrite", "failures": "$@inputs.failures"},
            {"_target_": "xattnres_monai.transforms.dicom_seg.SaveDicomSegd", "keys": "pred",
             "num_classes": "@num_classes", "overwrite": "@overwrite", "failures": "$@inputs.failures",
             "_disabled_": f"$not {_AS_BOOL}(@save_dicom_seg, 'save_dicom_seg')"},
            {"_target_": "xattnres_monai.metrics.organ_report.OrganReportd", "keys": "pred",
             "image_key": "original_image", "num_classes": "@num_classes", "overwrite": "@overwrite",
             "failures": "$@inputs.failures", "_disabled_": f"$not {_AS_BOOL}(@organ_report, 'organ_report')"},
        ],
    },
    "cohort": {"_target_": "xattnres_monai.engines.cohort.CohortRecorder", "inputs": "@inputs",
               "num_classes": "@num_classes"},
    "handlers": [
        {"_target_": "xattnres_monai.handlers.resume.CheckpointLoader",
         "load_path": "$os.path.join(@bundle_root, 'models', 'model.pt')", "load_dict": {"model": "@network"},
         "strict": True},
        {"_target_": "StatsHandler", "iteration_log": False},
        "@cohort",
    ],
    "run": ["$@evaluator.run() if @inputs.items else None", "$@cohort()", "$@report()"],
}


def _run_bundle(bundle_root: Path, scans: Path, out: Path, **options):
    from monai.bundle import ConfigWorkflow

    overrides = {**BUNDLE_OPTIONS, **options}
    workflow = ConfigWorkflow(config_file=str(INFERENCE_JSON), workflow_type="infer", bundle_root=str(bundle_root),
                              dataset_dir=str(scans), output_dir=str(out), roi_size=[32, 32], **overrides)  # fmt: skip
    workflow.initialize()
    workflow.run()
    workflow.finalize()
    return workflow


@pytest.mark.slow
def test_the_bundle_with_every_option_and_a_resumed_rerun(tmp_path):
    import highdicom as hd
    import pydicom
    from monai.bundle import ConfigParser

    from xattnres_monai.testing.phantoms import write_phantoms

    bundle_root = tmp_path / "bundle"
    (bundle_root / "models").mkdir(parents=True)
    parser = ConfigParser()
    parser.read_config(str(INFERENCE_JSON))
    for seed, name in ((0, "model.pt"), (1, "fold1.pt")):
        torch.manual_seed(seed)
        torch.save(parser.get_parsed_content("network_def", instantiate=True, lazy=False).state_dict(),
                   bundle_root / "models" / name)  # fmt: skip
    scans = tmp_path / "scans"
    write_phantoms(tmp_path / "raw", cases=1, size=(40, 36, 16), seed=5, first_case=50)
    scans.mkdir()
    image = tmp_path / "raw" / "img0050.nii.gz"
    hu = np.asanyarray(nib.load(str(image)).dataobj).astype(np.float64)
    image.rename(scans / "patient1.nii.gz")
    write_ct_series(scans / "patient2", hu, spacing=(0.8, 0.8, 2.5))
    out = tmp_path / "out"

    _run_bundle(bundle_root, scans, out, tta_flip_axes=[0, 1], ensemble_model_files=["models/fold1.pt"],
                save_probabilities=True, largest_component="all", min_size=0.01)  # fmt: skip

    names = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    assert names == ["cohort.csv", "patient1_organs.csv", "patient1_organs.json", "patient1_prob.nii.gz",
                     "patient1_seg.nii.gz", "patient2_organs.csv", "patient2_organs.json", "patient2_prob.nii.gz",
                     "patient2_seg.dcm", "patient2_seg.nii.gz"]  # fmt: skip
    mask = nib.load(str(out / "patient2_seg.nii.gz"))
    probabilities = nib.load(str(out / "patient2_prob.nii.gz"))
    assert probabilities.shape == (*mask.shape, 9)
    np.testing.assert_allclose(probabilities.affine, mask.affine, atol=1e-4)
    np.testing.assert_allclose(probabilities.get_fdata().sum(-1), 1.0, atol=9 * 0.5 / 255 + 1e-3)
    labels = np.asanyarray(mask.dataobj)
    seg = hd.seg.segread(str(out / "patient2_seg.dcm"))
    slices = sorted((pydicom.dcmread(str(p)) for p in (scans / "patient2").iterdir()),
                    key=lambda ds: float(ds.ImagePositionPatient[2]))  # fmt: skip
    uids = [str(ds.SOPInstanceUID) for ds in slices]
    frames = seg.get_pixels_by_source_instance(uids, combine_segments=True, assert_missing_frames_are_empty=True)
    for k, frame in enumerate(frames):  # identity orientation: row r, column c of slice k is voxel (c, r, k)
        np.testing.assert_array_equal(frame, labels[:, :, k].T)
    report = json.loads((out / "patient1_organs.json").read_text())
    assert [s["step"] for s in report["postprocessing"]] == ["largest_component", "min_size"]
    rows = _cohort_rows(out)
    assert sorted(rows) == ["patient1.nii.gz", "patient2"]
    assert {r["status"] for r in rows.values()} == {"done"} and "volume_ml_liver" in rows["patient2"]

    before = (out / "patient2_seg.dcm").stat().st_mtime_ns
    workflow = _run_bundle(bundle_root, scans, out, save_probabilities=True)  # finished: skipped
    assert not workflow.parser.get_parsed_content("inputs").items
    assert (out / "patient2_seg.dcm").stat().st_mtime_ns == before
    assert sorted(_cohort_rows(out)) == ["patient1.nii.gz", "patient2"]


def test_a_folder_without_cohort_records_keeps_existing_masks(tmp_path):
    """Masks written by another (non-cohort) run are results, not partial outputs: skipped and kept."""
    scans, out = tmp_path / "scans", tmp_path / "out"
    _write_scans(scans, 2)
    out.mkdir()
    (out / "p0_seg.nii.gz").write_bytes(b"a result of another run")
    inputs = CohortInputs(str(out), dataset_dir=str(scans))
    assert [Path(i["image"]).name for i in inputs.items] == ["p1.nii.gz"]
    assert (out / "p0_seg.nii.gz").read_bytes() == b"a result of another run"
    assert any("output exists" in reason for _, reason in inputs.skipped)
