"""2D image I/O for the endoscopy / dermoscopy bundles: colour conversion on load, PNG masks on save."""

from __future__ import annotations

import logging
from typing import Dict, Hashable, List, Mapping, Optional, Tuple

import numpy as np
import torch
from monai.transforms import MapTransform
from PIL import Image

from xattnres_monai.data.images import mask_values
from xattnres_monai.utils.files import as_bool, atomic_write

__all__ = ["SavePNGMaskd", "to_gray", "to_rgb"]

logger = logging.getLogger(__name__)


def _name(image: Image.Image) -> str:
    return str(getattr(image, "filename", "") or "image")


def to_rgb(image: Image.Image) -> Image.Image:
    """``PILReader`` converter: any PIL image -> 3-channel RGB, with a log note when a conversion happens.

    Grayscale is replicated to three channels, an alpha channel is dropped (not composited), palette
    and CMYK images are converted by PIL. 16-bit and float grayscale is scaled to 0..255 first.

    Example (bundle config)::

        {"_target_": "LoadImaged", "keys": "image",
         "reader": {"_target_": "PILReader", "converter": "$xattnres_monai.transforms.to_rgb"}}
    """
    if image.mode == "RGB":
        return image
    if image.mode in ("I", "I;16", "I;16B", "F"):
        data = np.asarray(image, dtype=np.float64)
        low, high = float(data.min()), float(data.max())
        data = (data - low) / (high - low) * 255.0 if high > low else np.zeros_like(data)
        converted = Image.fromarray(data.round().astype(np.uint8), mode="L").convert("RGB")
    else:
        converted = image.convert("RGB")
    logger.info(f"{_name(image)}: converted {image.mode} image to RGB")
    return converted


def to_gray(image: Image.Image) -> Image.Image:
    """``PILReader`` converter for masks: any PIL image -> 8-bit grayscale (``L``) scaled to its type's full scale.

    RGB masks use their luminance; 16-bit masks are scaled by 255 / 65535 and float masks in [0, 1] by 255
    (:func:`xattnres_monai.data.images.mask_values`, the same reading the data preparation checks), so the
    bundles' threshold at 127.5 is the preparation's 50 % threshold for every mask type.
    """
    if image.mode == "L":
        return image
    values, full_scale = mask_values(image)
    return Image.fromarray(np.clip(np.rint(values * (255.0 / full_scale)), 0, 255).astype(np.uint8), mode="L")


def _to_uint8_hw(data: torch.Tensor, scale: float) -> np.ndarray:
    array = np.asarray(torch.as_tensor(data).detach().cpu().float().numpy())
    if array.ndim == 3:
        if array.shape[0] != 1:
            raise ValueError(f"expected a single-channel map (1, H, W), got shape {array.shape}")
        array = array[0]
    return np.clip(np.rint(array * scale), 0, 255).astype(np.uint8)


class SavePNGMaskd(MapTransform):
    """Write a binary mask as an 8-bit PNG with values 0 and 255 (and optionally a probability map), atomically.

    The output paths were fixed (and checked) when the inputs were collected
    (:class:`xattnres_monai.data.image_inputs.ImageInferenceInputs`); each file is written to a
    temporary name and renamed, and an existing file is never replaced unless ``overwrite``. Arrays
    are ``(1, H, W)`` in row-major image order (``PILReader(reverse_indexing=False)``).

    Args:
        keys: the binary mask key (values 0 / 1).
        output_key: item key holding the mask's destination path.
        prob_key: key of the foreground probability map to save as well (``None``: not saved).
        prob_output_key: item key holding the probability map's destination path.
        overwrite: replace existing files.
        failures: list collecting write failures as ``(output path, reason)`` instead of raising them (the
            bundle passes the inputs' failure list, reported at the end by
            :class:`~xattnres_monai.handlers.report.InferenceReport`); a failed write never leaves a partial file.
    """

    def __init__(
        self,
        keys: str = "pred",
        output_key: str = "output",
        prob_key: Optional[str] = None,
        prob_output_key: str = "prob_output",
        overwrite: bool = False,
        failures: Optional[List[Tuple[str, str]]] = None,
    ) -> None:
        super().__init__(keys)
        self.failures = failures
        self.output_key = output_key
        self.prob_key = prob_key
        self.prob_output_key = prob_output_key
        self.overwrite = as_bool(overwrite, "overwrite")

    def _write(self, array: np.ndarray, path: str) -> None:
        try:
            with atomic_write(path, overwrite=self.overwrite) as tmp:
                Image.fromarray(array, mode="L").save(tmp, format="PNG")
        except OSError as err:
            if self.failures is None:
                raise
            reason = f"cannot write the mask ({type(err).__name__}: {err.strerror or err})"
            self.failures.append((str(path), reason))
            logger.error(f"{path}: {reason}")

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> Dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            self._write(_to_uint8_hw(d[key] > 0.5, 255.0), str(d[self.output_key]))
        if self.prob_key is not None and d.get(self.prob_output_key):
            self._write(_to_uint8_hw(d[self.prob_key], 255.0), str(d[self.prob_output_key]))
        return d
