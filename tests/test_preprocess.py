"""DICOM -> PNG preprocessing: sizes, meta, pixels, resuming, bad inputs (the command: test_cli.py)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys

import cv2
import numpy as np
import pandas as pd
import pytest
from helpers import PATIENT, output_files

from cxrkit.dicom import read_xray
from cxrkit.paths import DataNotFoundError
from cxrkit.preprocess import (
    PreprocessError,
    convert_one,
    ensure_preprocessed,
    output_shape,
    png_is_complete,
    preprocess_dicoms,
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
    assert output_files(tmp_path / "one") == output_files(tmp_path / "two")


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
    reference = output_files(out)
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
    assert output_files(out) == reference


def test_other_size_in_the_same_folder_is_refused(src, tmp_path):
    out = tmp_path / "out"
    preprocess_dicoms(src, out, size=32, workers=1, splits=("test",))
    with pytest.raises(PreprocessError, match="another output folder"):
        preprocess_dicoms(src, out, size=64, workers=1)


# --------------------------------------------------------------------------- bad inputs


def test_missing_or_empty_folders_are_clear_errors(tmp_path):
    (tmp_path / "nothing").mkdir()
    with pytest.raises(DataNotFoundError, match="train/ or test/"):
        preprocess_dicoms(tmp_path / "nothing", tmp_path / "out")
    (tmp_path / "empty" / "train").mkdir(parents=True)
    with pytest.raises(DataNotFoundError, match="no .dicom files"):
        preprocess_dicoms(tmp_path / "empty", tmp_path / "out")
    with pytest.raises(DataNotFoundError, match="does not exist"):
        preprocess_dicoms(tmp_path / "missing", tmp_path / "out")


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
