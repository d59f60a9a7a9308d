"""Read chest X-ray DICOM files into 8-bit grayscale images.

:func:`read_xray` turns stored values into display brightness (modality LUT,
VOI window, MONOCHROME1 inversion) and rescales to uint8; :func:`read_header`
and :func:`dicom_shape` read only the header. :func:`read_xray_reference` is a
slow, plain re-implementation used as a test oracle. Taught in notebook 02.
"""

from __future__ import annotations

import errno
import os
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pydicom
from pydicom import uid as dicom_uid
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut, apply_voi, get_decoder
from pydicom.pixels import pixel_array as _pixel_array

from cxrkit.errors import ConfigError, DataNotFoundError, DicomReadError

__all__ = [
    "DicomReadError",
    "DicomWarning",
    "read_xray",
    "read_xray_reference",
    "read_header",
    "dicom_shape",
]

PathLike = str | os.PathLike

# Uncompressed little-endian syntaxes: the Pixel Data bytes are the pixels as-is
# (deflate is undone by pydicom while reading), so np.frombuffer can view them.
_NATIVE_LITTLE_ENDIAN = {
    dicom_uid.ImplicitVRLittleEndian,
    dicom_uid.ExplicitVRLittleEndian,
    dicom_uid.DeflatedExplicitVRLittleEndian,
}
_GRAY = ("MONOCHROME1", "MONOCHROME2")
_DEFER = 1 << 16  # bytes: values larger than this stay on disk until needed
_BLOCK_PIXELS = 1 << 17  # pixels per block in blocked loops: temporaries stay in cache


class DicomWarning(UserWarning):
    """Something odd in a DICOM file that cxrkit worked around (message names the file)."""


def _warn(path: PathLike, message: str) -> None:
    warnings.warn(f"{path}: {message}", DicomWarning, stacklevel=3)


# --------------------------------------------------------------------------- opening


def _install_hint(ts: dicom_uid.UID) -> str:
    """Which permissively licensed package decodes transfer syntax ``ts``."""
    if ts in dicom_uid.JPEG2000TransferSyntaxes:
        return "install pylibjpeg and pylibjpeg-openjpeg (pip install pylibjpeg pylibjpeg-openjpeg)"
    if ts in dicom_uid.JPEGLSTransferSyntaxes or ts in (
        dicom_uid.JPEGLossless,
        dicom_uid.JPEGLosslessSV1,
    ):
        return "install python-gdcm (pip install python-gdcm)"
    if ts in (dicom_uid.JPEGBaseline8Bit, dicom_uid.JPEGExtended12Bit):
        return "install Pillow or python-gdcm (8-bit JPEG only)"
    return "convert the file to an uncompressed transfer syntax (e.g. DCMTK dcmconv +te)"


def _infer_transfer_syntax(ds: Dataset) -> dicom_uid.UID:
    """Guess the transfer syntax of a dataset read without file meta (from how it parsed)."""
    implicit, little = ds.original_encoding
    if implicit:
        return dicom_uid.ImplicitVRLittleEndian
    return dicom_uid.ExplicitVRLittleEndian if little else dicom_uid.ExplicitVRBigEndian


def _open(path: PathLike, *, header_only: bool = False) -> Dataset:
    """``pydicom.dcmread`` with errors that say which file and what is wrong.

    ``header_only`` stops before the pixel data (fast: reads a few KB). Otherwise
    large values (the Pixel Data) are *deferred*: pydicom records where they are
    in the file and reads them only if asked, which lets the fast path map them.
    """
    p = Path(path)
    if not p.exists():
        raise DataNotFoundError(errno.ENOENT, "DICOM file not found", str(p))
    if p.is_dir():
        raise DicomReadError(p, "this is a folder, not a DICOM file")
    try:
        ds = pydicom.dcmread(str(p), stop_before_pixels=header_only, defer_size=_DEFER)
    except InvalidDicomError:
        ds = _open_without_header(p, header_only)
    except (PermissionError, IsADirectoryError) as exc:
        raise DicomReadError(p, f"the file cannot be opened ({exc.strerror})") from exc
    except Exception as exc:  # pydicom raises many types on damaged files
        raise DicomReadError(
            p, f"truncated or damaged DICOM file ({type(exc).__name__}: {exc})"
        ) from exc
    if len(ds) == 0:
        # pydicom returns an empty data set when compressed Pixel Data runs past
        # the end of the file (it warns "End of file reached before delimiter").
        raise DicomReadError(
            p, "the DICOM header is there but no data set could be read: truncated or damaged file"
        )
    if not ds.get("file_meta") or "TransferSyntaxUID" not in ds.file_meta:
        # The header exists but lacks the transfer syntax: infer it from the parse.
        ds.file_meta = ds.get("file_meta") or FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = _infer_transfer_syntax(ds)
    return ds


def _open_without_header(p: Path, header_only: bool) -> Dataset:
    """Second chance for files lacking the preamble/'DICM' marker (``force=True``).

    ``force=True`` parses *anything*, so junk (a PNG, a text file, a DICOM file
    shifted by one byte) comes back as a dataset of garbage elements. We accept
    the result only if it looks like an image: Rows, Columns and Pixel Data.
    """
    not_dicom = (
        "not a DICOM file: there is no 'DICM' marker at byte 128 (no DICOM file header), "
        "and parsing it without one finds no image (Rows, Columns, Pixel Data)"
    )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # junk triggers many pydicom VR warnings
            ds = pydicom.dcmread(
                str(p), force=True, stop_before_pixels=header_only, defer_size=_DEFER
            )
            has_image = "Rows" in ds and "Columns" in ds
            has_image = has_image and (header_only or "PixelData" in ds)
    except Exception as exc:
        raise DicomReadError(p, not_dicom) from exc
    if not has_image:
        raise DicomReadError(p, not_dicom)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = _infer_transfer_syntax(ds)
    _warn(
        p,
        "no DICOM file header (preamble and 'DICM' marker); read anyway as "
        f"{ds.file_meta.TransferSyntaxUID.name}",
    )
    return ds


def _check_image(ds: Dataset, path: PathLike) -> None:
    """Refuse datasets that are not a single grayscale image, with a clear reason."""
    if "PixelData" not in ds:
        if ds.get("Rows") and ds.get("Columns"):
            # pydicom silently drops compressed Pixel Data cut off by the end of file
            raise DicomReadError(
                path,
                f"no Pixel Data element (7FE0,0010), although the header describes a "
                f"{ds.Rows}x{ds.Columns} image: the file is probably truncated",
            )
        what = f"Modality {ds.Modality}" if ds.get("Modality") else "no Modality"
        if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
            what += "; it has float pixel data, as parametric maps do"
        raise DicomReadError(path, f"no Pixel Data element (7FE0,0010): not an image ({what})")
    for keyword in ("Rows", "Columns", "BitsAllocated", "PhotometricInterpretation"):
        if ds.get(keyword) in (None, ""):
            raise DicomReadError(path, f"the image attribute {keyword} is missing or empty")
    try:
        spp = int(ds.get("SamplesPerPixel", 1) or 1)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError) as exc:
        raise DicomReadError(path, f"invalid SamplesPerPixel/NumberOfFrames ({exc})") from exc
    pi = str(ds.PhotometricInterpretation).strip().upper()
    if pi not in _GRAY or spp != 1:
        raise DicomReadError(
            path,
            f"colour image ({pi}, {spp} samples per pixel): cxrkit reads grayscale "
            "radiographs (MONOCHROME1 or MONOCHROME2) only",
        )
    if frames > 1:
        _warn(path, f"multi-frame image ({frames} frames); using the first frame only")


# -------------------------------------------------------------------------- decoding


def _decode_with_pydicom(ds: Dataset, path: PathLike) -> np.ndarray:
    """First frame's stored values via pydicom's decoders, with clear errors."""
    ts = ds.file_meta.TransferSyntaxUID
    try:
        decoder = get_decoder(ts)
    except NotImplementedError as exc:
        raise DicomReadError(
            path, f"pydicom has no decoder for transfer syntax {ts.name} ({ts})"
        ) from exc
    if not decoder.is_available:
        # Not pydicom's own message: it would also suggest the GPL pylibjpeg-libjpeg.
        raise DicomReadError(
            path, f"no decoder is installed for transfer syntax {ts.name}: {_install_hint(ts)}"
        )
    try:
        with warnings.catch_warnings():
            # pydicom warns about harmless quirks (e.g. J2K signedness); we check results.
            warnings.simplefilter("ignore", UserWarning)
            arr = _pixel_array(ds, index=0)
    except ValueError as exc:
        if "less than expected" in str(exc):
            raise DicomReadError(path, f"truncated pixel data ({exc})") from exc
        raise DicomReadError(path, f"invalid pixel data ({exc})") from exc
    except Exception as exc:
        if ts == dicom_uid.JPEGExtended12Bit and int(ds.get("BitsStored", 8)) > 8:
            reason = (
                "12-bit JPEG Extended (Process 4) pixel data: no installed decoder can read it "
                "(Pillow and the python-gdcm wheel decode 8-bit JPEG only). Convert the file, "
                "e.g. with DCMTK: dcmdjpeg in.dcm out.dcm"
            )
        else:
            reason = f"the {ts.name} pixel data could not be decoded (damaged or truncated?): {exc}"
        raise DicomReadError(path, reason) from exc
    if arr.ndim != 2:  # should not happen after _check_image; be explicit if it does
        raise DicomReadError(path, f"decoded pixel data has shape {arr.shape}, expected 2-D")
    return arr


def _decode_native(ds: Dataset, path: PathLike) -> tuple[np.ndarray, tuple[int, int] | None]:
    """First frame of uncompressed little-endian 8/16-bit data, without a decoder.

    The bytes of an uncompressed frame *are* the pixels. :func:`_open` left the
    Pixel Data unread (``defer_size``) and noted where it starts in the file, so we
    memory-map it: no copy at all, the OS pages the file in as it is read. (Small or
    deflated images were read into memory already; we view those bytes with
    ``np.frombuffer``.) Two details pydicom handles and we must too: bits above
    ``BitsStored`` may hold junk (old overlays), and signed values narrower than
    the container must be sign-extended. Returns the array and, when it had to be
    computed anyway, its (min, max).
    """
    rows, cols = int(ds.Rows), int(ds.Columns)
    bits_alloc, bits_stored = int(ds.BitsAllocated), int(ds.get("BitsStored") or ds.BitsAllocated)
    signed = int(ds.get("PixelRepresentation", 0) or 0) == 1
    dtype = np.dtype(f"<{'i' if signed else 'u'}{bits_alloc // 8}")
    needed = rows * cols * dtype.itemsize
    raw = ds.get_item(0x7FE00010, keep_deferred=True)
    deferred = getattr(raw, "value", b"") is None and getattr(raw, "value_tell", None) is not None
    if deferred and ds.file_meta.TransferSyntaxUID != dicom_uid.DeflatedExplicitVRLittleEndian:
        offset = int(raw.value_tell)  # absolute file offset of the first pixel byte
        available = min(int(raw.length), Path(path).stat().st_size - offset)
        if available < needed:
            _raise_truncated(path, available, rows, cols, bits_alloc, needed)
        mapped = np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=(rows, cols))
        arr = np.asarray(mapped)  # plain ndarray view; keeps the mapping alive
    else:
        buf = ds.PixelData
        if len(buf) < needed:
            _raise_truncated(path, len(buf), rows, cols, bits_alloc, needed)
        arr = np.frombuffer(buf, dtype=dtype, count=rows * cols).reshape(rows, cols)
    value_range = None
    if bits_stored < bits_alloc:
        if signed:
            shift = bits_alloc - bits_stored  # move the sign bit to the top, shift back
            arr = np.right_shift(np.left_shift(arr, shift), shift)
        else:
            value_range = _minmax(arr)
            if value_range[1] >= 1 << bits_stored:  # junk above BitsStored: mask it off
                arr = np.bitwise_and(arr, (1 << bits_stored) - 1)
                value_range = None
    return arr, value_range


def _raise_truncated(
    path: PathLike, got: int, rows: int, cols: int, bits: int, needed: int
) -> None:
    raise DicomReadError(
        path,
        f"truncated pixel data: {got} bytes, but {rows}x{cols} pixels at {bits} bits need {needed}",
    )


def _decode_stored(
    ds: Dataset, path: PathLike, *, fast: bool
) -> tuple[np.ndarray, tuple[int, int] | None]:
    """Stored values (before any LUT) of the first frame as a 2-D integer array,
    and their (min, max) when already known."""
    ts = ds.file_meta.TransferSyntaxUID
    if fast and ts in _NATIVE_LITTLE_ENDIAN and int(ds.BitsAllocated) in (8, 16):
        return _decode_native(ds, path)
    arr = _decode_with_pydicom(ds, path)
    # Big-endian files decode to e.g. '>i2'; the lookup table indexes native integers.
    return arr.astype(arr.dtype.newbyteorder("="), copy=False), None


def _minmax(arr: np.ndarray) -> tuple[int, int]:
    """Min and max of an integer image (cv2.minMaxLoc is one pass, twice numpy's speed)."""
    if arr.dtype in (np.uint8, np.int8, np.uint16, np.int16) and arr.ndim == 2 and arr.size:
        lo, hi, _, _ = cv2.minMaxLoc(arr)
        return int(lo), int(hi)
    return int(arr.min()), int(arr.max())


# ------------------------------------------------------------------ intensity pipeline


def _has_voi(ds: Dataset) -> bool:
    """Does the file say which values are of interest (a VOI LUT or a window)?"""
    seq = ds.get("VOILUTSequence")
    if seq and "LUTDescriptor" in seq[0] and "LUTData" in seq[0]:
        return True
    return ds.get("WindowCenter") not in (None, "") and ds.get("WindowWidth") not in (None, "")


def _is_monotonic(ds: Dataset, use_voi: bool) -> bool:
    """True when stored value -> output is monotonic (rescale and windows are; LUTs need not be).

    Then the output's min and max over the image sit at the stored min and max,
    so the fast path needs no histogram.
    """
    if ds.get("ModalityLUTSequence"):
        return False
    return not (use_voi and ds.get("VOILUTSequence"))


def _modality(stored: np.ndarray, ds: Dataset) -> np.ndarray:
    """Step 1: Modality LUT Sequence or RescaleSlope/Intercept (pydicom), as float64."""
    return np.asarray(apply_modality_lut(stored, ds), dtype=np.float64)


def _voi(x: np.ndarray, ds: Dataset, path: PathLike) -> np.ndarray | None:
    """Step 2: VOI LUT Sequence (preferred, first item) or the first window, as float64.

    Returns None (and warns) when the VOI attributes are unusable, e.g. a window
    width below 1, so the caller shows the modality output instead.
    """
    try:
        seq = ds.get("VOILUTSequence")
        if seq and "LUTDescriptor" in seq[0] and "LUTData" in seq[0]:
            # A VOI LUT is indexed by integers; clip to its input range first
            # (pydicom subtracts into uint16, which would wrap huge inputs).
            n_entries, first = int(seq[0].LUTDescriptor[0]) or 1 << 16, int(seq[0].LUTDescriptor[1])
            ints = np.clip(np.rint(x), first, first + n_entries - 1).astype(np.int64)
            y = apply_voi(ints, ds, index=0)
        else:
            center = float(_first(ds.WindowCenter))
            width = float(_first(ds.WindowWidth))
            y = _window(x, center, width, str(ds.get("VOILUTFunction") or "LINEAR"))
    except (
        ValueError,
        TypeError,
        IndexError,
        KeyError,
        AttributeError,
        NotImplementedError,
    ) as exc:
        _warn(path, f"unusable VOI LUT/window ({exc}); showing the full range instead")
        return None
    return np.asarray(y, dtype=np.float64)


def _first(value: Any) -> Any:
    """First value of a possibly multi-valued element (several windows may be offered)."""
    if isinstance(value, pydicom.multival.MultiValue | list | tuple):
        return value[0]
    return value


def _window(x: np.ndarray, center: float, width: float, function: str) -> np.ndarray:
    """A DICOM window (PS3.3 C.11.2.1.2-3) with output range [0, 1], in float64.

    We write it out rather than call ``pydicom.pixels.apply_windowing``, whose output
    range comes from BitsStored times RescaleSlope and so flips (inverting the
    image) when the slope is negative. The output range does not matter otherwise:
    min-max scaling follows.
    """
    function = function.strip().upper()
    if function == "LINEAR":  # the default: pixel centres, hence the 0.5 and 1
        if width < 1:
            raise ValueError(f"WindowWidth {width:g} < 1 is invalid for a LINEAR window")
        c, w = center - 0.5, width - 1
        if w == 0:  # a threshold
            return (x > c).astype(np.float64)
        return np.clip((x - c) / w + 0.5, 0.0, 1.0)
    if width <= 0:
        raise ValueError(f"WindowWidth {width:g} <= 0 is invalid for a {function} window")
    if function == "LINEAR_EXACT":
        return np.clip((x - center) / width + 0.5, 0.0, 1.0)
    if function == "SIGMOID":
        return 1.0 / (1.0 + np.exp(-4.0 * (x - center) / width))
    raise ValueError(f"unknown VOILUTFunction {function!r}")


def _pick_range(
    x_range: tuple[float, float],
    y_range: tuple[float, float] | None,
    path: PathLike,
) -> tuple[bool, float, float]:
    """Choose what to min-max scale: VOI output ``y`` or modality output ``x``.

    Returns ``(use_voi, lo, hi)``; ``lo == hi`` means a flat image (caller returns zeros).
    A window that sends every pixel to one value would give a blank image, so we
    fall back to ``x`` and say so.
    """
    if y_range is not None and y_range[1] > y_range[0]:
        return True, *y_range
    if x_range[1] <= x_range[0]:
        _warn(path, f"flat image (every pixel is {x_range[0]:g}); returning zeros")
        return False, *x_range
    if y_range is not None:
        _warn(
            path,
            f"the VOI LUT/window maps every pixel to one value ({y_range[0]:g}); "
            "ignoring it and scaling the modality output's full range instead",
        )
    return False, *x_range


def _scale_to_255(v: np.ndarray, lo: float, hi: float, invert: bool) -> np.ndarray:
    """Steps 3 and 4: min-max to [0, 1], invert for MONOCHROME1, times 255 (float64)."""
    if hi <= lo:
        return np.zeros(v.shape, dtype=np.float64)
    n = (v - lo) / (hi - lo)
    if invert:
        n = 1.0 - n
    return n * 255.0


def _round_uint8(f: np.ndarray) -> np.ndarray:
    """Round half to even (as np.rint and OpenCV do) and clip into uint8."""
    return np.clip(np.rint(f), 0, 255).astype(np.uint8)


def _is_mono1(ds: Dataset, fix_monochrome: bool) -> bool:
    """Should the output be inverted (MONOCHROME1: high values are dark)?"""
    return fix_monochrome and str(ds.PhotometricInterpretation).strip().upper() == "MONOCHROME1"


def _pipeline(
    stored: np.ndarray, ds: Dataset, path: PathLike, voi_lut: bool, fix_monochrome: bool
) -> np.ndarray:
    """The float64 reference pipeline over every pixel of ``stored``."""
    x = _modality(stored, ds)
    y = _voi(x, ds, path) if voi_lut and _has_voi(ds) else None
    x_range = (float(x.min()), float(x.max()))
    y_range = None if y is None else (float(y.min()), float(y.max()))
    use_voi, lo, hi = _pick_range(x_range, y_range, path)
    return _round_uint8(_scale_to_255(y if use_voi else x, lo, hi, _is_mono1(ds, fix_monochrome)))


def _lut_pipeline(
    stored: np.ndarray,
    ds: Dataset,
    path: PathLike,
    voi_lut: bool,
    fix_monochrome: bool,
    value_range: tuple[int, int] | None = None,
) -> np.ndarray:
    """The same pipeline, evaluated once per stored value into a table, then applied.

    Usually (rescale + a linear window, or no window) the table is a straight line
    clipped at 0 and 255; then a clamp and a scale in OpenCV (:func:`_apply_linear`)
    replace the table lookup. Otherwise the uint8 table is indexed with the image.
    """
    lo_s, hi_s = value_range or _minmax(stored)
    values = np.arange(lo_s, hi_s + 1, dtype=np.int64)  # every stored value in range
    x = _modality(values, ds)
    want_voi = voi_lut and _has_voi(ds)
    y = _voi(x, ds, path) if want_voi else None
    if _is_monotonic(ds, want_voi):
        present: slice | np.ndarray = slice(None)  # min/max at the ends, both present
    else:  # LUT sequences: only values that occur in the image count for min/max
        present = np.bincount(
            (stored.ravel().astype(np.int64) - lo_s), minlength=values.size
        ).astype(bool)
    x_range = (float(x[present].min()), float(x[present].max()))
    y_range = None if y is None else (float(y[present].min()), float(y[present].max()))
    use_voi, lo, hi = _pick_range(x_range, y_range, path)
    scaled = _scale_to_255(y if use_voi else x, lo, hi, _is_mono1(ds, fix_monochrome))
    line = _fit_clipped_line(values, scaled) if stored.dtype.itemsize == 2 else None
    if line is not None:
        return _apply_linear(stored, *line, lo_s, hi_s)
    part = _round_uint8(scaled)

    # Lay the table out so the image can index it directly with no arithmetic:
    # unsigned images index by value; signed ones by their bit pattern (uint view).
    itemsize = stored.dtype.itemsize
    if stored.dtype.kind == "u":
        table = np.zeros(max(hi_s + 1, 256 if itemsize == 1 else 0), dtype=np.uint8)
        table[lo_s : hi_s + 1] = part
        index = stored
    else:
        table = np.zeros(1 << (8 * itemsize), dtype=np.uint8)
        table[values.astype(f"u{itemsize}")] = part
        index = stored.view(f"u{itemsize}")
    if itemsize == 1:
        return cv2.LUT(np.ascontiguousarray(index), table)
    return _take(table, index)


def _fit_clipped_line(values: np.ndarray, scaled: np.ndarray) -> tuple[float, float] | None:
    """``(a, b)`` such that ``scaled == clip(a * values + b, 0, 255)``, or None.

    Fitted on the two extreme unclipped entries, then checked on *every* entry, so
    any table that is not such a line (VOI LUTs, sigmoid windows...) is refused and
    takes the lookup path. ``|a| < 0.5`` is required by :func:`_apply_linear`.
    """
    inside = np.flatnonzero((scaled > 0) & (scaled < 255))
    if inside.size < 2:
        return None
    i, j = inside[0], inside[-1]
    a = (scaled[j] - scaled[i]) / float(values[j] - values[i])
    b = scaled[i] - a * float(values[i])
    if not 0 < abs(a) < 0.5:
        return None
    if np.abs(np.clip(a * values + b, 0, 255) - scaled).max() > 1e-3:
        return None
    return float(a), float(b)


def _apply_linear(stored: np.ndarray, a: float, b: float, lo_s: int, hi_s: int) -> np.ndarray:
    """``round(clip(a * stored + b, 0, 255))`` as uint8 in two fast OpenCV passes.

    ``cv2.convertScaleAbs`` computes ``saturate(round(|a*x + b|))``: it clips at 255
    but *reflects* negatives instead of clipping them at 0. So we first clamp the
    input at ``k``, the stored value nearest to where the line crosses 0 from the
    non-negative side (``cv2.max`` for a rising line, ``cv2.min`` for a falling
    one, i.e. MONOCHROME1); at ``k`` the line is in ``[0, |a|)``, which rounds to
    0 because ``|a| < 0.5``.
    """
    root = -b / a  # where the line is 0
    if a > 0:
        k, clamp = int(np.ceil(root)), cv2.max
        needed = k > lo_s
    else:
        k, clamp = int(np.floor(root)), cv2.min
        needed = k < hi_s
    if not needed:  # no pixel is on the negative side: one pass
        return cv2.convertScaleAbs(stored, alpha=a, beta=b)
    # Clamp and convert block by block: the clamped block stays in cache instead of
    # a whole-image temporary going to memory and back (about 2x faster).
    out = np.empty(stored.shape, dtype=np.uint8)
    step = max(1, _BLOCK_PIXELS // max(1, stored.shape[1]))
    buf = np.empty((step, stored.shape[1]), dtype=stored.dtype)
    for r in range(0, stored.shape[0], step):
        block = stored[r : r + step]
        tmp = buf[: block.shape[0]]
        clamp(block, k, dst=tmp)
        cv2.convertScaleAbs(tmp, dst=out[r : r + step], alpha=a, beta=b)
    return out


def _take(table: np.ndarray, index: np.ndarray) -> np.ndarray:
    """``table[index]`` in row blocks: numpy first converts indices to int64, and doing
    that per block keeps the temporary in cache (about 2x faster than one big take)."""
    out = np.empty(index.shape, dtype=table.dtype)
    step = max(1, _BLOCK_PIXELS // max(1, index.shape[1]))
    for r in range(0, index.shape[0], step):
        np.take(table, index[r : r + step], out=out[r : r + step])
    return out


def _resize(img: np.ndarray, size: int | tuple[int, int] | None) -> np.ndarray:
    """Resize a uint8 image: int -> size x size, (h, w) -> that shape. INTER_AREA
    averages source pixels, the right filter for shrinking (no aliasing)."""
    if size is None:
        return img
    if isinstance(size, int | np.integer):
        h, w = int(size), int(size)
    else:
        h, w = (int(s) for s in size)
    if h <= 0 or w <= 0:
        raise ConfigError(f"size must be positive, got {size!r}")
    if (h, w) == img.shape:
        return img
    return cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)  # cv2 wants (width, height)


# ------------------------------------------------------------------------ public API


def read_xray(
    path: PathLike,
    voi_lut: bool = True,
    fix_monochrome: bool = True,
    size: int | tuple[int, int] | None = None,
) -> np.ndarray:
    """Read a grayscale DICOM radiograph as a ``uint8`` array of shape (H, W). Fast path.

    Args:
        path: the DICOM file.
        voi_lut: apply the VOI LUT Sequence or the first window (WindowCenter/Width).
            ``False`` shows the full range of the modality output.
        fix_monochrome: invert MONOCHROME1 images so that bone is bright, as in MONOCHROME2.
        size: resize after conversion to uint8 (cv2 INTER_AREA): an int gives a square
            ``size x size`` image (like the public "resized 512" datasets), an
            ``(h, w)`` tuple gives that shape, None keeps the original size.

    Returns:
        The image; equal to :func:`read_xray_reference` (then the same resize) within
        one gray level.

    Raises:
        DataNotFoundError: no such file (a ``FileNotFoundError``).
        DicomReadError: not a DICOM image, truncated, colour, or no decoder installed
            (the message says which package to install).
    """
    ds = _open(path)
    _check_image(ds, path)
    stored, value_range = _decode_stored(ds, path, fast=True)
    if stored.dtype.itemsize <= 2:
        img = _lut_pipeline(stored, ds, path, voi_lut, fix_monochrome, value_range)
    else:  # 32-bit data (e.g. RT dose): too many values for a table, compute directly
        img = _pipeline(stored, ds, path, voi_lut, fix_monochrome)
    return _resize(img, size)


def read_xray_reference(
    path: PathLike, voi_lut: bool = True, fix_monochrome: bool = True
) -> np.ndarray:
    """Read a DICOM radiograph with the plain float64 pipeline (the truth for tests).

    Decodes with pydicom's ``pixel_array`` machinery, applies pydicom's Modality LUT
    and VOI functions to every pixel, inverts MONOCHROME1, and min-max scales to
    ``uint8`` with rounding. Same arguments, warnings and errors as :func:`read_xray`,
    without ``size``.
    """
    ds = _open(path)
    _check_image(ds, path)
    stored, _ = _decode_stored(ds, path, fast=False)
    return _pipeline(stored, ds, path, voi_lut, fix_monochrome)


# Technical tags only: an allow-list, so patient tags (names, IDs, birth dates,
# age, sex) and identifying ones (dates, institution, UIDs) can never leak out.
_HEADER_TAGS = (
    "Modality",
    "BodyPartExamined",
    "ViewPosition",
    "Rows",
    "Columns",
    "NumberOfFrames",
    "SamplesPerPixel",
    "PhotometricInterpretation",
    "BitsAllocated",
    "BitsStored",
    "HighBit",
    "PixelRepresentation",
    "RescaleSlope",
    "RescaleIntercept",
    "RescaleType",
    "WindowCenter",
    "WindowWidth",
    "VOILUTFunction",
    "PresentationLUTShape",
    "PixelSpacing",
    "ImagerPixelSpacing",
    "Manufacturer",
    "ManufacturerModelName",
)


def _plain(value: Any) -> Any:
    """pydicom values (DSfloat, IS, MultiValue, PersonName...) -> plain Python types."""
    if value is None or value == "":
        return None
    if isinstance(value, pydicom.multival.MultiValue | list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    return str(value)


def read_header(path: PathLike) -> dict[str, Any]:
    """Technical DICOM attributes of a file, read without touching the pixel data.

    Useful for a dataset overview (bit depths, photometric interpretation, windows,
    transfer syntaxes) and to see why a file renders oddly. Every key is always
    present (None when the file lacks it), so a list of headers makes a tidy
    DataFrame. Patient tags are never returned.
    """
    ds = _open(path, header_only=True)
    header: dict[str, Any] = {k: _plain(ds.get(k)) for k in _HEADER_TAGS}
    ts = ds.file_meta.TransferSyntaxUID
    header["TransferSyntaxUID"] = str(ts)
    header["TransferSyntaxName"] = ts.name
    header["IsCompressed"] = bool(ts.is_compressed)
    header["HasModalityLUTSequence"] = bool(ds.get("ModalityLUTSequence"))
    header["HasVOILUTSequence"] = bool(ds.get("VOILUTSequence"))
    return header


def dicom_shape(path: PathLike) -> tuple[int, int]:
    """``(rows, cols)`` of a DICOM image from its header, without decoding any pixels.

    This is what the meta tables store as ``dim0`` (rows = height) and ``dim1``
    (columns = width), needed to map boxes between original and resized pixels.
    """
    ds = _open(path, header_only=True)
    rows, cols = ds.get("Rows"), ds.get("Columns")
    if rows in (None, "") or cols in (None, ""):
        raise DicomReadError(path, "no Rows/Columns in the header: not an image")
    return int(rows), int(cols)


# --------------------------------------------------------------------------- folders of DICOMs

DICOM_SUFFIXES = (".dicom", ".dcm")


def list_dicoms(folder: Path) -> list[Path]:
    """``*.dicom`` / ``*.dcm`` files of a folder, sorted by name (hidden files skipped)."""
    return sorted(
        p
        for p in folder.iterdir()
        if p.suffix.lower() in DICOM_SUFFIXES and not p.name.startswith(".") and p.is_file()
    )


def shared_id_problem(folder: Path, files: Iterable[Path]) -> str | None:
    """Why ``files`` of ``folder`` cannot all be images (two give one id), or None.

    The image id is the file name without its extension, so ``x.dicom`` and
    ``x.dcm`` are both image ``x``: converting both would write one PNG twice and
    list ``x`` twice in the meta table. Neither can be chosen for the user.
    """
    by_id: dict[str, list[str]] = {}
    for path in files:
        by_id.setdefault(Path(path).stem, []).append(Path(path).name)
    shared = [sorted(names) for names in by_id.values() if len(names) > 1]
    if not shared:
        return None
    shown = "; ".join(" and ".join(names) for names in sorted(shared)[:5])
    more = f"; ... and {len(shared) - 5} more" if len(shared) > 5 else ""
    return (
        f"{folder}: {len(shared)} image id(s) have more than one file ({shown}{more}); "
        "the image id is the file name without its extension: keep one file per image"
    )
