from .gradient_clipping import GradientClipping
from .image_report import BinarySegmentationReport
from .resume import EpochCheckpoint, latest_checkpoint

__all__ = ["BinarySegmentationReport", "EpochCheckpoint", "GradientClipping", "latest_checkpoint"]
