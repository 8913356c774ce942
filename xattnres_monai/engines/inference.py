"""Inference over many scans where one bad scan does not stop the others."""

from __future__ import annotations

import logging
from typing import Any, Dict, List, Tuple

from ignite.engine import Engine
from monai.engines import SupervisedEvaluator

__all__ = ["InferenceEvaluator"]

logger = logging.getLogger(__name__)


class InferenceEvaluator(SupervisedEvaluator):
    """MONAI's ``SupervisedEvaluator`` that records, instead of segmenting, the scans that failed to load.

    :class:`~xattnres_monai.data.inputs.InferenceDataset` returns a scan whose voxels failed a check (NaN, truncated
    data ...) as an item with a ``"failure"`` entry; this evaluator appends ``(scan, problem)`` to ``failures`` (the
    run's :attr:`InferenceInputs.failures <xattnres_monai.data.inputs.InferenceInputs.failures>`, reported at the
    end) and skips the network, the postprocessing and the writer for it, so nothing is written for that scan. Use
    ``batch_size=1`` (scans differ in size).

    Args:
        failures: the list collecting ``(scan, problem)``.
        args, kwargs: those of ``SupervisedEvaluator``.
    """

    def __init__(self, *args: Any, failures: List[Tuple[str, str]], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.failures = failures

    def _iteration(self, engine: Engine, batchdata: Dict[str, Any]) -> Dict:  # type: ignore[override]
        failure = batchdata.get("failure") if isinstance(batchdata, dict) else None
        if failure is None:
            return super()._iteration(engine, batchdata)
        for scan, problem in zip(batchdata["image"], failure):
            self.failures.append((str(scan), str(problem)))
            logger.error(f"{scan}: {problem}")
        return {}
