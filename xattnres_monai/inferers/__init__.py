"""Inferers: test-time mirroring and model ensembles averaged in probability space."""

from .probability import ACTIVATIONS, ProbabilityInferer, flip_sets, load_member

__all__ = ["ACTIVATIONS", "ProbabilityInferer", "flip_sets", "load_member"]
