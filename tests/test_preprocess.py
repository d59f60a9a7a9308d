"""DICOM -> PNG preprocessing: sizes, meta, pixels, resuming after a real kill, bad inputs."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from cxrkit.dicom import read_xray
from cxrkit.paths import DataNotFoundError
from cxrkit.preprocess import (
    STATE_DIR,
    PreprocessError,
    convert_one,
    ensure_preprocessed,
    output_shape,
    png_is_complete,
    preprocess_dicoms,
)

PATIENT = {
    "PatientName": "Doe^Jane",
    "PatientBirthDate": "19570704",
    "PatientAge": "061Y",
    "InstitutionName": "St Elsewhere Hospital",
}
ROOT = Path(__file__).resolve().parents[1]


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


@pytest.fixture()
def src(tmp_path) -> Path:
    """5 train + 2 test DICOMs of different shapes (one MONOCHROME1, one 14-bit)."""
    root = tmp_path / "src"
    shapes = [(200, 160), (160, 200), (300, 256), (128, 128), (257, 199)]
    for i, (r, c) in enumerate(shapes):
        write_dicom(
            root / "train" / f"tr{i}.dicom", r, c, seed=i, mono1=i == 1, bits=14 if i == 2 else 12
        )
    for i in range(2):
        write_dicom(root / "test" / f"te{i}.dicom", 180 + i, 150, seed=10 + i)
    return root


def _files(folder: Path) -> dict[str, bytes]:
    """Every output file except the resume journal, by relative path."""
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and STATE_DIR not in p.parts
    }


def _run_cli(*args: str, **kw) -> subprocess.Popen:
    env = {**os.environ, "TQDM_DISABLE": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "cxrkit", "preprocess", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


# --------------------------------------------------------------------------- basics


def test_pngs_meta_and_pixels(src, tmp_path):
    out = tmp_path / "out"
    report = preprocess_dicoms(src, out, size=64, workers=1)
    assert (report.converted, report.skipped, report.failed) == (7, 0, [])
    assert "7 converted" in report.summary()
    for split_name in ("train", "test"):
        meta = pd.read_csv(out / f"{split_name}_meta.csv")
        dicoms = sorted((src / split_name).glob("*.dicom"))
        assert list(meta.columns) == ["image_id", "dim0", "dim1"]
        assert meta["image_id"].tolist() == [p.stem for p in dicoms]
        for path, row in zip(dicoms, meta.itertuples(), strict=True):
            png = cv2.imread(str(out / split_name / f"{path.stem}.png"), cv2.IMREAD_UNCHANGED)
            assert png.dtype == np.uint8 and png.shape == (64, 64)  # 8-bit gray, square
            np.testing.assert_array_equal(png, read_xray(path, size=64))
            ds_rows, ds_cols = read_xray(path).shape
            assert (row.dim0, row.dim1) == (ds_rows, ds_cols)  # ORIGINAL rows, columns
    assert not (out / "errors.csv").exists()


def test_keep_aspect_keeps_proportions(src, tmp_path):
    out = tmp_path / "out"
    preprocess_dicoms(src, out, size=64, workers=1, splits=("train",), keep_aspect=True)
    assert not (out / "test").exists() and not (out / "test_meta.csv").exists()
    meta = pd.read_csv(out / "train_meta.csv")
    for row in meta.itertuples():
        png = cv2.imread(str(out / "train" / f"{row.image_id}.png"), cv2.IMREAD_GRAYSCALE)
        assert png.shape == output_shape(row.dim0, row.dim1, 64, keep_aspect=True)
        assert max(png.shape) == 64
        assert abs(png.shape[0] / png.shape[1] - row.dim0 / row.dim1) < 0.05
    assert output_shape(2880, 2453, 512, keep_aspect=True) == (512, 436)


def test_parallel_workers_give_identical_files(src, tmp_path):
    preprocess_dicoms(src, tmp_path / "one", size=48, workers=1)
    report = preprocess_dicoms(src, tmp_path / "two", size=48, workers=2)
    assert report.converted == 7
    assert _files(tmp_path / "one") == _files(tmp_path / "two")


def test_no_patient_data_is_copied(src, tmp_path):
    out = tmp_path / "out"
    preprocess_dicoms(src, out, size=32, workers=1)
    for path in out.rglob("*"):
        assert path.suffix.lower() not in (".dicom", ".dcm")
        if path.is_file():
            data = path.read_bytes()
            for value in (*PATIENT.values(), "Doe", "DICM"):
                assert value.encode() not in data, (value, path)
            if path.suffix == ".png":  # pixels only: no text/EXIF chunk could carry a tag
                assert _png_chunks(data) == ["IHDR", "IDAT", "IEND"], path


def _png_chunks(data: bytes) -> list[str]:
    """Distinct chunk types of a PNG file, in order."""
    chunks, pos = [], 8
    while pos < len(data):
        length = int.from_bytes(data[pos : pos + 4], "big")
        kind = data[pos + 4 : pos + 8].decode("ascii")
        if not chunks or chunks[-1] != kind:
            chunks.append(kind)
        pos += 12 + length
    return chunks


# --------------------------------------------------------------------------- resuming


def test_second_run_skips_and_redoes_what_is_missing(src, tmp_path):
    out = tmp_path / "out"
    preprocess_dicoms(src, out, size=32, workers=1)
    reference = _files(out)
    report = preprocess_dicoms(src, out, size=32, workers=1)
    assert (report.converted, report.skipped) == (0, 7)
    # a deleted PNG, a truncated PNG (e.g. copied by hand), a stray temp file of a killed run
    (out / "train" / "tr0.png").unlink()
    data = (out / "train" / "tr1.png").read_bytes()
    (out / "train" / "tr1.png").write_bytes(data[: len(data) // 2])
    assert not png_is_complete(out / "train" / "tr1.png")
    (out / "train" / ".tr2.png.abc123.tmp.png").write_bytes(b"half")
    report = preprocess_dicoms(src, out, size=32, workers=1)
    assert (report.converted, report.skipped) == (2, 5)
    assert _files(out) == reference


def test_other_size_in_the_same_folder_is_refused(src, tmp_path):
    out = tmp_path / "out"
    preprocess_dicoms(src, out, size=32, workers=1, splits=("test",))
    with pytest.raises(PreprocessError, match="another output folder"):
        preprocess_dicoms(src, out, size=64, workers=1)


@pytest.mark.slow
def test_resume_after_a_real_kill_matches_an_uninterrupted_run(tmp_path):
    """SIGKILL the command line while it converts, run it again, compare byte for byte."""
    src = tmp_path / "src"
    n = 24
    for i in range(n):  # JPEG 2000: slow enough to decode that we can kill in the middle
        write_dicom(src / "train" / f"img{i:02d}.dicom", 512, 448, seed=i, compress=True)
    reference = tmp_path / "reference"
    preprocess_dicoms(src, reference, size=64, workers=1)

    out = tmp_path / "out"
    proc = _run_cli(str(src), str(out), "--size", "64", "--workers", "1")
    deadline = time.monotonic() + 60
    n_done = 0
    while time.monotonic() < deadline and proc.poll() is None:
        n_done = len(list((out / "train").glob("*.png"))) if (out / "train").is_dir() else 0
        if n_done >= 3:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.002)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, f"not killed midway: {proc.communicate()}"
    assert n_done < n
    assert not (out / "train_meta.csv").exists()  # written only at the end

    proc = _run_cli(str(src), str(out), "--size", "64", "--workers", "1")
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    assert "already done" in stdout
    assert _files(out) == _files(reference)
    pngs = sorted((out / "train").glob("*.png"))
    assert len(pngs) == n
    assert all(cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) is not None for p in pngs)
    assert not [p for p in out.rglob(".*") if STATE_DIR not in p.parts]  # no temp files


# --------------------------------------------------------------------------- bad inputs


def test_broken_dicoms_are_listed_and_the_rest_converted(src, tmp_path):
    (src / "train" / "garbage.dicom").write_bytes(b"this is not a DICOM file at all" * 10)
    good = (src / "train" / "tr2.dicom").read_bytes()
    (src / "train" / "truncated.dicom").write_bytes(good[: len(good) // 2])
    out = tmp_path / "out"
    proc = _run_cli(str(src), str(out), "--size", "32", "--workers", "2")
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 1, (stdout, stderr)
    assert "2 failed" in stdout and "garbage.dicom" in stdout and "truncated.dicom" in stdout
    errors = pd.read_csv(out / "errors.csv")
    assert sorted(Path(p).name for p in errors["path"]) == ["garbage.dicom", "truncated.dicom"]
    assert errors["reason"].str.len().min() > 5  # a reason, not an empty cell
    meta = pd.read_csv(out / "train_meta.csv")
    assert meta["image_id"].tolist() == [f"tr{i}" for i in range(5)]
    assert sorted(p.stem for p in (out / "train").glob("*.png")) == meta["image_id"].tolist()


def test_missing_or_empty_folders_are_clear_errors(tmp_path):
    (tmp_path / "nothing").mkdir()
    with pytest.raises(DataNotFoundError, match="train/ or test/"):
        preprocess_dicoms(tmp_path / "nothing", tmp_path / "out")
    (tmp_path / "empty" / "train").mkdir(parents=True)
    with pytest.raises(DataNotFoundError, match="no .dicom files"):
        preprocess_dicoms(tmp_path / "empty", tmp_path / "out")
    with pytest.raises(DataNotFoundError, match="does not exist"):
        preprocess_dicoms(tmp_path / "missing", tmp_path / "out")
    proc = _run_cli(str(tmp_path / "nothing"), str(tmp_path / "out"))
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 2 and "train/ or test/" in stderr and "Traceback" not in stderr


def test_convert_one_raises_for_a_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        convert_one(str(tmp_path / "nope.dicom"), str(tmp_path / "nope.png"), 32, False)
    assert not list(tmp_path.iterdir())


# --------------------------------------------------------------------------- notebooks


def test_ensure_preprocessed_makes_once_and_reuses(src, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CXRKIT_WORK", str(tmp_path / "work"))
    shutil.copy(src / "train" / "tr0.dicom", src / "train" / "tr0.dicom.bak")  # ignored suffix
    (src / "train.csv").write_text("image_id,class_name,class_id,rad_id,x_min,y_min,x_max,y_max\n")
    out = ensure_preprocessed(src, size=32, workers=1, verbose=True)
    assert out.parent == tmp_path / "work" / "preprocessed-32"
    assert len(list((out / "train").glob("*.png"))) == 5
    assert "7 converted" in capsys.readouterr().out
    mtime = (out / "train" / "tr0.png").stat().st_mtime_ns
    assert ensure_preprocessed(src, size=32, workers=1, verbose=True) == out
    assert (out / "train" / "tr0.png").stat().st_mtime_ns == mtime  # reused, not redone
    assert capsys.readouterr().out == ""  # nothing converted: nothing to say


def test_ensure_preprocessed_is_silent_by_default(src, tmp_path, monkeypatch, capsys):
    """Notebooks call it: first and later calls must print the same (nothing)."""
    monkeypatch.setenv("CXRKIT_WORK", str(tmp_path / "work"))
    (src / "train.csv").write_text("image_id,class_name,class_id,rad_id,x_min,y_min,x_max,y_max\n")
    out = ensure_preprocessed(src, size=32, workers=1)
    assert len(list((out / "train").glob("*.png"))) == 5
    assert capsys.readouterr().out == ""


def test_sample_round_trip(sample_data, preprocessed):
    """The conftest fixture: every sample DICOM became a 256 px PNG with its true size."""
    from cxrkit.dicom import dicom_shape

    for split_name in ("train", "test"):
        meta = pd.read_csv(preprocessed / f"{split_name}_meta.csv")
        dicoms = sorted((sample_data / split_name).glob("*.dicom"))
        assert len(meta) == len(dicoms)
        for path, row in zip(dicoms[:3], meta.itertuples(), strict=False):
            assert (row.dim0, row.dim1) == dicom_shape(path)
            png = cv2.imread(str(preprocessed / split_name / f"{row.image_id}.png"), 0)
            np.testing.assert_array_equal(png, read_xray(path, size=256))


def test_workers_do_not_deadlock_after_opencv_ran_in_the_parent(src, tmp_path):
    """Regression: with ``fork``, a worker inherited OpenCV's busy thread-pool locks
    and hung forever in its first cv2 call. Run in a subprocess with a timeout."""
    script = (
        "import time, cv2, numpy as np\n"
        "from cxrkit.preprocess import preprocess_dicoms\n"
        "if __name__ == '__main__':\n"
        "    for _ in range(3):\n"
        "        cv2.resize(np.ones((3000, 3000), np.uint8), (512, 512), interpolation=cv2.INTER_AREA)\n"
        "    time.sleep(0.5)  # OpenCV's idle threads now sleep on a condition variable\n"
        f"    r = preprocess_dicoms({str(src)!r}, {str(tmp_path / 'out')!r}, size=32, workers=2)\n"
        "    print(r.converted)\n"
    )
    (tmp_path / "run.py").write_text(script)
    proc = subprocess.Popen(
        [sys.executable, str(tmp_path / "run.py")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group: we can kill the workers too
    )
    try:
        stdout, stderr = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail("preprocess_dicoms(workers=2) hung after OpenCV ran in the parent")
    assert proc.returncode == 0, stderr
    assert stdout.strip() == "7"
