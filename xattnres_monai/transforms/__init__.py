from .io import SaveSegmentationd

__all__ = ["SaveSegmentationd"]
