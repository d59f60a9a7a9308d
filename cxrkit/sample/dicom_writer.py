"""Write the sample's images as DICOM files that vary as real ones do.

MONOCHROME1 and MONOCHROME2, BitsStored 10-16, window centre/width, VOI LUT
sequences, rescale slope/intercept, RLE and JPEG 2000 lossless compression, fake
patient tags; UIDs derived from the seed, so files are byte-identical per seed.
:func:`read_dicom_display` reads one back with pydicom's own display pipeline.
"""

from __future__ import annotations

import os
import uuid

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
)

from cxrkit.sample.plan import CaseSpec, DicomVariant
from cxrkit.sample.render import Rendered

__all__ = ["CONTENT_DATE", "CR_SOP_CLASS", "DX_SOP_CLASS", "read_dicom_display", "to_dicom"]

DX_SOP_CLASS = UID("1.2.840.10008.5.1.4.1.1.1.1")  # Digital X-Ray Image Storage - For Presentation
CR_SOP_CLASS = UID("1.2.840.10008.5.1.4.1.1.1")  # Computed Radiography Image Storage
CONTENT_DATE = "20200101"  # fixed: no timestamps, so files are byte-identical per seed


def _rle_plugin() -> str:
    """GDCM's RLE encoder is ~10x faster than pydicom's pure-Python one; same format."""
    try:
        import gdcm  # noqa: F401

        return "gdcm"
    except ImportError:
        return "pydicom"


def _uid(seed: int, image_id: str, what: str) -> UID:
    """A UID that depends only on the seed and the image: ``2.25.<UUID as an integer>``.

    A name-based UUID (version 5) is the DICOM-approved way to make a UID
    without a registered root; pydicom's ``generate_uid(prefix=None)`` would use
    a *random* UUID, so files would differ on every run.
    """
    name = f"cxrkit-sample/{seed}/{image_id}/{what}"
    return UID(f"2.25.{uuid.uuid5(uuid.NAMESPACE_URL, name).int}")


def to_dicom(rendered: Rendered, spec: CaseSpec, rng: np.random.Generator) -> Dataset:
    """Store a display image as DICOM, with the variant's photometric, bits, VOI and codec.

    The stored integers are chosen so that the standard display pipeline
    (modality LUT -> VOI LUT or window -> MONOCHROME1 inversion) gives back the
    drawn anatomy.
    """
    v = spec.variant
    stored = _stored_values(rendered.image, v, rng)
    ds = _header(stored, spec, rendered.meta)
    slope, intercept = _add_rescale(ds, v, rng)
    _add_voi(ds, stored, slope, intercept, v, rng)
    # compress() would give the file a new random SOP Instance UID by default.
    if v.transfer == "raw":
        ds.PixelData = stored.tobytes()
    elif v.transfer == "rle":
        ds.compress(RLELossless, stored, encoding_plugin=_rle_plugin(), generate_instance_uid=False)
    else:
        ds.compress(JPEG2000Lossless, stored, generate_instance_uid=False)
    return ds


def _stored_values(display: np.ndarray, v: DicomVariant, rng: np.random.Generator) -> np.ndarray:
    """Display intensities -> stored integers within the variant's bit depth."""
    max_stored = (1 << v.bits_stored) - 1
    # Detectors rarely fill their whole bit depth: 14-16 bit files use ~12-13 bits of
    # range somewhere inside it (which also keeps the files small).
    span = min(max_stored, 2 ** rng.uniform(11.8, 13.0)) * rng.uniform(0.85, 1.0)
    lo = rng.uniform(0.0, max_stored - span)
    hi = lo + span
    level = display if v.photometric == "MONOCHROME2" else 1.0 - display  # MONOCHROME1: inverted
    return np.clip(np.rint(lo + level * (hi - lo)), 0, max_stored).astype(np.uint16)


def _header(stored: np.ndarray, spec: CaseSpec, meta: dict) -> Dataset:
    """A dataset with every tag but the pixels, rescale and VOI (no random numbers)."""
    v = spec.variant
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    sop_class = DX_SOP_CLASS if v.modality == "DX" else CR_SOP_CLASS
    sop_instance = _uid(spec.root_seed, meta["image_id"], "sop")
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = sop_instance
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_instance
    ds.StudyDate = CONTENT_DATE
    ds.ContentDate = CONTENT_DATE
    ds.Modality = v.modality
    ds.Manufacturer = "cxrkit synthetic"
    # Fake but realistic patient tags, as in the anonymised competition files.
    ds.PatientName = "ANONYMOUS"
    ds.PatientID = meta["image_id"]
    ds.PatientSex = meta["sex"]
    ds.PatientAge = f"{meta['age']:03d}Y"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = "PA"
    ds.StudyInstanceUID = _uid(spec.root_seed, meta["image_id"], "study")
    ds.SeriesInstanceUID = _uid(spec.root_seed, meta["image_id"], "series")
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = v.photometric
    ds.Rows, ds.Columns = stored.shape
    spacing = round(430.0 / meta["rows"], 4)  # a ~43 cm detector, as real ones
    ds.PixelSpacing = [spacing, spacing]
    ds.ImagerPixelSpacing = [spacing, spacing]
    ds.BitsAllocated = 16
    ds.BitsStored = v.bits_stored
    ds.HighBit = v.bits_stored - 1
    ds.PixelRepresentation = 0
    return ds


def _add_rescale(ds: Dataset, v: DicomVariant, rng: np.random.Generator) -> tuple[float, float]:
    """Rescale slope and intercept (written only when the variant has them)."""
    slope, intercept = 1.0, 0.0
    if v.rescale:
        slope = float(rng.choice([0.5, 1.0, 2.0]))
        intercept = float(rng.choice([-1024.0, -500.0, 100.0]))
        ds.RescaleSlope = f"{slope:g}"
        ds.RescaleIntercept = f"{intercept:g}"
        ds.RescaleType = "US"  # unspecified units, as for most radiographs
    return slope, intercept


def _add_voi(
    ds: Dataset,
    stored: np.ndarray,
    slope: float,
    intercept: float,
    v: DicomVariant,
    rng: np.random.Generator,
) -> None:
    """The variant's VOI: one or two windows, a VOI LUT Sequence, or nothing."""
    modality = stored[::4, ::4].astype(np.float64) * slope + intercept
    q_lo, q_hi = np.quantile(modality, [0.002, 0.998])
    span = q_hi - q_lo
    w_lo = q_lo - rng.uniform(0.0, 0.08) * span
    w_hi = q_hi + rng.uniform(0.0, 0.08) * span
    if v.voi in ("window", "window2"):
        centre, width = (w_lo + w_hi) / 2, w_hi - w_lo
        if v.voi == "window":
            ds.WindowCenter = f"{centre:.1f}"
            ds.WindowWidth = f"{width:.1f}"
        else:  # two windows (the first is the default): a normal and a wider one
            ds.WindowCenter = [f"{centre:.1f}", f"{centre:.1f}"]
            ds.WindowWidth = [f"{width:.1f}", f"{1.3 * width:.1f}"]
            ds.WindowCenterWidthExplanation = ["NORMAL", "WIDE"]
        ds.VOILUTFunction = "LINEAR"
    elif v.voi == "lut":
        ds.VOILUTSequence = [_voi_lut_item(stored, w_lo, w_hi, rng)]


def _voi_lut_item(
    stored: np.ndarray, w_lo: float, w_hi: float, rng: np.random.Generator
) -> Dataset:
    """A VOI LUT Sequence item: a gentle S-curve over the stored values' range."""
    first = int(stored.min())
    n_entries = int(stored.max()) - first + 1
    out_bits = int(rng.choice([12, 16]))
    x = np.clip((np.arange(n_entries) + first - w_lo) / (w_hi - w_lo), 0, 1)
    gain = rng.uniform(1.5, 3.0)  # a gentle S-curve: more contrast in the mid-tones
    curve = 0.5 + 0.5 * np.tanh(gain * (x - 0.5)) / np.tanh(gain / 2)
    item = Dataset()
    item.LUTDescriptor = [n_entries if n_entries < 65536 else 0, first, out_bits]
    item.LUTExplanation = "CXRKIT S-CURVE"
    item.add_new(0x00283006, "US", np.rint(curve * ((1 << out_bits) - 1)).astype(int).tolist())
    return item


def read_dicom_display(path: str | os.PathLike) -> np.ndarray:
    """Float [0, 1] display image of a sample DICOM with pydicom's own pipeline.

    A reference for tests and for checking the sample by eye; the library's
    fast reader is :func:`cxrkit.dicom.read_xray`.
    """
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    ds = pydicom.dcmread(path)
    arr = apply_modality_lut(ds.pixel_array, ds)
    if "VOILUTSequence" in ds or "WindowCenter" in ds:
        arr = apply_voi_lut(arr, ds)
    arr = arr.astype(np.float64)
    lo, hi = arr.min(), arr.max()
    arr = (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)
    if ds.PhotometricInterpretation == "MONOCHROME1":
        arr = 1.0 - arr
    return arr.astype(np.float32)
