"""Engine helpers: batch preparation for the MONAI / Ignite trainers, inference that survives bad scans."""

from .inference import InferenceEvaluator
from .multiscale import MultiScalePrepareBatch, multiscale_sizes

__all__ = ["InferenceEvaluator", "MultiScalePrepareBatch", "multiscale_sizes"]
