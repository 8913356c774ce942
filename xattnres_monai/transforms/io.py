"""Writing segmentation masks safely."""

from __future__ import annotations

from typing import Dict, Hashable, Mapping

import numpy as np
import torch
from monai.data import MetaTensor, NibabelWriter
from monai.transforms import MapTransform

from xattnres_monai.utils.files import atomic_write

__all__ = ["SaveSegmentationd"]


class SaveSegmentationd(MapTransform):
    """Write a label map to the path stored in the item, atomically, with the input scan's geometry.

    MONAI's ``SaveImaged`` derives the file name from metadata and writes in place; here the output
    path was fixed (and checked for existence) when the inputs were collected, the mask is written
    to a temporary name and renamed, and an existing file is never replaced unless ``overwrite``.

    Args:
        keys: the label map key (``(1, *spatial)`` after ``Invertd`` + argmax).
        output_key: item key holding the destination path.
        overwrite: replace an existing destination.
        dtype: stored data type.
    """

    def __init__(self, keys: str = "pred", output_key: str = "output", overwrite: bool = False, dtype=np.uint8):
        super().__init__(keys)
        self.output_key = output_key
        self.overwrite = overwrite
        self.dtype = dtype

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> Dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            mask = d[key]
            writer = NibabelWriter(output_dtype=self.dtype)
            writer.set_data_array(mask, channel_dim=0)
            meta = mask.meta if isinstance(mask, MetaTensor) else {}
            writer.set_metadata(meta, resample=False)
            with atomic_write(d[self.output_key], overwrite=self.overwrite) as tmp:
                writer.write(str(tmp), verbose=False)
        return d
