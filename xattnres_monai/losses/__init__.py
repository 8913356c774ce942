"""Losses: deep supervision (EMCAD's mutation loss) and the PraNet / EMCAD structure loss."""

from .deep_supervision import MutationLoss, finest_head, head_subsets
from .structure import StructureLoss

__all__ = ["MutationLoss", "StructureLoss", "finest_head", "head_subsets"]
