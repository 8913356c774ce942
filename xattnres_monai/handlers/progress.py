"""Console progress that a person reads: one line per training epoch, a bar and one line per scan.

Per-iteration numbers go to TensorBoard (``TensorBoardStatsHandler``) and the progress bar; the console gets:

- :class:`EpochSummary` (training): ``epoch 3/30: loss 0.4123, train_mean_dice 0.7100, val_mean_dice 0.8012 (best
  0.8012 at epoch 3), lr 0.002, 12.3 s, ETA 5.1 min``, one line per epoch;
- :class:`ScanProgress` (evaluation, inference): a progress bar over the scans (on a terminal) and one line per scan
  with its name, size, time and what was written (or why it failed).

Both are rank-0 only.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any, Dict, Mapping, Optional, Sequence

import torch
from ignite.engine import Engine, Events

__all__ = ["EpochSummary", "ScanProgress"]

logger = logging.getLogger(__name__)


def _rank_zero() -> bool:
    return not (torch.distributed.is_available() and torch.distributed.is_initialized()) or (
        torch.distributed.get_rank() == 0
    )


def _loss_of(output: Any) -> Optional[float]:
    """The loss of one iteration's output (a dict, or a list of per-sample dicts as MONAI's decollate gives)."""
    if isinstance(output, Sequence) and output and isinstance(output[0], Mapping):
        output = output[0]
    if isinstance(output, Mapping) and "loss" in output:
        loss = output["loss"]
        return float(loss.detach().float().mean()) if isinstance(loss, torch.Tensor) else float(loss)
    return None


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


class EpochSummary:
    """One console line per training epoch: mean loss, metrics, validation result, learning rate, time, ETA.

    Attach to the trainer; pass the validation evaluator to report its key metric in the line of the epochs it ran.
    Rank 0 only. The ETA is the mean epoch time so far (validation included) times the epochs left.

    Args:
        validator: the validation evaluator (``None``: training metrics only).
        optimizer: its first parameter group's learning rate is shown (``None``: not shown).

    Example (bundle ``train.json``)::

        {"_target_": "xattnres_monai.handlers.EpochSummary", "validator": "@validate#evaluator",
         "optimizer": "@optimizer"}
    """

    def __init__(self, validator: Optional[Engine] = None, optimizer: Optional[torch.optim.Optimizer] = None) -> None:
        self.validator = validator
        self.optimizer = optimizer
        self._loss_sum = 0.0
        self._loss_count = 0
        self._epoch_start = 0.0
        self._run_start = 0.0
        self._epochs_timed = 0
        self._validated: Optional[Dict[str, float]] = None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._started)
        engine.add_event_handler(Events.EPOCH_STARTED, self._epoch_started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._iteration)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._epoch_completed)
        if self.validator is not None:
            self.validator.add_event_handler(Events.EPOCH_COMPLETED, self._validation)

    def _started(self, engine: Engine) -> None:
        self._run_start = time.perf_counter()
        self._epochs_timed = 0

    def _epoch_started(self, engine: Engine) -> None:
        self._loss_sum, self._loss_count, self._validated = 0.0, 0, None
        self._epoch_start = time.perf_counter()

    def _iteration(self, engine: Engine) -> None:
        loss = _loss_of(engine.state.output)
        if loss is not None:
            self._loss_sum += loss
            self._loss_count += 1

    def _validation(self, validator: Engine) -> None:
        self._validated = {k: float(v) for k, v in validator.state.metrics.items() if isinstance(v, (int, float))}

    def _epoch_completed(self, engine: Engine) -> None:
        # listed after the ValidationHandler in a config's handlers, this runs after this epoch's validation
        if not _rank_zero():
            return
        epoch, max_epochs = engine.state.epoch, engine.state.max_epochs or engine.state.epoch
        elapsed = time.perf_counter() - self._epoch_start
        self._epochs_timed += 1
        per_epoch = (time.perf_counter() - self._run_start) / self._epochs_timed
        parts = [f"epoch {epoch}/{max_epochs}:"]
        if self._loss_count:
            parts.append(f"loss {self._loss_sum / self._loss_count:.4f},")
        parts += [f"{k} {float(v):.4f}," for k, v in engine.state.metrics.items() if isinstance(v, (int, float))]
        if self._validated:
            parts += [f"{k} {v:.4f}," for k, v in self._validated.items()]
            best = getattr(self.validator.state, "best_metric", None) if self.validator is not None else None
            best_epoch = getattr(self.validator.state, "best_metric_epoch", None) if self.validator is not None else None
            if best is not None and best_epoch is not None and best_epoch >= 0:
                parts[-1] = parts[-1].rstrip(",") + f" (best {float(best):.4f} at epoch {best_epoch}),"
        if self.optimizer is not None and self.optimizer.param_groups:
            parts.append(f"lr {self.optimizer.param_groups[0]['lr']:.3g},")
        parts.append(f"{elapsed:.1f} s")
        if epoch < max_epochs:
            parts[-1] += ","
            parts.append(f"ETA {_minutes(per_epoch * (max_epochs - epoch))}")
        logger.info(" ".join(parts))


class ScanProgress:
    """A progress bar over the scans (on a terminal) and one line per scan, for evaluation and inference engines.

    The line: ``[2/5] img0003.nii.gz: 512x512x100, 3.2 s -> out/img0003_seg.nii.gz``, or ``failed: <reason>`` for a
    scan that could not be read.

    Args:
        output_key: the item key holding the written output's path (inference), if any.
        bar: show a tqdm bar (only when stderr is a terminal; logs and CI stay one line per scan).
    """

    def __init__(self, output_key: Optional[str] = "output", bar: bool = True) -> None:
        self.output_key = output_key
        self.bar = bar
        self._bar: Any = None
        self._start = 0.0

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._started)
        engine.add_event_handler(Events.ITERATION_STARTED, self._iteration_started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._iteration_completed)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._completed)

    def _started(self, engine: Engine) -> None:
        if self.bar and _rank_zero():
            from tqdm import tqdm

            # disable=None: no bar when stderr is not a terminal (log files, CI), only the per-scan lines
            self._bar = tqdm(total=engine.state.epoch_length, unit="scan", leave=False, disable=None)

    def _iteration_started(self, engine: Engine) -> None:
        self._start = time.perf_counter()

    def _iteration_completed(self, engine: Engine) -> None:
        seconds = time.perf_counter() - self._start
        total = engine.state.epoch_length or "?"
        index = (engine.state.iteration - 1) % (engine.state.epoch_length or 1) + 1
        output = engine.state.output
        items = output if isinstance(output, Sequence) else [output]
        for item in items:
            if not isinstance(item, Mapping) or not item:
                continue  # a scan that failed to load: InferenceEvaluator logged its line
            line = f"[{index}/{total}] {self._describe(item)}, {seconds:.1f} s"
            if item.get("failed"):
                line = f"[{index}/{total}] {self._name(item)}: failed: {item.get('reason', item.get('failed'))}"
            elif self.output_key and item.get(self.output_key):
                line += f" -> {item[self.output_key]}"
            self._write(line)
        if self._bar is not None:
            self._bar.update(1)

    def _completed(self, engine: Engine) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    @staticmethod
    def _name(item: Mapping[str, Any]) -> str:
        image = item.get("image")
        meta = getattr(image, "meta", None) or item.get("image_meta_dict") or {}
        source = meta.get("filename_or_obj") if isinstance(meta, Mapping) else None
        if isinstance(source, (list, tuple)):
            source = source[0] if source else None
        source = source or item.get("source") or item.get("scan") or "scan"
        return os.path.basename(str(source).rstrip(os.sep)) or str(source)

    def _describe(self, item: Mapping[str, Any]) -> str:
        name = self._name(item)
        image = item.get("image")
        meta = getattr(image, "meta", None) or {}
        shape = meta.get("spatial_shape") if isinstance(meta, Mapping) else None
        if shape is not None:
            shape = [int(s) for s in (shape.tolist() if hasattr(shape, "tolist") else shape)]
            return f"{name}: {'x'.join(map(str, shape))}"
        return name

    def _write(self, line: str) -> None:
        if not _rank_zero():
            return
        if self._bar is not None and not self._bar.disable:
            self._bar.write(line)
        else:
            logger.info(line)
