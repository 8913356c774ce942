"""EMCAD's "mutation" deep-supervision loss over all non-empty combinations of the prediction heads."""

from __future__ import annotations

from itertools import combinations
from typing import Any, Callable, List, Optional, Sequence, Tuple, Union

import torch
from monai.losses import DiceCELoss
from torch import nn

__all__ = ["MutationLoss", "finest_head", "head_subsets"]


def finest_head(pred: Union[torch.Tensor, Sequence[torch.Tensor]]) -> torch.Tensor:
    """The prediction to score: the last (finest) head of a deep-supervised output, or the tensor itself.

    Used first in the bundles' training post-processing, so the training metric sees one map whether the
    network returns one tensor or, like :class:`~xattnres_monai.networks.nets.EMCADNet` with
    ``deep_supervision=True`` in training mode, a list of heads ordered coarse to fine.
    """
    return pred if isinstance(pred, torch.Tensor) else pred[-1]


def head_subsets(num_heads: int) -> List[Tuple[int, ...]]:
    """All non-empty subsets of ``range(num_heads)``, by size then lexicographically (15 for 4 heads)."""
    return [subset for size in range(1, num_heads + 1) for subset in combinations(range(num_heads), size)]


class MutationLoss(nn.Module):
    """Deep-supervision loss of EMCAD: ``sum over non-empty subsets S of the heads of loss(sum_{i in S} p_i, target)``.

    With the 4 heads of :class:`~xattnres_monai.networks.nets.EMCADNet` (training mode,
    ``deep_supervision=True``) this sums the loss of all 15 combinations of summed logits, as the
    EMCAD reference trains. A single tensor (eval mode, or a network without deep supervision) is
    passed to ``loss`` unchanged. The sum is not normalised by the number of subsets (as in EMCAD).

    Args:
        loss: the per-combination loss, ``loss(input, target) -> scalar``; default MONAI's
            :class:`~monai.losses.DiceCELoss` built with ``dice_ce_kwargs``.
        dice_ce_kwargs: keyword arguments of the default ``DiceCELoss`` (only without ``loss``),
            e.g. ``to_onehot_y=True, softmax=True, lambda_ce=0.3, lambda_dice=0.7`` for Synapse.

    Example::

        >>> loss = MutationLoss(to_onehot_y=True, softmax=True, lambda_ce=0.3, lambda_dice=0.7)
        >>> heads = [torch.randn(2, 9, 32, 32) for _ in range(4)]
        >>> loss(heads, torch.randint(0, 9, (2, 1, 32, 32))).shape
        torch.Size([])

    In a MONAI bundle::

        "loss": {"_target_": "xattnres_monai.losses.MutationLoss",
                 "to_onehot_y": true, "softmax": true, "lambda_ce": 0.3, "lambda_dice": 0.7}
    """

    def __init__(
        self, loss: Optional[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = None, **dice_ce_kwargs: Any
    ) -> None:
        super().__init__()
        from xattnres_monai.utils.options import as_bool, as_float  # options as a command line passes them

        for key in ("include_background", "to_onehot_y", "sigmoid", "softmax", "squared_pred", "jaccard", "batch"):
            if key in dice_ce_kwargs:
                dice_ce_kwargs[key] = as_bool(dice_ce_kwargs[key], f"MutationLoss: {key}")
        for key in ("lambda_dice", "lambda_ce", "smooth_nr", "smooth_dr", "label_smoothing"):
            if key in dice_ce_kwargs:
                dice_ce_kwargs[key] = as_float(dice_ce_kwargs[key], f"MutationLoss: {key}", min=0.0)
        if loss is None:
            loss = DiceCELoss(**dice_ce_kwargs)
        elif dice_ce_kwargs:
            raise ValueError(
                "MutationLoss: keyword arguments are for the default DiceCELoss and cannot be combined with a custom "
                f"loss; got loss={loss!r} and {sorted(dice_ce_kwargs)}."
            )
        if not callable(loss):
            raise ValueError(f"MutationLoss: loss must be callable, got {type(loss).__name__}.")
        self.loss = loss

    def forward(self, input: Union[torch.Tensor, Sequence[torch.Tensor]], target: torch.Tensor) -> torch.Tensor:
        """Args:
        input: the heads' logits (a list or tuple, all of the same shape), or one tensor.
        target: the target, as expected by ``loss``.
        """
        if isinstance(input, torch.Tensor):
            return self.loss(input, target)
        heads = list(input)
        if not heads:
            raise ValueError("MutationLoss: expected at least one prediction head, got an empty sequence.")
        shapes = {tuple(h.shape) for h in heads}
        if len(shapes) != 1:
            raise ValueError(f"MutationLoss: all heads must have the same shape, got {[list(h.shape) for h in heads]}.")
        total = torch.zeros((), dtype=heads[0].dtype, device=heads[0].device)
        for subset in head_subsets(len(heads)):
            combined = heads[subset[0]]
            for i in subset[1:]:
                combined = combined + heads[i]
            total = total + self.loss(combined, target)
        return total
