"""Data-side faults of a bad-input sweep (issue 12): each is a clear refusal or a right answer.

Duplicated rows, boxes beyond the image, an output that is an input, two files
for one image id, a full disk, workers outliving a killed parent, and a sample
written over the user's files.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pandas as pd
import pytest
from helpers import one_line_error, run_cli, run_main

from cxrkit.annotations import check_boxes_inside, fuse_boxes, load_annotations
from cxrkit.errors import AnnotationError, OverwriteError, PreprocessError
from cxrkit.preprocess import meta_from_dicoms

HEADER = "image_id,class_name,class_id,rad_id,x_min,y_min,x_max,y_max\n"
ROWS = [
    "img_a,Cardiomegaly,3,R1,10,20,110,120\n",  # line 2
    "img_a,Cardiomegaly,3,R2,30,40,130,140\n",  # line 3
    "img_a,Cardiomegaly,3,R3,12,22,112,122\n",  # line 4
    "img_b,No finding,14,R1,,,,\n",  # line 5
]
META = "image_id,dim0,dim1\nimg_a,200,200\nimg_b,300,300\n"
BIG_META = pd.DataFrame({"image_id": ["img_a", "img_b"], "dim0": [200, 400], "dim1": [200, 400]})


def _tables(tmp_path: Path, rows: list[str]) -> tuple[Path, Path]:
    train, meta = tmp_path / "train.csv", tmp_path / "meta.csv"
    train.write_text(HEADER + "".join(rows))
    meta.write_text(META)
    return train, meta


def _hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


# ------------------------------------------------------- 6. a duplicated train.csv row


def test_duplicate_row_is_dropped_with_its_line_and_never_fused_twice(tmp_path):
    clean, meta = _tables(tmp_path, ROWS)
    doubled = tmp_path / "doubled.csv"
    doubled.write_text(HEADER + ROWS[0] + ROWS[1] + ROWS[1] + ROWS[2] + ROWS[3])  # line 4 = 3
    with pytest.warns(UserWarning, match=r"doubled\.csv: dropped 1 exact duplicate row\(s\) "):
        fused = fuse_boxes(doubled, meta)
    pd.testing.assert_frame_equal(fused, fuse_boxes(clean, meta))
    with pytest.warns(UserWarning, match=r"\(line 4 = line 3;"):
        table = load_annotations(doubled)
    assert len(table) == 4


def test_duplicate_no_finding_rows_and_later_lines_are_named(tmp_path):
    rows = [ROWS[3], ROWS[0], ROWS[3], ROWS[0], ROWS[1]]  # lines 4 and 5 repeat 2 and 3
    train, _ = _tables(tmp_path, rows)
    with pytest.warns(UserWarning, match=r"dropped 2 .*line 4 = line 2, line 5 = line 3"):
        table = load_annotations(train)
    assert list(table["rad_id"]) == ["R1", "R1", "R2"]


def test_rows_that_differ_in_one_cell_are_kept(tmp_path):
    train, _ = _tables(tmp_path, [ROWS[0], ROWS[0].replace("R1", "R4")])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(load_annotations(train)) == 2


def test_error_lines_after_a_dropped_duplicate_are_the_file_lines(tmp_path):
    """A dropped row must not shift the line numbers of later messages."""
    beyond = "img_a,Cardiomegaly,3,R4,10,20,250,120\n"  # x_max 250 > width 200, line 4
    train, meta = _tables(tmp_path, [ROWS[0], ROWS[0], beyond])
    with pytest.warns(UserWarning, match="line 3 = line 2"):
        with pytest.raises(AnnotationError, match=r"line 4 image_id 'img_a'"):
            fuse_boxes(train, meta)


def test_cli_fuse_warns_about_the_duplicate_and_fuses_once(tmp_path):
    clean, meta = _tables(tmp_path, ROWS)
    doubled = tmp_path / "doubled.csv"
    doubled.write_text(HEADER + ROWS[0] + ROWS[0] + "".join(ROWS[1:]))
    out_clean, out_doubled = tmp_path / "f1.csv", tmp_path / "f2.csv"
    assert run_cli("fuse", clean, out_clean, "--meta", meta).returncode == 0
    proc = run_cli("fuse", doubled, out_doubled, "--meta", meta)
    assert proc.returncode == 0, proc.stderr
    assert "dropped 1 exact duplicate row(s) (line 3 = line 2" in proc.stderr
    assert out_clean.read_bytes() == out_doubled.read_bytes()


# ----------------------------------------------- 14. a fused table with a box beyond its image


def test_fused_table_with_a_box_beyond_its_image_is_refused_like_a_raw_one(tmp_path):
    fused = tmp_path / "fused.csv"
    fused.write_text(
        HEADER + "img_a,Cardiomegaly,3,wbf,10,20,110,120\nimg_b,Cardiomegaly,3,wbf,10,20,110,350\n"
    )
    raw = tmp_path / "raw.csv"
    raw.write_text(fused.read_text().replace(",wbf,", ",R1,"))
    meta = tmp_path / "meta.csv"
    meta.write_text(META)
    for table in (fused, raw):
        pattern = rf"{table.name}: 1 box\(es\) reach beyond their image \(line 3 image_id 'img_b'"
        with pytest.raises(AnnotationError, match=pattern):
            check_boxes_inside(table, meta)
        with pytest.raises(AnnotationError, match=pattern):
            fuse_boxes(table, meta)
        err = one_line_error(run_main("fuse", table, tmp_path / "out.csv", "--meta", meta), "fuse")
        assert str(table) in err and "line 3 image_id 'img_b'" in err and "h=300" in err


def test_check_boxes_inside_returns_the_table_when_every_box_fits(tmp_path):
    fused = tmp_path / "fused.csv"
    fused.write_text(
        HEADER + "img_b,Cardiomegaly,3,wbf,10,20,110,350\nimg_a,No finding,14,wbf,,,,\n"
    )
    table = check_boxes_inside(fused, BIG_META)
    assert list(table["image_id"]) == ["img_b", "img_a"]


# ------------------------------------------------------------ 15. fuse T T (output = input)


@pytest.mark.parametrize("how", ["same", "relative", "symlink", "dotdot", "meta"])
def test_fuse_refuses_to_write_over_its_input(tmp_path, monkeypatch, how):
    train, meta = _tables(tmp_path, ROWS)
    monkeypatch.chdir(tmp_path)
    before = {train: train.read_bytes(), meta: meta.read_bytes()}
    (tmp_path / "sub").mkdir()
    out = {
        "same": train,
        "relative": Path("train.csv"),
        "dotdot": Path("sub") / ".." / "train.csv",
        "meta": meta,
    }.get(how)
    if how == "symlink":
        out = tmp_path / "link.csv"
        out.symlink_to(train)
    err = one_line_error(run_main("fuse", train, out, "--meta", meta), "fuse")
    role = "meta table" if how == "meta" else "annotation table"
    assert f"the output {out} is the input {role}" in err and "choose another output" in err
    assert {p: p.read_bytes() for p in before} == before


def test_fuse_still_writes_a_new_output(tmp_path):
    train, meta = _tables(tmp_path, ROWS)
    proc = run_cli("fuse", train, tmp_path / "fused.csv", "--meta", meta)
    assert proc.returncode == 0, proc.stderr
    assert "-> " in proc.stdout and (tmp_path / "fused.csv").is_file()


# -------------------------------------------------- 16. x.dicom and x.dcm in one folder


@pytest.fixture(scope="module")
def small_sample(tmp_path_factory) -> Path:
    """A tiny generated sample (4 train, 2 test DICOMs)."""
    from cxrkit.sample import generate_sample

    out = tmp_path_factory.mktemp("faults-sample")
    return generate_sample(out / "s", seed=7, n_train=4, n_test=2, progress=False)


def _with_a_twin(sample: Path, tmp_path: Path) -> tuple[Path, str]:
    """A copy of the sample whose first train image also exists as ``<id>.dcm``."""
    src = tmp_path / "src"
    shutil.copytree(sample, src)
    first = sorted((src / "train").glob("*.dicom"))[0]
    shutil.copy(first, first.with_suffix(".dcm"))
    return src, first.stem


def test_preprocess_refuses_two_files_for_one_image_id(small_sample, tmp_path):
    src, image_id = _with_a_twin(small_sample, tmp_path)
    err = one_line_error(
        run_cli("preprocess", src, tmp_path / "out", "--workers", "1"), "preprocess"
    )
    assert f"{image_id}.dcm and {image_id}.dicom" in err and str(src / "train") in err
    assert not (tmp_path / "out" / "train_meta.csv").exists()


def test_meta_from_dicoms_names_both_files(small_sample, tmp_path):
    src, image_id = _with_a_twin(small_sample, tmp_path)
    with pytest.raises(AnnotationError, match=rf"{image_id}\.dcm and {image_id}\.dicom"):
        meta_from_dicoms(src / "train")
    err = one_line_error(
        run_cli("fuse", src / "train.csv", tmp_path / "f.csv", "--dicoms", src / "train"), "fuse"
    )
    assert f"{image_id}.dcm and {image_id}.dicom" in err


# ------------------------------------------------------------ 9. a full disk in preprocess


def test_full_disk_is_reported_as_a_full_disk(small_sample, tmp_path, monkeypatch):
    from cxrkit import preprocess

    def full(path, image):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(preprocess, "write_png", full)
    out = tmp_path / "out"
    with pytest.raises(PreprocessError, match=r"the disk is full \(errno ENOSPC") as info:
        preprocess.preprocess_dicoms(small_sample, out, size=32, workers=1)
    message = str(info.value)
    assert f"while writing {out / 'train'}" in message and ".png" in message
    assert "could not be read" not in message
    assert not list((out / "train").glob("*.png")) and not list((out / "train").glob(".*tmp*"))


def test_full_disk_in_the_parent_names_the_output_folder(small_sample, tmp_path, monkeypatch):
    from cxrkit import preprocess

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(preprocess, "write_csv_atomic", full)  # the meta tables
    out = tmp_path / "out"
    with pytest.raises(PreprocessError, match=rf"the disk is full .* while writing {out};"):
        preprocess.preprocess_dicoms(small_sample, out, size=32, workers=1)


def test_full_disk_in_a_worker_process_stops_the_run(small_sample, tmp_path):
    """Through the CLI with 2 workers: the error crosses the process pool, one line."""
    sitecustomize = tmp_path / "site" / "sitecustomize.py"
    sitecustomize.parent.mkdir()
    sitecustomize.write_text(
        "import errno, os\n"
        "import cxrkit.preprocess as p\n"
        "def full(path, image):\n"
        "    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))\n"
        "p.write_png = full\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(sitecustomize.parent), *sys.path])}
    proc = subprocess.run(
        [sys.executable, "-m", "cxrkit", "preprocess", str(small_sample), str(tmp_path / "o")]
        + ["--workers", "2", "--size", "32"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    err = one_line_error(proc, "preprocess")
    assert "the disk is full (errno ENOSPC" in err and str(tmp_path / "o") in err


# -------------------------------------------------- 10. workers outlive a killed preprocess


def _state(pid: int) -> str | None:
    """The /proc state letter of ``pid`` (None: gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2 :].split()[0]


def _descendants(pid: int) -> list[int]:
    kids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat[stat.rindex(")") + 2 :].split()[1]) == pid:
                kids.append(int(entry.name))
    return [p for kid in kids for p in (kid, *_descendants(kid))]


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_workers_exit_when_preprocess_is_killed(small_sample, tmp_path, sig):
    src = tmp_path / "src"  # enough images that the workers are still busy when killed
    (src / "train").mkdir(parents=True)
    for k, path in enumerate(sorted(small_sample.glob("*/*.dicom")) * 5):
        os.symlink(path, src / "train" / f"{k:03d}.dicom")
    proc = subprocess.Popen(
        [sys.executable, "-m", "cxrkit", "preprocess", str(src), str(tmp_path / "out")]
        + ["--workers", "2", "--size", "256"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        pids: list[int] = []
        while time.monotonic() < deadline and proc.poll() is None:
            pids = _descendants(proc.pid)  # resource tracker, forkserver, 2 workers
            if len(pids) >= 4:
                break
            time.sleep(0.05)
        assert len(pids) >= 4 and proc.poll() is None, "the workers never started"
    finally:
        proc.send_signal(sig)
        proc.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_state(p) not in (None, "Z") for p in pids):
        time.sleep(0.1)
    left = [p for p in pids if _state(p) not in (None, "Z")]
    for p in left:  # do not leave them behind for the next test
        os.kill(p, signal.SIGKILL)
    assert not left, f"{len(left)} process(es) outlived the killed preprocess"


# ------------------------------------------------------ 18. sample over the user's files


def _generated(root: Path) -> dict[str, str]:
    return {k: v for k, v in _hashes(root).items() if "mine" not in k}


def test_sample_over_an_earlier_sample_keeps_the_users_files(tmp_path):
    from cxrkit.sample import generate_sample

    out = tmp_path / "s"
    generate_sample(out, seed=1, n_train=3, n_test=1, progress=False)
    old_ids = {p.stem for p in out.glob("*/*.dicom")}
    mine = {
        "mine.txt": b"notes",
        "train/mine.dicom": (next((out / "train").glob("*.dicom"))).read_bytes(),
        "train/mine.txt": b"labels I drew",
        "test/mine/deep.txt": b"more",
    }
    for name, data in mine.items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_bytes(data)
    (out / "train" / f".{sorted(old_ids)[0]}.dicom.abc123.tmp.dicom").write_bytes(b"half")

    generate_sample(out, seed=2, n_train=2, n_test=1, progress=False)
    assert {name: (out / name).read_bytes() for name in mine} == mine
    fresh = generate_sample(tmp_path / "fresh", seed=2, n_train=2, n_test=1, progress=False)
    assert _generated(out) == _hashes(fresh), "exactly the new sample, plus the user's files"
    assert not old_ids & {p.stem for p in out.glob("*/*.dicom")}


def test_sample_over_an_interrupted_sample_removes_its_images(tmp_path):
    """Killed before its CSVs: the marker's seed and counts say which images it wrote."""
    from cxrkit.sample import generate_sample

    out = tmp_path / "s"
    generate_sample(out, seed=3, n_train=2, n_test=1, progress=False)
    for name in ("train.csv", "test_labels.csv", "sample_submission.csv"):
        (out / name).unlink()
    (out / "train" / "mine.txt").write_text("keep me")
    generate_sample(out, seed=4, n_train=1, n_test=1, progress=False)
    assert (out / "train" / "mine.txt").read_text() == "keep me"
    fresh = generate_sample(tmp_path / "fresh", seed=4, n_train=1, n_test=1, progress=False)
    assert _generated(out) == _hashes(fresh)


def test_sample_refuses_a_folder_that_is_not_a_sample_in_one_line(tmp_path):
    (tmp_path / "mine.txt").write_text("precious")
    err = one_line_error(run_main("sample", tmp_path, "--n-train", "1", "--n-test", "0"), "sample")
    assert f"{tmp_path} is not empty and is not a cxrkit sample (found ['mine.txt'])" in err
    assert [p.name for p in tmp_path.iterdir()] == ["mine.txt"]
    a_file = tmp_path / "mine.txt"
    err = one_line_error(run_main("sample", a_file, "--n-train", "1", "--n-test", "0"), "sample")
    assert "exists and is not a folder" in err and a_file.read_text() == "precious"
    with pytest.raises(FileExistsError):  # still a FileExistsError for library callers
        from cxrkit.sample import generate_sample

        generate_sample(tmp_path, n_train=1, n_test=0, progress=False)
    assert issubclass(OverwriteError, FileExistsError)
