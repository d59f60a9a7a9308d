"""The VinBigData competition metric: PASCAL VOC 2010 mAP at IoU 0.4, 15 classes.

:func:`vinbigdata_map` scores a predictions table against a truth table (per-class
average precision, "No finding" scored as a box of its own); :func:`iou_matrix`
and :func:`average_precision` are its steps. Taught in notebooks 05 and 06. The
image-level classifier's scores (notebook 07): :func:`roc_auc`, :func:`roc_curve`,
:func:`calibration_table`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from cxrkit.errors import AnnotationError, ConfigError, SubmissionError
from cxrkit.formats import BOX_COLUMNS, NO_FINDING_BOX, PREDICTION_COLUMNS, TRUTH_COLUMNS
from cxrkit.labels import CLASS_NAMES, NO_FINDING_ID, NUM_CLASSES


@dataclass
class MapResult:
    """Result of :func:`vinbigdata_map`.

    ``ap`` holds only the classes that have truth (the ones averaged into ``map``);
    ``n_truth``, ``n_pred`` and ``n_tp`` hold all 15 classes. ``curves[c]`` is the
    ``(recall, precision)`` pair after each prediction of class ``c`` in score order.
    """

    map: float
    ap: dict[int, float]
    n_truth: dict[int, int]
    n_pred: dict[int, int]
    n_tp: dict[int, int] = field(default_factory=dict)
    curves: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict, repr=False)
    iou_thr: float = 0.4

    def to_frame(self) -> pd.DataFrame:
        """One row per class: id, name, AP (NaN when the class has no truth) and counts."""
        rows = []
        for c in range(NUM_CLASSES):
            n_truth = self.n_truth.get(c, 0)
            n_tp = self.n_tp.get(c, 0)
            rows.append(
                {
                    "class_id": c,
                    "class_name": CLASS_NAMES[c],
                    "ap": self.ap.get(c, np.nan),
                    "n_truth": n_truth,
                    "n_pred": self.n_pred.get(c, 0),
                    "n_tp": n_tp,
                    "recall": n_tp / n_truth if n_truth else np.nan,
                }
            )
        return pd.DataFrame(rows)

    def to_dict(self) -> dict:
        """JSON-safe summary: ``{"map": float, "ap": {class_name: float}}``."""
        return {
            "map": float(self.map),
            "ap": {CLASS_NAMES[c]: float(v) for c, v in sorted(self.ap.items())},
        }

    def __str__(self) -> str:
        return f"mAP@{self.iou_thr:g} = {self.map:.4f} over {len(self.ap)} classes"


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in ``a`` (N, 4) with every box in ``b`` (M, 4) -> (N, M).

    Continuous coordinates (no +1 pixel); boxes that do not overlap, or degenerate
    boxes, give 0.
    """
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    return elementwise_iou(a[:, None, :], b[None, :, :])


def elementwise_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Element-wise IoU of broadcastable box arrays (..., 4), same formula as map-boxes.

    The one IoU of cxrkit (:func:`iou_matrix` and the radiologist agreement use it).
    """
    iw = np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0])
    ih = np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1])
    overlap = (iw > 0) & (ih > 0)
    inter = np.where(overlap, iw * ih, 0.0)
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    union = area_a + area_b - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(overlap & (union > 0), inter / np.where(union > 0, union, 1.0), 0.0)


def average_precision(recall: np.ndarray, precision: np.ndarray) -> float:
    """All-point interpolated AP (PASCAL VOC 2010 onwards).

    ``recall`` and ``precision`` are the values after each prediction in descending
    score order. The precision is first replaced by its *envelope* (at each recall,
    the best precision reachable at that recall or beyond), then the area under the
    envelope is summed over the points where recall changes.
    """
    mrec = np.concatenate(([0.0], np.asarray(recall, dtype=np.float64), [1.0]))
    mpre = np.concatenate(([0.0], np.asarray(precision, dtype=np.float64), [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    steps = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]))


def prepare_truth(truth: pd.DataFrame) -> pd.DataFrame:
    """Truth boxes as scored: findings row by row, one No finding box per normal image.

    ``truth`` has ``train.csv`` columns (raw or fused). Returns image_id, class_id and
    box columns, findings first in table order, then one class-14 row with box
    ``(0, 0, 1, 1)`` for every image whose rows are all class 14.
    """
    missing = [c for c in ("image_id", "class_id", *BOX_COLUMNS) if c not in truth.columns]
    if missing:
        raise AnnotationError(f"truth table lacks column(s) {missing}; expected train.csv columns")
    class_ids = pd.to_numeric(truth["class_id"], errors="coerce")
    bad = ~class_ids.isin(range(NUM_CLASSES))
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise AnnotationError(
            f"truth row {i} (image_id {truth['image_id'].iloc[i]!r}): class_id "
            f"{truth['class_id'].iloc[i]!r} is not in 0..{NUM_CLASSES - 1}"
        )
    is_nf = (class_ids == NO_FINDING_ID).to_numpy()
    findings = truth.loc[~is_nf, TRUTH_COLUMNS].copy()
    findings["class_id"] = class_ids[~is_nf].astype(np.int64)
    boxes = findings[BOX_COLUMNS].apply(pd.to_numeric, errors="coerce")
    if boxes.isna().any().any():
        i = int(np.flatnonzero(boxes.isna().any(axis=1).to_numpy())[0])
        raise AnnotationError(
            f"truth finding row (image_id {findings['image_id'].iloc[i]!r}, class_id "
            f"{findings['class_id'].iloc[i]}) has a missing or non-numeric box"
        )
    findings[BOX_COLUMNS] = boxes.astype(np.float64)
    has_finding = set(findings["image_id"])
    normal_ids = pd.unique(truth.loc[is_nf, "image_id"])
    normal_ids = [i for i in normal_ids if i not in has_finding]
    normal = pd.DataFrame({"image_id": normal_ids, "class_id": NO_FINDING_ID})
    normal[BOX_COLUMNS] = np.tile(np.asarray(NO_FINDING_BOX, dtype=np.float64), (len(normal), 1))
    normal["class_id"] = normal["class_id"].astype(np.int64)
    return pd.concat([findings, normal], ignore_index=True)


def _check_predictions(predictions: pd.DataFrame) -> pd.DataFrame:
    missing = [c for c in PREDICTION_COLUMNS if c not in predictions.columns]
    if missing:
        raise SubmissionError(
            f"predictions table lacks column(s) {missing}; expected {PREDICTION_COLUMNS}"
        )
    p = predictions[PREDICTION_COLUMNS].reset_index(drop=True)
    num = p[["class_id", "score", *BOX_COLUMNS]].apply(pd.to_numeric, errors="coerce")
    num = num.astype(np.float64)
    bad = ~np.isfinite(num.to_numpy()).all(axis=1) | ~num["class_id"].isin(range(NUM_CLASSES))
    if bad.any():
        i = int(np.flatnonzero(np.asarray(bad))[0])
        raise SubmissionError(
            f"predictions row {i} (image_id {p['image_id'].iloc[i]!r}) has a non-numeric or "
            f"non-finite value or a class_id outside 0..{NUM_CLASSES - 1}: "
            f"{p.iloc[i].to_dict()}"
        )
    p[["score", *BOX_COLUMNS]] = num[["score", *BOX_COLUMNS]]
    p["class_id"] = num["class_id"].astype(np.int64)
    return p


def _match(
    det_key: np.ndarray,
    det_boxes: np.ndarray,
    truth_key: np.ndarray,
    truth_boxes: np.ndarray,
    iou_thr: float,
) -> np.ndarray:
    """True-positive flags for detections already in descending score order.

    Vectorised VOC matching: every detection is paired with all truth boxes of its
    (image, class) group at once. Because a detection never falls back to its second
    best box, detection ``d`` is a true positive exactly when its best IoU reaches
    the threshold and no earlier detection had the same best box with a passing IoU.
    """
    n_det = len(det_key)
    tp = np.zeros(n_det, dtype=bool)
    if n_det == 0 or len(truth_key) == 0:
        return tp
    order = np.argsort(truth_key, kind="stable")  # table order inside a group
    key_sorted = truth_key[order]
    start = np.searchsorted(key_sorted, det_key, side="left")
    count = np.searchsorted(key_sorted, det_key, side="right") - start
    total = int(count.sum())
    if total == 0:
        return tp
    first_pair = np.cumsum(count) - count
    det_of_pair = np.repeat(np.arange(n_det), count)
    truth_of_pair = order[np.repeat(start - first_pair, count) + np.arange(total)]
    iou = elementwise_iou(det_boxes[det_of_pair], truth_boxes[truth_of_pair])

    has = count > 0
    best = np.zeros(n_det)
    best[has] = np.maximum.reduceat(iou, first_pair[has])
    # first pair reaching the best IoU = np.argmax's choice (first index on ties)
    at_best = np.flatnonzero(iou == best[det_of_pair])
    first = np.r_[True, det_of_pair[at_best[1:]] != det_of_pair[at_best[:-1]]]
    at_best = at_best[first]
    best_truth = np.full(n_det, -1)
    best_truth[det_of_pair[at_best]] = truth_of_pair[at_best]

    passing = np.flatnonzero(has & (best >= iou_thr))
    _, first_claim = np.unique(best_truth[passing], return_index=True)
    tp[passing[first_claim]] = True
    return tp


def vinbigdata_map(
    predictions: pd.DataFrame,
    truth: pd.DataFrame,
    iou_thr: float = 0.4,
    *,
    image_ids: Iterable | None = None,
) -> MapResult:
    """Competition mAP of a predictions table against a truth table.

    Parameters
    ----------
    predictions:
        image_id, class_id (0-14), score, x_min, y_min, x_max, y_max in original
        pixels. A No finding prediction is class 14 with box (0, 0, 1, 1).
    truth:
        ``train.csv`` columns, raw or fused (see the module docstring).
    iou_thr:
        IoU needed for a hit (``>=``); 0.4 in the competition.
    image_ids:
        The images being scored. Defaults to the images of ``truth``. Listing images
        without truth rows makes their predictions count as false positives.
        Predictions on any other image raise ``SubmissionError`` (a mismatched id is
        almost always a bug).
    """
    if not 0.0 < iou_thr <= 1.0:
        raise ConfigError(f"iou_thr must be in (0, 1], got {iou_thr}")
    pred = _check_predictions(predictions)
    gt = prepare_truth(truth)
    if len(gt) == 0:
        raise AnnotationError("truth table has no rows: nothing to score against")
    ids = pd.Index(pd.unique(truth["image_id"]) if image_ids is None else list(image_ids))
    if not ids.is_unique:
        ids = ids.unique()
    pred_img = ids.get_indexer(pred["image_id"])
    gt_img = ids.get_indexer(gt["image_id"])
    if (pred_img < 0).any():
        unknown = pd.unique(pred["image_id"][pred_img < 0])
        raise SubmissionError(
            f"{len(unknown)} image id(s) in the predictions are not among the scored images, "
            f"e.g. {list(unknown[:3])}; filter the predictions or pass image_ids="
        )
    if (gt_img < 0).any():
        raise ConfigError("image_ids must include every image of the truth table")

    # one stable sort: descending score, ties in table order
    order = np.argsort(-pred["score"].to_numpy(), kind="stable")
    det_cls = pred["class_id"].to_numpy()[order]
    det_key = pred_img[order].astype(np.int64) * NUM_CLASSES + det_cls
    det_boxes = pred[BOX_COLUMNS].to_numpy(np.float64)[order]
    gt_cls = gt["class_id"].to_numpy(np.int64)
    gt_key = gt_img.astype(np.int64) * NUM_CLASSES + gt_cls
    tp = _match(det_key, det_boxes, gt_key, gt[BOX_COLUMNS].to_numpy(np.float64), iou_thr)

    n_truth = np.bincount(gt_cls, minlength=NUM_CLASSES)
    n_pred = np.bincount(det_cls, minlength=NUM_CLASSES)
    ap: dict[int, float] = {}
    curves: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    n_tp: dict[int, int] = {}
    for c in range(NUM_CLASSES):
        tp_c = tp[det_cls == c]
        n_tp[c] = int(tp_c.sum())
        if n_truth[c] == 0:
            continue
        tp_cum = np.cumsum(tp_c, dtype=np.float64)
        fp_cum = np.cumsum(~tp_c, dtype=np.float64)
        recall = tp_cum / n_truth[c]
        precision = tp_cum / np.maximum(tp_cum + fp_cum, np.finfo(np.float64).eps)
        curves[c] = (recall, precision)
        ap[c] = average_precision(recall, precision)
    return MapResult(
        map=float(np.mean(list(ap.values()))),
        ap=ap,
        n_truth={c: int(n) for c, n in enumerate(n_truth)},
        n_pred={c: int(n) for c, n in enumerate(n_pred)},
        n_tp=n_tp,
        curves=curves,
        iou_thr=iou_thr,
    )


def pr_curves(
    predictions: pd.DataFrame, truth: pd.DataFrame, iou_thr: float = 0.4, **kwargs
) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Per-class ``(recall, precision)`` curves, e.g. for ``cxrkit.plotting``."""
    return vinbigdata_map(predictions, truth, iou_thr, **kwargs).curves


def ap_at_ious(
    predictions: pd.DataFrame,
    truth: pd.DataFrame,
    iou_thresholds: Iterable[float] = (0.1, 0.4, 0.5),
    *,
    image_ids: Iterable | None = None,
) -> pd.DataFrame:
    """AP per class at several IoU thresholds: one row per class with truth, one column each.

    Separates localisation from classification errors: AP that rises a lot from
    IoU 0.4 down to 0.1 means boxes of the right class in roughly the right place
    but too loose or shifted; AP that stays low even at 0.1 means the class itself
    is missed or mis-ranked. A column's mean is the mAP at that threshold.
    """
    ids = None if image_ids is None else list(image_ids)
    columns = {}
    for thr in iou_thresholds:
        result = vinbigdata_map(predictions, truth, float(thr), image_ids=ids)
        columns[f"AP@{thr:g}"] = pd.Series(result.ap, dtype=np.float64)
    table = pd.DataFrame(columns)
    table.index.name = "class_id"
    table.insert(0, "class_name", [CLASS_NAMES[c] for c in table.index])
    return table


def confusion_at_iou(
    predictions: pd.DataFrame,
    truth: pd.DataFrame,
    classes: Iterable[int] | None = None,
    iou_thr: float = 0.4,
    score_thr: float = 0.0,
) -> pd.DataFrame:
    """Which class the model draws on each truth box: a confusion table for a detector.

    For every truth finding box of ``classes`` (default: all 14 findings), take the
    prediction on the same image, of any finding class and scoring at least
    ``score_thr``, that overlaps it most (ties: the higher score). If that IoU
    reaches ``iou_thr`` the box is counted under the prediction's class, otherwise
    under ``"none"``. Rows are the truth classes (by name, in the order given),
    columns the same names, then ``"other"`` (a finding class not in ``classes``)
    and ``"none"``. The diagonal holds boxes covered by their own class; an
    off-diagonal cell holds boxes the model located but named differently.
    Unlike the AP this ignores the ranking: it shows *what* is drawn, not how well
    it is scored.
    """
    if not 0.0 < iou_thr <= 1.0:
        raise ConfigError(f"iou_thr must be in (0, 1], got {iou_thr}")
    wanted = list(range(NO_FINDING_ID)) if classes is None else [int(c) for c in classes]
    bad = [c for c in wanted if not 0 <= c < NO_FINDING_ID]
    if bad or len(set(wanted)) != len(wanted) or not wanted:
        raise ConfigError(f"classes must be distinct finding ids 0..13, got {list(wanted)}")
    names = [CLASS_NAMES[c] for c in wanted]
    table = pd.DataFrame(0, index=names, columns=[*names, "other", "none"], dtype=np.int64)
    table.index.name, table.columns.name = "truth", "predicted"

    gt = prepare_truth(truth)
    gt = gt[gt["class_id"].isin(wanted)]
    pred = _check_predictions(predictions)
    pred = pred[(pred["class_id"] != NO_FINDING_ID) & (pred["score"] >= score_thr)]
    pred = pred.sort_values("score", ascending=False, kind="stable")  # argmax: higher score
    pred_by_image = dict(tuple(pred.groupby("image_id", sort=False)))
    for image_id, t in gt.groupby("image_id", sort=False):
        p = pred_by_image.get(image_id)
        if p is None or len(p) == 0:
            best_iou = np.zeros(len(t))
            best_cls = np.full(len(t), -1)
        else:
            iou = iou_matrix(t[BOX_COLUMNS].to_numpy(), p[BOX_COLUMNS].to_numpy())
            best = iou.argmax(axis=1)
            best_iou = iou[np.arange(len(t)), best]
            best_cls = p["class_id"].to_numpy()[best]
        for truth_cls, overlap, cls in zip(t["class_id"], best_iou, best_cls, strict=True):
            if overlap < iou_thr:
                column = "none"
            elif cls in wanted:
                column = CLASS_NAMES[cls]
            else:
                column = "other"
            table.loc[CLASS_NAMES[truth_cls], column] += 1
    return table


def truth_found(
    predictions: pd.DataFrame, truth: pd.DataFrame, iou_thr: float = 0.4, min_score: float = 0.0
) -> pd.DataFrame:
    """Which truth findings a predictions table finds: a box of the same class on the
    same image with IoU >= ``iou_thr`` and score >= ``min_score``.

    Returns the truth's finding rows (:func:`prepare_truth`, No finding left out) with a
    boolean ``found`` column. Unlike AP it ignores ranking and false positives: it
    says *which* findings a model sees, so two models' columns side by side show
    whether their misses differ (notebook 08).
    """
    rows = prepare_truth(truth)
    rows = rows[rows["class_id"] != NO_FINDING_ID].reset_index(drop=True)
    preds = _check_predictions(predictions)
    preds = preds[preds["score"] >= min_score]
    grouped = preds.groupby(["image_id", "class_id"])[BOX_COLUMNS]
    boxes = {key: part.to_numpy(np.float64) for key, part in grouped}
    found = np.zeros(len(rows), dtype=bool)
    for i, (image_id, class_id, *box) in enumerate(
        rows[["image_id", "class_id", *BOX_COLUMNS]].itertuples(index=False)
    ):
        candidates = boxes.get((image_id, int(class_id)))
        if candidates is not None:
            found[i] = bool((iou_matrix(np.asarray(box), candidates) >= iou_thr).any())
    return rows.assign(found=found)


def bootstrap_map(
    tables: dict[str, pd.DataFrame],
    truth: pd.DataFrame,
    image_ids: Iterable | None = None,
    n_boot: int = 200,
    seed: int = 0,
    iou_thr: float = 0.4,
) -> pd.DataFrame:
    """Paired bootstrap of the mAP of several predictions tables on the same images.

    Each draw resamples the images with replacement (an image drawn twice counts
    twice: its rows are copied under a new id) and scores every table on that same
    draw, so differences between tables are measured without the noise of the draw.
    Returns one row per draw, one column per table name. Its spread (``std``, a
    quantile interval) says how far a mAP on these few images could move by chance.
    """
    if n_boot < 1:
        raise ConfigError(f"n_boot must be >= 1, got {n_boot}")
    ids = pd.Index(
        pd.unique(truth["image_id"].astype(str)) if image_ids is None else list(image_ids)
    )
    ids = ids.astype(str).unique()
    truth = truth.assign(image_id=truth["image_id"].astype(str))
    truth_rows = truth.groupby("image_id").indices
    prepared = {name: t.assign(image_id=t["image_id"].astype(str)) for name, t in tables.items()}
    pred_rows = {name: t.groupby("image_id").indices for name, t in prepared.items()}
    rng = np.random.default_rng(seed)
    empty = np.zeros(0, dtype=np.int64)
    out = []
    for _ in range(n_boot):
        drawn = ids[rng.integers(0, len(ids), len(ids))]
        new_ids = [f"{image_id}#{j}" for j, image_id in enumerate(drawn)]

        def take(frame: pd.DataFrame, rows: dict, drawn=drawn, new_ids=new_ids) -> pd.DataFrame:
            parts = [rows.get(i, empty) for i in drawn]
            index = np.concatenate(parts) if parts else empty
            names = np.repeat(new_ids, [len(p) for p in parts])
            return frame.iloc[index].assign(image_id=names)

        gt = take(truth, truth_rows)
        out.append(
            {
                name: vinbigdata_map(
                    take(table, pred_rows[name]), gt, iou_thr, image_ids=new_ids
                ).map
                for name, table in prepared.items()
            }
        )
    return pd.DataFrame(out, columns=list(tables))


# ------------------------------------------------ image-level scores (notebook 07)
def roc_auc(labels: Sequence[float] | np.ndarray, scores: Sequence[float] | np.ndarray) -> float:
    """Area under the ROC curve (the Mann-Whitney statistic, ties count half); NaN
    when one class is absent."""
    y = np.asarray(labels, dtype=np.float64) > 0.5
    s = np.asarray(scores, dtype=np.float64)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if not n_pos or not n_neg:
        return float("nan")
    ranks = pd.Series(s).rank(method="average").to_numpy()
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def roc_curve(
    labels: Sequence[float] | np.ndarray, scores: Sequence[float] | np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(false_positive_rate, true_positive_rate, thresholds)``, one point per
    distinct score from the highest down, starting at ``(0, 0)`` (threshold ``inf``).

    A point says: calling every image with ``score >= threshold`` abnormal finds
    ``tpr`` of the abnormal images and wrongly flags ``fpr`` of the normal ones. Its
    trapezoid area equals :func:`roc_auc`. ConfigError when a class is absent.
    """
    y = np.asarray(labels, dtype=np.float64) > 0.5
    s = np.asarray(scores, dtype=np.float64)
    if y.shape != s.shape:
        raise ConfigError(f"{len(y)} labels but {len(s)} scores")
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if not n_pos or not n_neg:
        raise ConfigError(f"a ROC curve needs both classes: {n_pos} abnormal, {n_neg} normal")
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    last_of_each_score = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # ties move together
    tpr = np.r_[0.0, np.cumsum(y)[last_of_each_score] / n_pos]
    fpr = np.r_[0.0, np.cumsum(~y)[last_of_each_score] / n_neg]
    return fpr, tpr, np.r_[np.inf, s[last_of_each_score]]


def calibration_table(
    labels: Sequence[float] | np.ndarray, probs: Sequence[float] | np.ndarray, bins: int = 5
) -> pd.DataFrame:
    """Reliability table: ``probs`` cut into ``bins`` equal-width bins over [0, 1];
    per non-empty bin the mean predicted ``p_abnormal``, the observed share of
    abnormal images and the image count. Calibrated: the two shares agree."""
    y = np.asarray(labels, dtype=np.float64) > 0.5
    p = np.asarray(probs, dtype=np.float64)
    if y.shape != p.shape:
        raise ConfigError(f"{len(y)} labels but {len(p)} probabilities")
    if bins < 1:
        raise ConfigError(f"bins must be >= 1, got {bins}")
    if len(p) and not ((p >= 0) & (p <= 1)).all():
        raise ConfigError("probabilities must be in [0, 1]")
    which = np.minimum((p * bins).astype(int), bins - 1)  # p = 1 goes to the last bin
    table = pd.DataFrame({"bin": which, "p": p, "abnormal": y.astype(float)})
    out = table.groupby("bin").agg(
        mean_p_abnormal=("p", "mean"), share_abnormal=("abnormal", "mean"), images=("p", "size")
    )
    out.insert(0, "bin_low", out.index / bins)
    out.insert(1, "bin_high", (out.index + 1) / bins)
    return out.reset_index(drop=True)
