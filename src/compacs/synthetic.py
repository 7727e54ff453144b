"""Generated, patient-free test data: a CT series that compresses like a real one.

Used by the tests and the benchmarks. The phantom has a body outline, lungs, a spine,
soft-tissue texture and quantum noise, varying smoothly from slice to slice, stored as
12 bits in 16 with a rescale intercept of -1024, like a scanner's output. Its JPEG-LS
lossless ratio is near 3:1: neither random (incompressible) nor flat (trivially small).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

UID_ROOT = "1.2.826.0.1.3680043.10.1010."  # example root for generated data


def _phantom_slice(rows: int, cols: int, z: float, rng: np.random.Generator) -> np.ndarray:
    """Hounsfield units of one axial slice at relative height ``z`` (0..1)."""
    y, x = np.mgrid[-1 : 1 : rows * 1j, -1 : 1 : cols * 1j].astype(np.float32)
    hu = np.full((rows, cols), -1000.0, dtype=np.float32)
    body_a, body_b = 0.82 + 0.05 * np.sin(z * 3), 0.62 + 0.04 * np.cos(z * 2)
    body = (x / body_a) ** 2 + (y / body_b) ** 2 <= 1
    fat = (x / (body_a - 0.04)) ** 2 + (y / (body_b - 0.04)) ** 2 > 1
    hu[body] = 40.0
    hu[body & fat] = -90.0
    # soft-tissue texture: smooth low-frequency variation
    tex = np.sin(x * 9 + z * 4) * np.cos(y * 7 - z * 3) * 25 + np.sin((x + y) * 17) * 8
    hu[body & ~fat] += tex[body & ~fat]
    lung_r = 0.22 + 0.1 * np.sin(z * np.pi)
    for cx in (-0.38, 0.38):
        lung = ((x - cx) / lung_r) ** 2 + ((y + 0.05) / (lung_r * 1.4)) ** 2 <= 1
        hu[lung & body] = -820.0 + 40 * np.sin(x[lung & body] * 30) * np.cos(y[lung & body] * 25)
    spine = (x / 0.09) ** 2 + ((y - 0.42) / 0.08) ** 2 <= 1
    hu[spine] = 700.0 + 150 * np.cos(np.hypot(x[spine], y[spine] - 0.42) * 20)
    aorta = ((x + 0.1) / 0.06) ** 2 + ((y - 0.25) / 0.06) ** 2 <= 1
    hu[aorta] = 180.0
    hu += rng.normal(0.0, 12.0, size=hu.shape).astype(np.float32)
    return hu


def ct_series(
    n_slices: int = 200,
    rows: int = 512,
    cols: int = 512,
    *,
    seed: int = 7,
    patient_id: str = "SYN0001",
    patient_name: str = "Synthetic^Phantom",
) -> Iterator[Dataset]:
    """Yield ``n_slices`` CT Image Storage data sets of one series (Explicit VR LE)."""
    rng = np.random.default_rng(seed)
    uid_rng = np.random.default_rng(seed + 1)
    entropy = [str(int(v)) for v in uid_rng.integers(0, 2**62, size=3)]
    study_uid = generate_uid(UID_ROOT, entropy_srcs=[entropy[0], patient_id])
    series_uid = generate_uid(UID_ROOT, entropy_srcs=[entropy[1], patient_id])
    frame_uid = generate_uid(UID_ROOT, entropy_srcs=[entropy[2], patient_id])
    today = date(2026, 1, 15).strftime("%Y%m%d")
    for i in range(n_slices):
        hu = _phantom_slice(rows, cols, i / max(n_slices - 1, 1), rng)
        stored = np.clip(np.rint(hu + 1024), 0, 4095).astype(np.uint16)

        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        sop_uid = generate_uid(UID_ROOT, entropy_srcs=[series_uid, str(i)])
        ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = sop_uid
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = today
        ds.StudyTime = ds.SeriesTime = "101500"
        ds.ContentTime = f"1015{i % 60:02d}"
        ds.AccessionNumber = f"ACC{patient_id[-4:]}"
        ds.Modality = "CT"
        ds.Manufacturer = "compacs synthetic"
        ds.ReferringPhysicianName = "Referrer^Synthetic"
        ds.StudyDescription = "CT CHEST SYNTHETIC"
        ds.SeriesDescription = "AXIAL 1.0"
        ds.PatientName = patient_name
        ds.PatientID = patient_id
        ds.PatientBirthDate = "19700101"
        ds.PatientSex = "O"
        ds.SliceThickness = "1.0"
        ds.KVP = "120"
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.StudyID = "1"
        ds.SeriesNumber = 2
        ds.InstanceNumber = i + 1
        ds.ImagePositionPatient = [-250.0, -250.0, -100.0 + i * 1.0]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.FrameOfReferenceUID = frame_uid
        ds.SliceLocation = -100.0 + i
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = rows, cols
        ds.PixelSpacing = [0.976, 0.976]
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
        ds.PixelRepresentation = 0
        ds.WindowCenter, ds.WindowWidth = 40, 400
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = -1024, 1, "HU"
        ds.PixelData = stored.tobytes()
        yield ds
