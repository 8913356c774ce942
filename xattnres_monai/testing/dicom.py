"""Write a synthetic CT DICOM series the way a scanner exports one (one file per slice, uint16 + rescale).

Used to build damaged series (a truncated, a missing or a foreign slice) of realistic size; the real-file corpus
(``tests/corpus.py``) provides real scanner series.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np


def write_ct_series(
    folder: Path,
    hu: np.ndarray,
    spacing: Sequence[float] = (0.98, 0.98, 2.0),
    origin: Sequence[float] = (-250.0, -250.0, 100.0),
    series_uid: Optional[str] = None,
    study_uid: Optional[str] = None,
) -> List[Path]:
    """Write ``hu`` (x = columns, y = rows, z = slices; HU) as ``folder/IM{k:04d}.dcm``, axial, head first supine.

    Returns the written files in slice order (z ascending, i.e. towards the head: ImagePositionPatient z grows).
    """
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or generate_uid()
    study_uid = study_uid or generate_uid()
    frame_uid = generate_uid()
    files = []
    stored = np.clip(np.round(hu) + 1024, 0, 4095).astype(np.uint16)
    for k in range(hu.shape[2]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        path = folder / f"IM{k:04d}.dcm"
        ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
        ds.Modality, ds.PatientName, ds.PatientID = "CT", "Test^Phantom", "TEST0001"
        ds.SeriesNumber, ds.InstanceNumber = 2, k + 1
        ds.ImagePositionPatient = [float(origin[0]), float(origin[1]), float(origin[2] + k * spacing[2])]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.PixelSpacing = [float(spacing[1]), float(spacing[0])]  # row spacing (y), column spacing (x)
        ds.SliceThickness = float(spacing[2])
        ds.Rows, ds.Columns = int(hu.shape[1]), int(hu.shape[0])
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.RescaleIntercept, ds.RescaleSlope = -1024.0, 1.0
        ds.PixelData = np.ascontiguousarray(stored[:, :, k].T).tobytes()  # rows x columns, row-major
        ds.save_as(str(path), enforce_file_format=True)
        files.append(path)
    return files
