"""Multi-scale training: each training batch is resized to one of a few scales of the base size.

The polyp / skin-lesion protocol of the PraNet / EMCAD family trains at 352 x 352 with the rates
{0.75, 1.0, 1.25}, each size rounded to a multiple of 32 (256, 352, 448). PraNet's loop runs every
batch at all three rates (three optimiser steps per batch); here one rate is drawn per batch, so an
epoch costs the same as single-scale training and the rates are equally frequent on average. The
draw uses ``torch``'s global generator, so it follows ``monai.utils.set_determinism`` and the RNG
state saved in the epoch checkpoints.

The resizing happens on the batch after it was moved to the device (``prepare_batch`` of MONAI's
``SupervisedTrainer``), not in the data loader: the loader collates fixed-size items and the
resizing costs one interpolation per batch on the GPU.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from monai.engines.utils import PrepareBatch, default_prepare_batch

__all__ = ["MultiScalePrepareBatch", "multiscale_sizes"]


def multiscale_sizes(
    base_size: Union[int, Sequence[int]], rates: Sequence[float] = (0.75, 1.0, 1.25), multiple: int = 32
) -> Tuple[Tuple[int, ...], ...]:
    """The spatial sizes of multi-scale training: ``round(base * rate / multiple) * multiple`` per dimension.

    Args:
        base_size: the training size (an int for a square image, or one value per spatial dimension).
        rates: the scale rates.
        multiple: every size is a multiple of this (at least ``multiple``).

    Example::

        >>> multiscale_sizes(352)
        ((256, 256), (352, 352), (448, 448))
    """
    base = (int(base_size),) * 2 if isinstance(base_size, int) else tuple(int(s) for s in base_size)
    if not rates or any(r <= 0 for r in rates):
        raise ValueError(f"rates must be positive numbers, got {tuple(rates)}")
    if multiple < 1 or any(s < 1 for s in base):
        raise ValueError(f"base_size and multiple must be positive, got {base} and {multiple}")
    return tuple(tuple(max(multiple, int(round(s * r / multiple)) * multiple) for s in base) for r in rates)


class MultiScalePrepareBatch(PrepareBatch):
    """``prepare_batch`` for ``SupervisedTrainer`` that resizes each batch to a randomly drawn scale.

    The image is resized with bilinear (trilinear in 3D) interpolation, the label with
    ``nearest-exact`` so it stays a label map.

    Args:
        base_size: the training size (int or one value per spatial dimension).
        rates: the scale rates; one is drawn uniformly per batch.
        multiple: sizes are rounded to a multiple of this.

    Example (bundle config)::

        "prepare_batch": {"_target_": "xattnres_monai.engines.MultiScalePrepareBatch", "base_size": 352}
    """

    def __init__(
        self, base_size: Union[int, Sequence[int]] = 352, rates: Sequence[float] = (0.75, 1.0, 1.25), multiple: int = 32
    ) -> None:
        from xattnres_monai.utils.options import as_float_sequence, as_int, as_int_sequence  # command-line values

        if isinstance(base_size, (list, tuple)):
            base_size = as_int_sequence(base_size, "MultiScalePrepareBatch: base_size", min=1, min_length=1)
        else:
            base_size = as_int(base_size, "MultiScalePrepareBatch: base_size", min=1)
        rates = as_float_sequence(rates, "MultiScalePrepareBatch: rates", min=0.0, min_open=True, min_length=1)
        multiple = as_int(multiple, "MultiScalePrepareBatch: multiple", min=1)
        self.sizes = multiscale_sizes(base_size, rates, multiple)

    def sample_size(self) -> Tuple[int, ...]:
        """Draw one of :attr:`sizes` with ``torch``'s global generator."""
        return self.sizes[int(torch.randint(len(self.sizes), (1,)).item())]

    def __call__(
        self,
        batchdata: Dict[str, torch.Tensor],
        device: Optional[Union[str, torch.device]] = None,
        non_blocking: bool = False,
        **kwargs: Any,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        image, label = default_prepare_batch(batchdata, device, non_blocking, **kwargs)
        size = self.sample_size()
        spatial_dims = image.ndim - 2
        if len(size) != spatial_dims:
            raise ValueError(f"multi-scale sizes {self.sizes} have {len(size)} dims, the batch has {spatial_dims}")
        if tuple(image.shape[2:]) != size:
            mode = "bilinear" if spatial_dims == 2 else "trilinear"
            image = F.interpolate(torch.as_tensor(image), size=size, mode=mode, align_corners=False)
            label = F.interpolate(torch.as_tensor(label).float(), size=size, mode="nearest-exact")
        return image, label
