"""Moved: the literal equations live in :mod:`xattnres_monai.networks.ops.reference` (re-exported here)."""

from xattnres_monai.networks.ops.reference import aggregate, attention, resize, stacked_xattnres

__all__ = ["resize", "attention", "aggregate", "stacked_xattnres"]
