from .resume import EpochCheckpoint, latest_checkpoint

__all__ = ["EpochCheckpoint", "latest_checkpoint"]
