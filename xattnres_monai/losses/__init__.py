"""Losses: deep supervision (EMCAD's mutation loss)."""

from .deep_supervision import MutationLoss, head_subsets

__all__ = ["MutationLoss", "head_subsets"]
