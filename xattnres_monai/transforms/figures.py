"""Bundle inference postprocessing: a picture of each scan with its predicted organs, for a radiologist to check."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Dict, Hashable, Mapping, Optional, Sequence, Tuple, Union

from monai.transforms import MapTransform

from xattnres_monai.data.inputs import MAX_VOXELS, Volume, read_volume
from xattnres_monai.utils.files import InputError, as_bool
from xattnres_monai.visualize.scan_figure import save_scan_figure

__all__ = ["SaveImageFigured", "SaveScanFigured", "figure_path_for"]

logger = logging.getLogger(__name__)

_NIFTI_SUFFIXES = (".nii.gz", ".nii")
_EXISTS = "figure already exists (pass overwrite=True / --overwrite to replace it)"


def figure_path_for(scan: Union[str, "os.PathLike[str]"], output_dir: Union[str, "os.PathLike[str]"],
                    postfix: str = "figure") -> Path:  # fmt: skip
    """``<output_dir>/<scan name without .nii / .nii.gz>_<postfix>.png`` (a DICOM series folder: its folder name).

    Example::

        >>> figure_path_for("data/img0001.nii.gz", "out")
        PosixPath('out/img0001_figure.png')
    """
    name = Path(str(scan).rstrip(os.sep)).name
    for suffix in _NIFTI_SUFFIXES:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return Path(output_dir) / f"{name}_{postfix}.png"


def _source_file(d: Mapping[Hashable, Any], keys: Sequence[Hashable]) -> Optional[str]:
    """The ``filename_or_obj`` of the first of ``keys`` whose item (or ``<key>_meta_dict``) records one."""
    for key in keys:
        for meta in (getattr(d.get(key), "meta", None), d.get(f"{key}_meta_dict")):
            if isinstance(meta, Mapping) and meta.get("filename_or_obj"):
                value = meta["filename_or_obj"]
                return str(value[0] if isinstance(value, (list, tuple)) else value)
    return None


class SaveScanFigured(MapTransform):
    """Write ``<output_dir>/<scan name>_figure.png``: axial and coronal slices with the prediction (and label).

    For the bundles' inference postprocessing, after ``Invertd``: the prediction is on the original scan's grid. The
    original scan is read again from its file (``filename_or_obj`` in the image's metadata, else the prediction's)
    with :func:`~xattnres_monai.data.inputs.read_volume`, so the figure shows the HU values and the geometry (affine,
    hence the radiological orientation) of the file, not the resampled, normalised network input. The picture is
    :func:`~xattnres_monai.visualize.scan_figure.scan_figure`'s, written atomically.

    Args:
        keys: the prediction key: a label map ``(1, X, Y, Z)`` or one-hot ``(C, X, Y, Z)`` on the scan's grid.
        output_dir: folder of the figures.
        image_key: key whose metadata names the scan file.
        label_key: ground truth on the scan's grid (a tensor), or its file path (read with ``read_volume``);
            ``None``: no ground-truth column.
        class_names: names by class index (0 = background), e.g. the first list of
            :func:`~xattnres_monai.visualize.palette.colours_from_channel_def`.
        colours: colours by class index (default: the fixed palette).
        hu_window: grey-level window (``None``: percentiles, for MR).
        postfix: file name postfix (``<scan name>_<postfix>.png``).
        overwrite: replace existing figures; else an existing one is an :class:`InputError`.
        max_voxels: size limit when reading the scan, see :func:`~xattnres_monai.data.inputs.read_header`.
        allow_missing_keys: as for any ``MapTransform``.

    Raises:
        InputError: the figure exists already (without ``overwrite``), the scan cannot be read or found in the
            metadata, or the prediction is not on the scan's grid (apply ``Invertd`` first).

    Example::

        >>> save = SaveScanFigured("pred", output_dir="out", class_names=["background", "aorta", "gallbladder"])
        >>> item = save(item)  # writes out/img0001_figure.png
    """

    def __init__(
        self,
        keys: Union[str, Sequence[str]] = "pred",
        output_dir: Union[str, "os.PathLike[str]"] = "./figures",
        image_key: str = "image",
        label_key: Optional[str] = None,
        class_names: Optional[Sequence[str]] = None,
        colours: Optional[Union[Sequence[Any], Mapping[int, Any]]] = None,
        hu_window: Optional[Tuple[float, float]] = (-125, 275),
        postfix: str = "figure",
        overwrite: bool = False,
        max_voxels: Optional[int] = MAX_VOXELS,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.output_dir = Path(output_dir)
        self.image_key = image_key
        self.label_key = label_key
        self.class_names = list(class_names) if class_names else None
        self.colours = colours
        self.hu_window = None if hu_window is None else (float(hu_window[0]), float(hu_window[1]))
        self.postfix = postfix
        self.overwrite = as_bool(overwrite, "SaveScanFigured: overwrite")
        self.max_voxels = max_voxels

    def _on_grid(self, data: Any, volume: Volume, what: str) -> Any:
        shape = tuple(data.shape[-3:]) if getattr(data, "ndim", 0) >= 3 else tuple(getattr(data, "shape", ()))
        if shape != tuple(volume.shape):
            raise InputError(volume.path, f"{what} of shape {tuple(data.shape)} is not on the scan's grid "
                             f"{tuple(volume.shape)} (apply Invertd before SaveScanFigured)")  # fmt: skip
        return data

    def _label(self, d: Mapping[Hashable, Any], volume: Volume) -> Any:
        if self.label_key is None or self.label_key not in d:
            return None
        label = d[self.label_key]
        if isinstance(label, (str, os.PathLike)):
            label = read_volume(label, self.max_voxels).data
        return self._on_grid(label, volume, f"label {self.label_key!r}")

    def __call__(self, data: Mapping[Hashable, Any]) -> Dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            source = _source_file(d, [self.image_key, key])
            if source is None:
                raise InputError(f"<{key}>", "no 'filename_or_obj' in the image's or prediction's metadata: "
                                 "cannot find the scan to draw")  # fmt: skip
            path = figure_path_for(source, self.output_dir, self.postfix)
            if not self.overwrite and os.path.lexists(path):
                raise InputError(path, _EXISTS)
            volume = read_volume(source, self.max_voxels)
            prediction = self._on_grid(d[key], volume, f"prediction {key!r}")
            title = path.name[: -len(f"_{self.postfix}.png")]
            try:
                save_scan_figure(path, volume.data, prediction, volume.affine, overwrite=self.overwrite,
                                 label=self._label(d, volume), class_names=self.class_names, colours=self.colours,
                                 hu_window=self.hu_window, title=title)  # fmt: skip
            except FileExistsError:
                raise InputError(path, _EXISTS) from None
            except ValueError as err:
                if isinstance(err, InputError):
                    raise
                raise InputError(volume.path, str(err)) from None
            logger.info(f"{path}: figure written")
        return d


class SaveImageFigured(MapTransform):
    """Write ``<output_dir>/<image name>_figure.png`` for a 2D image: the photo beside it with the predicted mask.

    For the 2D bundles' inference postprocessing, after ``Invertd`` and thresholding: the prediction ``(1, H, W)`` is
    on the original image's pixel grid. The original image is read again from its file (``filename_or_obj`` in the
    image's metadata) with Pillow (as RGB), so the figure shows the photo as it was given, at a readable size
    (:func:`~xattnres_monai.visualize.scan_figure.image_figure`, panels of at least 512 px, a legend).

    Args:
        keys: the prediction key (a binary or label map on the image's grid).
        output_dir: folder of the figures.
        image_key: key whose metadata names the image file.
        class_names: names by class index (default ``["background", "lesion"]``).
        postfix: file name postfix (``<name>_<postfix>.png``).
        overwrite: replace existing figures; else an existing one is an :class:`InputError`.

    Example::

        >>> SaveImageFigured("pred", output_dir="out", class_names=["background", "polyp"])(item)  # out/<name>_figure.png
    """

    def __init__(
        self,
        keys: Union[str, Sequence[str]] = "pred",
        output_dir: Union[str, "os.PathLike[str]"] = "./figures",
        image_key: str = "image",
        class_names: Optional[Sequence[str]] = None,
        postfix: str = "figure",
        overwrite: bool = False,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.output_dir = Path(output_dir)
        self.image_key = image_key
        self.class_names = list(class_names) if class_names else ["background", "lesion"]
        self.postfix = postfix
        self.overwrite = as_bool(overwrite, "SaveImageFigured: overwrite")

    def __call__(self, data: Mapping[Hashable, Any]) -> Dict[Hashable, Any]:
        import numpy as np
        from PIL import Image

        from xattnres_monai.visualize.scan_figure import save_image_figure

        d = dict(data)
        for key in self.key_iterator(d):
            source = _source_file(d, [self.image_key, key])
            if source is None:
                raise InputError(f"<{key}>", "no 'filename_or_obj' in the image's metadata: cannot find the image")
            stem = Path(str(source)).stem
            path = self.output_dir / f"{stem}_{self.postfix}.png"
            if not self.overwrite and os.path.lexists(path):
                raise InputError(path, _EXISTS)
            try:
                with Image.open(source) as opened:
                    photo = np.asarray(opened.convert("RGB"))
            except OSError as err:
                raise InputError(source, f"cannot read the image again for its figure ({err})") from None
            pred = np.asarray(d[key].detach().cpu() if hasattr(d[key], "detach") else d[key])
            pred = pred[0] if pred.ndim == 3 else pred
            if pred.shape != photo.shape[:2]:
                raise InputError(source, f"prediction {pred.shape} is not on the image's grid {photo.shape[:2]} "
                                 "(apply Invertd first)")  # fmt: skip
            try:
                save_image_figure(path, photo, (pred > 0.5).astype(np.uint8), overwrite=self.overwrite,
                                  class_names=self.class_names, title=stem)  # fmt: skip
            except FileExistsError:
                raise InputError(path, _EXISTS) from None
            logger.info(f"{path}: figure written")
        return d
