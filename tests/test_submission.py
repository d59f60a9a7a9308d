"""cxrkit.submission: building, validating, writing, reading and parsing submissions."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cxrkit.metrics import vinbigdata_map
from cxrkit.submission import (
    SubmissionError,
    no_finding_score,
    parse_submission,
    prediction_strings,
    read_submission,
    validate_submission,
    write_submission,
)

BOX = ["x_min", "y_min", "x_max", "y_max"]
IDS = ["img_a", "img_b", "img_c"]
META = pd.DataFrame({"image_id": IDS, "dim0": [1000, 2000, 500], "dim1": [800, 1500, 500]})


def preds_table(rows):
    return pd.DataFrame(rows, columns=["image_id", "class_id", "score", *BOX])


@pytest.fixture
def preds():
    return preds_table(
        [
            ("img_a", 3, 0.25, 10.4, 20.6, 300.2, 400.7),
            ("img_a", 0, 0.9, 100.0, 100.0, 200.0, 200.0),
            ("img_b", 10, 0.5, 0.0, 0.0, 50.0, 60.0),
        ]
    )


def sub(strings: dict[str, str]) -> pd.DataFrame:
    return pd.DataFrame({"image_id": list(strings), "PredictionString": list(strings.values())})


def test_no_finding_score_rules(preds):
    s = no_finding_score(preds, IDS)
    assert s.to_dict() == pytest.approx({"img_a": 0.1, "img_b": 0.5, "img_c": 1.0})
    # an explicit class-14 prediction wins over 1 - max, a classifier over both
    with_nf = pd.concat([preds, preds_table([("img_b", 14, 0.7, 0, 0, 1, 1)])])
    assert no_finding_score(with_nf, IDS)["img_b"] == pytest.approx(0.7)
    s2 = no_finding_score(with_nf, IDS, classifier_scores={"img_b": 0.2, "img_c": 0.3})
    assert s2.to_dict() == pytest.approx({"img_a": 0.1, "img_b": 0.2, "img_c": 0.3})


def test_prediction_strings_format(preds):
    out = prediction_strings(preds, IDS)
    assert list(out.columns) == ["image_id", "PredictionString"]
    assert list(out["image_id"]) == IDS
    a = out.set_index("image_id")["PredictionString"]
    # descending score inside the image, int boxes, No finding appended last
    assert a["img_a"] == ("0 0.900000 100 100 200 200 3 0.250000 10 21 300 401 14 0.100000 0 0 1 1")
    assert a["img_c"] == "14 1.000000 0 0 1 1"  # no predictions
    assert prediction_strings(preds, IDS, score_decimals=4).iloc[2, 1] == "14 1.0000 0 0 1 1"


def test_prediction_strings_clip_and_errors(preds):
    tiny = preds_table(
        [("img_c", 1, 0.5, -3.0, 10.2, 10.4, 10.4), ("img_c", 2, 0.4, 490, 0, 530, 9)]
    )
    s = prediction_strings(tiny, IDS, meta=META).iloc[2, 1].split()
    assert s[2:6] == ["0", "10", "10", "11"]  # clipped at 0, kept 1 px high
    assert s[8:12] == ["490", "0", "500", "9"]  # clipped to the 500 px wide image
    with pytest.raises(SubmissionError, match="not in image_ids"):
        prediction_strings(preds, ["img_a"])
    with pytest.raises(SubmissionError, match="row 0"):
        prediction_strings(preds_table([("img_a", 3, 1.5, 0, 0, 1, 1)]), IDS)
    with pytest.raises(SubmissionError, match="lacks column"):
        prediction_strings(preds.drop(columns="score"), IDS)


def test_round_trip_and_metric(tmp_path, preds):
    out = prediction_strings(preds, IDS, meta=META)
    path = write_submission(out, tmp_path / "submission.csv", image_ids=IDS, meta=META)
    assert not list(tmp_path.glob(".*"))  # no temporary file left behind
    back = read_submission(path)
    pd.testing.assert_frame_equal(back, out.astype(str), check_dtype=False)
    parsed = parse_submission(path)
    assert len(parsed) == len(preds) + len(IDS)
    assert set(parsed["class_id"]) == {0, 3, 10, 14}
    # scoring the parsed file against a truth the predictions match gives mAP 1
    truth = pd.DataFrame(
        {
            "image_id": ["img_a", "img_c"],
            "class_name": ["Aortic enlargement", "No finding"],
            "class_id": [0, 14],
            "rad_id": ["R1", "R1"],
            "x_min": [100, np.nan],
            "y_min": [100, np.nan],
            "x_max": [200, np.nan],
            "y_max": [200, np.nan],
        }
    )
    res = vinbigdata_map(parsed, truth, image_ids=IDS)  # img_b has no truth: its boxes are FPs
    assert res.ap == {0: 1.0, 14: 1.0} and res.n_pred[10] == 1


@pytest.mark.parametrize(
    "strings, message",
    [
        ({"img_a": "0 0.5 1 2 3"}, "not a multiple of 6"),
        ({"img_a": "0 0.5 1 2 x 4"}, "token 'x' is not a number"),
        ({"img_a": "15 0.5 1 2 3 4"}, "class id 15"),
        ({"img_a": "2.5 0.5 1 2 3 4"}, "class id 2.5"),
        ({"img_a": "0 1.5 1 2 3 4"}, "score 1.5"),
        ({"img_a": "0 0.5 10 2 10 4"}, "x_max > x_min"),
        ({"img_a": "0 0.5 -1 2 10 4"}, "outside the image"),
        ({"img_a": "14 0.5 0 0 10 10"}, "must use box 0 0 1 1"),
        ({"img_a": "0 nan 1 2 3 4"}, "non-finite"),
        ({"img_a": ""}, "empty/NaN"),
        ({"img_a": np.nan}, "empty/NaN"),
    ],
)
def test_validate_rejects_bad_strings(strings, message):
    with pytest.raises(SubmissionError, match=message) as e:
        validate_submission(sub(strings))
    assert "image_id img_a" in str(e.value)


def test_validate_ids_meta_and_columns():
    good = sub({"img_a": "0 0.5 1 2 3 4 14 0.1 0 0 1 1", "img_b": "14 1 0 0 1 1"})
    assert validate_submission(good) is good
    with pytest.raises(SubmissionError, match=r"1 image id\(s\) missing.*img_c"):
        validate_submission(good, image_ids=IDS)
    with pytest.raises(SubmissionError, match=r"unexpected image id\(s\).*img_b"):
        validate_submission(good, image_ids=["img_a"])
    with pytest.raises(SubmissionError, match="duplicate image id"):
        validate_submission(pd.concat([good, good.iloc[:1]]))
    far = sub({"img_c": "0 0.5 1 2 600 4"})
    validate_submission(far)  # fine without meta ...
    with pytest.raises(SubmissionError, match="500 wide"):
        validate_submission(far, meta=META)  # ... but the image is 500 px wide
    with pytest.raises(SubmissionError, match="no meta row"):
        validate_submission(sub({"zzz": "14 1 0 0 1 1"}), meta=META)
    with pytest.raises(SubmissionError, match="missing"):
        validate_submission(good.rename(columns={"PredictionString": "preds"}))
    with pytest.raises(SubmissionError, match="index=False"):
        validate_submission(good.reset_index().rename(columns={"index": "Unnamed: 0"}))


def test_validate_lists_several_problems():
    bad = sub({f"img{i}": "0 2 1 2 3 4" for i in range(15)})
    with pytest.raises(SubmissionError, match=r"15 problem\(s\)[\s\S]*and 5 more"):
        validate_submission(bad)


def test_read_and_write_errors(tmp_path):
    with pytest.raises(SubmissionError, match="no such submission file"):
        read_submission(tmp_path / "nope.csv")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(SubmissionError, match="not a readable CSV"):
        read_submission(tmp_path / "empty.csv")
    (tmp_path / "idx.csv").write_text(",image_id,PredictionString\n0,a,14 1 0 0 1 1\n")
    with pytest.raises(SubmissionError, match="index=False"):
        read_submission(tmp_path / "idx.csv")
    (tmp_path / "nan.csv").write_text("image_id,PredictionString\na,\n")
    with pytest.raises(SubmissionError, match="row 0 .image_id a.: PredictionString is empty"):
        validate_submission(tmp_path / "nan.csv")
    target = tmp_path / "out.csv"
    with pytest.raises(SubmissionError):
        write_submission(sub({"a": "0 0.5 1 2 3"}), target)
    assert not target.exists() and not list(tmp_path.glob(".out*"))


def test_appending_no_finding_never_lowers_the_metric(preds):
    """Class 14 entries are scored only within class 14: findings' APs stay put."""
    truth = pd.DataFrame(
        {
            "image_id": ["img_a", "img_b", "img_c", "img_c"],
            "class_name": ["Aortic enlargement", "Pleural effusion", "No finding", "No finding"],
            "class_id": [0, 10, 14, 14],
            "rad_id": ["R1", "R1", "R1", "R2"],
            "x_min": [100, 0, np.nan, np.nan],
            "y_min": [100, 0, np.nan, np.nan],
            "x_max": [200, 50, np.nan, np.nan],
            "y_max": [200, 60, np.nan, np.nan],
        }
    )
    parsed = parse_submission(prediction_strings(preds, IDS))
    with_nf = vinbigdata_map(parsed, truth)
    without = vinbigdata_map(parsed[parsed["class_id"] != 14], truth)
    assert {c: with_nf.ap[c] for c in (0, 10)} == {c: without.ap[c] for c in (0, 10)}
    assert without.ap[14] == 0.0 and with_nf.ap[14] == 1.0  # img_c ranks first (p = 1)
    assert with_nf.map > without.map


def test_a_submission_id_that_starts_like_a_formula_is_refused():
    table = pd.DataFrame(
        {"image_id": ["a1", "=cmd|' /C calc'!A0"], "PredictionString": ["14 1 0 0 1 1"] * 2}
    )
    with pytest.raises(SubmissionError, match=r"row 1 .* starts like a spreadsheet formula"):
        validate_submission(table)
