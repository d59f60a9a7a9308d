"""The command line, ``python -m cxrkit COMMAND`` and ``cxrkit.cli.main``: every command's tests.

Exit codes, one-line errors on stderr (exit 2, before any work and without damage)
and each command's output files: two trainings into one run folder, a finished run
trained over, foreign or diverged checkpoints, incomplete submissions, bad
arguments, a full disk or a read-only folder, missing PNGs, ids that are paths; and
the help. Tests that train are slow and use the tiniest settings (1 epoch, 64 px,
batch 2). ``helpers.run_cli`` runs a command in a subprocess; inputs are built by
``helpers.py``, fixtures in ``conftest.py``.
"""

from __future__ import annotations

import argparse
import errno
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import pandas as pd
import pytest
import torch
from helpers import (
    GOOD_ROWS,
    META,
    assert_same_boxes,
    direct_wbf,
    one_line_error,
    output_files,
    run_cli,
    run_main,
    with_row,
    write_blank_dicom,
    write_csv,
    write_dicom,
)

from cxrkit._runlock import LOCK_NAME, run_lock
from cxrkit.annotations import fuse_boxes, load_annotations, load_meta
from cxrkit.checkpoints import CheckpointError, load_checkpoint, save_checkpoint
from cxrkit.eda import radiologist_agreement
from cxrkit.errors import AnnotationError, CxrkitError, OverwriteError, SubmissionError
from cxrkit.models import build_model
from cxrkit.preprocess import STATE_DIR, preprocess_dicoms
from cxrkit.registry import MODEL_NAMES
from cxrkit.submission import validate_submission

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
    with pytest.raises(ResumeError, match="boxes or images changed"):  # the table's digest
        train_from_folder(preprocessed, fewer, run, epochs=1, resume=True)
    assert (run / "last.pt").stat().st_mtime == last_written  # nothing was overwritten


def test_predict_missing_checkpoint_exit_2(preprocessed, tmp_path, capsys):
    from cxrkit.cli import main

    assert main(["predict", str(tmp_path / "missing.pt"), str(preprocessed), "--out", "x.csv"]) == 2
    assert "does not exist" in capsys.readouterr().err


TINY = ["--epochs", "1", "--size", "64", "--batch-size", "2"]  # the smallest real training
_TEXT = {"capture_output": True, "text": True, "check": True}


def _hashes(root: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.iterdir())
        if p.is_file()
    }


def _checkpoint(path: Path, num_classes: int = 15, nan_in: str | None = None) -> Path:
    """An untrained cxr_small checkpoint (64 px), optionally with NaN in one tensor."""
    torch.manual_seed(0)
    model = build_model("cxr_small", num_classes=num_classes, min_size=64, max_size=64)
    if nan_in is not None:
        with torch.no_grad():
            dict(model.named_parameters())[nan_in].view(-1)[0] = float("nan")
    return save_checkpoint(path, model, size=64)


def _train(preprocessed: Path, train_csv: Path, out: Path, *more: str) -> list[str]:
    return ["train", str(preprocessed), str(train_csv), "--out", str(out), *TINY, *more]


# ---------------------------------------------------------- 1. two trainings at once


@pytest.mark.slow  # a subprocess that imports torch: ~4 s (CI's slow step runs it)
def test_a_held_run_folder_is_refused_naming_its_holder(preprocessed, sample_data, tmp_path):
    run = tmp_path / "run"
    with run_lock(run):
        err = one_line_error(
            run_cli(*_train(preprocessed, sample_data / "train.csv", run)), "train"
        )
        assert f"{run} is in use by another training, pid {os.getpid()} on host" in err
        assert "choose another output folder" in err
        assert sorted(p.name for p in run.iterdir()) == [LOCK_NAME]  # nothing written
    assert not run.joinpath(LOCK_NAME).exists()  # released


def test_a_lock_left_by_a_dead_process_is_taken_over(tmp_path, capsys):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], **_TEXT)
    pid = int(dead.stdout)
    run = tmp_path / "run"
    run.mkdir()
    (run / LOCK_NAME).write_text(json.dumps({"pid": pid, "host": "h", "started": 0}))
    with run_lock(run) as path:
        assert json.loads(path.read_text())["pid"] == os.getpid()
        with pytest.raises(OverwriteError, match=f"pid {os.getpid()} on host"):
            with run_lock(run):  # a second holder in this process is refused too
                pass
    assert f"taking over the lock left by pid {pid} on host h" in capsys.readouterr().out
    assert not (run / LOCK_NAME).exists()


@pytest.mark.slow
def test_two_trainings_into_one_folder_at_once(preprocessed, sample_data, tmp_path):
    run = tmp_path / "run"
    # many epochs within a minute: the first still trains while the second starts (a
    # one-epoch run could end during the second's imports on a loaded machine)
    long = ["--epochs", "500", "--max-minutes", "1"]
    first = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cxrkit",
            *_train(preprocessed, sample_data / "train.csv", run, *long),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        deadline = time.monotonic() + 120
        while not (run / LOCK_NAME).exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert first.poll() is None, first.communicate()
        second = run_cli(*_train(preprocessed, sample_data / "train.csv", run))
        err = one_line_error(second, "train")
        assert f"is in use by another training, pid {first.pid} on host" in err
    finally:
        out, err = first.communicate(timeout=600)
    assert first.returncode == 0, err
    assert re.search(r"trained \d+ epoch\(s\)", out), out
    assert {"last.pt", "best.pt", "history.csv", "split.csv"} <= {p.name for p in run.iterdir()}


HELD_UNDER_TORCHRUN = """
import os, sys
from pathlib import Path
from cxrkit.errors import OverwriteError
from cxrkit.train import train_from_folder

pre, csv, run = map(Path, sys.argv[1:4])
try:
    train_from_folder(pre, csv, run, epochs=1, batch_size=2, size=64)
except OverwriteError as exc:
    (run.parent / f"refused-rank{os.environ['RANK']}.txt").write_text(str(exc))
"""


@pytest.mark.slow
def test_under_torchrun_rank_0_takes_the_lock_and_every_rank_refuses(
    preprocessed, sample_data, tmp_path
):
    script, run = tmp_path / "script.py", tmp_path / "run"
    script.write_text(HELD_UNDER_TORCHRUN)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    with run_lock(run):
        start = time.monotonic()
        proc = subprocess.run(
            [*cmd, str(script), str(preprocessed), str(sample_data / "train.csv"), str(run)],
            capture_output=True, text=True, timeout=300, cwd=ROOT,
            env={**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"},
        )  # fmt: skip
        seconds = time.monotonic() - start
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    refused = {r: (tmp_path / f"refused-rank{r}.txt").read_text() for r in (0, 1)}
    assert f"pid {os.getpid()} on host" in refused[0]
    assert refused[1] == f"{run} is in use by another training"  # told by rank 0
    assert seconds < 120  # nobody waited for a rank that had stopped
    assert list(run.iterdir()) == []


# ------------------------------- 2, 11, 13. a finished run: overwrite, resume, its settings


def test_a_finished_run_is_not_trained_over(preprocessed, sample_data, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "last.pt").write_bytes(b"the weights of a week")
    (run / "history.csv").write_text("epoch,loss\n1,0.5\n")
    before = _hashes(run)
    err = one_line_error(run_main(*_train(preprocessed, sample_data / "train.csv", run)), "train")
    assert f"{run} already holds a run (last.pt, history.csv)" in err
    assert "--resume" in err and "new output folder" in err and "--overwrite" in err
    assert _hashes(run) == before


@pytest.mark.slow
def test_resume_overwrite_and_the_settings_of_a_finished_run(preprocessed, sample_data, tmp_path):
    train_csv, run = sample_data / "train.csv", tmp_path / "run"
    assert run_cli(*_train(preprocessed, train_csv, run)).returncode == 0
    before = _hashes(run)

    # 13. another seed or validation fraction is named as the cause, not the data
    for flag, value, named in [
        ("--seed", "1", "seed: the run used 42, this call asks for 1 (the seed chooses the "
         "train/valid split"),
        ("--valid-fraction", "0.5", "valid_fraction: the run used 0.2, this call asks for 0.5"),
    ]:  # fmt: skip
        args = _train(preprocessed, train_csv, run, "--resume", flag, value)
        err = one_line_error(run_main(*args), "train")
        assert named in err and "annotations or the preprocessed folder" not in err
    assert _hashes(run) == before

    # 11. a partial checkpoint of a killed write is removed on resume, with a line
    partial = run / ".last.pt.k1ll3d.tmp.pt"
    partial.write_bytes(b"half a checkpoint")
    proc = run_cli(*_train(preprocessed, train_csv, run, "--resume"))
    assert proc.returncode == 0, proc.stderr
    assert f"{run}: removed 1 partial file(s) of an interrupted write ({partial.name})" in (
        proc.stdout
    )
    assert not partial.exists() and not list(run.glob(".*tmp*"))

    # 2. --overwrite replaces the run, and says so
    proc = run_cli(*_train(preprocessed, train_csv, run, "--overwrite", "--seed", "1"))
    assert proc.returncode == 0, proc.stderr
    assert "removed the earlier run's last.pt, best.pt, history.csv (--overwrite)" in proc.stdout
    assert load_checkpoint(run / "last.pt")["config"]["seed"] == 1
    assert len(pd.read_csv(run / "history.csv")) == 1


# -------------------------------------------------- 3, 4, 20. checkpoints refused at load


@pytest.mark.parametrize("classes", [5, 20])
def test_predict_refuses_a_checkpoint_of_another_class_count(preprocessed, tmp_path, classes):
    ckpt = _checkpoint(tmp_path / f"c{classes}.pt", num_classes=classes)
    out = tmp_path / "sub.csv"
    err = one_line_error(run_main("predict", ckpt, preprocessed, "--out", out), "predict")
    assert f"checkpoint {ckpt} predicts {classes} classes, but a VinBigData model has 15" in err
    assert not out.exists()


def test_non_finite_weights_are_refused_naming_the_tensor(preprocessed, tmp_path):
    name = "roi_heads.box_predictor.bbox_pred.bias"
    ckpt = _checkpoint(tmp_path / "nan.pt", nan_in=name)
    with pytest.raises(
        CheckpointError, match=rf"nan\.pt has non-finite weights: {re.escape(name)}"
    ):
        load_checkpoint(ckpt)
    out = tmp_path / "sub.csv"
    err = one_line_error(run_main("predict", ckpt, preprocessed, "--out", out), "predict")
    assert f"checkpoint {ckpt} has non-finite weights: {name} holds 1 NaN" in err
    assert not out.exists()


class _Evil:
    def __reduce__(self):
        return (print, ("this ran while loading a checkpoint",))


@pytest.mark.slow  # a subprocess that imports torch: ~4 s (CI's slow step runs it)
def test_a_malicious_checkpoint_is_refused_with_a_whole_message(preprocessed, tmp_path):
    evil = tmp_path / "evil.pt"
    torch.save({"model": _Evil()}, evil)
    err = one_line_error(
        run_cli("predict", evil, preprocessed, "--out", tmp_path / "s.csv"), "predict"
    )
    assert "this ran" not in err
    assert f"checkpoint {evil} was refused: " in err and "GLOBAL" in err
    assert "Do it only if" not in err  # torch's advice is dropped, not cut
    assert err.rstrip().endswith("torch.save(model.state_dict())")


# ------------------------------------------------- 5, 19. evaluate checks the submission


def _submission_of(truth: pd.DataFrame) -> pd.DataFrame:
    """A perfect submission: each truth box with score 1, No finding images as 14 1 0 0 1 1."""
    rows = []
    for image_id, group in truth.groupby("image_id", sort=True):
        boxes = group[group["class_id"] != 14]
        parts = [f"{c} 1.0 {x0:g} {y0:g} {x1:g} {y1:g}" for c, x0, y0, x1, y1 in zip(
            boxes["class_id"], boxes["x_min"], boxes["y_min"], boxes["x_max"], boxes["y_max"],
            strict=True,
        )] or ["14 1 0 0 1 1"]  # fmt: skip
        rows.append((image_id, " ".join(parts)))
    return pd.DataFrame(rows, columns=["image_id", "PredictionString"])


@pytest.fixture()
def scored(sample_data, preprocessed, tmp_path) -> tuple[Path, Path, pd.DataFrame, Path]:
    truth_csv = sample_data / "test_labels.csv"
    truth = fuse_boxes(load_annotations(truth_csv), load_meta(preprocessed / "test_meta.csv"))
    fused = tmp_path / "truth.csv"
    truth.to_csv(fused, index=False)
    return fused, preprocessed / "test_meta.csv", _submission_of(truth), tmp_path


def test_evaluate_scores_a_whole_submission(scored):
    truth, meta, submission, tmp = scored
    submission.to_csv(tmp / "s.csv", index=False)
    proc = run_cli("evaluate", tmp / "s.csv", truth, "--meta", meta, "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["map"] == pytest.approx(1.0)


@pytest.mark.parametrize("fault", ["one row missing", "header only", "id not in the truth"])
def test_evaluate_refuses_an_incomplete_submission(scored, fault):
    truth, _, submission, tmp = scored
    n = len(submission)
    bad = {
        "one row missing": submission.iloc[1:],
        "header only": submission.iloc[:0],
        "id not in the truth": pd.concat(
            [
                submission,
                pd.DataFrame({"image_id": ["stranger"], "PredictionString": ["14 1 0 0 1 1"]}),
            ]
        ),
    }[fault]
    bad.to_csv(tmp / "s.csv", index=False)
    err = one_line_error(run_main("evaluate", tmp / "s.csv", truth), "evaluate")
    expected = {
        "one row missing": f"1 image id(s) missing, e.g. [{submission['image_id'].iloc[0]!r}]",
        "header only": f"{n} image id(s) missing",
        "id not in the truth": "1 unexpected image id(s), e.g. ['stranger']",
    }[fault]
    assert expected in err and "mAP" not in err


def test_evaluate_with_meta_refuses_boxes_beyond_the_image(scored):
    truth, meta, submission, tmp = scored
    sizes = load_meta(meta).set_index("image_id")
    row = int(submission["PredictionString"].str.startswith("14 ").idxmin())  # has a box
    image_id = submission["image_id"].iloc[row]
    width = int(sizes.loc[image_id, "dim1"])
    far = submission.copy()
    far.loc[row, "PredictionString"] = f"3 0.9 10 10 {width + 500} 20"
    far.to_csv(tmp / "far.csv", index=False)
    assert run_cli("evaluate", tmp / "far.csv", truth).returncode == 0  # not checked without --meta
    err = one_line_error(run_main("evaluate", tmp / "far.csv", truth, "--meta", meta), "evaluate")
    assert f"row {row} (image_id {image_id}), prediction 0: box 10 10 {width + 500} 20 is " in err
    assert "outside the image" in err

    beyond = pd.read_csv(truth)
    line = int((beyond["class_id"] != 14).idxmax())
    beyond.loc[line, "x_max"] = 10 * width
    beyond.to_csv(tmp / "beyond.csv", index=False)
    submission.to_csv(tmp / "s.csv", index=False)
    err = one_line_error(
        run_cli("evaluate", tmp / "s.csv", tmp / "beyond.csv", "--meta", meta), "evaluate"
    )
    assert f"line {line + 2} image_id" in err and "reach beyond their image" in err


# -------------------------------------------------------------- 7, 8. bad arguments


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "d", "a.csv", "--out", "o", "--lr", "-1"], "argument --lr: must be a number > 0, got -1"),
        (["train", "d", "a.csv", "--out", "o", "--batch-size", "0"], "argument --batch-size: must be a whole number > 0, got 0"),
        (["train", "d", "a.csv", "--out", "o", "--valid-fraction", "0"], "argument --valid-fraction: must be between 0 and 1"),
        (["train", "d", "a.csv", "--out", "o", "--valid-fraction", "1.5"], "got 1.5"),
        (["train", "d", "a.csv", "--out", "o", "--size", "0"], "argument --size: must be a whole number > 0, got 0"),
        (["train", "d", "a.csv", "--out", "o", "--size", "-256"], "got -256"),
        (["train", "d", "a.csv", "--out", "o", "--epochs", "two"], "argument --epochs: must be a whole number, got 'two'"),
        (["evaluate", "s.csv", "t.csv", "--iou", "0"], "argument --iou: must be > 0 and <= 1, got 0"),
        (["fuse", "t.csv", "f.csv", "--meta", "m.csv", "--iou", "2"], "argument --iou: must be > 0 and <= 1, got 2"),
        (["preprocess", "src", "out", "--size", "0"], "argument --size: must be a whole number > 0"),
        (["train", "d", "a.csv", "--out", "o", "--resume", "--overwrite"], "argument --overwrite: not allowed with argument --resume"),
    ],
)  # fmt: skip
def test_bad_arguments_are_refused_in_one_line_before_any_work(tmp_path, args, message):
    proc = subprocess.run(
        [sys.executable, "-m", "cxrkit", *args], capture_output=True, text=True, cwd=tmp_path
    )
    err = one_line_error(proc, args[0])
    assert message in err and f"(see python -m cxrkit {args[0]} --help)" in err
    assert list(tmp_path.iterdir()) == []  # nothing created


def test_an_unknown_model_lists_the_known_ones(tmp_path):
    proc = run_cli(
        "train", tmp_path, tmp_path / "a.csv", "--out", tmp_path / "o", "--model", "nosuch"
    )
    err = one_line_error(proc, "train")
    assert "invalid choice: 'nosuch'" in err and all(repr(n) in err for n in MODEL_NAMES)


def test_an_output_that_is_of_the_wrong_kind(tmp_path):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    err = one_line_error(run_main("train", tmp_path, a_file, "--out", a_file), "train")
    assert f"argument --out: {a_file} exists and is not a folder" in err
    err = one_line_error(run_main("preprocess", tmp_path, a_file), "preprocess")
    assert f"{a_file} exists and is not a folder" in err
    err = one_line_error(run_main("predict", a_file, tmp_path, "--out", tmp_path), "predict")
    assert f"argument --out: {tmp_path} is a folder; give the path of a file" in err
    assert a_file.read_text() == "mine"


def test_a_corrupt_settings_file_of_a_preprocessed_folder(sample_data, tmp_path):
    settings = tmp_path / "out" / ".cxrkit-preprocess" / "settings.json"
    settings.parent.mkdir(parents=True)
    settings.write_text('{"size": 64, "keep_as')
    err = one_line_error(run_main("preprocess", sample_data, tmp_path / "out"), "preprocess")
    assert f"{settings} is corrupt (" in err and "use another output folder" in err


def _fuse_args(tmp_path: Path, out: Path) -> list[str]:
    train = tmp_path / "train.csv"
    train.write_text(
        "image_id,class_name,class_id,rad_id,x_min,y_min,x_max,y_max\n"
        "a,Cardiomegaly,3,R1,10,20,110,120\n"
    )
    meta = tmp_path / "meta.csv"
    meta.write_text("image_id,dim0,dim1\na,200,200\n")
    return ["fuse", str(train), str(out), "--meta", str(meta)]


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        (errno.ENOSPC, "the disk is full; free some space or write elsewhere (errno ENOSPC)"),
        (errno.EROFS, "the file system is read-only; choose a folder you can write to (errno EROFS)"),
        (errno.EACCES, "permission denied; check its permissions or choose another folder (errno EACCES)"),
    ],
)  # fmt: skip
def test_a_full_disk_or_read_only_folder_is_one_line(tmp_path, monkeypatch, capsys, code, reason):
    """The OS refuses the write (simulated: tests run as root, and on one disk)."""
    from cxrkit.cli import main

    def refuse(self, path, *args, **kwargs):
        raise OSError(code, os.strerror(code))  # what write() raises: no file name

    out = tmp_path / "out" / "fused.csv"
    args = _fuse_args(tmp_path, out)
    monkeypatch.setattr(pd.DataFrame, "to_csv", refuse)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err == f"cxrkit fuse: error: {out}: {reason}\n"
    assert not out.exists() and not list(out.parent.glob(".*"))  # no partial file left


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_real_read_only_folder_is_one_line(tmp_path):
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o555)
    try:
        err = one_line_error(run_main(*_fuse_args(tmp_path, out / "f.csv")), "fuse")
    finally:
        out.chmod(0o755)
    assert f"{out / 'f.csv'}: permission denied" in err


def test_a_full_disk_while_saving_a_checkpoint_is_an_oserror_naming_it(tmp_path, monkeypatch):
    """torch.save into a full disk (/dev/full): ENOSPC naming the checkpoint, no temp file."""
    from cxrkit import checkpoints

    def full_disk(path, mode="r", *args, **kwargs):
        return open(os.devnull if "r" in mode else "/dev/full", mode, *args, **kwargs)  # noqa: SIM115

    if not Path("/dev/full").exists():
        pytest.skip("needs /dev/full")
    monkeypatch.setattr(checkpoints, "open", full_disk, raising=False)
    with pytest.raises(OSError, match="No space left on device") as info:
        _checkpoint(tmp_path / "last.pt")
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(tmp_path / "last.pt")
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------- 12. a missing PNG, 14. a fused box


def _copy_folder(preprocessed: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "pre"
    shutil.copytree(preprocessed, copy, symlinks=True)
    return copy


def test_missing_pngs_are_found_before_the_first_step(preprocessed, sample_data, tmp_path):
    pre = _copy_folder(preprocessed, tmp_path)
    gone = sorted((pre / "train").glob("*.png"))[:2]
    for png in gone:
        png.unlink()
    run = tmp_path / "run"
    err = one_line_error(run_main(*_train(pre, sample_data / "train.csv", run)), "train")
    assert f"2 image(s) are missing from {pre / 'train'}: {gone[0].name}, {gone[1].name};" in err
    assert "trained" not in err and not (run / "last.pt").exists()


def test_a_fused_table_with_a_box_beyond_its_image_is_refused(preprocessed, sample_data, tmp_path):
    meta = load_meta(preprocessed / "train_meta.csv")
    fused = fuse_boxes(load_annotations(sample_data / "train.csv"), meta)
    line = int((fused["class_id"] != 14).idxmax())
    image_id = fused["image_id"].iloc[line]
    width = int(meta.set_index("image_id").loc[image_id, "dim1"])
    fused.loc[line, "x_max"] = width + 40
    table = tmp_path / "fused.csv"
    fused.to_csv(table, index=False)
    err = one_line_error(run_main(*_train(preprocessed, table, tmp_path / "run")), "train")
    assert (
        f"{table}: 1 box(es) reach beyond their image (line {line + 2} image_id {image_id!r}" in err
    )


# -------------------------------------------------------------- 17. ids are names


@pytest.mark.slow  # a subprocess that imports torch: ~4 s (CI's slow step runs it)
def test_predict_refuses_an_id_that_is_a_path(preprocessed, tmp_path):
    pre = _copy_folder(preprocessed, tmp_path)
    meta = pd.read_csv(pre / "test_meta.csv", dtype={"image_id": str})
    train_id = pd.read_csv(pre / "train_meta.csv", dtype={"image_id": str})["image_id"].iloc[0]
    meta.loc[1, "image_id"] = f"../train/{train_id}"
    meta.to_csv(pre / "test_meta.csv", index=False)
    out = tmp_path / "sub.csv"
    proc = run_cli("predict", _checkpoint(tmp_path / "c.pt"), pre, "--out", out)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert f"line 3, image_id '../train/{train_id}': image_id is a path, not a name" in proc.stderr
    assert not out.exists()


@pytest.mark.parametrize("bad", ["sub/img", "..\\img", "..", "a/../b"])
def test_ids_with_path_parts_are_refused_everywhere(tmp_path, bad):
    train = tmp_path / "train.csv"
    train.write_text(
        "image_id,class_name,class_id,rad_id,x_min,y_min,x_max,y_max\n"
        f"ok,No finding,14,R1,,,,\n{bad},No finding,14,R1,,,,\n"
    )
    with pytest.raises(
        AnnotationError, match=re.escape(f"line 3, image_id {bad!r}: image_id is a path")
    ):
        load_annotations(train)
    meta = pd.DataFrame({"image_id": [bad], "dim0": [10], "dim1": [10]})
    with pytest.raises(AnnotationError, match="line 2, .*image_id is a path"):
        load_meta(meta)
    submission = pd.DataFrame({"image_id": ["ok", bad], "PredictionString": ["14 1 0 0 1 1"] * 2})
    with pytest.raises(
        SubmissionError, match=re.escape(f"row 1 (image_id {bad}): the id is a path")
    ):
        validate_submission(submission)


# -------------------------------------------------------------- issue 10: the help


def _parsers() -> dict[str, argparse.ArgumentParser]:
    from cxrkit.cli import build_parser

    top = build_parser()
    (sub,) = [a for a in top._actions if isinstance(a, argparse._SubParsersAction)]
    return {"": top, **sub.choices}


def test_every_option_of_every_command_has_help_with_its_default():
    from cxrkit.cli import build_parser

    for name, parser in _parsers().items():
        formatter = parser._get_formatter()
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
                continue
            if action.help == argparse.SUPPRESS:  # an older name, kept out of --help
                continue
            where = f"{name or 'top'} {action.option_strings or action.dest}"
            assert action.help and action.help.strip(), f"{where} has no help"
            assert "``" not in action.help, f"{where}: reST markup in help"
            optional = action.option_strings and not action.required
            in_required_group = any(
                action in g._group_actions for g in parser._mutually_exclusive_groups if g.required
            )
            if optional and not in_required_group:
                text = formatter._expand_help(action)
                assert "default" in text, f"{where} does not state its default: {text!r}"
    top = build_parser()
    assert "``" not in (top.description or "") + (top.epilog or "")


def test_train_help_lists_every_model_name_and_every_default():
    from cxrkit.config import TrainConfig, resolve
    from cxrkit.registry import get_spec

    proc = subprocess.run(
        [sys.executable, "-m", "cxrkit", "train", "--help"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "COLUMNS": "200"},
    )
    text = " ".join(proc.stdout.split())
    for name in MODEL_NAMES:
        assert name in text
    options = proc.stdout.split("options:", 1)[1]
    entries = {
        e.split()[0]: " ".join(e.split()) for e in re.split(r"\n  (?=-)", options) if e.strip()
    }
    config = resolve(TrainConfig())
    for flag, value in [
        ("--model", config.model_name), ("--valid-fraction", config.valid_fraction),
        ("--seed", config.seed), ("--workers", config.num_workers),
        ("--resume", "off"), ("--overwrite", "off"),
    ]:  # fmt: skip
        assert f"(default: {value})" in entries[flag], (flag, entries[flag])
    for name in MODEL_NAMES:  # the per-model defaults of --lr, --size: each model's recipe
        spec = get_spec(name)
        size = "auto" if spec.size_from_data else spec.size
        for flag, value in [("--lr", spec.lr), ("--size", size),
                            ("--batch-size", spec.batch_size)]:  # fmt: skip
            entry = entries[flag]  # each model's value, or one value they all share
            assert (
                f"{name} {value}" in entry or f"default: {value}, the recipe of every" in entry
            ), (
                flag,
                entry,
            )
    assert "``" not in proc.stdout


def test_no_command_prints_the_help_not_an_error():
    proc = subprocess.run([sys.executable, "-m", "cxrkit"], capture_output=True, text=True)
    assert proc.returncode in (0, 2)
    assert "error:" not in proc.stdout + proc.stderr
    assert proc.stdout.startswith("usage: python -m cxrkit")
    assert all(command in proc.stdout for command in ("sample", "train", "predict", "evaluate"))
    assert "``" not in proc.stdout


def test_the_help_does_not_import_torch():
    code = "import sys; from cxrkit.cli import build_parser; build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--anchors", "auto", "--model", "fasterrcnn_resnet50_fpn"], "does not take"),
        (["--folds", "2", "--fold", "0", "--valid-fraction", "0.3"], "not used with folds"),
    ],
)
def test_settings_that_cannot_go_together_are_refused_before_any_work(tmp_path, argv, message):
    """Refused by the resolve step in one line, before the data is even read."""
    proc = run_cli(
        "train", tmp_path / "none", tmp_path / "none.csv", "--out", tmp_path / "r", *argv
    )
    err = one_line_error(proc, "train")
    assert message in err and not (tmp_path / "r").exists()


def test_classifier_options_without_a_classifier_are_refused(tmp_path):
    for option in (["--low", "0.2"], ["--high", "0.8"], ["--mode", "soft"]):
        proc = run_main(
            "predict", tmp_path / "a.pt", tmp_path, "--out", tmp_path / "s.csv", *option
        )
        assert "give --classifier too" in one_line_error(proc, "predict")


def test_predict_refuses_an_output_it_cannot_write_before_reading_any_image(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    proc = run_main("predict", tmp_path / "a.pt", tmp_path, "--out", blocker / "sub.csv")
    assert "is a file, not a folder" in one_line_error(proc, "predict")


def test_outputs_under_a_file_are_refused_before_the_work(tmp_path):
    """fuse and classify check --out first (predict too, above), not after the work."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    err = one_line_error(run_main(*_fuse_args(tmp_path, blocker / "f.csv")), "fuse")
    assert "is a file, not a folder" in err
    err = one_line_error(
        run_main("classify", tmp_path / "none.pt", tmp_path, "--out", blocker / "p.csv"), "classify"
    )
    assert "is a file, not a folder" in err  # not "none.pt does not exist": the output first


@pytest.mark.slow  # a subprocess under a file-size limit
def test_a_file_size_limit_is_one_line_and_leaves_no_file(tmp_path):
    import resource

    rows = "".join(f"img{i},Cardiomegaly,3,R1,10,20,110,120\n" for i in range(400))
    train = tmp_path / "train.csv"
    train.write_text("image_id,class_name,class_id,rad_id,x_min,y_min,x_max,y_max\n" + rows)
    meta = tmp_path / "meta.csv"
    meta.write_text("image_id,dim0,dim1\n" + "".join(f"img{i},200,200\n" for i in range(400)))
    out = tmp_path / "out" / "fused.csv"
    out.parent.mkdir()

    def limit() -> None:  # in the child: files may not grow past 4 KiB (Python ignores SIGXFSZ)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))

    proc = subprocess.run(
        [sys.executable, "-m", "cxrkit", "fuse", str(train), str(out), "--meta", str(meta)],
        capture_output=True, text=True, timeout=120, preexec_fn=limit,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )  # fmt: skip
    err = one_line_error(proc, "fuse")
    assert "larger than this system allows" in err and "EFBIG" in err
    assert list(out.parent.iterdir()) == []  # nothing under the final name, no temporary file
