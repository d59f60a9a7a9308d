"""The command line, ``python -m cxrkit COMMAND`` and ``cxrkit.cli.main``: every command's tests.

Exit codes, one-line errors on stderr, and each command's output files. Helpers
that build inputs are in ``helpers.py``; fixtures in ``conftest.py``.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import pandas as pd
import pytest
from helpers import (
    GOOD_ROWS,
    META,
    assert_same_boxes,
    direct_wbf,
    output_files,
    with_row,
    write_blank_dicom,
    write_csv,
    write_dicom,
)

from cxrkit.annotations import load_annotations
from cxrkit.eda import radiologist_agreement
from cxrkit.errors import CxrkitError
from cxrkit.preprocess import STATE_DIR, preprocess_dicoms

ROOT = Path(__file__).resolve().parents[1]


def _run_preprocess(*args: str, **kw) -> subprocess.Popen:
    """Start ``python -m cxrkit preprocess ARGS`` without waiting for it."""
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


# --------------------------------------------------------------------------- help


def _subcommands() -> set[str]:
    """The subcommand names argparse knows, read from the parser itself."""
    from cxrkit.cli import build_parser

    actions = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    assert len(actions) == 1, actions
    return set(actions[0].choices)


def test_cli_help_lists_every_command():
    """``--help`` lists exactly the parser's subcommands, one per line of its command list."""
    out = subprocess.run(
        [sys.executable, "-m", "cxrkit", "--help"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "COLUMNS": "100"},
    ).stdout
    commands = _subcommands()
    assert {"sample", "fuse", "preprocess", "train", "predict", "evaluate"} <= commands
    # argparse prints "  {a,b,...}" then one "    name   help" line per command
    listed = out.split("positional arguments:", 1)[1].split("\n\n", 1)[0]
    choices = re.search(r"^  \{([^}]*)\}", listed, re.MULTILINE)
    assert choices, out
    assert set(choices[1].split(",")) == commands
    described = re.findall(r"^ {4}(\w[\w-]*)\s", listed, re.MULTILINE)
    assert sorted(described) == sorted(commands), out


# --------------------------------------------------------------------------- errors


def test_cli_reports_any_cxrkit_error_in_one_line(monkeypatch, capsys):
    """Not a list of known classes: any CxrkitError, even a new one, is bad input."""
    from cxrkit import cli

    class BrandNewError(CxrkitError):
        pass

    def boom(args):
        raise BrandNewError("the input is wrong")

    monkeypatch.setattr(cli, "_cmd_evaluate", boom)  # build_parser looks it up on each call
    assert cli.main(["evaluate", "s.csv", "t.csv"]) == 2
    err = capsys.readouterr().err
    assert err == "cxrkit evaluate: error: the input is wrong\n"


def test_cli_lets_a_bug_through(monkeypatch):
    from cxrkit import cli

    def bug(args):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(cli, "_cmd_evaluate", bug)  # build_parser looks it up on each call
    with pytest.raises(ZeroDivisionError):
        cli.main(["evaluate", "s.csv", "t.csv"])


def test_cli_bad_input_is_one_stderr_line(tmp_path):
    """A real bad input (a box on an image the meta table lacks): one line, exit 2."""
    train = tmp_path / "train.csv"
    train.write_text(
        "image_id,class_name,class_id,rad_id,x_min,y_min,x_max,y_max\n"
        "img_a,Cardiomegaly,3,R1,10,20,110,120\n"
        "img_b,Cardiomegaly,3,R1,10,20,110,120\n"
    )
    meta = tmp_path / "meta.csv"
    meta.write_text("image_id,dim0,dim1\nimg_a,200,200\n")
    out = tmp_path / "fused.csv"
    proc = subprocess.run(
        [sys.executable, "-m", "cxrkit", "fuse", str(train), str(out), "--meta", str(meta)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith("cxrkit fuse: error:") and "img_b" in proc.stderr
    assert not out.exists()


# --------------------------------------------------------------------------- fuse


def test_cli_fuse_with_meta(tmp_path, capsys):
    from cxrkit.cli import main

    train = write_csv(tmp_path, GOOD_ROWS)
    meta = tmp_path / "meta.csv"
    META.to_csv(meta, index=False)
    out = tmp_path / "out" / "fused.csv"
    assert main(["fuse", str(train), str(out), "--meta", str(meta), "--iou", "0.8"]) == 0
    assert f"fused {len(GOOD_ROWS)} rows into 5 rows over 3 images" in capsys.readouterr().out
    fused = load_annotations(out)
    assert_same_boxes(fused, direct_wbf(load_annotations(train), META, 0.8))


def test_cli_fuse_with_dicoms(tmp_path, capsys):
    from cxrkit.cli import main

    dicoms = tmp_path / "train"
    dicoms.mkdir()
    for image_id, h, w in META.itertuples(index=False):
        write_blank_dicom(dicoms / f"{image_id}.dicom", h, w)
    out = tmp_path / "fused.csv"
    assert (
        main(["fuse", str(write_csv(tmp_path, GOOD_ROWS)), str(out), "--dicoms", str(dicoms)]) == 0
    )
    assert len(pd.read_csv(out)) == 4


def test_cli_fuse_bad_input_exit_2(tmp_path, capsys):
    from cxrkit.cli import main

    train = write_csv(tmp_path, with_row(1, "img_a,Cardiomegaly,3,R2,,,,"))
    meta = tmp_path / "meta.csv"
    META.to_csv(meta, index=False)
    out = tmp_path / "fused.csv"
    assert main(["fuse", str(train), str(out), "--meta", str(meta)]) == 2
    err = capsys.readouterr().err
    assert "cxrkit fuse: error:" in err and "train.csv" in err and "line 3, image_id 'img_a'" in err
    assert not out.exists()


def test_cli_fuse_subprocess_bad_meta(tmp_path):
    import subprocess
    import sys

    train = write_csv(tmp_path, GOOD_ROWS)
    meta = tmp_path / "meta.csv"
    META.iloc[:1].to_csv(meta, index=False)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "cxrkit",
            "fuse",
            str(train),
            str(tmp_path / "f.csv"),
            "--meta",
            str(meta),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert "missing from the meta table" in proc.stderr and "img_c" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_sample_cli_fuse_with_dicoms(sample_data, tmp_path, capsys):
    from cxrkit.cli import main

    out = tmp_path / "fused.csv"
    argv = [
        "fuse",
        str(sample_data / "train.csv"),
        str(out),
        "--dicoms",
        str(sample_data / "train"),
    ]
    assert main(argv) == 0
    assert "fused" in capsys.readouterr().out
    fused = load_annotations(out)
    assert (fused["rad_id"] == "wbf").all()
    table = radiologist_agreement(load_annotations(sample_data / "train.csv"))
    assert table["matched"].between(0, 1).all() and (table["boxes"] > 0).all()


# --------------------------------------------------------------------------- preprocess


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
    proc = _run_preprocess(str(src), str(out), "--size", "64", "--workers", "1")
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

    proc = _run_preprocess(str(src), str(out), "--size", "64", "--workers", "1")
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    assert "already done" in stdout
    assert output_files(out) == output_files(reference)
    pngs = sorted((out / "train").glob("*.png"))
    assert len(pngs) == n
    assert all(cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) is not None for p in pngs)
    assert not [p for p in out.rglob(".*") if STATE_DIR not in p.parts]  # no temp files


def test_broken_dicoms_are_listed_and_the_rest_converted(src, tmp_path):
    (src / "train" / "garbage.dicom").write_bytes(b"this is not a DICOM file at all" * 10)
    good = (src / "train" / "tr2.dicom").read_bytes()
    (src / "train" / "truncated.dicom").write_bytes(good[: len(good) // 2])
    out = tmp_path / "out"
    proc = _run_preprocess(str(src), str(out), "--size", "32", "--workers", "2")
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 1, (stdout, stderr)
    assert "2 failed" in stdout and "garbage.dicom" in stdout and "truncated.dicom" in stdout
    errors = pd.read_csv(out / "errors.csv")
    assert sorted(Path(p).name for p in errors["path"]) == ["garbage.dicom", "truncated.dicom"]
    assert errors["reason"].str.len().min() > 5  # a reason, not an empty cell
    meta = pd.read_csv(out / "train_meta.csv")
    assert meta["image_id"].tolist() == [f"tr{i}" for i in range(5)]
    assert sorted(p.stem for p in (out / "train").glob("*.png")) == meta["image_id"].tolist()


def test_preprocess_missing_folder_exit_2(tmp_path):
    """A folder without train/ or test/: exit 2, one clear message, no traceback."""
    (tmp_path / "nothing").mkdir()
    proc = _run_preprocess(str(tmp_path / "nothing"), str(tmp_path / "out"))
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 2 and "train/ or test/" in stderr and "Traceback" not in stderr


# --------------------------------------------------------------------------- train, predict, evaluate


@pytest.mark.slow
def test_train_predict_evaluate_commands(sample_data, preprocessed, tmp_path, capsys):
    """The CLI path end to end on the tiny sample (1 short epoch)."""
    from cxrkit.cli import main
    from cxrkit.fit import ResumeError
    from cxrkit.submission import read_submission
    from cxrkit.train import train_from_folder

    run = tmp_path / "run"
    assert main([
        "train", str(preprocessed), str(sample_data / "train.csv"), "--out", str(run),
        "--epochs", "1", "--batch-size", "4",
    ]) == 0  # fmt: skip
    assert {"last.pt", "best.pt", "history.csv", "split.csv"} <= {p.name for p in run.iterdir()}
    last_written = (run / "last.pt").stat().st_mtime
    sub = tmp_path / "sub.csv"
    assert main(["predict", str(run / "best.pt"), str(preprocessed), "--out", str(sub)]) == 0
    test_ids = set(pd.read_csv(preprocessed / "test_meta.csv")["image_id"])
    assert set(read_submission(sub)["image_id"]) == test_ids
    assert main(["evaluate", str(sub), str(sample_data / "test_labels.csv")]) == 0
    assert "mAP@0.4" in capsys.readouterr().out

    # The run keeps its split: every annotated image once, on one side.
    kept = pd.read_csv(run / "split.csv")
    assert kept["image_id"].is_unique and set(kept["subset"]) == {"train", "valid"}
    assert set(kept["image_id"]) == set(pd.read_csv(sample_data / "train.csv")["image_id"])
    # Resuming with other settings or other data is refused before any training.
    assert main([
        "train", str(preprocessed), str(sample_data / "train.csv"), "--out", str(run),
        "--epochs", "1", "--size", "128", "--resume",
    ]) == 2  # fmt: skip
    assert "size: the run used 256, this call asks for 128" in capsys.readouterr().err
    train_csv = pd.read_csv(sample_data / "train.csv")
    fewer = tmp_path / "fewer.csv"
    train_csv[train_csv["image_id"] != kept["image_id"].iloc[0]].to_csv(fewer, index=False)
    with pytest.raises(ResumeError, match="split differs"):
        train_from_folder(preprocessed, fewer, run, epochs=1, resume=True)
    assert (run / "last.pt").stat().st_mtime == last_written  # nothing was overwritten


def test_predict_missing_checkpoint_exit_2(preprocessed, tmp_path, capsys):
    from cxrkit.cli import main

    assert main(["predict", str(tmp_path / "missing.pt"), str(preprocessed), "--out", "x.csv"]) == 2
    assert "does not exist" in capsys.readouterr().err
