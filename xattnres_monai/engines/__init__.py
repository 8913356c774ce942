"""Engine helpers: batch preparation for the MONAI / Ignite trainers."""

from .multiscale import MultiScalePrepareBatch, multiscale_sizes

__all__ = ["MultiScalePrepareBatch", "multiscale_sizes"]
