"""End-of-run reports of bundle evaluation and inference."""

from __future__ import annotations

import logging
import os
import sys
from typing import Dict, List

import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.data.utils import affine_to_spacing

from xattnres_monai.data.inputs import InferenceInputs, read_volume
from xattnres_monai.handlers.resume import exit_on_user_errors
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
        self.inputs = inputs
        self.exit_on_failure = exit_on_failure

    def __call__(self) -> None:
        failures = self.inputs.failures
        failed = {path for path, _ in failures}
        written = []
        for item in self.inputs.items:
            if item["output"] in failed:
                continue
            if os.path.isfile(item["output"]):
                written.append(item["output"])
            else:
                failures.append((item["image"], f"no mask was written to {item['output']}"))
        lines = [f"inference: {len(written)} mask(s) written to {self.inputs.output_dir}"]
        lines += [f"  skipped {scan}: {reason}" for scan, reason in self.inputs.skipped]
        lines += [f"  FAILED {scan}: {reason}" for scan, reason in failures]
        print("\n".join(lines), flush=True)
        if failures and self.exit_on_failure:
            for scan, reason in failures:
                print(f"error: {scan}: {reason}", file=sys.stderr)
            print(f"error: {len(failures)} scan(s) failed; the others were processed", file=sys.stderr, flush=True)
            raise SystemExit(2)


class SegmentationReport:
    """Per-case, per-organ Dice / HD95 / IoU of an evaluation run, in both conventions, written at the end.

    On every iteration the predicted label map (inverted to the scan's original grid) is compared
    with the ground-truth file read from disk (the exact original grid, no resampling), using
    :func:`xattnres_monai.metrics.evaluate_case` in the ``"literature"`` and ``"physical"``
    conventions. At completion :func:`xattnres_monai.metrics.write_reports` writes
    ``per_case_<convention>.csv``, ``summary.csv`` and ``summary.md`` (Table-1 columns) atomically, and
    the summary table is printed.

    Args:
        output_dir: folder of the reports.
        num_classes: classes including background.
        pred_key: item key of the prediction (class ids or one-hot / probabilities, channel first).
        label_key: batch key whose ``filename_or_obj`` metadata names the ground-truth file.
        overwrite: replace existing reports.
    """

    def __init__(
        self,
        output_dir: str,
        num_classes: int = 9,
        pred_key: str = "pred",
        label_key: str = "label",
        overwrite: bool = False,
    ) -> None:
        self.output_dir = output_dir
        self.num_classes = num_classes
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
        # the label file is taken from the input batch: after ``Invertd`` the label's metadata is the image's
        # (MONAI engines keep the decollated input items in ``state.batch``)
        for item, source in zip(engine.state.output, engine.state.batch):
            label_file = source[self.label_key].meta["filename_or_obj"]
            pred = item[self.pred_key]
            pred = pred.argmax(0) if pred.shape[0] > 1 else pred[0]
            volume = read_volume(label_file, max_voxels=None)
            label = volume.data.astype(np.int64)
            if label.min() < 0 or label.max() >= self.num_classes:
                values = f"label values {int(label.min())}..{int(label.max())}"
                raise InputError(label_file, f"{values} outside the class map 0..{self.num_classes - 1}")
            if tuple(pred.shape) != label.shape:
                raise InputError(label_file, f"prediction shape {tuple(pred.shape)} != label shape {label.shape}")
            spacing = affine_to_spacing(torch.as_tensor(volume.affine), r=3).tolist()
            case = str(item.get("case", label_file))
            pred_np = torch.as_tensor(pred).cpu().numpy().astype(np.int64)
            for convention in CONVENTIONS:
                self.rows.append(evaluate_case(pred_np, label, spacing, self.num_classes, convention, case=case))

    def write(self, engine: Engine) -> None:
        paths = write_reports(self.rows, self.output_dir, overwrite=self.overwrite)
        with open(paths["summary_md"]) as f:
            print(f.read(), flush=True)
        logger.info(f"evaluation reports written: {', '.join(str(p) for p in paths.values())}")
