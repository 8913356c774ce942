from .images import SavePNGMaskd, to_gray, to_rgb
from .io import LoadVolumed, SaveSegmentationd
from .spatial import PathSafeSpacingd

__all__ = ["LoadVolumed", "PathSafeSpacingd", "SavePNGMaskd", "SaveSegmentationd", "to_gray", "to_rgb"]
