"""Spatial transforms: MONAI's, where MONAI's own fall over in a pipeline we ship."""

from __future__ import annotations

from typing import Any, Dict, Hashable, Mapping

from monai.transforms import Spacingd

__all__ = ["PathSafeSpacingd"]


class PathSafeSpacingd(Spacingd):
    """MONAI's ``Spacingd``, with entries named ``<key>_*`` that are not metadata dicts left alone.

    After resampling a NIfTI image, MONAI's ``Spacingd`` (1.6) calls ``.update`` on *every* entry whose name starts
    with ``"<key>_"``, taking them for metadata dicts. MONAI Label puts the study's path under ``image_path`` (a
    string) into the data it runs a bundle's pre-transforms on, so ``Spacingd(keys="image")`` fails there with
    ``'str' object has no attribute 'update'`` (a 3D bundle served by MONAI Label could not segment a NIfTI study).
    This subclass hides such non-dict entries during the call and puts them back; everything else, the inverse
    included, is ``Spacingd``'s.

    Example::

        >>> t = PathSafeSpacingd(keys="image", pixdim=(1.5, 1.5, 2.0), mode="bilinear")
        >>> out = t({"image": image, "image_path": "/studies/ct.nii.gz"})  # Spacingd raises AttributeError here
    """

    def __call__(self, data: Mapping[Hashable, Any], lazy: Any = None) -> Dict[Hashable, Any]:
        d = dict(data)
        hidden = {
            k: d.pop(k)
            for k in list(d)
            if isinstance(k, str) and not isinstance(d[k], Mapping) and any(k.startswith(f"{key}_") for key in self.keys)
        }
        out = super().__call__(d, lazy=lazy) if lazy is not None else super().__call__(d)
        out.update(hidden)
        return out
