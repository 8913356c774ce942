"""Interrupted training (issue 8, item 3): SIGKILL mid-epoch, rerun the same command, training continues.

Also the resume edge cases that must not lose or mix up results (fast, in-process): a finished run does
nothing, a new run never replaces the checkpoints of another one without ``--overwrite true``, and a checkpoint
written with a different number of iterations per epoch is refused.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.reliability.helpers import CONFIGS, TINY_ARGS, bundle_env, files_under, make_datalist, run_workflow

#: a test-only overlay: 0.15 s per iteration, so that an epoch lasts long enough to be killed in the middle
SLOW_OVERLAY = {
    "imports": json.loads((CONFIGS / "train.json").read_text())["imports"] + ["$import time"],
    "log_iterations": True,  # the per-iteration loss lines ("Epoch: 2/2, Iter: 3/8") tell the test where training is
    "run": [
        "$@train#trainer.add_event_handler(ignite.engine.Events.ITERATION_COMPLETED, lambda e: time.sleep(0.15))",
        "$@train#trainer.run()",
    ],
}


def _command(bundle_root: Path, datalist: Path, overlay: Path) -> list:
    config_file = f"['{CONFIGS / 'train.json'}','{overlay}']"
    return [sys.executable, "-m", "monai.bundle", "run", "--config_file", config_file, "--bundle_root",
            str(bundle_root), "--datalist", str(datalist), "--max_epochs", "2", "--val_interval", "1",
            *TINY_ARGS, "--batch_size", "2"]  # fmt: skip


def _wait_for(predicate, process: subprocess.Popen, log: Path, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if process.poll() is not None:
            raise AssertionError(f"training ended early ({process.returncode}):\n{log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"timed out:\n{log.read_text()[-3000:]}")
        time.sleep(0.02)


@pytest.mark.slow
def test_sigkill_mid_epoch_then_rerun_resumes_and_finishes(tmp_path):
    datalist = make_datalist(tmp_path / "data")  # 1 training case: 16 slices, 8 iterations of 2 per epoch
    overlay = tmp_path / "slow.json"
    overlay.write_text(json.dumps(SLOW_OVERLAY))
    bundle = tmp_path / "bundle"
    models = bundle / "models"
    command = _command(bundle, datalist, overlay)

    first_log = tmp_path / "first.log"
    with open(first_log, "w", encoding="utf-8") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=bundle_env())
    try:
        # killed in the middle of epoch 2: after checkpoint_epoch=1.pt and 3 of the 8 iterations of epoch 2
        _wait_for(lambda: (models / "checkpoint_epoch=1.pt").exists(), process, first_log)
        _wait_for(lambda: "Epoch: 2/2, Iter: 3/8" in first_log.read_text(errors="replace"), process, first_log)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL
    assert not (models / "checkpoint_epoch=2.pt").exists(), "killed too late: epoch 2 had completed"
    first = torch.load(models / "checkpoint_epoch=1.pt", weights_only=True)
    assert (first["trainer"]["iteration"], first["trainer"]["epoch_length"]) == (8, 8)

    second = subprocess.run(command, capture_output=True, encoding="utf-8", errors="replace", env=bundle_env(),
                            timeout=600)  # fmt: skip
    output = second.stdout + second.stderr
    assert second.returncode == 0, output[-3000:]
    assert f"resumed from {models / 'checkpoint_epoch=1.pt'} at epoch 1 (iteration 8)" in output
    assert "Epoch: 1/2" not in output and "Epoch: 2/2, Iter: 1/8" in output  # epoch 1 is not trained again

    last = torch.load(models / "checkpoint_epoch=2.pt", weights_only=True)
    assert (last["trainer"]["iteration"], last["trainer"]["epoch_length"]) == (16, 8)
    steps = {float(state["step"]) for state in last["optimizer"]["state"].values()}
    assert steps == {16.0}, steps  # AdamW's step counts continued from 8 (a restart would end at 8)
    assert last["validator"]["best_metric_epoch"] in (1, 2)
    assert any(not torch.equal(last["model"][k], first["model"][k]) for k in first["model"])  # epoch 2 trained
    # only the newest epoch checkpoint is kept, no temporary file is left behind
    assert sorted(files_under(models)) == ["checkpoint_epoch=2.pt", "model.pt"]

    # the loss curve continues: the rerun's TensorBoard steps are 9..16
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = sorted((bundle / "eval").glob("events.out.tfevents.*"), key=os.path.getmtime)
    steps_by_file = []
    for path in events:
        accumulator = EventAccumulator(str(path))
        accumulator.Reload()
        if "train_loss" in accumulator.Tags().get("scalars", []):
            steps_by_file.append([event.step for event in accumulator.Scalars("train_loss")])
    assert steps_by_file[-1] == list(range(9, 17)), steps_by_file
    assert steps_by_file[0][:8] == list(range(1, 9))


# ----------------------------------------------------------------------------------------------- edge cases


@pytest.fixture(scope="module")
def one_epoch(tmp_path_factory):
    """A finished one-epoch run (in-process) and its datalist."""
    root = tmp_path_factory.mktemp("resume")
    datalist = make_datalist(root / "data")
    outcome = run_workflow(["train.json"], root / "bundle", datalist=str(datalist), max_epochs=1, val_interval=1)
    assert outcome.code == 0, outcome.stderr[-3000:]
    return root / "bundle", datalist


@pytest.mark.slow
def test_finished_run_does_nothing_and_other_runs_are_protected(one_epoch, tmp_path):
    bundle, datalist = one_epoch
    models = bundle / "models"
    before = {p.name: p.stat().st_mtime_ns for p in models.iterdir()}
    again = run_workflow(["train.json"], bundle, datalist=str(datalist), max_epochs=1, val_interval=1)
    assert again.code == 0 and {p.name: p.stat().st_mtime_ns for p in models.iterdir()} == before

    # fewer iterations per epoch (batch size 8 instead of 4): refused, nothing changed
    changed = run_workflow(["train.json"], bundle, datalist=str(datalist), max_epochs=2, batch_size=8)
    assert changed.code == 2 and "was written with 4 iterations per epoch, this run has 2" in changed.stderr
    assert {p.name: p.stat().st_mtime_ns for p in models.iterdir()} == before

    # a new run (resume off) in a folder holding another run's checkpoints: refused unless --overwrite true
    fresh = run_workflow(["train.json"], bundle, datalist=str(datalist), max_epochs=1, resume="false")
    assert fresh.code == 2, fresh.stderr[-2000:]
    assert fresh.error_lines == [
        f"error: {models}: holds the checkpoints of another run (checkpoint_epoch=1.pt, model.pt) and resume is off; "
        "pass --overwrite true to replace them (or use another bundle_root)"
    ]
    assert {p.name: p.stat().st_mtime_ns for p in models.iterdir()} == before

    copy = tmp_path / "copy"
    (copy / "models").mkdir(parents=True)
    model = (models / "model.pt").read_bytes()
    (copy / "models" / "model.pt").write_bytes(model)  # e.g. a downloaded model
    refused = run_workflow(["train.json"], copy, datalist=str(datalist), max_epochs=1, val_interval=1)
    assert refused.code == 2 and "no checkpoint_epoch=N.pt to resume from" in refused.stderr
    assert files_under(copy / "models") == ["model.pt"]

    # --overwrite true (as MONAI Label's fine-tuning runs): the other run's epoch checkpoints go once this run has
    # saved one; its model.pt stays until this run's validation writes a better one (none here: val_interval 5)
    (copy / "models" / "checkpoint_epoch=5.pt").write_bytes((models / "checkpoint_epoch=1.pt").read_bytes())
    replaced = run_workflow(["train.json"], copy, datalist=str(datalist), max_epochs=1, val_interval=5,
                            resume="false", overwrite="true")  # fmt: skip
    assert replaced.code == 0, replaced.stderr[-2000:]
    assert files_under(copy / "models") == ["checkpoint_epoch=1.pt", "model.pt"]
    assert (copy / "models" / "model.pt").read_bytes() == model
