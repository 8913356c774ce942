"""End-of-run reports of bundle evaluation and inference."""

from __future__ import annotations

import logging
import os
import sys
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.data.utils import affine_to_spacing

from xattnres_monai.data.inputs import InferenceInputs
from xattnres_monai.engines.cohort import leave_cohort_group
from xattnres_monai.handlers.errors import exit_on_user_errors
from xattnres_monai.metrics import CONVENTIONS, evaluate_case, write_reports
from xattnres_monai.utils.files import InputError, as_bool, check_writable

__all__ = ["InferenceReport", "SegmentationReport"]

logger = logging.getLogger(__name__)


class InferenceReport:
    """At the end of an inference run, list the written masks and the scans that failed, with reasons.

    Called from the bundle's ``run`` list after the evaluator (which does not run when no scan
    passed the checks). A failure is a scan refused by the input checks, or a mask that could not be
    written (recorded by :class:`~xattnres_monai.transforms.SaveSegmentationd`, or missing at the end).
    Each is printed to stderr as ``error: <file>: <problem>``, and the run exits with code 2
    (``SystemExit``, no stack trace) after every good scan was processed.

    Args:
        inputs: the collected inputs of the run.
        exit_on_failure: exit non-zero when a scan failed.
    """

    def __init__(self, inputs: InferenceInputs, exit_on_failure: bool = True) -> None:
        exit_on_failure = as_bool(exit_on_failure, "InferenceReport: exit_on_failure")
        self.inputs = inputs
        self.exit_on_failure = exit_on_failure

    def __call__(self) -> None:
        failures = self.inputs.failures
        failed = {path for path, _ in failures}
        written = []
        for item in self.inputs.items:
            if item["output"] in failed or item["image"] in failed:
                continue
            if os.path.isfile(item["output"]):
                written.append(item["output"])
            else:
                failures.append((item["image"], f"no mask was written to {item['output']}"))
        lines = [f"inference: {len(written)} mask(s) written to {self.inputs.output_dir}"]
        lines += [f"  skipped {scan}: {reason}" for scan, reason in self.inputs.skipped]
        lines += [f"  FAILED {scan}: {reason}" for scan, reason in failures]
        print("\n".join(lines), flush=True)
        exiting_with_error = bool(failures and self.exit_on_failure)
        if exiting_with_error:
            for scan, reason in failures:
                print(f"error: {scan}: {reason}", file=sys.stderr)
            print(f"error: {len(failures)} scan(s) failed; the others were processed", file=sys.stderr, flush=True)
        # a torchrun cohort (init_cohort_group): every rank reports before any exits, and a failing rank exits last,
        # as torchrun stops the other ranks as soon as one exits non-zero
        leave_cohort_group(exiting_with_error)
        if exiting_with_error:
            raise SystemExit(2)


class SegmentationReport:
    """Per-case, per-organ Dice / HD95 / IoU of an evaluation run, in both conventions, written at the end.

    On every iteration the predicted label map (inverted to the scan's original grid) is compared
    with the ground truth as it was loaded (``<label_key>_original`` of the batch, kept by
    :class:`~xattnres_monai.transforms.LoadVolumed`: the exact original grid, no resampling), using
    :func:`xattnres_monai.metrics.evaluate_case` in the ``"literature"`` and ``"physical"``
    conventions. At completion :func:`xattnres_monai.metrics.write_reports` writes
    ``per_case_<convention>.csv``, ``summary.csv`` and ``summary.md`` (Table-1 columns) atomically, and
    the summary table is printed.

    Args:
        output_dir: folder of the reports.
        num_classes: classes including background.
        pred_key: item key of the prediction (class ids or one-hot / probabilities, channel first).
        label_key: the label key; the batch must hold ``<label_key>_original``.
        overwrite: replace existing reports.
        class_names: the name of every class, background first (default: the Synapse organs for 9 classes, else
            ``class<i>``); a prepared dataset's ``classes.json`` overlay sets it.
    """

    def __init__(
        self,
        output_dir: str,
        num_classes: int = 9,
        pred_key: str = "pred",
        label_key: str = "label",
        overwrite: bool = False,
        class_names: Optional[Sequence[str]] = None,
    ) -> None:
        from xattnres_monai.utils.options import as_int  # options as a command line passes them

        num_classes = as_int(num_classes, "SegmentationReport: num_classes", min=2)
        overwrite = as_bool(overwrite, "SegmentationReport: overwrite")
        if class_names is not None and (isinstance(class_names, str) or len(class_names) != num_classes):
            raise ValueError(f"SegmentationReport: class_names must name all {num_classes} classes, background "
                             f"first, got {class_names!r}")  # fmt: skip
        self.output_dir = output_dir
        self.num_classes = num_classes
        self.class_names = None if class_names is None else [str(n) for n in class_names]
        self.pred_key = pred_key
        self.label_key = label_key
        self.overwrite = as_bool(overwrite, "overwrite")
        self.rows: List[Dict] = []

    def attach(self, engine: Engine) -> None:
        exit_on_user_errors(engine)
        engine.add_event_handler(Events.STARTED, self.start)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.collect)
        engine.add_event_handler(Events.COMPLETED, self.write)

    def start(self, engine: Engine) -> None:
        """Fail before the run, not after it, if a report exists (``error:`` line, exit code 2)."""
        names = [f"per_case_{c}.csv" for c in CONVENTIONS] + ["summary.csv", "summary.md"]
        check_writable([os.path.join(self.output_dir, name) for name in names], overwrite=self.overwrite)
        self.rows.clear()

    def collect(self, engine: Engine) -> None:
        # the ground truth is the label as loaded (``LoadVolumed(keep_original=[label_key])``: read and checked once,
        # on its own grid, not resampled); the prediction was inverted to that grid by ``Invertd``
        for item, source in zip(engine.state.output, engine.state.batch):
            original = source[f"original_{self.label_key}"]
            label_file = original.meta["filename_or_obj"]
            pred = item[self.pred_key]
            pred = pred.argmax(0) if pred.shape[0] > 1 else pred[0]
            label = original.as_tensor().numpy().astype(np.int64)
            if tuple(pred.shape) != label.shape:
                raise InputError(label_file, f"prediction shape {tuple(pred.shape)} != label shape {label.shape}")
            spacing = affine_to_spacing(torch.as_tensor(original.affine), r=3).tolist()
            case = str(item.get("case", label_file))
            pred_np = torch.as_tensor(pred).cpu().numpy().astype(np.int64)
            for convention in CONVENTIONS:
                self.rows.append(evaluate_case(pred_np, label, spacing, self.num_classes, convention, case=case,
                                               class_names=self.class_names))  # fmt: skip

    def write(self, engine: Engine) -> None:
        paths = write_reports(self.rows, self.output_dir, overwrite=self.overwrite)
        with open(paths["summary_md"]) as f:
            print(f.read(), flush=True)
        logger.info(f"evaluation reports written: {', '.join(str(p) for p in paths.values())}")
