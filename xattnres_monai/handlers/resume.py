"""Per-epoch training checkpoints that a rerun of the same command resumes from."""

from __future__ import annotations

import logging
import os
from glob import glob
from typing import Dict, Optional

import torch
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint
from monai.handlers import CheckpointSaver

__all__ = ["EpochCheckpoint", "latest_checkpoint"]


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


class EpochCheckpoint:
    """Save model, optimizer, scheduler and trainer state every epoch; resume from the newest on start.

    The trainer itself is added to the saved objects when the handler is attached (a bundle config
    cannot reference the trainer from inside its own handler list). Saving is delegated to MONAI's
    :class:`~monai.handlers.CheckpointSaver` (Ignite's ``DiskSaver`` writes to a temporary file and
    renames it, so a run killed mid-epoch leaves the previous checkpoint intact; ``n_saved`` keeps
    the newest). MONAI's ``CheckpointLoader`` needs a file that exists; this handler makes rerunning
    the same training command continue from the last complete epoch, and start fresh when there is
    none. Loading uses ``torch.load(weights_only=True)`` and strict key matching: a checkpoint of a
    different network configuration fails with the names of the mismatched keys.

    Args:
        save_dir: folder of the checkpoints (the bundle's ``models/``).
        save_dict: objects to save and restore, e.g. ``{"model": net, "optimizer": opt}``.
        resume: resume from the newest ``checkpoint_epoch=N.pt`` in ``save_dir`` if there is one.
        n_saved: how many epoch checkpoints to keep.
    """

    def __init__(self, save_dir: str, save_dict: Dict[str, object], resume: bool = True, n_saved: int = 1) -> None:
        self.save_dir = save_dir
        self.save_dict = dict(save_dict)
        self.resume = resume
        self.n_saved = n_saved
        self.logger = logging.getLogger(__name__)

    def attach(self, engine: Engine) -> None:
        self.save_dict["trainer"] = engine
        if self.resume:
            engine.add_event_handler(Events.STARTED, self.load_latest)
        CheckpointSaver(
            save_dir=self.save_dir, save_dict=self.save_dict, save_interval=1, n_saved=self.n_saved, epoch_level=True
        ).attach(engine)

    def load_latest(self, engine: Engine) -> None:
        path = latest_checkpoint(self.save_dir)
        if path is None:
            return
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        max_epochs = engine.state.max_epochs
        try:
            Checkpoint.load_objects(to_load=self.save_dict, checkpoint=checkpoint, strict=True)
        except (RuntimeError, KeyError, ValueError) as err:
            detail = " ".join(str(err).split())[:400]
            raise ValueError(f"{path}: checkpoint does not match this configuration: {detail}") from None
        engine.state.max_epochs = max_epochs  # the checkpoint's max_epochs must not override the config's
        self.logger.info(f"resumed from {path} at epoch {engine.state.epoch} (iteration {engine.state.iteration})")
