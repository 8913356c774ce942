"""Writing segmentation masks safely."""

from __future__ import annotations

import logging
from typing import Dict, Hashable, List, Mapping, Optional, Tuple

import numpy as np
import torch
from monai.data import MetaTensor, NibabelWriter
from monai.transforms import MapTransform

from xattnres_monai.utils.files import as_bool, atomic_write

__all__ = ["SaveSegmentationd"]

logger = logging.getLogger(__name__)


class SaveSegmentationd(MapTransform):
    """Write a label map to the path stored in the item, atomically, with the input scan's geometry.

    MONAI's ``SaveImaged`` derives the file name from metadata and writes in place; here the output
    path was fixed (and checked for existence) when the inputs were collected, the mask is written
    to a temporary name and renamed, and an existing file is never replaced unless ``overwrite``.
    A failed write (full disk, read-only folder, the file appeared meanwhile ...) never leaves a
    partial file; with ``failures`` it is recorded there as ``(output path, reason)`` and the run goes
    on with the next scan (the bundle passes the inputs' failure list, reported at the end by
    :class:`~xattnres_monai.handlers.report.InferenceReport`); without it, the error is raised.

    Args:
        keys: the label map key (``(1, *spatial)`` after ``Invertd`` + argmax).
        output_key: item key holding the destination path.
        overwrite: replace an existing destination.
        dtype: stored data type.
        failures: list collecting write failures instead of raising them.
    """

    def __init__(
        self,
        keys: str = "pred",
        output_key: str = "output",
        overwrite: bool = False,
        dtype=np.uint8,
        failures: Optional[List[Tuple[str, str]]] = None,
    ):
        super().__init__(keys)
        self.output_key = output_key
        self.overwrite = as_bool(overwrite, "overwrite")
        self.dtype = dtype
        self.failures = failures

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> Dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            mask = d[key]
            writer = NibabelWriter(output_dtype=self.dtype)
            writer.set_data_array(mask, channel_dim=0)
            meta = mask.meta if isinstance(mask, MetaTensor) else {}
            writer.set_metadata(meta, resample=False)
            output = str(d[self.output_key])
            try:
                with atomic_write(output, overwrite=self.overwrite) as tmp:
                    writer.write(str(tmp), verbose=False)
            except OSError as err:
                if self.failures is None:
                    raise
                reason = f"cannot write the mask ({type(err).__name__}: {err.strerror or err})"
                self.failures.append((output, reason))
                logger.error(f"{output}: {reason}")
        return d
