from .images import SavePNGMaskd, to_gray, to_rgb
from .io import SaveSegmentationd

__all__ = ["SavePNGMaskd", "SaveSegmentationd", "to_gray", "to_rgb"]
