"""Builders shared by several test files: small annotation tables and DICOMs.

Fixtures live in ``conftest.py``; these are plain functions and constants.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from ensemble_boxes import weighted_boxes_fusion
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from cxrkit.annotations import BOX_COLUMNS, TRAIN_COLUMNS
from cxrkit.preprocess import STATE_DIR

# ------------------------------------------------------------------ annotation tables

HEADER = ",".join(TRAIN_COLUMNS)
GOOD_ROWS = [
    "img_a,Cardiomegaly,3,R1,10,20,110,120",
    "img_a,Cardiomegaly,3,R2,12,22,108,118",
    "img_a,No finding,14,R3,,,,",
    "img_b,No finding,14,R1,,,,",
    "img_b,No finding,14,R2,,,,",
    "img_b,No finding,14,R3,,,,",
    "img_c,Nodule/Mass,8,R4,5,5,15,15",
    "img_c,Aortic enlargement,0,R5,40,10,60,30",
    "img_c,Nodule/Mass,8,R5,6,6,16,16",
]
META = pd.DataFrame(
    {"image_id": ["img_a", "img_b", "img_c"], "dim0": [200, 300, 100], "dim1": [150, 300, 120]}
)


def write_csv(folder: Path, rows: list[str], name: str = "train.csv", header: str = HEADER) -> Path:
    path = folder / name
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def with_row(index: int, row: str) -> list[str]:
    rows = list(GOOD_ROWS)
    rows[index] = row
    return rows


def write_blank_dicom(path: Path, rows: int, cols: int) -> None:
    """A minimal 8-bit DICOM of ``rows`` x ``cols`` black pixels (only its size matters)."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    file_meta = FileMetaDataset()
    file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    file_meta.MediaStorageSOPInstanceUID = generate_uid()
    file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=file_meta, preamble=b"\0" * 128)
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = file_meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = bytes(rows * cols)
    ds.save_as(path, enforce_file_format=True)


def direct_wbf(ann: pd.DataFrame, meta: pd.DataFrame, iou_thr: float = 0.4) -> pd.DataFrame:
    """Reference: call ensemble_boxes by hand, one list per radiologist, image by image."""
    sizes = meta.set_index("image_id")
    rows = []
    for image_id, image in ann.groupby("image_id", sort=False):
        findings = image[image["class_id"] != 14]
        if findings.empty:
            rows.append((image_id, 14, np.nan, np.nan, np.nan, np.nan))
            continue
        h, w = sizes.loc[image_id, "dim0"], sizes.loc[image_id, "dim1"]
        boxes_list, scores_list, labels_list = [], [], []
        for _, reader in image.groupby("rad_id", sort=False):
            reader = reader[reader["class_id"] != 14]
            boxes_list.append((reader[BOX_COLUMNS].to_numpy() / [w, h, w, h]).tolist())
            scores_list.append([1.0] * len(reader))
            labels_list.append(reader["class_id"].tolist())
        boxes, _, labels = weighted_boxes_fusion(
            boxes_list, scores_list, labels_list, iou_thr=iou_thr, skip_box_thr=0.0
        )
        for box, label in zip(boxes * [w, h, w, h], labels, strict=True):
            rows.append((image_id, int(label), *box))
    return pd.DataFrame(rows, columns=["image_id", "class_id", *BOX_COLUMNS])


def assert_same_boxes(ours: pd.DataFrame, reference: pd.DataFrame) -> None:
    key = ["image_id", "class_id", *BOX_COLUMNS]
    a = ours[key].sort_values(key, ignore_index=True)
    b = reference[key].sort_values(key, ignore_index=True)
    assert a["image_id"].tolist() == b["image_id"].tolist()
    assert a["class_id"].tolist() == b["class_id"].tolist()
    np.testing.assert_allclose(
        a[BOX_COLUMNS].to_numpy(float), b[BOX_COLUMNS].to_numpy(float), rtol=0, atol=1e-9
    )


# ---------------------------------------------------------- DICOMs to preprocess

PATIENT = {
    "PatientName": "Doe^Jane",
    "PatientBirthDate": "19570704",
    "PatientAge": "061Y",
    "InstitutionName": "St Elsewhere Hospital",
}


def write_dicom(
    path: Path,
    rows: int,
    cols: int,
    *,
    seed: int = 0,
    bits: int = 12,
    mono1: bool = False,
    compress: bool = False,
) -> Path:
    """A small radiograph-like DICOM (smooth gradient + noise) with patient tags."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:rows, 0:cols]
    arr = (np.sin(x / 37 + seed) + np.cos(y / 53)) * 0.25 + 0.5
    arr = (arr * (2**bits - 1) + rng.normal(0, 20, arr.shape)).clip(0, 2**bits - 1)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = (
        meta.MediaStorageSOPClassUID,
        meta.MediaStorageSOPInstanceUID,
    )
    for key, value in PATIENT.items():
        setattr(ds, key, value)
    ds.PatientID, ds.PatientSex = path.stem, "F"
    ds.Modality, ds.Rows, ds.Columns, ds.SamplesPerPixel = "DX", rows, cols, 1
    ds.PhotometricInterpretation = "MONOCHROME1" if mono1 else "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, bits, bits - 1, 0
    ds.PixelData = arr.astype(np.uint16).tobytes()
    if compress:
        ds.compress(JPEG2000Lossless)  # slow to decode, like part of the real data
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def output_files(folder: Path) -> dict[str, bytes]:
    """Every output file except the resume journal, by relative path."""
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and STATE_DIR not in p.parts
    }


def loaders(fused, preprocessed, size=128, batch_size=4, seed=0):
    """Seeded train/valid DataLoaders over the small sample (a quarter validates)."""
    import torch
    from torch.utils.data import DataLoader

    from cxrkit.data import XrayDataset, collate_fn, split
    from cxrkit.transforms import train_transforms, valid_transforms

    train_ids, valid_ids = split(fused, valid_fraction=0.25, seed=seed)
    ids = fused["image_id"]
    train_ds = XrayDataset(
        fused[ids.isin(train_ids)], preprocessed / "train", train_transforms(size, seed=seed)
    )
    valid_ds = XrayDataset(
        fused[ids.isin(valid_ids)], preprocessed / "train", valid_transforms(size)
    )
    g = torch.Generator().manual_seed(seed)
    train = DataLoader(train_ds, batch_size, shuffle=True, collate_fn=collate_fn, generator=g)
    valid = DataLoader(valid_ds, batch_size, shuffle=False, collate_fn=collate_fn)
    return train, valid


def small_model(size=128):
    """A cxr_small detector with fixed initial weights."""
    import torch

    from cxrkit.models import build_model

    torch.manual_seed(0)
    return build_model("cxr_small", min_size=size, max_size=size)


# ------------------------------------------------------------------ the command line
def run_cli(*args: str | Path, timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
    """``python -m cxrkit ARGS`` in a subprocess, as a user runs it: text output captured,
    progress bars off, one torch thread (several test processes share two cores)."""
    return subprocess.run(
        [sys.executable, "-m", "cxrkit", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1", **env},
    )


def run_main(*args: str | Path) -> subprocess.CompletedProcess:
    """``cxrkit.cli.main(ARGS)`` in this process, its output captured: the same exit
    code and lines as :func:`run_cli` without starting Python and torch again (about
    4 s a command). For refusals; a test of warnings, kills or several processes
    needs the real subprocess (pytest captures warnings before they reach stderr)."""
    import contextlib
    import io

    from cxrkit.cli import main

    out, err = io.StringIO(), io.StringIO()
    argv = [str(a) for a in args]
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse's refusals
            code = exc.code if isinstance(exc.code, int) else 1
    return subprocess.CompletedProcess(argv, code, out.getvalue(), err.getvalue())


def one_line_error(proc: subprocess.CompletedProcess, command: str) -> str:
    """The stderr of a refused command: exit 2, one line, no traceback; returned."""
    err = proc.stderr
    assert proc.returncode == 2, (proc.returncode, proc.stdout, err)
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith(f"cxrkit {command}: error: "), err
    return err


def crash_in_epoch(monkeypatch, epoch: int):
    """Make :func:`cxrkit.fit.train_one_epoch` raise ``RuntimeError("simulated crash")``
    when it starts epoch ``epoch`` (a process killed mid-run); returns the real function,
    for the test to put back before it resumes."""
    import cxrkit.fit

    real_epoch = cxrkit.fit.train_one_epoch

    def crash(*args, **kwargs):
        if args[4] == epoch:
            raise RuntimeError("simulated crash")
        return real_epoch(*args, **kwargs)

    monkeypatch.setattr(cxrkit.fit, "train_one_epoch", crash)
    return real_epoch
