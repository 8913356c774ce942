"""DICOM-SEG output for DICOM input: the mask as a DICOM Segmentation that references the source series.

A scan read from a DICOM series folder (:func:`xattnres_monai.data.dicom.dicom_series`: the checked slice files, in
position order) gets, beside its NIfTI mask, a DICOM Segmentation object written with highdicom: one segment per
class (binary segmentation, empty frames left out), each frame referencing the SOP Instance UID of its source slice,
segment labels from the class names and the standard coded concepts of the organs:

=============== =================================== ========================================
class name      segmented property type (SCT)       type modifier (SCT, laterality)
=============== =================================== ========================================
aorta           15825003 Aorta
gallbladder     28231008 Gallbladder
spleen          78961009 Spleen
left_kidney     64033007 Kidney                      7771000 Left
right_kidney    64033007 Kidney                      24028007 Right
liver           10200004 Liver
pancreas        15776009 Pancreas
stomach         69695003 Stomach
(other names)   85756007 Tissue (category Tissue)
=============== =================================== ========================================

The category of the organs is SCT 91723000 "Anatomical Structure". Every code is taken from pydicom's SNOMED CT
dictionary (``pydicom.sr.codedict.codes.SCT``); SNOMED has no "left kidney" entry there, so the kidneys are the
DICOM way: property type Kidney with a laterality modifier (Segmented Property Type Modifier Code Sequence).

The mask is mapped onto the frames through geometry, not array order: for every source slice, the patient
position of each of its pixels (``ImagePositionPatient``, ``ImageOrientationPatient``, ``PixelSpacing``; LPS) is
taken to the mask's voxel grid with the inverse of the mask's RAS affine (MONAI's: LPS with x and y negated), and
the mask is sampled there. The mask must lie on the series' grid (after ``Invertd``, the grid MONAI's ``ITKReader``
read): every pixel centre within :data:`GRID_ATOL` voxel of a voxel centre, else the DICOM-SEG is refused.

Example::

    >>> seg = dicom_segmentation(label, affine, dicom_series("ct/").files, class_names=["background", "liver"])
    >>> seg.SegmentSequence[0].SegmentLabel
    'liver'
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Hashable, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform

from xattnres_monai.metrics.organ_report import ClassNames, class_name_map, label_affine, sibling_path
from xattnres_monai.utils.files import InputError, as_bool, atomic_write

__all__ = ["GRID_ATOL", "ORGAN_CODES", "SaveDicomSegd", "dicom_segmentation", "frames_on_sources", "segment_codes"]

logger = logging.getLogger(__name__)

#: largest distance (in voxels) between a DICOM pixel centre and the mask voxel centre it takes its value from.
GRID_ATOL = 0.1
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])

#: normalised class name -> (SCT keyword of the segmented property type, SCT keyword of the laterality modifier).
ORGAN_CODES: Dict[str, Tuple[str, Optional[str]]] = {
    "aorta": ("Aorta", None),
    "gallbladder": ("Gallbladder", None),
    "spleen": ("Spleen", None),
    "left_kidney": ("Kidney", "Left"),
    "right_kidney": ("Kidney", "Right"),
    "liver": ("Liver", None),
    "pancreas": ("Pancreas", None),
    "stomach": ("Stomach", None),
}
#: other spellings of the organ names (the Table-1 abbreviations included).
_ALIASES = {
    "kidney_left": "left_kidney",
    "kidney_right": "right_kidney",
    "gall_bladder": "gallbladder",
    "kl": "left_kidney",
    "kr": "right_kidney",
    "gb": "gallbladder",
    "sm": "stomach",
    "pc": "pancreas",
}


def _normalise(name: str) -> str:
    key = "_".join(str(name).lower().replace("-", " ").replace("_", " ").split())
    return _ALIASES.get(key, key)


def segment_codes(name: str) -> Tuple[Any, Any, Optional[Any]]:
    """``(category, property type, laterality modifier or None)`` for a class name, as pydicom ``Code`` values.

    Known organs (:data:`ORGAN_CODES`, also ``kidney_left``, ``Gall bladder`` ...) get their SNOMED CT codes under
    "Anatomical Structure"; any other name the generic "Tissue" / "Tissue" (SCT 85756007).

    Example::

        >>> segment_codes("left_kidney")[1:]
        (Code(value='64033007', scheme_designator='SCT', meaning='Kidney', ...), Code(value='7771000', ...))
    """
    from pydicom.sr.codedict import codes

    known = ORGAN_CODES.get(_normalise(name))
    if known is None:
        return codes.SCT.Tissue, codes.SCT.Tissue, None
    organ, side = known
    return codes.SCT.AnatomicalStructure, getattr(codes.SCT, organ), (getattr(codes.SCT, side) if side else None)


def _vector(ds: Any, keyword: str, count: int) -> np.ndarray:
    value = getattr(ds, keyword, None)
    if value is None or len(value) != count:
        raise InputError(getattr(ds, "filename", "source slice"), f"{keyword} is missing or not {count} numbers")
    return np.array([float(v) for v in value], dtype=np.float64)


#: patient / study attributes a DICOM object must carry, possibly empty (type 2), that highdicom copies from the
#: source images; exports that leave them out get them empty, in memory only.
_TYPE2_ATTRIBUTES = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                     "ReferringPhysicianName", "StudyID", "AccessionNumber")  # fmt: skip


def _with_type2_attributes(ds: Any) -> Any:
    for keyword in _TYPE2_ATTRIBUTES:
        if keyword not in ds:
            setattr(ds, keyword, "")
    return ds


def frames_on_sources(
    label: np.ndarray, affine: np.ndarray, sources: Sequence[Any], atol: float = GRID_ATOL
) -> np.ndarray:
    """The label map sampled on each source slice's pixel grid: ``(len(sources), rows, columns)``.

    For source slice ``s`` (a pydicom dataset: ``ImagePositionPatient`` P, ``ImageOrientationPatient`` (X, Y),
    ``PixelSpacing`` (dr, dc)), pixel (row r, column c) lies at LPS ``P + c dc X + r dr Y``; its voxel in ``label``
    is ``affine^-1`` of that point in RAS.

    Args:
        label: class ids ``(x, y, z)`` on the grid of ``affine``.
        affine: RAS affine of ``label`` (MONAI's, e.g. after ``Invertd``).
        sources: the source slices (headers suffice).
        atol: largest allowed distance (voxels) between a pixel centre and the nearest voxel centre.

    Raises:
        InputError: a slice that does not lie on the mask's grid (naming the slice file).
    """
    inverse = np.linalg.inv(np.asarray(affine, dtype=np.float64))
    rotate, shift = inverse[:3, :3], inverse[:3, 3]
    frames = np.zeros((len(sources), int(sources[0].Rows), int(sources[0].Columns)), dtype=label.dtype)
    for n, ds in enumerate(sources):
        name = getattr(ds, "filename", None) or f"source slice {n}"
        position = _vector(ds, "ImagePositionPatient", 3)
        orientation = _vector(ds, "ImageOrientationPatient", 6)
        spacing = _vector(ds, "PixelSpacing", 2)
        rows, cols = int(ds.Rows), int(ds.Columns)
        if (rows, cols) != frames.shape[1:]:
            raise InputError(name, f"{rows} x {cols} pixels, the series' first slice has {frames.shape[1:]}")
        origin = rotate @ (_LPS_TO_RAS @ position) + shift
        along_row = rotate @ (_LPS_TO_RAS @ (orientation[:3] * spacing[1]))  # column index c grows
        along_col = rotate @ (_LPS_TO_RAS @ (orientation[3:] * spacing[0]))  # row index r grows
        r, c = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
        voxels = origin + c[..., None] * along_row + r[..., None] * along_col  # (rows, cols, 3)
        nearest = np.rint(voxels)
        error = float(np.abs(voxels - nearest).max())
        if error > atol:
            raise InputError(name, f"slice is not on the mask's grid (pixel centres {error:.3f} voxel from voxel "
                             "centres): the mask must be on the series' own grid (after Invertd)")  # fmt: skip
        index = nearest.astype(np.int64)
        if (index < 0).any() or (index >= np.array(label.shape)).any():
            raise InputError(name, f"slice lies outside the mask's grid of shape {label.shape}")
        frames[n] = label[index[..., 0], index[..., 1], index[..., 2]]
    return frames


def dicom_segmentation(
    label: Any,
    affine: Any,
    source_files: Sequence[Union[str, "os.PathLike[str]"]],
    num_classes: Optional[int] = None,
    class_names: ClassNames = None,
    algorithm_name: str = "XAttnRes",
    algorithm_version: Optional[str] = None,
    series_description: str = "XAttnRes segmentation",
    series_number: int = 900,
    manufacturer: str = "xattnres-monai",
) -> Any:
    """A highdicom ``Segmentation`` of a label map, referencing the given source slices.

    Args:
        label: class ids, ``(x, y, z)`` or ``(1, x, y, z)``, on the source series' grid.
        affine: RAS affine of ``label`` (MONAI's).
        source_files: the series' slice files (e.g. :func:`~xattnres_monai.data.dicom.dicom_series` ``.files``).
        num_classes: classes including background (9: the Synapse organ names).
        class_names: see :func:`~xattnres_monai.metrics.organ_report.class_name_map`.
        algorithm_name: the algorithm identification's name (and the manufacturer model name).
        algorithm_version: its version (default: the package's).
        series_description: of the new series.
        series_number: of the new series.
        manufacturer: the manufacturer of the "equipment" that made the object.

    Returns:
        the ``highdicom.seg.Segmentation`` (binary segmentation, one segment per class: classes 1 .. the largest
        named class; empty frames left out).
    """
    import highdicom as hd
    import pydicom
    from pydicom.sr.codedict import codes

    from xattnres_monai import __version__

    t = label.as_tensor() if isinstance(label, MetaTensor) else torch.as_tensor(np.asarray(label))
    t = t.detach().cpu()
    if t.ndim == 4 and t.shape[0] == 1:
        t = t[0]
    if t.ndim != 3:
        raise ValueError(f"expected a 3D label map (x, y, z) or (1, x, y, z), got shape {tuple(t.shape)}.")
    low, high = (int(round(float(v))) for v in torch.aminmax(t.reshape(-1))) if t.numel() else (0, 0)
    if low < 0:
        raise ValueError("the label map holds negative values.")
    names = class_name_map(num_classes, class_names)
    count = max(high, max(names, default=0))
    sources = [_with_type2_attributes(pydicom.dcmread(str(f), stop_before_pixels=True)) for f in source_files]
    # sampled from the label map as it is (no whole-volume copy), then rounded frame by frame
    sampled = frames_on_sources(t.numpy(), np.asarray(affine, dtype=np.float64), sources)
    frames = np.rint(sampled).astype(np.uint8 if count < 256 else np.uint16)
    version = str(algorithm_version or __version__)
    algorithm = hd.AlgorithmIdentificationSequence(name=algorithm_name, family=codes.cid7162.ArtificialIntelligence,
                                                   version=version)  # fmt: skip
    descriptions = []
    for number in range(1, count + 1):
        name = names.get(number, f"class{number}")
        category, kind, side = segment_codes(name)
        description = hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=name.replace("_", " ")[:64],
            segmented_property_category=category,
            segmented_property_type=kind,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
        )
        if side is not None:
            description.SegmentedPropertyTypeModifierCodeSequence = [hd.sr.CodedConcept.from_code(side)]
        descriptions.append(description)
    if not descriptions:
        raise ValueError("no class to describe: give num_classes or class_names.")
    with _quiet("highdicom"):  # it logs one INFO line per DICOM module it copies
        return hd.seg.Segmentation(
            source_images=sources,
            pixel_array=frames,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=descriptions,
            series_instance_uid=hd.UID(),
            series_number=int(series_number),
            sop_instance_uid=hd.UID(),
            instance_number=1,
            manufacturer=manufacturer,
            manufacturer_model_name=algorithm_name,
            software_versions=version,
            device_serial_number="0",
            series_description=series_description,
            omit_empty_frames=bool(frames.any()),  # a segmentation needs a frame: keep all when all are empty
        )


@contextmanager
def _quiet(name: str, level: int = logging.WARNING) -> Iterator[None]:
    """Raise the level of logger ``name`` to ``level`` inside the block (restored after)."""
    logger_ = logging.getLogger(name)
    previous = logger_.level
    logger_.setLevel(max(level, previous))
    try:
        yield
    finally:
        logger_.setLevel(previous)


def _source_folder(d: Mapping[Hashable, Any], image_key: str) -> Optional[Path]:
    image = d.get(image_key)
    meta = getattr(image, "meta", None) or d.get(f"{image_key}_meta_dict") or {}
    source = meta.get("filename_or_obj") if isinstance(meta, Mapping) else None
    if source is None and isinstance(image, (str, os.PathLike)):
        source = image
    if isinstance(source, (list, tuple)):
        source = source[0] if source else None
    return Path(str(source)) if source and os.path.isdir(str(source)) else None


class SaveDicomSegd(MapTransform):
    """Write a DICOM-SEG of the mask beside it for scans read from a DICOM series (NIfTI scans are left alone).

    The series' checked slice files (:func:`~xattnres_monai.data.dicom.dicom_series`) are the source images: each
    frame references its slice's SOP Instance UID, and the segments are named and coded after the classes (see the
    module docstring). Place it after ``Invertd`` and ``AsDiscreted(argmax=True)`` (and any post-processing). The
    file (``<scan><suffix>``, named after the mask) is written atomically; its path is added to
    ``data["outputs"]``.

    Args:
        keys: the label map key (``(1, x, y, z)`` class ids on the scan's grid).
        image_key: the image key; its ``filename_or_obj`` (metadata) is the source series folder.
        output_key: item key holding the mask path.
        num_classes: classes including background (9: the Synapse organ names).
        class_names: see :func:`~xattnres_monai.metrics.organ_report.class_name_map`.
        suffix: file ending (``<scan>_seg.dcm``).
        postfix: the mask's postfix, see :func:`~xattnres_monai.metrics.organ_report.sibling_path`.
        overwrite: replace an existing file.
        failures: a list collecting ``(path, reason)`` instead of raising (a slice off the mask's grid, a write
            error); the run goes on with the next scan.
        kwargs: passed to :func:`dicom_segmentation` (``algorithm_name``, ``series_description`` ...).

    Example (``inference.json``, after the mask writer)::

        {"_target_": "xattnres_monai.transforms.dicom_seg.SaveDicomSegd", "keys": "pred",
         "num_classes": "@num_classes", "overwrite": "@overwrite", "failures": "$@inputs.failures"}
    """

    def __init__(
        self,
        keys: KeysCollection = "pred",
        image_key: str = "image",
        output_key: str = "output",
        num_classes: Optional[int] = None,
        class_names: ClassNames = None,
        suffix: str = "_seg.dcm",
        postfix: str = "seg",
        overwrite: bool = False,
        failures: Optional[List[Tuple[str, str]]] = None,
        allow_missing_keys: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.image_key = image_key
        self.output_key = output_key
        self.num_classes = None if num_classes is None else int(num_classes)
        self.class_names = class_names
        self.suffix = suffix
        self.postfix = postfix
        self.overwrite = as_bool(overwrite, "SaveDicomSegd: overwrite")
        self.failures = failures
        self.kwargs = kwargs

    def __call__(self, data: Mapping[Hashable, Any]) -> Dict[Hashable, Any]:
        from xattnres_monai.data.dicom import dicom_series

        d = dict(data)
        folder = _source_folder(d, self.image_key)
        if folder is None:
            return d  # not a DICOM series: nothing to reference
        for key in self.key_iterator(d):
            path = sibling_path(str(d[self.output_key]), self.suffix, self.postfix)
            try:
                files = dicom_series(folder).files
                seg = dicom_segmentation(d[key], label_affine(d[key], d.get(f"{key}_meta_dict")), files,
                                         self.num_classes, self.class_names, **self.kwargs)  # fmt: skip
                with atomic_write(path, overwrite=self.overwrite) as tmp:
                    seg.save_as(str(tmp))
            except (InputError, OSError) as err:
                if self.failures is None:
                    raise
                problem = err.problem if isinstance(err, InputError) else f"{type(err).__name__}: {err.strerror or err}"
                reason = f"cannot write the DICOM-SEG ({problem})"
                self.failures.append((path, reason))
                logger.error(f"{path}: {reason}")
                continue
            d["outputs"] = {**d.get("outputs", {}), "dicom_seg": path}
        return d
