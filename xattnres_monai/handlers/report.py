"""End-of-run reports of bundle evaluation and inference."""

from __future__ import annotations

import logging
import sys
from typing import Dict, List, Sequence

import torch
from ignite.engine import Engine, Events
from monai.data.utils import affine_to_spacing

from xattnres_monai.data.inputs import InferenceInputs

__all__ = ["InferenceReport", "SegmentationReport"]

logger = logging.getLogger(__name__)


class InferenceReport:
    """At the end of an inference run, list the written masks and the scans that failed, with reasons.

    Called from the bundle's ``run`` list after the evaluator (which does not run when no scan
    passed the checks). Exits with code 2 (``SystemExit``, no stack trace) when any scan failed,
    after every good scan was processed.

    Args:
        inputs: the collected inputs of the run.
        exit_on_failure: exit non-zero when a scan failed.
    """

    def __init__(self, inputs: InferenceInputs, exit_on_failure: bool = True) -> None:
        self.inputs = inputs
        self.exit_on_failure = exit_on_failure

    def __call__(self) -> None:
        written = [item["output"] for item in self.inputs.items]
        lines = [f"inference: {len(written)} mask(s) written to {self.inputs.output_dir}"]
        lines += [f"  skipped {scan}: {reason}" for scan, reason in self.inputs.skipped]
        lines += [f"  FAILED {scan}: {reason}" for scan, reason in self.inputs.failures]
        print("\n".join(lines), flush=True)
        if self.inputs.failures and self.exit_on_failure:
            print(f"error: {len(self.inputs.failures)} scan(s) failed; see above", file=sys.stderr, flush=True)
            raise SystemExit(2)
