"""Training pieces of the 2D bundles: the multi-scale sampler, the structure loss and gradient clipping."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch
import torch.nn.functional as F
from ignite.engine import Events
from monai.engines import SupervisedTrainer

from xattnres_monai.engines import MultiScalePrepareBatch, multiscale_sizes
from xattnres_monai.handlers import GradientClipping
from xattnres_monai.losses import StructureLoss, finest_head


def test_multiscale_sizes_follow_the_rates_and_are_multiples_of_32():
    assert multiscale_sizes(352) == ((256, 256), (352, 352), (448, 448))
    for base in (224, 300, 352, (352, 288), 513):
        sizes = multiscale_sizes(base, (0.75, 1.0, 1.25), 32)
        dims = (base, base) if isinstance(base, int) else base
        assert len(sizes) == 3
        for size, rate in zip(sizes, (0.75, 1.0, 1.25)):
            assert all(s % 32 == 0 and s >= 32 for s in size)
            assert all(abs(s - d * rate) <= 16 for s, d in zip(size, dims)), (base, rate, size)
    with pytest.raises(ValueError, match="rates"):
        multiscale_sizes(352, (0.0, 1.0))


def test_multiscale_batches_use_each_rate_and_keep_labels_binary():
    torch.manual_seed(0)
    prepare = MultiScalePrepareBatch(base_size=352)
    batch = {"image": torch.rand(2, 3, 352, 352), "label": (torch.rand(2, 1, 352, 352) > 0.5).float()}
    seen = Counter()
    for _ in range(60):
        image, label = prepare(batch, torch.device("cpu"))
        assert image.shape[2:] == label.shape[2:] and image.shape[:2] == (2, 3)
        assert set(label.unique().tolist()) <= {0.0, 1.0}
        seen[tuple(image.shape[2:])] += 1
    assert set(seen) == {(256, 256), (352, 352), (448, 448)}
    assert min(seen.values()) >= 10  # uniform draw: each about 20 of 60
    # the draw follows torch's seed (so it is reproducible and resumes with the RNG state)
    torch.manual_seed(3)
    first = [prepare.sample_size() for _ in range(10)]
    torch.manual_seed(3)
    assert [prepare.sample_size() for _ in range(10)] == first


def _structure_loss_by_hand(logits, mask):
    """PraNet's formula written out for one 2D image."""
    weight = 1 + 5 * torch.abs(F.avg_pool2d(mask, 31, stride=1, padding=15) - mask)
    bce = F.binary_cross_entropy_with_logits(logits, mask, reduction="none")
    wbce = (weight * bce).sum() / weight.sum()
    p = torch.sigmoid(logits)
    inter = (p * mask * weight).sum()
    union = ((p + mask) * weight).sum()
    return wbce + 1 - (inter + 1) / (union - inter + 1)


def test_structure_loss_matches_the_formula_and_prefers_the_right_mask():
    torch.manual_seed(0)
    logits = torch.randn(2, 1, 40, 40)
    mask = torch.zeros(2, 1, 40, 40)
    mask[0, 0, 10:25, 5:30] = 1
    mask[1, 0, 20:38, 20:38] = 1
    loss = StructureLoss()(logits, mask)
    expected = sum(_structure_loss_by_hand(logits[i : i + 1], mask[i : i + 1]) for i in range(2)) / 2
    assert math.isclose(float(loss), float(expected), rel_tol=1e-5)
    good = StructureLoss()((mask * 2 - 1) * 8, mask)
    bad = StructureLoss()((1 - mask * 2) * 8, mask)
    assert float(good) < 0.05 < float(bad)
    with pytest.raises(ValueError, match="single-channel"):
        StructureLoss()(torch.randn(1, 2, 8, 8), torch.zeros(1, 2, 8, 8))


def test_finest_head_picks_the_last_head():
    heads = [torch.full((1, 1, 2, 2), float(i)) for i in range(4)]
    assert torch.equal(finest_head(heads), heads[-1])
    assert finest_head(heads[0]) is heads[0]


@pytest.mark.parametrize("mode,clip", [("value", 0.5), ("norm", 0.1)])
def test_gradient_clipping_bounds_the_gradients_before_the_step(mode, clip):
    torch.manual_seed(0)
    net = torch.nn.Conv2d(1, 1, 3, padding=1)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.0)  # lr 0: the step does not hide the clipped gradients
    data = [{"image": torch.randn(2, 1, 8, 8) * 100, "label": torch.randn(2, 1, 8, 8) * 100}]
    trainer = SupervisedTrainer(
        device=torch.device("cpu"), max_epochs=1, train_data_loader=data, network=net, optimizer=optimizer,
        loss_function=lambda p, t: ((p - t) ** 2).sum(),
    )
    GradientClipping(clip=clip, mode=mode).attach(trainer)
    grads = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: grads.extend(p.grad.clone() for p in net.parameters()))
    trainer.run()
    if mode == "value":
        assert max(float(g.abs().max()) for g in grads) <= clip + 1e-7
        assert any(float(g.abs().max()) == pytest.approx(clip) for g in grads)  # it did clip
    else:
        assert float(torch.sqrt(sum((g**2).sum() for g in grads))) == pytest.approx(clip, rel=1e-4)
    with pytest.raises(ValueError, match="mode"):
        GradientClipping(mode="max")


def test_binary_report_scores_hand_computed_cases(tmp_path):
    """Per-image Dice / IoU of the 2D evaluation report on hand-made masks, through a real Ignite engine."""
    import csv

    from ignite.engine import Engine
    from monai.data import MetaTensor

    from xattnres_monai.handlers import BinarySegmentationReport

    def mask(pixels, name):
        m = torch.zeros(1, 5, 7)
        for r, c in pixels:
            m[0, r, c] = 1
        return MetaTensor(m, meta={"filename_or_obj": name})

    # prediction 4 pixels, truth 6 pixels, 3 shared: Dice 2*3/(4+6) = 0.6, IoU 3/7; then both empty: 1, 1;
    # then a missed lesion: 0, 0
    cases = [
        ([(0, 0), (0, 1), (0, 2), (4, 6)], [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)], 0.6, 3 / 7),
        ([], [], 1.0, 1.0),
        ([], [(2, 3)], 0.0, 0.0),
    ]
    batches = [
        [{"image": mask([], f"img{i}.png"), "label": mask(truth, f"mask{i}.png")}] for i, (_, truth, _, _) in enumerate(cases)
    ]
    predictions = [[{"pred": mask(pred, "")}] for pred, _, _, _ in cases]
    # as in the bundle's evaluator: the output holds the predictions, the state the input batch with the truth
    engine = Engine(lambda e, batch: predictions[e.state.iteration - 1])
    report = BinarySegmentationReport(str(tmp_path), flops_input_shape=None)
    report.attach(engine)
    engine.run(batches, max_epochs=1)
    with open(tmp_path / "per_image.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["label"] for r in rows] == ["mask0.png", "mask1.png", "mask2.png"]
    for row, (_, _, dice, iou) in zip(rows, cases):
        assert math.isclose(float(row["dice"]), dice, abs_tol=1e-6) and math.isclose(float(row["iou"]), iou, abs_tol=1e-6)
        assert (int(row["height"]), int(row["width"])) == (5, 7)
    with open(tmp_path / "summary.csv") as f:
        summary = next(csv.DictReader(f))
    assert math.isclose(float(summary["mean_dice"]), (0.6 + 1 + 0) / 3, abs_tol=1e-6)
    assert math.isclose(float(summary["mean_iou"]), (3 / 7 + 1 + 0) / 3, abs_tol=1e-6)
