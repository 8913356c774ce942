"""Which learned connections carry (almost) no weight: candidates for a sparser routing.

:func:`weak_connections` lists the ``(block, entry)`` pairs of a routing report whose mean weight stays below a
threshold, overall and (by default) in every region the report measured (each class, boundaries, interiors, of each
source), so that a connection an organ or the boundaries rely on is not called weak. The network option that drops
them is ``XAttnResUNet(pruned_connections=["d4:e5", ...])`` (the same ``block:entry`` names; in a bundle
``--network_def#pruned_connections "['d4:e5']"``); ``benchmarks/routing_pruning.py`` retrains the demo's bundle with
the connections its report lists and compares parameters, step time and Dice.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Tuple, Union

from xattnres_monai.routing.layout import INPUT
from xattnres_monai.routing.report import RoutingReport

__all__ = ["weak_connections"]

ReportLike = Union[RoutingReport, Mapping[str, Any], str, "os.PathLike[str]"]


def _report_dict(report: ReportLike) -> Mapping[str, Any]:
    if isinstance(report, RoutingReport):
        return report.to_dict()
    if isinstance(report, Mapping):
        return report
    return json.loads(Path(report).read_text(encoding="utf-8"))


def _region_weights(block: Mapping[str, Any]) -> Iterator[Dict[str, Any]]:
    """The mean-weight tables of every region of a block that saw positions."""
    for regions in (block.get("regions") or {}).values():
        for stats in regions.values():
            if stats.get("positions"):
                yield stats.get("mean_weight") or {}


def weak_connections(
    report: ReportLike, threshold: float, everywhere: bool = True, include_input: bool = False
) -> List[Tuple[str, str]]:
    """The ``(block, entry)`` pairs whose mean weight stays below ``threshold``, in block and pool order.

    Args:
        report: a :class:`~xattnres_monai.routing.report.RoutingReport`, its :meth:`~RoutingReport.to_dict`, or the
            path of its ``routing_report.json``.
        threshold: the weight below which a connection is weak (a block of ``K+1`` entries weighs each
            ``1/(K+1)`` when uniform: thresholds are usually a fraction of that).
        everywhere: the weight must also stay below ``threshold`` in every measured region (class, boundary and
            interior regions of each source); ``False``: the mean over all positions only.
        include_input: also consider each block's own stage input (it cannot be dropped without changing the
            stage: excluded by default).

    Example::

        >>> weak_connections(report, threshold=0.02)
        [('d4', 'e5'), ('d4', 'd1')]
    """
    threshold = float(threshold)
    if not math.isfinite(threshold):
        raise ValueError(f"weak_connections: threshold must be a finite number, got {threshold!r}")
    weak = []
    for block in _report_dict(report).get("blocks", []):
        overall = block.get("mean_weight") or {}
        regions = list(_region_weights(block)) if everywhere else []
        for entry in block.get("entries", []):
            if entry == INPUT and not include_input:
                continue
            values = [overall.get(entry)] + [r.get(entry) for r in regions]
            values = [v for v in values if v is not None]
            if values and all(v < threshold for v in values):
                weak.append((str(block["block"]), str(entry)))
    return weak
