"""Training curves redrawn during training: one PNG like nnU-Net's ``progress.png``, and its numbers as a CSV."""

from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Union

import numpy as np
import torch
from ignite.engine import Engine, Events

from xattnres_monai.utils.files import InputError
from xattnres_monai.visualize.curves import (
    PER_CLASS_PREFIX,
    read_curves_csv,
    save_training_curves,
    write_curves_csv,
)

__all__ = ["TrainingCurves"]

logger = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]
ExtraSeries = Mapping[str, Callable[[Engine], Mapping[str, float]]]


def _is_rank_zero() -> bool:
    """True unless ``torch.distributed`` is initialised and this process is not rank 0."""
    dist = torch.distributed
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def _as_float(value: Any) -> float:
    """A number from a Python / numpy scalar or a tensor (its mean when it has several elements); NaN if none."""
    try:
        if hasattr(value, "detach"):
            value = value.detach().float().mean().item() if value.numel() else math.nan
        return float(np.mean(value)) if np.ndim(value) else float(value)
    except (TypeError, ValueError):
        return math.nan


def _loss_of(output: Any) -> Optional[float]:
    """The loss of one iteration's ``engine.state.output``: a dict with ``"loss"``, a list of such dicts (MONAI's
    decollated output, each item holds the batch loss), or the loss itself."""
    if isinstance(output, (list, tuple)):
        if not output:
            return None
        output = output[0]
    if isinstance(output, Mapping):
        output = output.get("loss")
    if output is None:
        return None
    value = _as_float(output)
    return value if not math.isnan(value) else None


def _per_class(values: Any) -> Optional[List[float]]:
    """Per-class values from a vector ``(C,)`` or a per-case table ``(N, C)`` (mean over cases, NaN ignored)."""
    if values is None:
        return None
    if hasattr(values, "detach"):
        values = values.detach().cpu().float().numpy()
    array = np.asarray(values, dtype=np.float64)
    if array.ndim == 0:
        return None
    if array.ndim >= 2:
        array = array.reshape(-1, array.shape[-1])
        with np.errstate(all="ignore"):
            valid = np.isfinite(array)
            counts = valid.sum(axis=0)
            array = np.where(counts > 0, np.where(valid, array, 0.0).sum(axis=0) / np.maximum(counts, 1), np.nan)
    return [float(v) for v in array]


class TrainingCurves:
    """Record loss, learning rate, epoch time and validation Dice per epoch; redraw one PNG and one CSV atomically.

    Per trainer epoch: the mean of the iterations' training loss (``engine.state.output``: a dict with ``"loss"``,
    or MONAI's list of per-item dicts; a running sum, nothing stored per iteration), the learning rate of the first
    parameter group of the trainer's optimizer (``engine.optimizer``, or ``optimizer``) at the start of the epoch,
    and the wall time from the epoch's start to its last iteration (training only). At each completion of the
    validator (its ``EPOCH_COMPLETED``): ``validator.state.metrics[metric_name]``, the per-class values of
    ``per_class_metric`` when given (a vector in ``state.metrics``, or the per-case table ``(N, C)`` of
    ``state.metric_details`` that MONAI's metric handlers keep with ``save_details=True``, averaged over cases) and
    the validation time. ``extra_series`` (``name -> callable(trainer) -> {key: value}``) are evaluated once per
    epoch, at its validation or its end whichever comes first, and stored as ``<name>/<key>`` columns, one panel
    per name (e.g. the routing entropy per block).

    After each validation (after each epoch when there is no validator) and at the end of training, the picture of
    :func:`~xattnres_monai.visualize.curves.training_curves_figure` (1600 x 1200 pixels) is written to
    ``output_file`` and the numbers to ``<stem>.csv`` next to it, both through a temporary file renamed into place:
    a reader never sees a partial file. These two files are the handler's own progress files and are replaced at
    every redraw. A write failure (full disk) is logged and training goes on.

    Resuming: when the trainer's first epoch of a run is ``e + 1 > 1`` (a checkpoint was restored, in any
    ``STARTED`` handler: the decision is taken at the first ``EPOCH_STARTED``), the rows of epochs ``1..e`` are
    read back from the existing CSV and the series continue (rows of later epochs, from the interrupted run, are
    dropped); without a readable CSV the curves start at epoch ``e + 1`` and a warning is logged. A run starting
    at epoch 0 starts new curves, replacing the old files at its first redraw. Only rank 0 of a distributed run
    attaches (other ranks do nothing).

    Args:
        output_file: the PNG path (``.png``).
        validator: the validation evaluator (``None``: training curves only).
        class_names: names by class index, 0 = background (e.g. from the bundle's ``channel_def``): names of the
            per-class columns and their colours. A per-class vector with one value fewer than ``class_names`` is
            taken to exclude the background; without names the columns are ``val_dice/1``, ``val_dice/2``, ...
        metric_name: the validation mean Dice in ``validator.state.metrics``.
        per_class_metric: the name of a per-class metric (see above); ``None``: no per-class curves.
        extra_series: further per-epoch series, see above.
        optimizer: the optimizer whose learning rate is recorded (default: ``trainer.optimizer``).
        title: the picture's title.

    Example::

        >>> curves = TrainingCurves("runs/progress.png", validator=evaluator, class_names=names,
        ...                         per_class_metric="val_mean_dice")
        >>> curves.attach(trainer)
    """

    def __init__(
        self,
        output_file: PathLike,
        validator: Optional[Engine] = None,
        class_names: Optional[Sequence[str]] = None,
        metric_name: str = "val_mean_dice",
        per_class_metric: Optional[str] = None,
        extra_series: Optional[ExtraSeries] = None,
        optimizer: Optional[torch.optim.Optimizer] = None,
        title: Optional[str] = None,
    ) -> None:
        self.output_file = Path(output_file)
        if self.output_file.suffix.lower() != ".png":
            raise ValueError(f"TrainingCurves: output_file {str(output_file)!r} must be a .png file")
        self.csv_file = self.output_file.with_suffix(".csv")
        self.validator = validator
        self.class_names = [str(n) for n in class_names] if class_names else None
        self.metric_name = metric_name
        self.per_class_metric = per_class_metric
        self.extra_series = dict(extra_series or {})
        self.optimizer = optimizer
        self.title = title
        self.trainer: Optional[Engine] = None
        self._rows: Dict[int, Dict[str, float]] = {}
        self._written: Optional[List[Dict[str, float]]] = None  # the rows of the last redraw
        self._pending_start = False
        self._reset_epoch(0)
        self._warned: set = set()

    # ------------------------------------------------------------------------------------------------- attaching

    def attach(self, engine: Engine) -> None:
        """Attach to the trainer (and to the validator given to the constructor); nothing on ranks other than 0."""
        if not _is_rank_zero():
            return
        self.trainer = engine
        engine.add_event_handler(Events.STARTED, self.started)
        engine.add_event_handler(Events.EPOCH_STARTED, self.epoch_started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.iteration_completed)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.epoch_completed)
        engine.add_event_handler(Events.COMPLETED, self.completed)
        if self.validator is not None:
            self.validator.add_event_handler(Events.EPOCH_COMPLETED, self.validation_completed)

    @property
    def rows(self) -> List[Dict[str, float]]:
        """The recorded history, one row per epoch, by epoch."""
        return [dict(self._rows[e]) for e in sorted(self._rows)]

    # ------------------------------------------------------------------------------------------------------ events

    def started(self, engine: Engine) -> None:
        """Defer the choice between new and continued curves to the first epoch: a checkpoint handler may restore
        the trainer's epoch in its own ``STARTED`` handler, after this one."""
        self._pending_start = True

    def _begin(self, start: int) -> None:
        """Start new curves (``start == 0``), or continue those of the CSV up to epoch ``start``."""
        self._pending_start = False
        self._rows, self._written = {}, None
        if start == 0:
            return
        if not self.csv_file.exists():
            logger.warning(f"{self.csv_file}: no curves to continue; the resumed curves start at epoch {start + 1}")
            return
        try:
            previous = read_curves_csv(self.csv_file)
        except InputError as err:
            logger.warning(f"{err}; resumed curves start at epoch {start + 1}")
            return
        self._rows = {int(r["epoch"]): dict(r) for r in previous if 0 < int(r["epoch"]) <= start}
        logger.info(f"{self.csv_file}: continuing training curves from epoch {start} ({len(self._rows)} rows read)")

    def epoch_started(self, engine: Engine) -> None:
        if self._pending_start:
            self._begin(int(engine.state.epoch) - 1)  # ignite counts the epoch before firing EPOCH_STARTED
        self._reset_epoch(int(engine.state.epoch))
        self._lr = self._learning_rate(engine)

    def iteration_completed(self, engine: Engine) -> None:
        loss = _loss_of(engine.state.output)
        if loss is not None:
            self._loss_sum += loss
            self._loss_count += 1
        self._last_iteration_end = time.perf_counter()

    def epoch_completed(self, engine: Engine) -> None:
        row = self._training_row(engine)
        self._add_extras(engine, row)
        if self.validator is None:
            self.redraw()

    def validation_completed(self, validator: Engine) -> None:
        """Record the validation metrics for the trainer's current epoch, then redraw."""
        if self.trainer is None:
            return
        row = self._training_row(self.trainer)
        row["val_mean_dice"] = self._metric(validator)
        row["val_time_s"] = _as_float(validator.state.times.get(Events.EPOCH_COMPLETED.name, math.nan))
        for name, value in self._per_class_values(validator).items():
            row[PER_CLASS_PREFIX + name] = value
        self._add_extras(self.trainer, row)
        self.redraw()

    def completed(self, engine: Engine) -> None:
        if not self._pending_start:  # a resumed run with no epoch left to train leaves the files as they are
            self.redraw()

    # --------------------------------------------------------------------------------------------------- recording

    def _reset_epoch(self, epoch: int) -> None:
        self._epoch = epoch
        self._loss_sum, self._loss_count = 0.0, 0
        self._lr = math.nan
        self._epoch_start = time.perf_counter()
        self._last_iteration_end: Optional[float] = None
        self._extras_done = False

    def _learning_rate(self, engine: Engine) -> float:
        optimizer = self.optimizer if self.optimizer is not None else getattr(engine, "optimizer", None)
        try:
            return float(optimizer.param_groups[0]["lr"])  # type: ignore[union-attr]
        except (AttributeError, IndexError, KeyError, TypeError, ValueError):
            return math.nan

    def _training_row(self, engine: Engine) -> Dict[str, float]:
        """The row of the trainer's current epoch, updated with its loss, learning rate and time so far."""
        epoch = int(engine.state.epoch)
        row = self._rows.setdefault(epoch, {"epoch": epoch})
        if epoch == self._epoch:
            if self._loss_count:
                row["train_loss"] = self._loss_sum / self._loss_count
            row["lr"] = self._lr
            if self._last_iteration_end is not None:
                row["epoch_time_s"] = self._last_iteration_end - self._epoch_start
        return row

    def _metric(self, validator: Engine) -> float:
        metrics = getattr(validator.state, "metrics", {}) or {}
        if self.metric_name not in metrics:
            self._warn_once(self.metric_name, f"TrainingCurves: no metric {self.metric_name!r} in the validator "
                            f"(found {sorted(metrics)})")  # fmt: skip
            return math.nan
        return _as_float(metrics[self.metric_name])

    def _per_class_values(self, validator: Engine) -> Dict[str, float]:
        if not self.per_class_metric:
            return {}
        metric = getattr(validator.state, "metrics", {}).get(self.per_class_metric)
        values = _per_class(metric) if metric is not None and np.ndim(metric) else None
        if values is None:
            details = getattr(validator.state, "metric_details", None) or {}
            values = _per_class(details.get(self.per_class_metric))
        if values is None:
            self._warn_once(self.per_class_metric, f"TrainingCurves: no per-class values for "
                            f"{self.per_class_metric!r} (a vector metric, or metric_details with save_details=True)")
            return {}
        names = self.class_names or []
        if len(names) == len(values) + 1:
            names = names[1:]  # background excluded from the metric
        elif len(names) != len(values):
            names = [str(i + 1) for i in range(len(values))]
        return dict(zip(names, values))

    def _add_extras(self, engine: Engine, row: Dict[str, float]) -> None:
        if self._extras_done or int(engine.state.epoch) != self._epoch:
            return
        self._extras_done = True
        for name, fn in self.extra_series.items():
            for key, value in dict(fn(engine) or {}).items():
                row[f"{name}/{key}"] = _as_float(value)

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            logger.warning(message)

    # ----------------------------------------------------------------------------------------------------- writing

    def redraw(self) -> None:
        """Write the PNG and the CSV of the history so far (atomically); a write failure is logged, not raised.

        Nothing is written when the history has not changed since the last redraw (e.g. at the end of training,
        right after the last validation).
        """
        if not _is_rank_zero():
            return
        rows = self.rows
        if not rows or rows == self._written and self.output_file.exists() and self.csv_file.exists():
            return
        try:
            write_curves_csv(self.csv_file, rows, overwrite=True)
            save_training_curves(self.output_file, rows, self.class_names, self.title, overwrite=True)
        except OSError as err:
            logger.error(f"{self.output_file}: cannot write the training curves ({err})")
            return
        self._written = rows
