"""Checkpoints that survive crashes: atomic saving, resuming a killed training run, safe loading.

- :class:`EpochCheckpoint` saves the complete training state at the end of every epoch (model, optimizer,
  scheduler, trainer counters, random number generators, best validation metric) to ``checkpoint_epoch=N.pt``,
  atomically, and rerunning the same command resumes from the newest one.
- :class:`BestModelCheckpoint` writes the network of the best validation epoch to ``model.pt``, atomically.
- :class:`CheckpointLoader` (MONAI's, with checks) loads weights for evaluation and inference.

Every checkpoint is read with ``torch.load(weights_only=True)``; a checkpoint of a different network
configuration is refused with the names of the first mismatched keys. Bad or missing checkpoints and existing
results end the run with a one-line ``error: <file>: <problem>`` and exit code 2
(:func:`~xattnres_monai.handlers.errors.exit_on_user_errors`).
"""

from __future__ import annotations

import logging
import os
import random
import re
import tempfile
from glob import glob
from typing import Any, Dict, List, Mapping, Optional

import numpy as np
import torch
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint
from monai.handlers import CheckpointLoader as _MonaiCheckpointLoader

from xattnres_monai.handlers.errors import exit_on_user_errors
from xattnres_monai.networks.utils import state_dict_mismatch
from xattnres_monai.utils.files import InputError, as_bool, atomic_write

__all__ = [
    "BestModelCheckpoint",
    "CheckpointLoader",
    "EpochCheckpoint",
    "RNGState",
    "ValidatorState",
    "check_folder_writable",
    "latest_checkpoint",
    "load_checkpoint",
    "save_checkpoint",
]

logger = logging.getLogger(__name__)
_TMP_RE = re.compile(r"^\.tmp-[0-9a-f]{8}-.+\.pt$")


# ------------------------------------------------------------------------------------------------- reading / saving


def check_folder_writable(folder: str, what: str) -> None:
    """Create ``folder`` if needed and write (then remove) a probe file in it; else an :class:`InputError` naming it.

    Run before training starts, so that a folder that cannot be written is refused up front rather than after the
    first epoch.
    """
    try:
        os.makedirs(folder, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-probe-"):
            pass
    except OSError as err:
        raise InputError(folder, f"cannot write {what} to this folder ({type(err).__name__}: {err.strerror or err})") from None



def save_checkpoint(obj: Any, path: str, overwrite: bool = True) -> None:
    """``torch.save(obj, path)`` through a temporary file renamed into place (never a partial ``path``)."""
    with atomic_write(path, overwrite=overwrite) as tmp:
        # through a file object, not a path: torch records a path's file name inside the archive, and the temporary
        # name is random, so two identical checkpoints would differ in their bytes
        with open(tmp, "wb") as f:
            torch.save(obj, f)


def load_checkpoint(path: str) -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)``; any problem is an :class:`InputError`."""
    if not os.path.exists(path):
        raise InputError(path, "checkpoint file does not exist")
    if os.path.isdir(path):
        raise InputError(path, "is a folder, expected a checkpoint file")
    if os.path.getsize(path) == 0:
        raise InputError(path, "zero-byte checkpoint file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # zip, pickle and weights_only errors all mean "not a usable checkpoint"
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise InputError(path, f"not a readable checkpoint ({type(err).__name__}: {first[:300]})") from None


def _unwrap(obj: Any) -> Any:
    if isinstance(obj, (torch.nn.DataParallel, torch.nn.parallel.DistributedDataParallel)):
        return obj.module
    return obj


def _is_rank_zero() -> bool:
    return not (torch.distributed.is_available() and torch.distributed.is_initialized()) or (
        torch.distributed.get_rank() == 0
    )


def _load_objects(path: str, to_load: Mapping[str, Any], checkpoint: Mapping[str, Any]) -> None:
    """Load ``checkpoint[name]`` into each object, strictly; mismatches are :class:`InputError` naming keys."""
    if not isinstance(checkpoint, Mapping):
        raise InputError(path, f"expected a checkpoint dictionary, found {type(checkpoint).__name__}")
    for name, obj in to_load.items():
        if name not in checkpoint:
            raise InputError(path, f"has no {name!r} entry (found {sorted(checkpoint)}): a different configuration?")
        if isinstance(obj, torch.nn.Module):
            mismatch = state_dict_mismatch(obj, checkpoint[name])
            if mismatch:
                raise InputError(path, f"does not match this network configuration ({name}): {mismatch}")
    try:
        Checkpoint.load_objects(to_load=dict(to_load), checkpoint=dict(checkpoint), strict=True)
    except (RuntimeError, KeyError, ValueError, TypeError, IndexError) as err:
        raise InputError(path, f"does not match this configuration: {' '.join(str(err).split())[:400]}") from None


# ---------------------------------------------------------------------------------------------------- RNG state


def _numpy_state(state: tuple) -> Dict[str, Any]:
    kind, keys, pos, has_gauss, cached = state
    return {"kind": kind, "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}  # fmt: skip


def _numpy_tuple(state: Mapping[str, Any]) -> tuple:
    keys = state["keys"].numpy().astype(np.uint32)
    return (state["kind"], keys, int(state["pos"]), int(state["has_gauss"]), float(state["cached_gaussian"]))


def _random_states(root: Any, max_depth: int = 12) -> List[np.random.RandomState]:
    """The ``R`` random states of every MONAI ``Randomizable`` reachable from ``root`` (a dataset), in a fixed order.

    The traversal follows object attributes, lists, tuples and dicts (as ``monai.data.utils.set_rnd`` does, but
    also into transforms, to reach the inner transforms of dictionary transforms); tensors and arrays are leaves.
    """
    found: List[np.random.RandomState] = []
    seen = set()

    def visit(obj: Any, depth: int) -> None:
        if depth > max_depth or id(obj) in seen or isinstance(obj, (str, bytes, torch.Tensor, np.ndarray)):
            return
        seen.add(id(obj))
        state = getattr(obj, "R", None) if hasattr(obj, "set_random_state") else None
        if isinstance(state, np.random.RandomState) and id(state) not in seen:
            seen.add(id(state))
            found.append(state)
        if isinstance(obj, (list, tuple)):
            children = list(obj)
        elif isinstance(obj, dict):
            children = list(obj.values())
        elif hasattr(obj, "__dict__") and not isinstance(obj, (torch.nn.Module, type)):
            children = [v for k, v in vars(obj).items() if not k.startswith("__")]
        else:
            return
        for child in children:
            visit(child, depth + 1)

    visit(root, 0)
    return found


class RNGState:
    """The random number generators of a training process, as a checkpointable object.

    ``state_dict()`` holds Python's ``random``, NumPy's global generator, torch's CPU generator, the CUDA
    generators (when CUDA is initialised), the data loader's own ``generator`` (and its sampler's) if it has one,
    and the ``R`` state of every random MONAI transform of the training dataset (which the transforms use when the
    data loader runs them in the main process, ``num_workers=0``). Everything is stored as tensors and plain
    numbers, so the checkpoint loads with ``weights_only=True``.

    Not captured: the generators *inside* data loader worker processes (``num_workers > 0``). Workers are seeded
    from torch's restored CPU generator when they start, so a resumed run is reproducible, but its augmentation
    stream differs from that of an uninterrupted run (persistent workers carry their stream across epochs).

    Args:
        engine: the trainer (its ``data_loader`` is inspected for generators and transforms); ``None``: globals only.
    """

    def __init__(self, engine: Optional[Engine] = None) -> None:
        self.engine = engine

    def _loader_parts(self) -> tuple:
        loader = getattr(self.engine, "data_loader", None)
        generators = []
        for owner in (loader, getattr(loader, "sampler", None)):
            gen = getattr(owner, "generator", None)
            if isinstance(gen, torch.Generator) and all(gen is not g for g in generators):
                generators.append(gen)
        return generators, _random_states(getattr(loader, "dataset", None))

    def state_dict(self) -> Dict[str, Any]:
        version, internal, gauss = random.getstate()
        generators, transforms = self._loader_parts()
        cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else []
        return {
            "python": {"version": version, "state": torch.tensor(internal, dtype=torch.int64), "gauss": gauss},
            "numpy": _numpy_state(np.random.get_state()),
            "torch": torch.get_rng_state(),
            "cuda": list(cuda),
            "generators": [g.get_state() for g in generators],
            "transforms": [_numpy_state(r.get_state()) for r in transforms],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        python = state["python"]
        random.setstate((int(python["version"]), tuple(int(v) for v in python["state"].tolist()), python["gauss"]))
        np.random.set_state(_numpy_tuple(state["numpy"]))
        torch.set_rng_state(state["torch"])
        if state["cuda"] and torch.cuda.is_available():
            for device, cuda_state in enumerate(state["cuda"][: torch.cuda.device_count()]):
                torch.cuda.set_rng_state(cuda_state, device)
        generators, transforms = self._loader_parts()
        for gen, gen_state in zip(generators, state["generators"]):
            gen.set_state(gen_state)
        if len(transforms) != len(state["transforms"]) or len(generators) != len(state["generators"]):
            logger.warning(
                f"random transforms / generators differ from the checkpoint's ({len(transforms)} vs "
                f"{len(state['transforms'])}, {len(generators)} vs {len(state['generators'])}): their states are "
                "not restored"
            )
            return
        for rng, rng_state in zip(transforms, state["transforms"]):
            rng.set_state(_numpy_tuple(rng_state))


class ValidatorState:
    """The best key metric (and its epoch) of a MONAI evaluator, as a checkpointable object.

    Restored on resume, so that the best model is only replaced by a *better* one after an interruption.
    """

    def __init__(self, validator: Engine) -> None:
        self.validator = validator

    def state_dict(self) -> Dict[str, Any]:
        state = self.validator.state
        best = getattr(state, "best_metric", -1)
        best = float(best.item() if isinstance(best, torch.Tensor) else best)
        return {"best_metric": best, "best_metric_epoch": int(getattr(state, "best_metric_epoch", -1))}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.validator.state.best_metric = float(state["best_metric"])
        self.validator.state.best_metric_epoch = int(state["best_metric_epoch"])


# -------------------------------------------------------------------------------------------------------- handlers


def latest_checkpoint(save_dir: str, pattern: str = "checkpoint_epoch=*.pt") -> Optional[str]:
    """The checkpoint in ``save_dir`` matching ``pattern`` with the highest epoch number, or ``None``."""
    paths = [p for p in glob(os.path.join(save_dir, pattern)) if _epoch_of(p) >= 0]
    return max(paths, key=_epoch_of) if paths else None


def _epoch_of(path: str) -> int:
    stem = os.path.basename(path).rsplit(".", 1)[0]
    try:
        return int(stem.rsplit("=", 1)[-1])
    except ValueError:
        return -1


class EpochCheckpoint:
    """Save the whole training state every epoch; rerunning the same command resumes from the newest checkpoint.

    At the end of every epoch ``<save_dir>/checkpoint_epoch=<N>.pt`` is written through a temporary file and an
    atomic rename, *then* older ones beyond ``n_saved`` are removed, so a run killed at any moment (also while
    saving) leaves the last complete checkpoint intact. A checkpoint holds the objects of ``save_dict`` (model,
    optimizer, scheduler), the trainer's counters (``trainer``: epoch, iteration), the random number generators
    (``rng``, see :class:`RNGState`) and, with ``validator``, the best validation metric (``validator``).

    When the trainer starts with ``resume`` and a checkpoint exists, everything is restored from the newest one
    (read with ``torch.load(weights_only=True)``; strict: a checkpoint of another network configuration fails
    with the names of the first mismatched keys), and training continues with the next epoch and iteration
    numbers; the configuration's ``max_epochs`` is kept (a finished run does nothing). Without a checkpoint to
    resume from, ``save_dir`` must not hold ``*.pt`` files of another run (``model.pt`` ...) unless ``overwrite``:
    then the other run's epoch checkpoints are deleted once this run has saved its first one, and its ``model.pt``
    is replaced when this run's validation writes one (never deleted before).
    Problems end the run with ``error: <file>: <problem>`` and exit code 2.

    Only rank 0 writes (multi-GPU); every rank resumes from the same file.

    Args:
        save_dir: folder of the checkpoints (the bundle's ``models/``).
        save_dict: objects to save and restore, e.g. ``{"model": net, "optimizer": opt}``.
        resume: resume from the newest ``checkpoint_epoch=N.pt`` in ``save_dir`` if there is one.
        n_saved: how many epoch checkpoints to keep.
        validator: the evaluator whose best key metric is saved and restored with the training state.
        overwrite: allow starting a new run in a ``save_dir`` that holds checkpoints (they are replaced).
    """

    def __init__(
        self,
        save_dir: str,
        save_dict: Dict[str, object],
        resume: bool = True,
        n_saved: int = 1,
        validator: Optional[Engine] = None,
        overwrite: bool = False,
    ) -> None:
        from xattnres_monai.utils.options import as_int  # options as a command line passes them

        n_saved = as_int(n_saved, "EpochCheckpoint: n_saved", min=1)
        resume = as_bool(resume, "EpochCheckpoint: resume")
        overwrite = as_bool(overwrite, "EpochCheckpoint: overwrite")
        if int(n_saved) < 1:
            raise ValueError(f"n_saved must be >= 1, got {n_saved}.")
        self.save_dir = str(save_dir)
        self.save_dict = dict(save_dict)
        self.resume = as_bool(resume, "resume")
        self.n_saved = int(n_saved)
        self.validator = validator
        self.overwrite = as_bool(overwrite, "overwrite")
        self.logger = logging.getLogger(__name__)
        self._replace: Dict[str, int] = {}  # epoch checkpoints of a replaced run (path -> mtime)

    def attach(self, engine: Engine) -> None:
        exit_on_user_errors(engine)
        self.save_dict["trainer"] = engine
        self.save_dict["rng"] = RNGState(engine)
        if self.validator is not None:
            self.save_dict["validator"] = ValidatorState(self.validator)
        engine.add_event_handler(Events.STARTED, self.start)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.save)

    # ------------------------------------------------------------------ start

    def start(self, engine: Engine) -> None:
        """Check that checkpoints can be written, then resume from the newest one or check that a new run
        overwrites nothing."""
        if _is_rank_zero():
            check_folder_writable(self.save_dir, "checkpoints")
            for name in os.listdir(self.save_dir) if os.path.isdir(self.save_dir) else []:
                if _TMP_RE.match(name):  # left by a run killed while saving
                    os.remove(os.path.join(self.save_dir, name))
        path = latest_checkpoint(self.save_dir) if self.resume else None
        if path is not None:
            self.load(engine, path)
            return
        existing = sorted(glob(os.path.join(self.save_dir, "*.pt")))
        if existing and not self.overwrite:
            names = ", ".join(os.path.basename(p) for p in existing[:3]) + (" ..." if len(existing) > 3 else "")
            why = "resume is off" if self.resume is False else "there is no checkpoint_epoch=N.pt to resume from"
            raise InputError(
                self.save_dir,
                f"holds the checkpoints of another run ({names}) and {why}; pass --overwrite true to replace them "
                "(or use another bundle_root)",
            )
        # the epoch checkpoints of the replaced run are removed once this run saved its first one (a later rerun
        # must not resume from them); other files (model.pt) are only replaced when this run writes them
        self._replace = {p: os.stat(p).st_mtime_ns for p in existing if _epoch_of(p) >= 0 and "checkpoint_epoch=" in p}

    def load(self, engine: Engine, path: str) -> None:
        """Restore everything from ``path`` into the trainer and the saved objects (strict)."""
        checkpoint = load_checkpoint(path)
        if not isinstance(checkpoint, Mapping) or "trainer" not in checkpoint:
            raise InputError(path, "not an epoch checkpoint (no trainer state)")
        if not isinstance(checkpoint["trainer"], Mapping):
            raise InputError(path, "not an epoch checkpoint (its trainer state is not a dictionary)")
        to_load = {k: v for k, v in self.save_dict.items() if k not in ("rng", "validator")}
        saved_length = checkpoint["trainer"].get("epoch_length")
        length = engine.state.epoch_length
        if saved_length is not None and length is not None and int(saved_length) != int(length):
            raise InputError(
                path,
                f"was written with {int(saved_length)} iterations per epoch, this run has {int(length)} (the training "
                "data or the batch size changed); restore them, or start a new run with --resume false "
                "--overwrite true",
            )
        max_epochs = engine.state.max_epochs
        _load_objects(path, to_load, checkpoint)
        engine.state.max_epochs = max_epochs  # the configuration's, not the checkpoint's
        for name in ("rng", "validator"):
            if name in self.save_dict and name in checkpoint:
                self.save_dict[name].load_state_dict(checkpoint[name])  # type: ignore[attr-defined]
            elif name in self.save_dict:
                self.logger.warning(f"{path}: no {name} state saved; it is not restored")
        finished = max_epochs is not None and engine.state.epoch >= max_epochs
        done = " (max_epochs reached: nothing to do)" if finished else ""
        self.logger.info(
            f"resumed from {path} at epoch {engine.state.epoch} (iteration {engine.state.iteration}){done}"
        )

    # ------------------------------------------------------------------- save

    def save(self, engine: Engine) -> None:
        """Write ``checkpoint_epoch=<epoch>.pt`` atomically, then remove older ones beyond ``n_saved``."""
        if not _is_rank_zero():
            return
        epoch = engine.state.epoch
        path = os.path.join(self.save_dir, f"checkpoint_epoch={epoch}.pt")
        state = {name: _unwrap(obj).state_dict() for name, obj in self.save_dict.items()}  # type: ignore[attr-defined]
        save_checkpoint(state, path, overwrite=True)
        self.logger.debug(f"saved {path}")  # every epoch: not a console line (EpochSummary's line is the epoch's)
        epochs = sorted((p for p in glob(os.path.join(self.save_dir, "checkpoint_epoch=*.pt")) if _epoch_of(p) >= 0),
                        key=_epoch_of)  # fmt: skip
        stale = set(epochs[: -self.n_saved])
        # files of the run this one replaces (--overwrite true) that this run has not rewritten since
        stale |= {p for p, mtime in self._replace.items() if os.path.exists(p) and os.stat(p).st_mtime_ns == mtime}
        for old in sorted(stale - {path}):
            os.remove(old)
        self._replace = {}


class BestModelCheckpoint:
    """Write the network to ``<save_dir>/<filename>`` whenever the evaluator's key metric improves, atomically.

    Attach to the validation evaluator; MONAI's evaluator updates ``state.best_metric`` / ``best_metric_epoch``
    at the end of each of its runs, and this handler then saves ``{"model": network.state_dict(), "settings":
    settings}`` (the bare module of a DDP wrapper) through a temporary file renamed into place, so ``model.pt`` is
    never partial. ``settings`` are the settings the network was trained with (the config's ``trained_settings``:
    network definition, input size, intensity window, class map); at the first save of a run they are also written
    into ``<bundle_root>/configs`` (:func:`xattnres_monai.bundle.update_bundle_configs`), so the trained bundle's
    own inference / evaluation / export configs need no overrides. Together with :class:`EpochCheckpoint`'s
    ``validator`` argument, the best metric survives an interruption: a resumed run replaces ``model.pt`` only with a
    better model. Only rank 0 writes.

    Args:
        save_dir: the bundle's ``models/``.
        network: the network to save.
        filename: the file name (``model.pt``, which evaluation and inference load).
        settings: the trained settings to record (``None``: weights only, as before).
        bundle_root: the bundle whose ``configs/`` receive the settings (``None``: the checkpoint only).
    """

    def __init__(
        self,
        save_dir: str,
        network: torch.nn.Module,
        filename: str = "model.pt",
        settings: Optional[Mapping[str, Any]] = None,
        bundle_root: Optional[str] = None,
    ) -> None:
        from xattnres_monai.bundle.settings import trained_settings

        self.path = os.path.join(str(save_dir), filename)
        self.network = network
        self.settings = trained_settings(settings) if settings is not None else None
        self.bundle_root = bundle_root
        self._configs_written = False
        self.logger = logging.getLogger(__name__)

    def attach(self, engine: Engine) -> None:
        exit_on_user_errors(engine)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        if getattr(engine.state, "best_metric_epoch", None) != engine.state.epoch or not _is_rank_zero():
            return
        weights = _unwrap(self.network).state_dict()
        saved = weights if self.settings is None else {"model": weights, "settings": self.settings}
        save_checkpoint(saved, self.path, overwrite=True)
        best = f"best key metric {float(engine.state.best_metric):.4f} at epoch {engine.state.epoch}"
        self.logger.info(f"saved {self.path} ({best})")
        if self.settings is not None and self.bundle_root is not None and not self._configs_written:
            from xattnres_monai.bundle.trained import describe, update_bundle_configs

            changed = update_bundle_configs(self.bundle_root, self.settings)
            self._configs_written = True
            if changed:
                names = ", ".join(os.path.basename(c) for c in changed)
                self.logger.info(f"trained settings ({describe(self.settings)}) written into {names}")


class CheckpointLoader(_MonaiCheckpointLoader):
    """MONAI's :class:`~monai.handlers.CheckpointLoader` with checks and one-line errors (same arguments, plus one).

    When the engine starts, the file is read with ``torch.load(weights_only=True)``; a missing, empty or
    unreadable file, or (``strict``) weights of another network configuration (the first missing, unexpected and
    differently shaped keys are named) end the run with ``error: <file>: <problem>`` and exit code 2, before
    any output is written. A checkpoint that records the settings it was trained with (``{"model", "settings"}``,
    written by :class:`BestModelCheckpoint`) is compared with ``settings`` (the config's ``trained_settings``), and a
    difference (e.g. trained at ``roi_size`` [96, 96], configured [224, 224]) is refused the same way, naming both
    values (:func:`xattnres_monai.bundle.check_settings`).

    Args:
        settings: the settings of this configuration, compared with the checkpoint's (``None``: not compared).
        args, kwargs: as MONAI's ``CheckpointLoader``.
    """

    def __init__(self, *args: Any, settings: Optional[Mapping[str, Any]] = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.settings = settings

    def attach(self, engine: Engine) -> None:
        exit_on_user_errors(engine)
        super().attach(engine)

    def __call__(self, engine: Engine) -> None:
        from xattnres_monai.bundle.settings import SETTINGS_KEY, check_settings

        checkpoint = load_checkpoint(self.load_path)
        if isinstance(checkpoint, Mapping) and SETTINGS_KEY in checkpoint:
            check_settings(str(self.load_path), checkpoint[SETTINGS_KEY], self.settings)
        if not self.strict or not self.strict_shape:
            return super().__call__(engine)
        first = next(iter(self.load_dict))
        if len(self.load_dict) == 1 and isinstance(checkpoint, Mapping) and first not in checkpoint:
            checkpoint = {first: checkpoint}  # a bare state dict of the single object
        prior_max_epochs = engine.state.max_epochs
        _load_objects(str(self.load_path), self.load_dict, checkpoint)
        engine.state.max_epochs = prior_max_epochs
        self.logger.info(f"Restored all variables from {self.load_path}")
