"""Tests for cxrkit.annotations: validation messages, WBF fusion, box spaces, summaries."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from helpers import (
    GOOD_ROWS,
    HEADER,
    META,
    assert_same_boxes,
    direct_wbf,
    with_row,
    write_blank_dicom,
    write_csv,
)

from cxrkit.annotations import (
    BOX_COLUMNS,
    TRAIN_COLUMNS,
    AnnotationError,
    boxes_to_original,
    boxes_to_resized,
    fuse_boxes,
    image_class_sets,
    load_annotations,
    load_meta,
    rescale_boxes,
    validate_annotations,
)
from cxrkit.eda import radiologist_agreement, summarize
from cxrkit.labels import CLASS_NAMES
from cxrkit.preprocess import meta_from_dicoms

# --------------------------------------------------------------------------- loading


def test_load_annotations_dtypes_and_columns(tmp_path):
    df = load_annotations(write_csv(tmp_path, GOOD_ROWS))
    assert list(df.columns) == TRAIN_COLUMNS
    assert df["class_id"].dtype == np.int64
    for col in BOX_COLUMNS:
        assert df[col].dtype == np.float64
    assert pd.api.types.is_string_dtype(df["image_id"])
    assert df["image_id"].tolist()[:2] == ["img_a", "img_a"]
    assert df.loc[2, BOX_COLUMNS].isna().all()


def test_load_annotations_keeps_extra_columns_and_numeric_ids(tmp_path):
    rows = [r + ",x" for r in GOOD_ROWS]
    rows[0] = "0123,Cardiomegaly,3,R1,10,20,110,120,x"
    df = load_annotations(write_csv(tmp_path, rows, header=HEADER + ",note"))
    assert list(df.columns) == TRAIN_COLUMNS + ["note"]
    assert df.loc[0, "image_id"] == "0123"  # not parsed as the number 123


def test_validate_accepts_dataframe_and_does_not_mutate():
    raw = pd.DataFrame([r.split(",") for r in GOOD_ROWS], columns=TRAIN_COLUMNS)
    before = raw.copy()
    df = validate_annotations(raw, source="mine.csv")
    pd.testing.assert_frame_equal(raw, before)
    assert df["x_min"].iloc[0] == 10.0 and df["class_id"].iloc[6] == 8


def test_missing_file():
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        load_annotations("nope.csv")


def test_missing_columns_listed(tmp_path):
    path = write_csv(
        tmp_path,
        ["a,Cardiomegaly,3,R1,1,2,3"],
        header="image_id,class_name,class_id,rad_id,x_min,y_min,x_max",
    )
    with pytest.raises(AnnotationError, match=r"train\.csv is missing column\(s\) \['y_max'\]"):
        load_annotations(path)


def test_empty_table(tmp_path):
    with pytest.raises(AnnotationError, match="train.csv has a header but no rows"):
        load_annotations(write_csv(tmp_path, []))


def test_empty_file(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text("")
    with pytest.raises(AnnotationError, match="train.csv: the file is empty"):
        load_annotations(path)


def _bad(tmp_path, rows: list[str]) -> str:
    with pytest.raises(AnnotationError) as info:
        load_annotations(write_csv(tmp_path, rows))
    message = str(info.value)
    assert "train.csv" in message and "header as line 1" in message
    return message


# (row index replaced, the bad row, what the message must say about it)
BAD_ROWS = {
    "finding_without_box": (
        1,
        "img_a,Cardiomegaly,3,R2,,,,",
        ["line 3, image_id 'img_a'", "finding 3 (Cardiomegaly) has no box"],
    ),
    "finding_with_partial_box": (
        6,
        "img_c,Nodule/Mass,8,R4,5,5,,15",
        ["line 8, image_id 'img_c'", "has no box"],
    ),
    "no_finding_with_box": (
        3,
        "img_b,No finding,14,R1,0,0,1,1",
        ["line 5, image_id 'img_b'", "'No finding' row (class_id 14) has a box"],
    ),
    "x_max_not_greater_than_x_min": (
        0,
        "img_a,Cardiomegaly,3,R1,110,20,110,120",
        ["line 2, image_id 'img_a': x_max 110 <= x_min 110"],
    ),
    "y_max_not_greater_than_y_min": (
        1,
        "img_a,Cardiomegaly,3,R2,12,122,108,118",
        ["line 3, image_id 'img_a': y_max 118 <= y_min 122"],
    ),
    "negative_coordinate": (
        7,
        "img_c,Aortic enlargement,0,R5,-4,10,60,30",
        ["line 9, image_id 'img_c': negative coordinate"],
    ),
    "non_numeric_coordinate": (
        0,
        "img_a,Cardiomegaly,3,R1,10,twenty,110,120",
        ["line 2, image_id 'img_a': y_min 'twenty' is not a finite number"],
    ),
    "unknown_class_id": (
        6,
        "img_c,Nodule/Mass,15,R4,5,5,15,15",
        ["line 8, image_id 'img_c': unknown class_id 15"],
    ),
    "non_integer_class_id": (
        6,
        "img_c,Nodule/Mass,eight,R4,5,5,15,15",
        ["line 8, image_id 'img_c': class_id 'eight' is not an integer"],
    ),
    "class_name_mismatch": (
        7,
        "img_c,Nodule/Mass,0,R5,40,10,60,30",
        [
            "line 9, image_id 'img_c': class_name 'Nodule/Mass' does not match class_id 0",
            "'Aortic enlargement'",
        ],
    ),
    "empty_image_id": (
        0,
        ",Cardiomegaly,3,R1,10,20,110,120",
        ["line 2, image_id '': image_id is empty"],
    ),
}


@pytest.mark.parametrize(("index", "row", "expected"), BAD_ROWS.values(), ids=BAD_ROWS.keys())
def test_bad_row_is_named_by_file_line_and_image(
    tmp_path, index: int, row: str, expected: list[str]
):
    """One bad row: the message names the file, the line, the image and the problem."""
    message = _bad(tmp_path, with_row(index, row))
    for fragment in expected:
        assert fragment in message


def test_many_problems_are_counted_and_truncated(tmp_path):
    rows = GOOD_ROWS + [f"img_z,Cardiomegaly,3,R1,{i},5,1,9" for i in range(10, 30)]
    message = _bad(tmp_path, rows)
    assert "20 invalid rows" in message
    assert "line 11," in message and "... and 15 more" in message


def test_dataframe_source_name():
    raw = pd.DataFrame(
        [r.split(",") for r in with_row(0, "img_a,Cardiomegaly,3,R1,10,20,5,120")],
        columns=TRAIN_COLUMNS,
    )
    with pytest.raises(
        AnnotationError, match=r"annotations: 1 invalid row .*\n  line 2, image_id 'img_a'"
    ):
        load_annotations(raw)


# --------------------------------------------------------------------------- meta


def test_load_meta_ok(tmp_path):
    path = tmp_path / "train_meta.csv"
    META.to_csv(path, index=False)
    meta = load_meta(path)
    assert list(meta.columns) == ["image_id", "dim0", "dim1"]
    assert meta["dim0"].dtype == np.int64 and meta["dim0"].tolist() == [200, 300, 100]


def test_load_meta_missing_column(tmp_path):
    path = tmp_path / "m.csv"
    META[["image_id", "dim0"]].to_csv(path, index=False)
    with pytest.raises(AnnotationError, match=r"m\.csv is missing column\(s\) \['dim1'\]"):
        load_meta(path)


def test_load_meta_duplicate(tmp_path):
    path = tmp_path / "m.csv"
    pd.concat([META, META.iloc[[1]]]).to_csv(path, index=False)
    with pytest.raises(
        AnnotationError, match=r"line 5, image_id 'img_b': duplicate image_id \(first on line 3\)"
    ):
        load_meta(path)


@pytest.mark.parametrize("value", [0, -5])
def test_load_meta_non_positive(tmp_path, value):
    path = tmp_path / "m.csv"
    META.assign(dim1=[150, value, 120]).to_csv(path, index=False)
    with pytest.raises(
        AnnotationError, match=f"line 3, image_id 'img_b': dim1 {value} is not positive"
    ):
        load_meta(path)


def test_meta_from_dicoms(tmp_path):
    write_blank_dicom(tmp_path / "img_a.dicom", 20, 15)
    write_blank_dicom(tmp_path / "img_b.dcm", 7, 9)
    (tmp_path / "notes.txt").write_text("not a dicom")
    meta = meta_from_dicoms(tmp_path)
    assert meta.to_dict("list") == {
        "image_id": ["img_a", "img_b"],
        "dim0": [20, 7],
        "dim1": [15, 9],
    }


def test_meta_from_dicoms_names_unreadable_files(tmp_path):
    write_blank_dicom(tmp_path / "good.dicom", 4, 4)
    (tmp_path / "broken.dicom").write_bytes(b"garbage" * 10)
    with pytest.raises(AnnotationError, match=r"1 unreadable DICOM file\(s\):\n  broken\.dicom"):
        meta_from_dicoms(tmp_path)


def test_meta_from_dicoms_empty_folder_hint(tmp_path):
    (tmp_path / "train").mkdir()
    with pytest.raises(AnnotationError, match="train/ or test/ sub-folder"):
        meta_from_dicoms(tmp_path)


# --------------------------------------------------------------------------- fusion


@pytest.fixture
def small_ann(tmp_path):
    return load_annotations(write_csv(tmp_path, GOOD_ROWS))


def test_fuse_boxes_layout(small_ann):
    fused = fuse_boxes(small_ann, META)
    assert list(fused.columns) == TRAIN_COLUMNS
    assert (fused["rad_id"] == "wbf").all()
    assert fused["class_id"].dtype == np.int64 and fused["x_min"].dtype == np.float64
    # img_a: two overlapping Cardiomegaly boxes -> one; R3's "No finding" dropped
    a = fused[fused["image_id"] == "img_a"]
    assert a["class_id"].tolist() == [3]
    np.testing.assert_allclose(a[BOX_COLUMNS].to_numpy()[0], [11, 21, 109, 119], atol=1e-4)
    # img_b: all "No finding" -> exactly one row, empty box
    b = fused[fused["image_id"] == "img_b"]
    assert b["class_id"].tolist() == [14] and b[BOX_COLUMNS].isna().all(axis=None)
    # img_c: the two nodules overlap (IoU 0.68) -> one, the aorta stays; sorted by class
    c = fused[fused["image_id"] == "img_c"]
    assert c["class_id"].tolist() == [0, 8]
    assert c["class_name"].tolist() == [CLASS_NAMES[0], CLASS_NAMES[8]]
    assert fused["image_id"].drop_duplicates().tolist() == ["img_a", "img_b", "img_c"]


def test_fuse_boxes_matches_ensemble_boxes(small_ann):
    assert_same_boxes(fuse_boxes(small_ann, META), direct_wbf(small_ann, META))


def test_fuse_boxes_iou_threshold(small_ann):
    # the nodules overlap with IoU ~0.68: fused at 0.4, kept apart at 0.8
    assert (fuse_boxes(small_ann, META, iou_thr=0.8)["class_id"] == 8).sum() == 2
    assert_same_boxes(fuse_boxes(small_ann, META, iou_thr=0.8), direct_wbf(small_ann, META, 0.8))


def random_annotations(rng: np.random.Generator, n_images: int = 12):
    rows, meta = [], []
    for i in range(n_images):
        h, w = int(rng.integers(50, 400)), int(rng.integers(50, 400))
        meta.append((f"im{i}", h, w))
        for r in rng.choice(17, size=3, replace=False):
            n = int(rng.integers(0, 6))
            if n == 0:
                rows.append((f"im{i}", "No finding", 14, f"R{r + 1}", *[np.nan] * 4))
            for _ in range(n):
                c = int(rng.integers(0, 4))  # few classes -> many overlaps
                x0, y0 = rng.uniform(0, w * 0.6), rng.uniform(0, h * 0.6)
                x1, y1 = rng.uniform(x0 + 1, w), rng.uniform(y0 + 1, h)
                rows.append((f"im{i}", CLASS_NAMES[c], c, f"R{r + 1}", x0, y0, x1, y1))
    ann = pd.DataFrame(rows, columns=TRAIN_COLUMNS)
    return validate_annotations(ann), pd.DataFrame(meta, columns=["image_id", "dim0", "dim1"])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fuse_boxes_matches_ensemble_boxes_random(seed):
    ann, meta = random_annotations(np.random.default_rng(seed))
    fused = fuse_boxes(ann, meta, iou_thr=0.4)
    assert_same_boxes(fused, direct_wbf(ann, meta, 0.4))
    assert len(fused) < len(ann)  # something was actually fused
    finding_images = set(ann.loc[ann["class_id"] != 14, "image_id"])
    nf = fused[fused["class_id"] == 14]
    assert set(nf["image_id"]).isdisjoint(finding_images)
    assert nf["image_id"].is_unique


def test_fuse_boxes_missing_meta(small_ann):
    with pytest.raises(
        AnnotationError, match=r"1 image id\(s\) are missing from the meta table.*\['img_c'\]"
    ):
        fuse_boxes(small_ann, META.iloc[:2])


def test_fuse_boxes_no_finding_image_needs_no_meta(small_ann):
    fused = fuse_boxes(small_ann, META[META["image_id"] != "img_b"])
    assert (fused["image_id"] == "img_b").sum() == 1


def test_fuse_boxes_box_outside_image(small_ann):
    small_meta = META.assign(dim1=[100, 300, 120])  # img_a is 150 wide, boxes reach 110
    with pytest.raises(
        AnnotationError, match=r"2 box\(es\) reach beyond their image \(line 2 image_id 'img_a'"
    ):
        fuse_boxes(small_ann, small_meta)
    with pytest.warns(UserWarning, match="clipped 2 box"):
        fused = fuse_boxes(small_ann, small_meta, clip=True)
    assert fused.loc[fused["image_id"] == "img_a", "x_max"].max() <= 100 + 1e-6


def test_fuse_boxes_no_warnings_from_ensemble_boxes(small_ann):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fuse_boxes(small_ann, META)


def test_fused_table_reloads(tmp_path, small_ann):
    path = tmp_path / "fused.csv"
    fuse_boxes(small_ann, META).to_csv(path, index=False)
    again = load_annotations(path)
    assert len(again) == 4 and (again["rad_id"] == "wbf").all()


# --------------------------------------------------------------------------- box spaces


def test_rescale_boxes_per_axis():
    boxes = np.array([[10, 20, 30, 40], [np.nan] * 4])
    out = rescale_boxes(boxes, from_hw=(200, 100), to_hw=50)
    np.testing.assert_allclose(out[0], [5, 5, 15, 10])
    assert np.isnan(out[1]).all() and out.dtype == np.float64
    np.testing.assert_allclose(rescale_boxes(out, 50, (200, 100)), boxes, atol=1e-12)


def test_rescale_boxes_bad_shape():
    with pytest.raises(ValueError, match=r"shape \(N, 4\)"):
        rescale_boxes(np.zeros((2, 3)), 10, 10)


@pytest.mark.parametrize("size", [256, (384, 320)])
def test_boxes_round_trip(small_ann, size):
    resized = boxes_to_resized(small_ann, META, size)
    back = boxes_to_original(resized, META, size)
    np.testing.assert_allclose(
        back[BOX_COLUMNS].to_numpy(float), small_ann[BOX_COLUMNS].to_numpy(float), atol=1e-9
    )
    assert resized[BOX_COLUMNS].isna().sum().sum() == small_ann[BOX_COLUMNS].isna().sum().sum()
    h, w = (size, size) if isinstance(size, int) else size
    np.testing.assert_allclose(
        resized.loc[0, BOX_COLUMNS].to_numpy(float),
        [10 * w / 150, 20 * h / 200, 110 * w / 150, 120 * h / 200],
    )
    assert resized["x_max"].max() <= w and small_ann["x_min"].iloc[0] == 10  # input untouched


def test_boxes_to_resized_missing_meta(small_ann):
    with pytest.raises(AnnotationError, match=r"missing from the meta table.*\['img_a'\]"):
        boxes_to_resized(small_ann, META.iloc[1:], 512)


# --------------------------------------------------------------------------- summaries


def test_image_class_sets(small_ann):
    sets = image_class_sets(small_ann)
    assert sets.to_dict() == {
        "img_a": frozenset({3}),
        "img_b": frozenset({14}),
        "img_c": frozenset({0, 8}),
    }


def test_summarize(small_ann):
    table = summarize(small_ann)
    assert len(table) == 15 and table.loc[14, "class_name"] == "No finding"
    assert table.loc[3].tolist() == ["Cardiomegaly", 2, 1, 2]
    assert table.loc[14, ["rows", "images", "radiologists"]].tolist() == [4, 2, 3]
    assert table.loc[8, ["rows", "images", "radiologists"]].tolist() == [2, 1, 2]
    assert table.loc[5, "rows"] == 0


def test_radiologist_agreement(small_ann):
    table = radiologist_agreement(small_ann, iou_thr=0.4)
    assert table.index.tolist() == [0, 3, 8]
    card = table.loc[3]
    iou = (96 * 96) / (100 * 100)  # the R2 box lies inside the R1 box
    assert card["boxes"] == 2 and card["matched"] == 1.0
    assert card["mean_pair_iou"] == pytest.approx(iou) and card["mean_best_iou"] == pytest.approx(
        iou
    )
    assert card["image_agreement"] == 0.0  # R3 said "No finding" on img_a
    assert table.loc[8, "matched"] == 1.0 and table.loc[8, "image_agreement"] == 1.0
    aorta = table.loc[0]
    assert (
        aorta["matched"] == 0.0
        and aorta["mean_best_iou"] == 0.0
        and np.isnan(aorta["mean_pair_iou"])
    )
    strict = radiologist_agreement(small_ann, iou_thr=0.95)
    assert strict.loc[3, "matched"] == 0.0


# --------------------------------------------------------------------------- generated sample


def test_sample_tables_validate(sample_data):
    train = load_annotations(sample_data / "train.csv")
    assert set(train["rad_id"]) - {f"R{i}" for i in range(1, 18)} == set()
    assert train.groupby("image_id")["rad_id"].nunique().eq(3).all()
    truth = load_annotations(sample_data / "test_labels.csv")
    assert len(truth) > 0


def test_sample_meta_and_fusion_match_ensemble_boxes(sample_data):
    train = load_annotations(sample_data / "train.csv")
    meta = meta_from_dicoms(sample_data / "train")
    assert set(meta["image_id"]) == set(train["image_id"])
    assert (meta[["dim0", "dim1"]] > 0).all(axis=None)
    fused = fuse_boxes(train, meta)
    assert_same_boxes(fused, direct_wbf(train, meta))
    assert fused["image_id"].nunique() == train["image_id"].nunique()
    assert (fused["class_id"] != 14).sum() < (train["class_id"] != 14).sum()
    # boxes stay inside their images
    sizes = meta.set_index("image_id").reindex(fused["image_id"])
    found = fused["class_id"] != 14
    assert (
        fused.loc[found, "x_max"].to_numpy()
        <= sizes.loc[found.to_numpy(), "dim1"].to_numpy() + 1e-6
    ).all()


def test_fuse_boxes_bad_parameters(small_ann):
    with pytest.raises(ValueError, match="conf_type must be one of"):
        fuse_boxes(small_ann, META, conf_type="mean")
    with pytest.raises(ValueError, match=r"iou_thr must be in \[0, 1\]"):
        fuse_boxes(small_ann, META, iou_thr=40)


@pytest.mark.parametrize("image_id", ["=HYPERLINK(1)", "+1", "-x", "@cmd"])
def test_ids_that_start_like_a_spreadsheet_formula_are_refused(tmp_path, image_id):
    """A spreadsheet would run them from any CSV cxrkit writes (CSV injection)."""
    path = tmp_path / "m.csv"
    META.assign(image_id=["img_a", image_id, "img_c"]).to_csv(path, index=False)
    with pytest.raises(AnnotationError, match=r"line 3, .*starts like a spreadsheet formula"):
        load_meta(path)
    rows = with_row(3, f"{image_id},No finding,14,R1,,,,")
    with pytest.raises(AnnotationError, match=r"starts like a spreadsheet formula"):
        load_annotations(write_csv(tmp_path, rows))
