"""TrainingCurves with a real MONAI SupervisedTrainer / SupervisedEvaluator (no mocks of Ignite or MONAI)."""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest
import torch
from ignite.engine import Events
from monai.data import DataLoader
from monai.engines import SupervisedEvaluator, SupervisedTrainer
from monai.handlers import LrScheduleHandler, MeanDice, ValidationHandler, from_engine
from monai.losses import DiceCELoss
from monai.transforms import AsDiscreted, Compose
from PIL import Image

import xattnres_monai.handlers.training_curves as training_curves
from xattnres_monai.handlers.training_curves import TrainingCurves
from xattnres_monai.visualize import CURVES_HEIGHT, CURVES_WIDTH, read_curves_csv

CLASS_NAMES = ["background", "left", "right"]


def _run(out: Path, max_epochs: int, resume_epoch: int = 0, check_files: bool = True, **curve_kwargs):
    """Train a 1-layer network on random 16 x 16 images, validating every epoch; returns what the checks saw."""
    torch.manual_seed(0)
    data = [{"image": torch.randn(1, 16, 16), "label": torch.randint(0, 3, (1, 16, 16)).float()} for _ in range(4)]
    net = torch.nn.Conv2d(1, 3, 3, padding=1)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"),
        val_data_loader=DataLoader(data, batch_size=2),
        network=net,
        postprocessing=Compose([AsDiscreted("pred", argmax=True, to_onehot=3), AsDiscreted("label", to_onehot=3)]),
        key_val_metric={"val_mean_dice": MeanDice(include_background=False, save_details=True,
                                                  output_transform=from_engine(["pred", "label"]))},  # fmt: skip
    )
    curves = TrainingCurves(out, validator=evaluator, class_names=CLASS_NAMES, per_class_metric="val_mean_dice",
                            **curve_kwargs)  # fmt: skip
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=max_epochs,
        train_data_loader=DataLoader(data, batch_size=2),
        network=net,
        optimizer=optimizer,
        loss_function=DiceCELoss(to_onehot_y=True, softmax=True),
        train_handlers=[
            ValidationHandler(validator=evaluator, interval=1, epoch_level=True),
            curves,
            LrScheduleHandler(torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)),
        ],
    )
    seen: Dict[str, List] = {"losses": [], "checks": []}
    trainer.add_event_handler(Events.EPOCH_STARTED, lambda e: seen["losses"].append([]))
    loss_of = from_engine(["loss"], first=True)  # MONAI's decollated output: every item holds the batch loss
    trainer.add_event_handler(
        Events.ITERATION_COMPLETED, lambda e: seen["losses"][-1].append(float(loss_of(e.state.output)))
    )

    def check(engine):  # after TrainingCurves' own handler on the validator's EPOCH_COMPLETED
        assert out.exists()
        with Image.open(out) as image:
            image.load()
            size = image.size
        rows = read_curves_csv(out.with_suffix(".csv"))
        temporaries = [p.name for p in out.parent.iterdir() if p.name.startswith(".tmp-")]
        seen["checks"].append({"epoch": trainer.state.epoch, "size": size, "inode": os.stat(out).st_ino, "rows": rows,
                               "dice": float(engine.state.metrics["val_mean_dice"]), "temporaries": temporaries})

    if check_files:
        evaluator.add_event_handler(Events.EPOCH_COMPLETED, check)
    if resume_epoch:  # restored in a STARTED handler that runs after TrainingCurves', as EpochCheckpoint does
        state = {"epoch": resume_epoch, "epoch_length": 2, "max_epochs": max_epochs}
        trainer.add_event_handler(Events.STARTED, lambda e: e.load_state_dict(state))
    trainer.run()
    return seen, curves


def _csv_columns(path: Path) -> List[str]:
    with open(path, newline="") as f:
        return next(csv.reader(f))


def test_training_curves_redrawn_after_each_validation(tmp_path):
    out = tmp_path / "run" / "progress.png"
    extra = {"routing_entropy": lambda engine: {"block1": 0.1 * engine.state.epoch}}
    seen, curves = _run(out, max_epochs=2, extra_series=extra)
    checks = seen["checks"]
    assert [c["epoch"] for c in checks] == [1, 2]
    for i, c in enumerate(checks):
        assert c["size"] == (CURVES_WIDTH, CURVES_HEIGHT) == (1600, 1200)
        assert [r["epoch"] for r in c["rows"]] == list(range(1, i + 2))
        assert c["temporaries"] == []
    assert checks[0]["inode"] != checks[1]["inode"]  # replaced by a rename, not rewritten in place
    rows = read_curves_csv(out.with_suffix(".csv"))
    assert [r["epoch"] for r in rows] == [1, 2]
    for row, losses, c in zip(rows, seen["losses"], checks):
        assert row["train_loss"] == pytest.approx(np.mean(losses), rel=1e-6)
        assert row["val_mean_dice"] == pytest.approx(c["dice"], rel=1e-6)
        assert 0.0 <= row["val_dice/left"] <= 1.0 and 0.0 <= row["val_dice/right"] <= 1.0
        assert row["epoch_time_s"] > 0 and row["val_time_s"] >= 0
        assert row["routing_entropy/block1"] == pytest.approx(0.1 * row["epoch"])
    assert [r["lr"] for r in rows] == pytest.approx([0.1, 0.05])  # at the start of each epoch (StepLR, gamma 0.5)
    assert _csv_columns(out.with_suffix(".csv"))[:6] == ["epoch", "train_loss", "lr", "epoch_time_s", "val_time_s",
                                                         "val_mean_dice"]  # fmt: skip
    assert curves.rows == rows
    assert sorted(p.name for p in out.parent.iterdir()) == ["progress.csv", "progress.png"]


def test_training_curves_resume_continues_the_csv(tmp_path):
    out = tmp_path / "progress.png"
    _run(out, max_epochs=2)
    first = read_curves_csv(out.with_suffix(".csv"))
    with open(out.with_suffix(".csv"), "a", newline="") as f:  # a row of an interrupted later epoch: dropped
        f.write("3,999,,,,\n")
    seen, _ = _run(out, max_epochs=3, resume_epoch=2)
    assert [c["epoch"] for c in seen["checks"]] == [3]
    rows = read_curves_csv(out.with_suffix(".csv"))
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert rows[:2] == first
    assert rows[2]["train_loss"] != 999 and "val_mean_dice" in rows[2]
    # resuming without a CSV does not crash: the curves start at the resumed epoch
    out.with_suffix(".csv").unlink()
    _run(out, max_epochs=3, resume_epoch=2)
    assert [r["epoch"] for r in read_curves_csv(out.with_suffix(".csv"))] == [3]


def test_training_curves_other_ranks_do_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(training_curves, "_is_rank_zero", lambda: False)
    out = tmp_path / "progress.png"
    seen, curves = _run(out, max_epochs=1, check_files=False)
    assert len(seen["losses"]) == 1 and curves.trainer is None  # trained, but the handler never attached
    assert not out.exists() and not out.with_suffix(".csv").exists()


def test_training_curves_options():
    with pytest.raises(ValueError, match="must be a .png"):
        TrainingCurves("progress.jpg")
