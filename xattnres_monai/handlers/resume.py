"""Resume training from the newest complete checkpoint of a bundle, when there is one."""

from __future__ import annotations

import logging
import os
from glob import glob
from typing import Dict, Optional

import torch
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint

__all__ = ["ResumeFromLatest", "latest_checkpoint"]


def latest_checkpoint(save_dir: str, pattern: str = "checkpoint_epoch=*.pt") -> Optional[str]:
    """The checkpoint in ``save_dir`` matching ``pattern`` with the highest epoch number, or ``None``."""

    def epoch(path: str) -> int:
        stem = os.path.basename(path).rsplit(".", 1)[0]
        try:
            return int(stem.rsplit("=", 1)[-1])
        except ValueError:
            return -1

    paths = [p for p in glob(os.path.join(save_dir, pattern)) if epoch(p) >= 0]
    return max(paths, key=epoch) if paths else None


class ResumeFromLatest:
    """Load model, optimizer, scheduler and trainer state from the newest ``checkpoint_epoch=N.pt``.

    MONAI's ``CheckpointLoader`` needs a file that exists; this handler makes rerunning the same
    training command continue where the last complete epoch checkpoint left off, and start fresh
    when there is none. Checkpoints are written atomically by ``CheckpointSaver`` (Ignite's
    ``DiskSaver``), so a run killed mid-epoch leaves the previous checkpoint intact. Loading uses
    ``torch.load(weights_only=True)`` and strict key matching: a checkpoint from a different network
    configuration fails with the names of the mismatched keys.

    Args:
        save_dir: folder of the periodic checkpoints (the bundle's ``models/``).
        load_dict: objects to restore, e.g. ``{"model": net, "optimizer": opt, "trainer": trainer}``.
        enabled: set ``False`` to always start fresh.
    """

    def __init__(self, save_dir: str, load_dict: Dict[str, object], enabled: bool = True) -> None:
        self.save_dir = save_dir
        self.load_dict = load_dict
        self.enabled = enabled
        self.logger = logging.getLogger(__name__)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine) -> None:
        path = latest_checkpoint(self.save_dir) if self.enabled else None
        if path is None:
            return
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        max_epochs = engine.state.max_epochs
        try:
            Checkpoint.load_objects(to_load=self.load_dict, checkpoint=checkpoint, strict=True)
        except (RuntimeError, KeyError) as err:
            first = str(err).splitlines()[0:3]
            raise ValueError(f"{path}: checkpoint does not match this configuration: {' '.join(first)}") from None
        engine.state.max_epochs = max_epochs  # the checkpoint's own max_epochs must not override the config's
        self.logger.info(f"resumed from {path} at epoch {engine.state.epoch} (iteration {engine.state.iteration})")
