"""Loading checked volumes and writing segmentation masks safely."""

from __future__ import annotations

import logging
from typing import Dict, Hashable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from monai.data import MetaTensor, NibabelWriter
from monai.transforms import MapTransform

from xattnres_monai.data.inputs import MAX_VOXELS, image_errors, label_errors, pair_errors, read_volume
from xattnres_monai.utils.files import as_bool, atomic_write, raise_if_any

__all__ = ["LoadVolumed", "SaveSegmentationd"]

logger = logging.getLogger(__name__)


class LoadVolumed(MapTransform):
    """``LoadImaged`` for NIfTI volumes and DICOM series that checks what it loads: the bundles' one loading step.

    Each key is read once by :func:`~xattnres_monai.data.inputs.read_volume` (MONAI's ``LoadImage`` with its
    ``NibabelReader`` / ``ITKReader``, after the header and DICOM series checks) and the loaded array itself is
    checked: images finite and not constant, labels integers in ``0..num_classes-1``, every key on the first key's
    grid. A failure raises :class:`~xattnres_monai.utils.files.InputError` naming the file; the bundles turn it into
    one ``error:`` line (training, evaluation) or a failed scan while the others go on (inference). The output is
    that of ``LoadImaged(keys, image_only=False)``: a ``MetaTensor`` per key plus ``<key>_meta_dict``.

    Args:
        keys: the path keys to load (the first is the reference grid).
        label_keys: keys holding label maps (value check instead of the image check).
        num_classes: classes including background (labels must lie in ``0..num_classes-1``); ``None``: not checked.
        max_voxels: refuse larger volumes from the header, before decoding.
        keep_original: keys whose loaded array is also kept, as a copy untouched by later transforms, as
            ``original_<key>`` (evaluation compares predictions with the label on its own grid; not ``<key>_...``:
            MONAI's ``Spacingd`` treats ``<key>_*`` entries as metadata dictionaries).
        allow_missing_keys: as for any ``MapTransform``.

    Example::

        >>> load = LoadVolumed(["image", "label"], label_keys=["label"], num_classes=9)
        >>> item = load({"image": "img0001.nii.gz", "label": "label0001.nii.gz"})
        >>> item["image"].affine.shape
        torch.Size([4, 4])
    """

    def __init__(
        self,
        keys: Union[str, Sequence[str]],
        label_keys: Union[str, Sequence[str]] = (),
        num_classes: Optional[int] = None,
        max_voxels: Optional[int] = MAX_VOXELS,
        keep_original: Union[str, Sequence[str]] = (),
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.label_keys = {label_keys} if isinstance(label_keys, str) else set(label_keys)
        self.num_classes = None if num_classes is None else int(num_classes)
        self.max_voxels = max_voxels
        self.keep_original = {keep_original} if isinstance(keep_original, str) else set(keep_original)

    def __call__(self, data: Mapping[Hashable, str]) -> Dict[Hashable, torch.Tensor]:
        d = dict(data)
        volumes = {key: read_volume(d[key], self.max_voxels) for key in self.key_iterator(d)}
        errors = []
        reference = next(iter(volumes.values()), None)
        for key, volume in volumes.items():
            if key in self.label_keys:
                if self.num_classes is not None:
                    errors += label_errors(volume.path, volume.data, self.num_classes - 1)
            else:
                errors += image_errors(volume.path, volume.data)
            if volume is not reference:
                errors += pair_errors(reference, volume)
        raise_if_any(errors)
        for key, volume in volumes.items():
            d[key] = volume.data
            d[f"{key}_meta_dict"] = volume.data.meta
            if key in self.keep_original:
                d[f"original_{key}"] = volume.data.clone()
        return d


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
            writer.set_data_array(mask, channel_dim=0)  # channel last, then trailing singleton axes dropped ...
            writer.data_obj = writer.data_obj.reshape(tuple(mask.shape[1:]))  # ... but a 1-slice volume stays 3D
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
