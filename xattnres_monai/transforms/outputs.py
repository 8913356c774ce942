"""Probability maps written beside the mask, on the input's grid, atomically.

NIfTI has no half-precision type (nibabel refuses ``float16``), so the compact form is ``uint8`` with the NIfTI
scale factor ``scl_slope = 1/255``: readers that apply the scaling (nibabel's ``get_fdata``, ITK, 3D Slicer) get the
probabilities back in ``[0, 1]`` in steps of 1/255 (a quarter of the size of ``float32``); ``float32`` keeps them
exactly.
"""

from __future__ import annotations

import logging
from typing import Any, Dict, Hashable, List, Mapping, Optional, Tuple

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor, NibabelWriter
from monai.transforms import MapTransform

from xattnres_monai.metrics.organ_report import label_affine, sibling_path
from xattnres_monai.utils.files import as_bool, atomic_write

__all__ = ["PROBABILITY_DTYPES", "SaveProbabilitiesd", "probability_image"]

logger = logging.getLogger(__name__)

#: stored data types of the probability maps.
PROBABILITY_DTYPES = ("uint8", "float32")


def probability_image(probabilities: Any, affine: Any, dtype: str = "uint8") -> Any:
    """A NIfTI image of channel-first probabilities ``(C, x, y, z)``: channels last, ``(x, y, z, C)``.

    Args:
        probabilities: values in ``[0, 1]``, channel first.
        affine: the grid's affine (RAS, mm), e.g. the ``MetaTensor`` affine after ``Invertd``.
        dtype: ``"uint8"`` (``round(255 p)``, ``scl_slope = 1/255``) or ``"float32"``.

    Example::

        >>> image = probability_image(pred, pred.affine)
        >>> image.shape, image.get_data_dtype()
        ((512, 512, 147, 9), dtype('uint8'))
    """
    if dtype not in PROBABILITY_DTYPES:
        raise ValueError(f"dtype must be one of {PROBABILITY_DTYPES}, got {dtype!r}.")
    t = probabilities.as_tensor() if isinstance(probabilities, MetaTensor) else torch.as_tensor(probabilities)
    t = t.detach()
    p = np.empty((*t.shape[1:], t.shape[0]), dtype=np.uint8 if dtype == "uint8" else np.float32)
    for c in range(t.shape[0]):  # one channel at a time: no whole-volume float temporaries
        channel = t[c].float()
        if dtype == "uint8":
            channel = torch.round(channel.clamp(0.0, 1.0) * 255.0).to(torch.uint8)
        p[..., c] = channel.cpu().numpy()
    image = NibabelWriter.create_backend_obj(p, affine=np.asarray(affine, dtype=np.float64))
    image.set_sform(image.affine, code=1)  # as MONAI's NibabelWriter (and so the masks) store the affine
    image.set_qform(image.affine, code=1)
    if dtype == "uint8":
        image.header.set_slope_inter(1.0 / 255.0, 0.0)
    return image


class SaveProbabilitiesd(MapTransform):
    """Write the class probabilities as ``<scan>_prob.nii.gz`` beside the mask (4D: x, y, z, class).

    Place it after ``Invertd`` (the probabilities are then on the input's grid) and before ``AsDiscreted``; it does
    not change the item. The file is written through :func:`~xattnres_monai.utils.files.atomic_write` (never a
    partial file; an existing one is kept unless ``overwrite``), and its path is added to ``data["outputs"]``.

    Args:
        keys: the probabilities key, channel first (``(C, x, y, z)``, after the activation and ``Invertd``).
        output_key: item key holding the mask path; the map is named after it (``suffix``, ``postfix``, see
            :func:`~xattnres_monai.metrics.organ_report.sibling_path`).
        dtype: ``"uint8"`` (scaled by 1/255 in the header) or ``"float32"``.
        suffix: file ending.
        postfix: the mask's postfix.
        overwrite: replace an existing file.
        failures: a list collecting ``(path, reason)`` of failed writes instead of raising.

    Example (``inference.json``, between ``Invertd`` and ``AsDiscreted``)::

        {"_target_": "xattnres_monai.transforms.outputs.SaveProbabilitiesd", "keys": "pred",
         "overwrite": "@overwrite", "failures": "$@inputs.failures"}
    """

    def __init__(
        self,
        keys: KeysCollection = "pred",
        output_key: str = "output",
        dtype: str = "uint8",
        suffix: str = "_prob.nii.gz",
        postfix: str = "seg",
        overwrite: bool = False,
        failures: Optional[List[Tuple[str, str]]] = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if dtype not in PROBABILITY_DTYPES:
            raise ValueError(f"SaveProbabilitiesd: dtype must be one of {PROBABILITY_DTYPES}, got {dtype!r}.")
        self.output_key = output_key
        self.dtype = dtype
        self.suffix = suffix
        self.postfix = postfix
        self.overwrite = as_bool(overwrite, "SaveProbabilitiesd: overwrite")
        self.failures = failures

    def __call__(self, data: Mapping[Hashable, Any]) -> Dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            path = sibling_path(str(d[self.output_key]), self.suffix, self.postfix)
            image = probability_image(d[key], label_affine(d[key], d.get(f"{key}_meta_dict")), self.dtype)
            try:
                with atomic_write(path, overwrite=self.overwrite) as tmp:
                    image.to_filename(str(tmp))
            except OSError as err:
                if self.failures is None:
                    raise
                reason = f"cannot write the probability map ({type(err).__name__}: {err.strerror or err})"
                self.failures.append((path, reason))
                logger.error(f"{path}: {reason}")
                continue
            d["outputs"] = {**d.get("outputs", {}), "probabilities": path}
        return d
