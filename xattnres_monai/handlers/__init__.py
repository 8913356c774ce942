from .gradient_clipping import GradientClipping
from .image_report import BinarySegmentationReport
from .progress import EpochSummary, ScanProgress
from .resume import EpochCheckpoint, latest_checkpoint

__all__ = [
    "BinarySegmentationReport",
    "EpochCheckpoint",
    "EpochSummary",
    "GradientClipping",
    "ScanProgress",
    "latest_checkpoint",
]
