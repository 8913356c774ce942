"""Per-organ Dice / HD95 / IoU in both conventions against hand-computed values, summaries and reports."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch
from scipy.ndimage import binary_erosion, distance_transform_edt, generate_binary_structure

from xattnres_monai.metrics import TABLE1_COLUMNS, evaluate_case, summarize, write_reports

ORGANS = ("spleen", "right_kidney", "left_kidney", "gallbladder", "pancreas", "liver", "stomach", "aorta")


def two_voxels(offset, axis, size=12):
    """Ground truth: one voxel of class 1 at (2, 2, 2); prediction: one voxel shifted by ``offset`` along ``axis``."""
    gt, pred = np.zeros((size,) * 3, np.uint8), np.zeros((size,) * 3, np.uint8)
    gt[2, 2, 2] = 1
    index = [2, 2, 2]
    index[axis] += offset
    pred[tuple(index)] = 1
    return pred, gt


def organ_blocks():
    """A label volume with the 8 organs as 2 x 4 x 3 blocks (24 voxels each) along the first axis."""
    volume = np.zeros((24, 12, 6), np.uint8)
    for i in range(1, 9):
        volume[3 * (i - 1) : 3 * (i - 1) + 2, 2:6, 1:4] = i
    return volume


def medpy_hd95(pred, gt):
    """Independent re-statement of ``medpy.metric.binary.hd95`` (pooled 95th percentile, voxel units)."""
    footprint = generate_binary_structure(pred.ndim, 1)
    edge_p = pred ^ binary_erosion(pred, structure=footprint, iterations=1)
    edge_g = gt ^ binary_erosion(gt, structure=footprint, iterations=1)
    distances = np.hstack([distance_transform_edt(~edge_g)[edge_p], distance_transform_edt(~edge_p)[edge_g]])
    return float(np.percentile(distances, 95))


@pytest.mark.parametrize("convention", ["literature", "physical"])
def test_dice_and_iou_of_known_overlap(convention):
    gt, pred = np.zeros((8, 8, 8), np.uint8), np.zeros((8, 8, 8), np.uint8)
    gt[2:4, 2:4, 2:4] = 6  # 8 voxels of liver
    pred[2:4, 2:4, 2:6] = 6  # 16 voxels containing them
    row = evaluate_case(pred, gt, spacing=(1, 1, 1), convention=convention, case="c")
    assert row["dice_liver"] == pytest.approx(2 * 8 / (8 + 16))
    assert row["iou_liver"] == pytest.approx(8 / 16)
    assert row["status_liver"] == "ok" and row["case"] == "c" and row["convention"] == convention
    same = evaluate_case(torch.as_tensor(gt), torch.as_tensor(gt), spacing=(1, 1, 1), convention=convention)
    assert (same["dice_liver"], same["iou_liver"], same["hd95_liver"]) == (1.0, 1.0, 0.0)


@pytest.mark.parametrize("axis, expected_mm", [(2, 3 * 2.5), (0, 3 * 0.8)])
def test_hd95_voxels_and_mm_with_anisotropic_spacing(axis, expected_mm):
    pred, gt = two_voxels(3, axis)
    spacing = (0.8, 0.8, 2.5)
    literature = evaluate_case(pred, gt, spacing, convention="literature")
    physical = evaluate_case(pred, gt, spacing, convention="physical")
    assert literature["hd95_spleen"] == pytest.approx(3.0)  # voxels: spacing ignored
    assert physical["hd95_spleen"] == pytest.approx(expected_mm)
    assert literature["dice_spleen"] == physical["dice_spleen"] == 0.0


def test_hd95_definitions():
    gt, pred = np.zeros((10, 10, 10), np.uint8), np.zeros((10, 10, 10), np.uint8)
    gt[5, 5, 5] = 1
    pred[5, 5, 5] = pred[5, 5, 9] = 1
    # distances pred->gt [0, 4], gt->pred [0]; pooled (medpy): 95th pct of [0, 0, 4] = 3.6;
    # MONAI: max of the directed 95th percentiles = max(3.8, 0) = 3.8
    assert evaluate_case(pred, gt, convention="literature")["hd95_spleen"] == pytest.approx(3.6)
    assert evaluate_case(pred, gt, (1, 1, 1), convention="physical")["hd95_spleen"] == pytest.approx(3.8)
    rng = np.random.default_rng(0)
    grid = np.indices((20, 18, 16)).transpose(1, 2, 3, 0)
    for _ in range(3):
        a = np.linalg.norm(grid - rng.uniform(6, 12, 3), axis=-1) < rng.uniform(3, 6)
        b = np.linalg.norm(grid - rng.uniform(6, 12, 3), axis=-1) < rng.uniform(3, 6)
        row = evaluate_case(b.astype(np.uint8) * 8, a.astype(np.uint8) * 8, convention="literature")
        assert row["hd95_aorta"] == pytest.approx(medpy_hd95(b, a), abs=1e-5)


def test_empty_organ_conventions():
    gt = np.zeros((6, 6, 6), np.uint8)
    pred = np.zeros_like(gt)
    gt[1:3, 1:3, 1:3] = 1  # spleen present, predicted nowhere: missed
    pred[3:5, 3:5, 3:5] = 4  # gallbladder absent, predicted: false positive
    # every other organ: absent from both
    lit = evaluate_case(pred, gt, convention="literature")
    phys = evaluate_case(pred, gt, spacing=(1, 1, 1), convention="physical")
    def scores(row, organ):
        return [row[f"{m}_{organ}"] for m in ("dice", "hd95", "iou", "status")]

    assert scores(lit, "spleen") == [0.0, 0.0, 0.0, "missed"]
    assert scores(lit, "gallbladder") == [1.0, 0.0, 1.0, "false_positive"]
    assert scores(lit, "liver") == [0.0, 0.0, 0.0, "absent"]
    assert scores(phys, "spleen") == [0.0, math.inf, 0.0, "missed"]
    assert scores(phys, "gallbladder") == [0.0, math.inf, 0.0, "false_positive"]
    assert all(math.isnan(phys[f"{m}_liver"]) for m in ("dice", "hd95", "iou")) and phys["status_liver"] == "absent"


def test_argument_checks():
    volume = organ_blocks()
    with pytest.raises(ValueError, match="spacing"):
        evaluate_case(volume, volume, convention="physical")
    with pytest.raises(ValueError, match="same shape"):
        evaluate_case(volume[:-1], volume)
    with pytest.raises(ValueError, match="convention"):
        evaluate_case(volume, volume, convention="optimistic")
    row = evaluate_case(volume > 0, volume > 0, num_classes=2)
    assert row["dice_class1"] == 1.0


def cases_for_summary():
    """Case a: perfect. Case b: spleen predicted twice as large (Dice 2/3). Case c: no gallbladder anywhere."""
    gt = organ_blocks()
    pred_b = gt.copy()
    pred_b[0:2, 6:10, 1:4] = 1  # 24 extra spleen voxels next to the 24 true ones
    gt_c = np.where(gt == 4, 0, gt).astype(np.uint8)
    return [("a", gt, gt), ("b", pred_b, gt), ("c", gt_c, gt_c)]


def test_summary_columns_and_averaging():
    rows = {
        c: [evaluate_case(p, y, (1, 1, 1), convention=c, case=k) for k, p, y in cases_for_summary()]
        for c in ("literature", "physical")
    }
    lit, phys = summarize(rows["literature"]), summarize(rows["physical"])
    assert list(lit)[3 : 3 + len(TABLE1_COLUMNS)] == list(TABLE1_COLUMNS)
    assert TABLE1_COLUMNS == ("DSC", "HD95", "mIoU", "Aorta", "GB", "KL", "KR", "Liver", "PC", "Spleen", "SM")
    assert (lit["convention"], lit["cases"], lit["hd95_unit"], phys["hd95_unit"]) == ("literature", 3, "voxel", "mm")

    # literature: spleen (1 + 2/3 + 1) / 3; gallbladder absent in c counts as Dice 0 -> (1 + 1 + 0) / 3
    assert lit["Spleen"] == pytest.approx(100 * (2 + 2 / 3) / 3)
    assert lit["GB"] == pytest.approx(100 * 2 / 3)
    assert lit["Liver"] == pytest.approx(100.0)
    assert lit["DSC"] == pytest.approx(100 * (6 + (2 + 2 / 3) / 3 + 2 / 3) / 8)
    assert lit["mIoU"] == pytest.approx(100 * (6 + 2.5 / 3 + 2 / 3) / 8)
    spleen_hd = rows["literature"][1]["hd95_spleen"]
    assert lit["HD95"] == pytest.approx(spleen_hd / 3 / 8)
    # physical: the absent gallbladder is excluded from the means
    assert phys["GB"] == pytest.approx(100.0) and phys["counts"]["gallbladder"]["absent"] == 1
    assert phys["DSC"] == pytest.approx(100 * (7 + (2 + 2 / 3) / 3) / 8)
    assert phys["per_organ"]["spleen"]["dice"] == pytest.approx((2 + 2 / 3) / 3)
    with pytest.raises(ValueError, match="mix"):
        summarize(rows["literature"] + rows["physical"])


def test_physical_means_with_missed_organ():
    gt = organ_blocks()
    pred = np.where(gt == 8, 0, gt).astype(np.uint8)  # aorta missed
    rows = [evaluate_case(pred, gt, (1, 1, 1), convention="physical", case="m")]
    summary = summarize(rows)
    assert summary["Aorta"] == 0.0 and math.isinf(summary["HD95"]) and summary["counts"]["aorta"]["missed"] == 1
    lit = summarize([evaluate_case(pred, gt, convention="literature", case="m")])
    assert lit["HD95"] == 0.0 and lit["Aorta"] == 0.0


def test_write_reports(tmp_path):
    rows = [
        evaluate_case(p, y, (1, 1, 1), convention=c, case=k)
        for k, p, y in cases_for_summary()
        for c in ("literature", "physical")
    ]
    paths = write_reports(rows, tmp_path / "eval")
    assert sorted(p.name for p in (tmp_path / "eval").iterdir()) == [
        "per_case_literature.csv",
        "per_case_physical.csv",
        "summary.csv",
        "summary.md",
    ]
    with open(paths["per_case_physical"], newline="") as f:
        per_case = list(csv.DictReader(f))
    assert [r["case"] for r in per_case] == ["a", "b", "c"]
    expected = ["case"] + [f"{m}_{o}" for o in ORGANS for m in ("dice", "hd95", "iou")]
    assert list(per_case[0])[: len(expected)] == expected
    assert per_case[2]["dice_gallbladder"] == "nan" and per_case[2]["status_gallbladder"] == "absent"
    with open(paths["summary_csv"], newline="") as f:
        summary = list(csv.DictReader(f))
    assert [r["convention"] for r in summary] == ["literature", "physical"]
    assert list(summary[0])[3 : 3 + len(TABLE1_COLUMNS)] == list(TABLE1_COLUMNS)
    markdown = paths["summary_md"].read_text().splitlines()
    assert markdown[0] == "| Convention | Cases | HD95 unit | " + " | ".join(TABLE1_COLUMNS) + " |"
    assert markdown[2].startswith("| literature | 3 | voxel |") and markdown[3].startswith("| physical | 3 | mm |")
    with pytest.raises(FileExistsError):
        write_reports(rows, tmp_path / "eval")
    write_reports(rows[:2], tmp_path / "eval", overwrite=True)
