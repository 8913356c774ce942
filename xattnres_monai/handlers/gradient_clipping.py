"""Gradient clipping for MONAI's ``SupervisedTrainer``, which has no clipping option of its own."""

from __future__ import annotations

import torch
from ignite.engine import Engine
from monai.engines.utils import IterationEvents

__all__ = ["GradientClipping"]

CLIP_MODES = ("value", "norm")


class GradientClipping:
    """Clip gradients after the backward pass and before the optimiser step.

    Attached to ``IterationEvents.BACKWARD_COMPLETED``. With AMP the gradients are unscaled first
    (``GradScaler.unscale_``; the scaler's ``step`` then does not unscale again).

    Args:
        clip: the clipping threshold.
        mode: ``"value"`` clamps every gradient element to ``[-clip, clip]`` (what PraNet's and EMCAD's
            ``clip_gradient`` do, with 0.5); ``"norm"`` rescales so the total L2 norm is at most ``clip``.

    Example (bundle config)::

        {"_target_": "xattnres_monai.handlers.GradientClipping", "clip": 0.5}
    """

    def __init__(self, clip: float = 0.5, mode: str = "value") -> None:
        from xattnres_monai.utils.options import as_choice, as_float  # options as a command line passes them

        clip = as_float(clip, "GradientClipping: clip", min=0.0, min_open=True)
        mode = as_choice(mode, "GradientClipping: mode", CLIP_MODES)
        if mode not in CLIP_MODES:
            raise ValueError(f"mode must be one of {CLIP_MODES}, got {mode!r}")
        if clip <= 0:
            raise ValueError(f"clip must be positive, got {clip}")
        self.clip = float(clip)
        self.mode = mode

    def attach(self, engine: Engine) -> None:
        if getattr(engine, "accumulation_steps", 1) > 1:
            raise ValueError("GradientClipping does not support gradient accumulation (accumulation_steps > 1)")
        engine.add_event_handler(IterationEvents.BACKWARD_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        if getattr(engine, "amp", False) and getattr(engine, "scaler", None) is not None:
            engine.scaler.unscale_(engine.optimizer)
        params = [p for group in engine.optimizer.param_groups for p in group["params"] if p.grad is not None]
        if self.mode == "value":
            torch.nn.utils.clip_grad_value_(params, self.clip)
        else:
            torch.nn.utils.clip_grad_norm_(params, self.clip)
