"""Evaluation metrics: per-organ Dice / HD95 / IoU in the literature and physical conventions."""

from .segmentation import (
    CONVENTIONS,
    HD95_UNITS,
    STATUSES,
    SYNAPSE_ORGANS,
    TABLE1_COLUMNS,
    TABLE1_ORGANS,
    class_names_for,
    evaluate_case,
    format_markdown,
    summarize,
    write_reports,
)

__all__ = [
    "CONVENTIONS",
    "HD95_UNITS",
    "STATUSES",
    "SYNAPSE_ORGANS",
    "TABLE1_COLUMNS",
    "TABLE1_ORGANS",
    "class_names_for",
    "evaluate_case",
    "format_markdown",
    "summarize",
    "write_reports",
]
