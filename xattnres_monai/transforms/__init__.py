from .images import SavePNGMaskd, to_gray, to_rgb
from .io import LoadVolumed, SaveSegmentationd

__all__ = ["LoadVolumed", "SavePNGMaskd", "SaveSegmentationd", "to_gray", "to_rgb"]
