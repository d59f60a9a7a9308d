"""cxrkit.metrics against hand-computed cases and ZFTurbo's map-boxes reference.

map-boxes (``pip install map-boxes``) is a test-only dependency. Its conventions
(see the cxrkit.metrics docstring) coincide with VOC when each image's predictions
are listed in descending score and ties are sorted stably, so the comparisons feed
it such tables and patch its ``np.argsort`` to a stable one where scores tie.
"""

from __future__ import annotations

import json
import types

import numpy as np
import pandas as pd
import pytest

from cxrkit.labels import CLASS_NAMES, NO_FINDING_ID
from cxrkit.metrics import (
    MapResult,
    ap_at_ious,
    average_precision,
    confusion_at_iou,
    iou_matrix,
    pr_curves,
    prepare_truth,
    vinbigdata_map,
)

map_boxes = pytest.importorskip("map_boxes")

BOX = ["x_min", "y_min", "x_max", "y_max"]


# ----------------------------------------------------------------- helpers
def truth_table(rows: list[tuple]) -> pd.DataFrame:
    """rows: (image_id, class_id, rad_id, x0, y0, x1, y1); class 14 gets NaN boxes."""
    df = pd.DataFrame(rows, columns=["image_id", "class_id", "rad_id", *BOX])
    df["class_name"] = [CLASS_NAMES[c] for c in df["class_id"]]
    df.loc[df["class_id"] == NO_FINDING_ID, BOX] = np.nan
    return df[["image_id", "class_name", "class_id", "rad_id", *BOX]]


def pred_table(rows: list[tuple]) -> pd.DataFrame:
    """rows: (image_id, class_id, score, x0, y0, x1, y1)."""
    return pd.DataFrame(rows, columns=["image_id", "class_id", "score", *BOX])


def reference_map(preds: pd.DataFrame, truth: pd.DataFrame, iou_thr: float = 0.4):
    """map-boxes on our tables. Its array columns are X_MIN, X_MAX, Y_MIN, Y_MAX (sic)."""
    normal = truth.groupby("image_id", sort=False)["class_id"].apply(
        lambda s: (s == NO_FINDING_ID).all()
    )
    ann, seen = [], set()  # in truth row order, so images keep their truth order
    for r in truth.itertuples():
        if r.class_id != NO_FINDING_ID:
            ann.append((r.image_id, str(r.class_id), r.x_min, r.x_max, r.y_min, r.y_max))
        elif normal[r.image_id] and r.image_id not in seen:
            seen.add(r.image_id)
            ann.append((r.image_id, str(NO_FINDING_ID), 0.0, 1.0, 0.0, 1.0))
    det = [
        (r.image_id, str(r.class_id), r.score, r.x_min, r.x_max, r.y_min, r.y_max)
        for r in preds.itertuples()
    ]
    ann_arr = np.array(ann, dtype=object).reshape(-1, 6)
    det_arr = np.array(det, dtype=object).reshape(-1, 7)
    m, per_class = map_boxes.mean_average_precision_for_boxes(
        ann_arr, det_arr, iou_threshold=iou_thr, verbose=False
    )
    return m, {int(k): v[0] for k, v in per_class.items()}


@pytest.fixture
def stable_reference(monkeypatch):
    """map-boxes with a stable argsort, so tied scores keep table order as ours do."""
    shim = types.SimpleNamespace(**{k: getattr(np, k) for k in dir(np) if not k.startswith("__")})
    shim.argsort = lambda a, *args, **kw: np.argsort(a, kind="stable")
    monkeypatch.setattr(map_boxes, "np", shim)


def ref_order(preds: pd.DataFrame, truth: pd.DataFrame) -> pd.DataFrame:
    """Rows grouped by image in truth order, descending score inside an image (stable).

    This is the order map-boxes visits detections in, so with it both implementations
    see the same sequence (and the same tie order).
    """
    rank = {i: k for k, i in enumerate(pd.unique(truth["image_id"]))}
    p = preds.assign(_img=preds["image_id"].map(rank), _neg=-preds["score"])
    return p.sort_values(["_img", "_neg"], kind="stable").drop(columns=["_img", "_neg"])


def random_case(seed: int, n_images: int = 40, tie_levels: int | None = None):
    """Random raw-style truth (3 readers, jittered boxes) and predictions near it."""
    rng = np.random.default_rng(seed)
    truth, preds = [], []
    for k in range(n_images):
        img = f"img{k:03d}"
        if rng.random() < 0.4:
            truth += [(img, 14, f"R{r}", 0, 0, 0, 0) for r in (1, 2, 3)]
        else:
            for _ in range(rng.integers(1, 4)):
                c = int(rng.integers(0, 6))
                x0, y0 = rng.integers(0, 700, 2)
                w, h = rng.integers(30, 300, 2)
                for r in rng.choice([1, 2, 3], size=rng.integers(1, 4), replace=False):
                    j = rng.integers(-25, 26, 4)
                    truth.append(
                        (img, c, f"R{r}", x0 + j[0], y0 + j[1], x0 + w + j[2], y0 + h + j[3])
                    )
                for _ in range(rng.integers(0, 4)):  # predictions near this finding
                    j = rng.integers(-60, 61, 4)
                    cc = c if rng.random() < 0.8 else int(rng.integers(0, 7))
                    preds.append((img, cc, 0, x0 + j[0], y0 + j[1], x0 + w + j[2], y0 + h + j[3]))
        for _ in range(rng.integers(0, 4)):  # random false positives
            x0, y0 = rng.integers(0, 800, 2)
            w, h = rng.integers(10, 200, 2)
            preds.append((img, int(rng.integers(0, 7)), 0, x0, y0, x0 + w, y0 + h))
        preds.append((img, 14, 0, 0, 0, 1, 1))
    p = pred_table(preds)
    if tie_levels:
        p["score"] = rng.integers(1, tie_levels + 1, len(p)) / tie_levels
    else:  # float32-exact scores: map-boxes casts scores to float32
        p["score"] = rng.random(len(p)).astype(np.float32).astype(np.float64)
    p[BOX] = p[BOX].astype(np.float64)
    return p, truth_table(truth)


# ----------------------------------------------------------------- building blocks
def test_iou_matrix_known_values():
    a = np.array([[0, 0, 10, 10], [0, 0, 10, 10]])
    b = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30], [0, 0, 10, 4]])
    got = iou_matrix(a, b)
    np.testing.assert_allclose(got[0], [1.0, 50 / 150, 0.0, 0.4])
    assert got.shape == (2, 4)
    assert iou_matrix(np.zeros((0, 4)), b).shape == (0, 4)
    assert iou_matrix([[5, 5, 5, 5]], [[5, 5, 5, 5]])[0, 0] == 0.0  # degenerate box


def test_average_precision_by_hand():
    # TP, FP, TP with 2 truth boxes: recall .5,.5,1 precision 1,.5,2/3
    ap = average_precision(np.array([0.5, 0.5, 1.0]), np.array([1.0, 0.5, 2 / 3]))
    assert ap == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    assert average_precision(np.array([]), np.array([])) == 0.0
    assert average_precision(np.array([1.0]), np.array([1.0])) == 1.0


def test_prepare_truth_collapses_no_finding():
    truth = truth_table(
        [
            ("a", 14, "R1", 0, 0, 0, 0),
            ("a", 14, "R2", 0, 0, 0, 0),
            ("a", 14, "R3", 0, 0, 0, 0),
            ("b", 3, "R1", 10, 10, 50, 50),
            ("b", 3, "R2", 12, 10, 52, 50),
            ("b", 14, "R3", 0, 0, 0, 0),  # mixed image: no class-14 truth box
        ]
    )
    gt = prepare_truth(truth)
    assert len(gt) == 3
    nf = gt[gt["class_id"] == 14]
    assert list(nf["image_id"]) == ["a"]
    assert nf[BOX].to_numpy().tolist() == [[0, 0, 1, 1]]


# ----------------------------------------------------------------- hand-computed mAP
def test_perfect_and_no_finding():
    truth = truth_table(
        [("a", 0, "R1", 10, 10, 100, 100), ("b", 14, "R1", 0, 0, 0, 0), ("b", 14, "R2", 0, 0, 0, 0)]
    )
    preds = pred_table([("a", 0, 0.9, 10, 10, 100, 100), ("b", 14, 0.8, 0, 0, 1, 1)])
    res = vinbigdata_map(preds, truth)
    assert res.map == 1.0 and res.ap == {0: 1.0, 14: 1.0}
    assert res.n_truth[14] == 1  # three readers' rows -> one truth box


def test_duplicates_are_false_positives_and_threshold_is_inclusive():
    truth = truth_table([("a", 0, "R1", 0, 0, 10, 10)])
    # IoU exactly 0.4 (40 / 100) is a hit; the duplicate at lower score is a FP
    preds = pred_table([("a", 0, 0.9, 0, 0, 10, 4), ("a", 0, 0.8, 0, 0, 10, 10)])
    res = vinbigdata_map(preds, truth)
    assert res.n_tp[0] == 1 and res.ap[0] == 1.0
    np.testing.assert_allclose(res.curves[0][1], [1.0, 0.5])
    # just below the threshold: the first prediction misses, the second hits
    res2 = vinbigdata_map(preds, truth, iou_thr=0.41)
    assert res2.ap[0] == pytest.approx(0.5)


def test_classes_without_truth_are_left_out_and_without_predictions_count_zero():
    truth = truth_table([("a", 0, "R1", 0, 0, 10, 10), ("a", 5, "R1", 50, 50, 90, 90)])
    preds = pred_table([("a", 0, 0.9, 0, 0, 10, 10), ("a", 7, 0.9, 0, 0, 10, 10)])
    res = vinbigdata_map(preds, truth)
    assert res.ap == {0: 1.0, 5: 0.0}  # class 7 has no truth: not averaged
    assert res.map == 0.5 and res.n_pred[7] == 1
    frame = res.to_frame()
    assert len(frame) == 15 and np.isnan(frame.loc[7, "ap"]) and frame.loc[5, "n_truth"] == 1
    d = res.to_dict()
    assert json.loads(json.dumps(d)) == {"map": 0.5, "ap": {"Aortic enlargement": 1.0, "ILD": 0.0}}
    assert isinstance(res, MapResult) and "0.5000" in str(res)


def test_empty_predictions_and_errors():
    truth = truth_table([("a", 0, "R1", 0, 0, 10, 10), ("b", 14, "R1", 0, 0, 0, 0)])
    res = vinbigdata_map(pred_table([]), truth)
    assert res.map == 0.0 and res.ap == {0: 0.0, 14: 0.0}
    with pytest.raises(ValueError, match="not among the scored images"):
        vinbigdata_map(pred_table([("zzz", 0, 0.5, 0, 0, 1, 1)]), truth)
    with pytest.raises(ValueError, match="lacks column"):
        vinbigdata_map(pred_table([]).drop(columns="score"), truth)
    with pytest.raises(ValueError, match="row 0"):
        vinbigdata_map(pred_table([("a", 15, 0.5, 0, 0, 1, 1)]), truth)
    with pytest.raises(ValueError, match="no rows"):
        vinbigdata_map(pred_table([]), truth.iloc[:0])


def test_image_without_truth_counts_false_positives():
    truth = truth_table([("a", 0, "R1", 0, 0, 10, 10)])
    preds = pred_table([("a", 0, 0.5, 0, 0, 10, 10), ("extra", 0, 0.9, 0, 0, 10, 10)])
    res = vinbigdata_map(preds, truth, image_ids=["a", "extra"])
    assert res.ap[0] == pytest.approx(0.5)  # FP first, then TP: precision 1/2 at recall 1


def test_row_order_does_not_matter_without_ties():
    preds, truth = random_case(seed=5)
    a = vinbigdata_map(preds, truth)
    b = vinbigdata_map(preds.sample(frac=1.0, random_state=0), truth)
    assert a.map == b.map and a.ap == b.ap


def test_pr_curves_end_at_final_recall():
    preds, truth = random_case(seed=2)
    curves = pr_curves(preds, truth)
    res = vinbigdata_map(preds, truth)
    for c, (rec, prec) in curves.items():
        assert len(rec) == len(prec) == res.n_pred[c]
        if len(rec):
            assert rec[-1] == pytest.approx(res.n_tp[c] / res.n_truth[c])
            assert np.all(np.diff(rec) >= 0)


# ----------------------------------------------------------------- reference agreement
@pytest.mark.parametrize("seed", range(6))
def test_agrees_with_map_boxes_random(seed):
    preds, truth = random_case(seed)
    preds = ref_order(preds, truth)
    ours = vinbigdata_map(preds, truth)
    ref_m, ref_ap = reference_map(preds, truth)
    assert ours.map == pytest.approx(ref_m, abs=1e-6)
    assert set(ours.ap) == set(ref_ap)
    for c in ref_ap:
        assert ours.ap[c] == pytest.approx(ref_ap[c], abs=1e-6), c


@pytest.mark.parametrize("seed", range(4))
def test_agrees_with_stable_map_boxes_on_tied_scores(seed, stable_reference):
    preds, truth = random_case(seed + 100, tie_levels=4)
    preds = ref_order(preds, truth)
    ours = vinbigdata_map(preds, truth)
    ref_m, ref_ap = reference_map(preds, truth)
    assert ours.map == pytest.approx(ref_m, abs=1e-6)
    for c in ref_ap:
        assert ours.ap[c] == pytest.approx(ref_ap[c], abs=1e-6), c


def test_agrees_with_map_boxes_edge_cases(stable_reference):
    truth = truth_table(
        [
            ("a", 0, "R1", 0, 0, 10, 10),
            ("a", 0, "R2", 0, 0, 10, 10),  # identical reader boxes
            ("a", 3, "R1", 100, 100, 300, 200),  # class with truth but no predictions
            ("b", 14, "R1", 0, 0, 0, 0),
            ("b", 14, "R2", 0, 0, 0, 0),
            ("c", 0, "R1", 50, 50, 60, 60),
        ]
    )
    preds = pred_table(
        [
            ("a", 0, 0.9, 0, 0, 10, 10),
            ("a", 0, 0.9, 0, 0, 10, 10),  # duplicate, tied score
            ("a", 0, 0.5, 0, 0, 10, 4),  # IoU exactly 0.4
            ("a", 5, 0.7, 0, 0, 10, 10),  # class without truth anywhere
            ("b", 0, 0.95, 0, 0, 10, 10),  # prediction on an image without that class
            ("b", 14, 0.6, 0, 0, 1, 1),
            ("a", 14, 0.2, 0, 0, 1, 1),
            ("c", 14, 0.6, 0, 0, 1, 1),
        ]
    )
    preds = ref_order(preds, truth)
    ours = vinbigdata_map(preds, truth)
    ref_m, ref_ap = reference_map(preds, truth)
    assert ours.map == pytest.approx(ref_m, abs=1e-6)
    assert ours.ap == pytest.approx(ref_ap, abs=1e-6)
    assert ours.ap[3] == 0.0 and 5 not in ours.ap
    # empty predictions: both give 0
    assert reference_map(pred_table([]), truth)[0] == vinbigdata_map(pred_table([]), truth).map


def test_reference_differs_when_rows_are_not_score_sorted():
    """map-boxes matches an image's rows in table order; VOC (and we) in score order."""
    truth = truth_table([("a", 0, "R1", 0, 0, 10, 10)])
    preds = pred_table([("a", 0, 0.3, 0, 0, 10, 9), ("a", 0, 0.9, 0, 0, 10, 10)])
    assert vinbigdata_map(preds, truth).ap[0] == 1.0
    assert reference_map(preds, truth)[1][0] == pytest.approx(0.5)
    assert reference_map(ref_order(preds, truth), truth)[1][0] == 1.0


# ----------------------------------------------------------------- error analysis
def test_ap_at_ious_separates_loose_boxes():
    # truth 0..10 square; the prediction covers x 0..10, y 0..4.5: IoU 0.45
    truth = truth_table([("a", 0, "R1", 0, 0, 10, 10), ("b", 14, "R1", 0, 0, 0, 0)])
    preds = pred_table([("a", 0, 0.9, 0, 0, 10, 4.5), ("b", 14, 0.8, 0, 0, 1, 1)])
    table = ap_at_ious(preds, truth, (0.1, 0.4, 0.5))
    assert list(table.columns) == ["class_name", "AP@0.1", "AP@0.4", "AP@0.5"]
    assert table.loc[0].tolist() == ["Aortic enlargement", 1.0, 1.0, 0.0]
    assert table.loc[14, "AP@0.5"] == 1.0  # the No finding box always matches itself
    assert table["AP@0.5"].mean() == pytest.approx(vinbigdata_map(preds, truth, 0.5).map)


def test_confusion_at_iou_counts_the_best_overlapping_class():
    ild, fibrosis, nodule = 5, 13, 8
    truth = truth_table(
        [
            ("a", ild, "R1", 0, 0, 100, 100),  # fibrosis overlaps more than ILD
            ("a", fibrosis, "R1", 200, 200, 300, 300),  # nothing near: none
            ("b", ild, "R1", 0, 0, 100, 100),  # a nodule box on it: other
            ("b", 3, "R1", 0, 0, 100, 100),  # class not asked for: ignored
            ("c", 14, "R1", 0, 0, 0, 0),
        ]
    )
    preds = pred_table(
        [
            ("a", fibrosis, 0.2, 0, 0, 100, 95),  # IoU 0.95
            ("a", ild, 0.9, 0, 0, 100, 60),  # IoU 0.60
            ("b", nodule, 0.5, 0, 0, 100, 40),  # IoU exactly 0.40: inclusive
            ("c", 14, 1.0, 0, 0, 1, 1),
        ]
    )
    table = confusion_at_iou(preds, truth, classes=[ild, fibrosis])
    assert list(table.index) == ["ILD", "Pulmonary fibrosis"]
    assert list(table.columns) == ["ILD", "Pulmonary fibrosis", "other", "none"]
    assert table.loc["ILD"].tolist() == [0, 1, 1, 0]
    assert table.loc["Pulmonary fibrosis"].tolist() == [0, 0, 0, 1]
    # a score threshold removes the fibrosis box: the ILD box is then found as ILD
    high = confusion_at_iou(preds, truth, classes=[ild, fibrosis], score_thr=0.3)
    assert high.loc["ILD"].tolist() == [1, 0, 1, 0]
    # a stricter IoU turns the 0.40 nodule overlap into a miss
    strict = confusion_at_iou(preds, truth, classes=[ild, fibrosis], iou_thr=0.41)
    assert strict.loc["ILD"].tolist() == [0, 1, 0, 1]
    assert confusion_at_iou(preds, truth).to_numpy().sum() == 4  # every finding box once
    with pytest.raises(ValueError, match="finding ids"):
        confusion_at_iou(preds, truth, classes=[14])
    with pytest.raises(ValueError, match="iou_thr"):
        confusion_at_iou(preds, truth, iou_thr=0)
