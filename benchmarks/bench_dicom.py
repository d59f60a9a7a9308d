"""Benchmark: cxrkit.dicom.read_xray against the seed notebook's reader.

Writes one VinBigData-sized synthetic DICOM (2880 x 2453, 14 bits stored in 16,
uncompressed Explicit VR Little Endian, MONOCHROME2, with a window) to a temp
folder and times, as the median of ``--repeat`` runs:

(a) pydicom decode alone: ``dcmread`` + ``pixel_array`` (the floor for any reader
    built on pydicom),
(b) the seed's ``read_xray`` + ``cv2.resize(..., (512, 512))``,
(c) ``cxrkit.dicom.read_xray(path, size=512)``.

It checks that (c) equals the float reference followed by the same resize within
one gray level, then prints PASS/FAIL for the two targets: seed/cxrkit >= 10x and
cxrkit/decode <= 2x. Run: ``python benchmarks/bench_dicom.py [--repeat N]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import apply_voi_lut
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from cxrkit.dicom import read_xray, read_xray_reference

ROWS, COLS, BITS_STORED, SIZE = 2880, 2453, 14, 512


def _seed_read_xray(
    path: str | Path, voi_lut: bool = True, fix_monochrome: bool = True
) -> np.ndarray:
    """The seed notebook's reader, as it was (pydicom 3 import path). Baseline only.

    Known problems, fixed in cxrkit: ignores the Modality LUT (rescale), divides by
    zero on a flat image, truncates instead of rounding, and works in float64 on
    every pixel.
    """
    dicom = pydicom.dcmread(path)
    # VOI LUT (if available by DICOM device) is used to transform raw DICOM data to
    # "human-friendly" view
    if voi_lut:
        data = apply_voi_lut(dicom.pixel_array, dicom)
    else:
        data = dicom.pixel_array
    # depending on this value, X-ray may look inverted - fix that:
    if fix_monochrome and dicom.PhotometricInterpretation == "MONOCHROME1":
        data = np.amax(data) - data
    data = data - np.min(data)
    data = data / np.max(data)
    data = (data * 255).astype(np.uint8)
    return data


def write_synthetic_xray(path: Path, seed: int = 0) -> Path:
    """A chest-X-ray-sized 14-bit image: smooth anatomy-like blobs plus noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:ROWS, 0:COLS].astype(np.float32)
    img = 4000 + 6000 * np.exp(-(((xx - COLS * 0.3) / 500) ** 2 + ((yy - ROWS * 0.5) / 900) ** 2))
    img += 6000 * np.exp(-(((xx - COLS * 0.7) / 500) ** 2 + ((yy - ROWS * 0.5) / 900) ** 2))
    img += rng.normal(0, 150, size=img.shape)
    arr = np.clip(img, 0, 2**BITS_STORED - 1).astype(np.uint16)

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.set_pixel_data(arr, "MONOCHROME2", BITS_STORED)
    ds.WindowCenter = 8000
    ds.WindowWidth = 9000
    ds.save_as(path, enforce_file_format=True)
    return path


def _median_seconds(fns: list[Callable[[], object]], repeat: int, blocks: int = 2) -> list[float]:
    """Median time of each function.

    Each function runs ``repeat`` times back to back (a warm loop, as when
    preprocessing a folder), and the whole sequence a, b, c is done ``blocks``
    times, so that load from other processes on a shared machine hits all alike.
    """
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(blocks):
        for fn, bucket in zip(fns, times, strict=True):
            fn()  # warm-up: imports, page cache, allocator
            for _ in range(repeat):
                start = time.perf_counter()
                fn()
                bucket.append(time.perf_counter() - start)
    return [statistics.median(bucket) for bucket in times]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--repeat", type=int, default=7, help="timed runs per reader and block (median)"
    )
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        path = write_synthetic_xray(Path(tmp) / "synthetic.dicom")
        print(
            f"file: {ROWS} x {COLS}, {BITS_STORED}-bit in 16, uncompressed, "
            f"{path.stat().st_size / 2**20:.1f} MiB; median of 2 x {args.repeat} runs"
        )

        def decode() -> np.ndarray:
            return pydicom.dcmread(path).pixel_array

        def seed() -> np.ndarray:
            return cv2.resize(_seed_read_xray(path), (SIZE, SIZE), interpolation=cv2.INTER_AREA)

        def fast() -> np.ndarray:
            return read_xray(path, size=SIZE)

        t_decode, t_seed, t_fast = _median_seconds([decode, seed, fast], args.repeat)

        reference = cv2.resize(
            read_xray_reference(path), (SIZE, SIZE), interpolation=cv2.INTER_AREA
        )
        max_diff = int(np.abs(fast().astype(np.int16) - reference).max())

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"{os.cpu_count()} CPUs, OpenCV threads {cv2.getNumThreads()}, load average {load:.2f}")
    print(f"(a) pydicom decode (dcmread + pixel_array): {t_decode * 1e3:8.1f} ms")
    print(f"(b) seed read_xray + cv2.resize 512:        {t_seed * 1e3:8.1f} ms")
    print(f"(c) cxrkit read_xray(size=512):             {t_fast * 1e3:8.1f} ms")
    print(f"max |cxrkit - reference| after resize: {max_diff} gray level(s)")
    speedup, overhead = t_seed / t_fast, t_fast / t_decode
    checks = [
        (max_diff <= 1, f"matches the float reference within 1 gray level (max diff {max_diff})"),
        (speedup >= 10, f"seed / cxrkit = {speedup:.1f}x (target >= 10x)"),
        (overhead <= 2, f"cxrkit / decode = {overhead:.2f}x (target <= 2x)"),
    ]
    for ok, text in checks:
        print(f"{'PASS' if ok else 'FAIL'}: {text}")
    return 0 if all(ok for ok, _ in checks) else 1


if __name__ == "__main__":
    raise SystemExit(main())
