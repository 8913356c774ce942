from .resume import ResumeFromLatest

__all__ = ["ResumeFromLatest"]
