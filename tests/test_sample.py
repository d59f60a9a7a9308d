"""Tests of the synthetic VinBigData sample (cxrkit.sample).

Most tests use the session fixture ``sample_data`` (seed 123, 24 train and 8
test images); the few that need another sample make their own small one.
"""

from __future__ import annotations

import hashlib
import itertools
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from pydicom.uid import JPEG2000Lossless, RLELossless

from cxrkit.labels import CLASS_NAMES, NO_FINDING_ID
from cxrkit.sample import (
    MARKER_NAME,
    ROWS_RANGE,
    TRAIN_COLUMNS,
    generate_sample,
    plan_cases,
    read_dicom_display,
    render_case,
)

SEED, N_TRAIN, N_TEST = 123, 24, 8  # as in tests/conftest.py
RAD_RE = re.compile(r"^R([1-9]|1[0-7])$")
ID_RE = re.compile(r"^[0-9a-f]{32}$")
BOX_COLS = ["x_min", "y_min", "x_max", "y_max"]


def _hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _shapes(root: Path, split: str) -> dict[str, tuple[int, int]]:
    out = {}
    for p in (root / split).glob("*.dicom"):
        ds = pydicom.dcmread(p, stop_before_pixels=True)
        out[p.stem] = (int(ds.Rows), int(ds.Columns))
    return out


def _check_table(df: pd.DataFrame, shapes: dict[str, tuple[int, int]], source: str) -> None:
    """The checks that train.csv and test_labels.csv share."""
    assert list(df.columns) == TRAIN_COLUMNS, source
    assert df["class_id"].dtype == np.int64
    for col in BOX_COLS:
        assert df[col].dtype == np.float64, (source, col)
    for col in ("image_id", "class_name", "rad_id"):
        assert pd.api.types.is_string_dtype(df[col]), (source, col)
    assert df["image_id"].str.fullmatch(ID_RE.pattern).all()
    assert (df["class_name"] == df["class_id"].map(dict(enumerate(CLASS_NAMES)))).all()
    normal = df["class_id"] == NO_FINDING_ID
    assert (df.loc[normal, "class_name"] == "No finding").all()
    assert df.loc[normal, BOX_COLS].isna().all().all(), "No finding rows must have empty boxes"
    boxes = df.loc[~normal]
    assert boxes[BOX_COLS].notna().all().all()
    rows = boxes["image_id"].map(lambda i: shapes[i][0])
    cols = boxes["image_id"].map(lambda i: shapes[i][1])
    assert (boxes["x_min"] >= 0).all() and (boxes["y_min"] >= 0).all()
    assert (boxes["x_min"] < boxes["x_max"]).all() and (boxes["y_min"] < boxes["y_max"]).all()
    assert (boxes["x_max"] <= cols).all() and (boxes["y_max"] <= rows).all()
    # whole pixels stored as floats (691.0), as in the real csv
    assert (boxes[BOX_COLS] == boxes[BOX_COLS].round()).all().all()
    assert set(df["image_id"]) == set(shapes), f"{source} and the DICOM folder disagree"


def test_layout_and_marker(sample_data):
    names = sorted(p.name for p in sample_data.iterdir())
    assert names == sorted(
        [MARKER_NAME, "sample_submission.csv", "test", "test_labels.csv", "train", "train.csv"]
    )
    assert len(list((sample_data / "train").glob("*.dicom"))) == N_TRAIN
    assert len(list((sample_data / "test").glob("*.dicom"))) == N_TEST
    marker = (sample_data / MARKER_NAME).read_text()
    assert f"seed={SEED}" in marker and f"n_train={N_TRAIN}" in marker and "version=" in marker
    from cxrkit.paths import check_layout, is_sample

    assert is_sample(sample_data)
    check_layout(sample_data)


def test_train_csv(sample_data):
    df = pd.read_csv(sample_data / "train.csv")
    _check_table(df, _shapes(sample_data, "train"), "train.csv")
    assert df["rad_id"].str.fullmatch(RAD_RE.pattern).all()
    rads = df.groupby("image_id")["rad_id"].nunique()
    assert (rads == 3).all(), "every image is read by three distinct radiologists"
    # a radiologist writes either boxes or exactly one No finding row
    for (_, _), group in df.groupby(["image_id", "rad_id"]):
        if (group["class_id"] == NO_FINDING_ID).any():
            assert len(group) == 1
    per_image = df.groupby("image_id")["class_id"].apply(lambda s: (s == NO_FINDING_ID).all())
    assert 0.2 <= per_image.mean() <= 0.5, "about a third of the images are normal"


def _pair_ious(boxes: pd.DataFrame) -> np.ndarray:
    """IoU of every pair of same-class boxes drawn by two different radiologists on one image."""
    ious = []
    for _, group in boxes.groupby(["image_id", "class_id"]):
        xyxy, rads = group[BOX_COLS].to_numpy(float), group["rad_id"].to_numpy()
        for a, b in itertools.combinations(range(len(group)), 2):
            if rads[a] == rads[b]:
                continue
            (ax0, ay0, ax1, ay1), (bx0, by0, bx1, by1) = xyxy[a], xyxy[b]
            inter = max(0.0, min(ax1, bx1) - max(ax0, bx0)) * max(
                0.0, min(ay1, by1) - max(ay0, by0)
            )
            union = (ax1 - ax0) * (ay1 - ay0) + (bx1 - bx0) * (by1 - by0) - inter
            ious.append(inter / union)
    return np.array(ious)


def test_radiologists_disagree(sample_data):
    """Boxes of the same finding differ a little between radiologists, and some miss it.

    Bands measured on seeds 0-4 and 123 (24 train images): median IoU 0.85-0.87,
    share of findings not drawn by all three radiologists 0.28-0.48.
    """
    df = pd.read_csv(sample_data / "train.csv")
    boxes = df[df["class_id"] != NO_FINDING_ID]
    spread = boxes.groupby(["image_id", "class_id"])[BOX_COLS].std().dropna()
    assert (spread.to_numpy() > 0).any(), "radiologists' boxes never disagree"
    ious = _pair_ious(boxes)
    assert len(ious) >= 50, "too few findings drawn by two radiologists to measure"
    assert 0.75 <= np.median(ious) <= 0.95, f"median IoU between radiologists {np.median(ious)}"
    assert (ious > 0.99).mean() < 0.1, "radiologists draw (nearly) the same box"
    drawn_by = boxes.groupby(["image_id", "class_id"])["rad_id"].nunique()
    missed = (drawn_by < 3).mean()
    assert 0.2 <= missed <= 0.6, f"share of findings some radiologist missed: {missed}"


def test_test_labels_and_submission(sample_data):
    shapes = _shapes(sample_data, "test")
    truth = pd.read_csv(sample_data / "test_labels.csv")
    _check_table(truth, shapes, "test_labels.csv")
    sub = pd.read_csv(sample_data / "sample_submission.csv")
    assert list(sub.columns) == ["image_id", "PredictionString"]
    assert set(sub["image_id"]) == set(shapes) and sub["image_id"].is_unique
    assert (sub["PredictionString"] == "14 1 0 0 1 1").all()
    train_ids = set(pd.read_csv(sample_data / "train.csv")["image_id"])
    assert not train_ids & set(shapes), "train and test ids overlap"


def test_dicoms_decode_and_have_fake_patient_tags(sample_data):
    shapes = set()
    for path in sorted(sample_data.glob("*/*.dicom")):
        ds = pydicom.dcmread(path)
        arr = ds.pixel_array
        assert arr.shape == (ds.Rows, ds.Columns), path
        assert arr.max() < 2**ds.BitsStored, path
        assert ds.Modality in ("DX", "CR") and ds.BodyPartExamined == "CHEST"
        assert ds.SOPClassUID in ("1.2.840.10008.5.1.4.1.1.1.1", "1.2.840.10008.5.1.4.1.1.1")
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert str(ds.PatientName) == "ANONYMOUS" and ds.PatientID == path.stem
        assert ds.PatientSex in ("M", "F", "O") and re.fullmatch(r"\d{3}Y", ds.PatientAge)
        assert ROWS_RANGE[0] <= ds.Rows <= ROWS_RANGE[1], path
        shapes.add((ds.Rows, ds.Columns))
    assert any(r != c for r, c in shapes), "sizes should vary and not all be square"


def test_dicom_display_matches_drawing(sample_data):
    """Modality LUT -> VOI -> MONOCHROME1 inversion gives back the drawn anatomy."""
    by_id = {}
    for spec in plan_cases(SEED, N_TRAIN, N_TEST):
        rendered = render_case(spec)
        by_id[rendered.meta["image_id"]] = (spec, rendered)
    for path in sorted(sample_data.glob("*/*.dicom")):
        spec, rendered = by_id[path.stem]
        shown = read_dicom_display(path)
        assert shown.shape == rendered.image.shape
        r = np.corrcoef(shown[::3, ::3].ravel(), rendered.image[::3, ::3].ravel())[0, 1]
        assert r > 0.95, f"{path.name} ({spec.variant}) displays wrongly: r={r:.3f}"
        # the display uses the grey range: lungs dark, mediastinum bright
        assert np.percentile(shown, 99) - np.percentile(shown, 1) > 0.5, path.name


def test_finding_boxes_contain_their_appearance():
    """Inside each true box the image differs from the same chest drawn without findings."""
    specs = [s for s in plan_cases(7, 30, 0) if s.class_ids]
    seen: set[int] = set()
    for spec in specs:
        rendered = render_case(spec)
        assert rendered.base.shape == rendered.image.shape
        assert set(rendered.class_ids) == set(spec.class_ids)
        diff = np.abs(rendered.image - rendered.base)
        outside = np.ones(diff.shape, bool)
        for c, (x0, y0, x1, y1) in zip(rendered.class_ids, rendered.boxes, strict=True):
            rows, cols = diff.shape
            assert 0 <= x0 < x1 <= cols and 0 <= y0 < y1 <= rows
            assert min(x1 - x0, y1 - y0) >= 0.03 * min(rows, cols), (CLASS_NAMES[c], x1 - x0)
            inside = diff[int(y0) : int(np.ceil(y1)), int(x0) : int(np.ceil(x1))]
            assert inside.mean() > 0.02, f"{CLASS_NAMES[c]} box holds no drawn finding"
            outside[int(y0) : int(np.ceil(y1)), int(x0) : int(np.ceil(x1))] = False
            seen.add(c)
        # far from every box the image is untouched (small tolerance: soft edges)
        assert diff[outside].mean() < 0.005
    assert seen == set(range(14)), f"findings never drawn: {set(range(14)) - seen}"


@pytest.mark.slow  # a subprocess that imports torch: ~4 s (CI's slow step runs it)
def test_same_seed_same_bytes(sample_data, tmp_path):
    again = generate_sample(
        tmp_path / "again", seed=SEED, n_train=N_TRAIN, n_test=N_TEST, progress=False
    )
    assert _hashes(again) == _hashes(sample_data)
    other = generate_sample(tmp_path / "other", seed=SEED + 1, n_train=4, n_test=1, progress=False)
    ids = {p.stem for p in sample_data.glob("*/*.dicom")}
    assert not ids & {p.stem for p in other.glob("*/*.dicom")}, "another seed, other images"


def test_regenerating_replaces_a_previous_sample(tmp_path):
    out = tmp_path / "s"
    generate_sample(out, seed=1, n_train=6, n_test=2, progress=False)
    generate_sample(out, seed=2, n_train=4, n_test=1, progress=False)
    assert len(list((out / "train").glob("*.dicom"))) == 4
    assert len(list((out / "test").glob("*.dicom"))) == 1
    assert not list(out.rglob(".*.tmp*")), "temporary files left behind"


def test_varied_dicom_variants(sample_data):
    """Even the small sample holds every kind of DICOM the real data throws at a reader."""
    out = sample_data
    seen: dict[str, set] = {k: set() for k in ("pi", "bits", "ts", "window", "lut", "rescale")}
    for path in out.glob("*/*.dicom"):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        seen["pi"].add(ds.PhotometricInterpretation)
        seen["bits"].add(int(ds.BitsStored))
        seen["ts"].add(ds.file_meta.TransferSyntaxUID)
        seen["window"].add("WindowCenter" in ds)
        seen["lut"].add("VOILUTSequence" in ds)
        seen["rescale"].add("RescaleSlope" in ds)
        assert ds.BitsAllocated == 16 and 10 <= ds.BitsStored <= 16
        if "WindowWidth" in ds:
            width = ds.WindowWidth[0] if ds["WindowWidth"].VM > 1 else ds.WindowWidth
            assert float(width) > 50, f"degenerate window in {path.name}"
    assert seen["pi"] == {"MONOCHROME1", "MONOCHROME2"}
    assert len(seen["bits"]) >= 4
    assert {RLELossless, JPEG2000Lossless} <= seen["ts"]
    assert seen["window"] == seen["lut"] == seen["rescale"] == {True, False}


def test_every_finding_is_present(tmp_path):
    """Even a small sample has each of the 14 findings in train and test."""
    specs = plan_cases(0, 200, 50)
    for split, least in (("train", 4), ("test", 2)):
        counts = np.zeros(14, int)
        for spec in specs:
            if spec.split == split:
                counts[list(spec.class_ids)] += 1
        assert counts.min() >= least, (split, counts)
        assert counts[0] > counts[12], "the real imbalance (aorta >> pneumothorax) is kept"


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"n_train": 0}, ValueError),
        ({"n_test": -1}, ValueError),
        ({"n_train": 2.5}, TypeError),
        ({"seed": -3}, ValueError),
    ],
)
def test_bad_arguments(tmp_path, kwargs, error):
    with pytest.raises(error):
        generate_sample(tmp_path / "x", progress=False, **kwargs)


def test_refuses_a_foreign_folder(tmp_path):
    (tmp_path / "mine.txt").write_text("precious")
    with pytest.raises(FileExistsError, match="not a cxrkit sample"):
        generate_sample(tmp_path, n_train=2, n_test=1, progress=False)
    assert (tmp_path / "mine.txt").read_text() == "precious"


def test_findings_keeps_only_those_classes_and_the_default_plan_is_unchanged():
    six = (0, 3, 7, 8, 10, 11)
    specs = plan_cases(5, 160, 60, findings=six)
    seen = {c for spec in specs for c in spec.class_ids}
    assert seen == set(six)  # every one of them, and nothing else
    assert sum(not spec.class_ids for spec in specs) > 0  # normal images remain
    default = plan_cases(5, 160, 60)
    assert [s.class_ids for s in plan_cases(5, 160, 60, findings=None)] == [
        s.class_ids for s in default
    ]
    assert {c for spec in default for c in spec.class_ids} == set(range(14))


@pytest.mark.parametrize("bad", [(), (14,), (-1, 3), ("x",)])
def test_findings_must_be_finding_ids(tmp_path, bad):
    with pytest.raises(ValueError, match="findings must be"):
        generate_sample(tmp_path / "x", n_train=4, n_test=1, progress=False, findings=bad)
    assert not (tmp_path / "x").exists()  # refused before the folder is touched


def test_the_command_line_refuses_findings_that_are_not_finding_ids(tmp_path):
    from helpers import one_line_error, run_main

    err = one_line_error(run_main("sample", tmp_path / "s", "--findings", "0,15"), "sample")
    assert "class ids must be 0-13" in err
    err = one_line_error(run_main("sample", tmp_path / "s", "--findings", "a,b"), "sample")
    assert "must be class ids separated by commas" in err
