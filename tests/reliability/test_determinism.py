"""Determinism (issue 8, item 4): seeded CPU training runs give bit-identical checkpoints.

- the same seeded one-epoch training, run twice as separate commands, writes identical checkpoints (model,
  optimizer, scheduler, trainer counters, random number generator states, best metric) and identical
  ``model.pt``;
- training stopped after epoch 1 and resumed to epoch 2 ends bit-identical to an uninterrupted two-epoch run
  (with ``num_workers=0``: the random states of the transforms are part of the checkpoint).

Tensors are compared exactly (``torch.equal``), and the checkpoint *files* byte for byte (sha256, as ``sha256sum``
would): ``save_checkpoint`` hands ``torch.save`` a file object, so no temporary file name is recorded in the archive.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Any, Dict, Iterator, Tuple

import pytest
import torch

from tests.reliability.helpers import make_datalist, run_bundle_cli


def flatten(obj: Any, prefix: str = "") -> Iterator[Tuple[str, Any]]:
    if isinstance(obj, dict):
        for key, value in obj.items():
            yield from flatten(value, f"{prefix}/{key}")
    elif isinstance(obj, (list, tuple)):
        for index, value in enumerate(obj):
            yield from flatten(value, f"{prefix}[{index}]")
    else:
        yield prefix, obj


def differences(path_a: Path, path_b: Path) -> Dict[str, str]:
    """Entries of two checkpoints that are not bit-identical (empty when they are)."""
    a = dict(flatten(torch.load(path_a, weights_only=True)))
    b = dict(flatten(torch.load(path_b, weights_only=True)))
    diff = {k: "only in one" for k in set(a) ^ set(b)}
    for key in set(a) & set(b):
        x, y = a[key], b[key]
        if isinstance(x, torch.Tensor):
            same = isinstance(y, torch.Tensor) and x.dtype == y.dtype and x.shape == y.shape and torch.equal(x, y)
        else:
            same = type(x) is type(y) and x == y
        if not same:
            diff[key] = f"{x!r:.60} != {y!r:.60}"
    return diff


def train(bundle_root: Path, datalist: Path, epochs: int) -> None:
    result = run_bundle_cli(["train.json"], bundle_root, "--datalist", str(datalist), "--max_epochs", str(epochs),
                            "--val_interval", "1")  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("determinism")
    datalist = make_datalist(root / "data")
    train(root / "a", datalist, 1)
    train(root / "b", datalist, 1)
    return root, datalist, root / "a"


@pytest.mark.slow
def test_seeded_one_epoch_training_twice_gives_identical_checkpoints(runs):
    root, _, _ = runs
    for name in ("checkpoint_epoch=1.pt", "model.pt"):
        a, b = root / "a" / "models" / name, root / "b" / "models" / name
        assert differences(a, b) == {}, name
        assert hashlib.sha256(a.read_bytes()).hexdigest() == hashlib.sha256(b.read_bytes()).hexdigest(), name
    checkpoint = torch.load(root / "a" / "models" / "checkpoint_epoch=1.pt", weights_only=True)
    assert set(checkpoint) == {"model", "optimizer", "lr_scheduler", "trainer", "rng", "validator"}
    assert len(checkpoint["rng"]["transforms"]) > 0  # the augmentation's random states are saved


@pytest.mark.slow
def test_resumed_training_equals_uninterrupted_training(runs):
    root, datalist, one_epoch = runs
    stopped = root / "stopped"
    shutil.copytree(one_epoch, stopped)
    train(stopped, datalist, 2)  # resumes from checkpoint_epoch=1.pt
    train(root / "straight", datalist, 2)
    for name in ("checkpoint_epoch=2.pt", "model.pt"):
        assert differences(stopped / "models" / name, root / "straight" / "models" / name) == {}, name
