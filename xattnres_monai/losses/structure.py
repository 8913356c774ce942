"""The "structure loss" of the PraNet / EMCAD family for binary segmentation: weighted BCE + weighted IoU."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["StructureLoss"]


class StructureLoss(nn.Module):
    """Boundary-weighted binary cross-entropy plus boundary-weighted soft IoU, on single-channel logits.

    Each pixel is weighted by ``1 + 5 * |avg_pool(mask) - mask|`` (31-pixel window, zero padding counted),
    which is large near the object's boundary. Per image, ``wbce = sum(weight * bce) / sum(weight)`` and
    ``wiou = 1 - (inter + 1) / (union - inter + 1)`` with ``inter = sum(weight * p * mask)`` and
    ``union = sum(weight * (p + mask))``, ``p = sigmoid(logits)``; the loss is the batch mean of
    ``wbce + wiou``. This is the loss EMCAD and PraNet train their polyp models with; the XAttnRes paper uses
    Dice-CE, which is the bundles' default.

    Args:
        kernel_size: the averaging window (odd).
        boundary_weight: the factor of the boundary term (5 in PraNet).

    Example::

        >>> loss = StructureLoss()
        >>> loss(torch.randn(2, 1, 64, 64), (torch.rand(2, 1, 64, 64) > 0.5).float())
    """

    def __init__(self, kernel_size: int = 31, boundary_weight: float = 5.0) -> None:
        super().__init__()
        from xattnres_monai.utils.options import as_float, as_int  # options as a command line passes them

        kernel_size = as_int(kernel_size, "StructureLoss: kernel_size", min=1)
        boundary_weight = as_float(boundary_weight, "StructureLoss: boundary_weight", min=0.0)
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be a positive odd number, got {kernel_size}")
        self.kernel_size = kernel_size
        self.boundary_weight = boundary_weight

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``input``: logits ``(B, 1, *spatial)``; ``target``: binary mask of the same shape."""
        if input.shape[1] != 1 or input.shape != target.shape:
            raise ValueError(
                f"StructureLoss expects single-channel logits and a mask of the same shape, "
                f"got {tuple(input.shape)} and {tuple(target.shape)}"
            )
        spatial_dims = input.ndim - 2
        pool = (F.avg_pool2d, F.avg_pool3d)[spatial_dims - 2] if spatial_dims in (2, 3) else None
        if pool is None:
            raise ValueError(f"StructureLoss supports 2D and 3D inputs, got {spatial_dims} spatial dims")
        target = target.float()
        dims = tuple(range(2, input.ndim))
        weight = 1 + self.boundary_weight * torch.abs(
            pool(target, kernel_size=self.kernel_size, stride=1, padding=self.kernel_size // 2) - target
        )
        bce = F.binary_cross_entropy_with_logits(input, target, reduction="none")
        wbce = (weight * bce).sum(dims) / weight.sum(dims)
        prob = torch.sigmoid(input)
        inter = (weight * prob * target).sum(dims)
        union = (weight * (prob + target)).sum(dims)
        wiou = 1 - (inter + 1) / (union - inter + 1)
        return (wbce + wiou).mean()
