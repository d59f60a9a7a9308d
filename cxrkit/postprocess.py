"""Clean up and combine detector outputs: NMS, class-wise NMS, WBF, flip TTA (notebook 05).

Every function takes a torchvision prediction dict (``boxes``, ``scores``,
``labels``; tensors or numpy) and returns a **new** one: the input is never
modified, unlike the seed's ``apply_nms``, which overwrote the raw predictions.
:func:`apply_classifier` combines a predictions table with an image-level
classifier's ``p_abnormal`` (notebook 07); :func:`tune_bands` chooses its bands.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd
import torch
import torchvision.ops
from ensemble_boxes import weighted_boxes_fusion

from cxrkit.config import PREDICT_NMS_IOU
from cxrkit.errors import ConfigError, SubmissionError, UnknownNameError
from cxrkit.formats import BOX_COLUMNS, NO_FINDING_BOX, PREDICTION_COLUMNS
from cxrkit.labels import NO_FINDING_ID
from cxrkit.metrics import bootstrap_map, vinbigdata_map
from cxrkit.submission import no_finding_score

Prediction = dict  # {"boxes": (N, 4), "scores": (N,), "labels": (N,)}, torch or numpy
PER_BOX_KEYS = ("boxes", "scores", "labels")


def _as_tensors(prediction: Prediction) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, bool]:
    """(boxes float32, scores float32, labels int64, was_numpy) without copying tensors."""
    missing = [k for k in PER_BOX_KEYS if k not in prediction]
    if missing:
        raise UnknownNameError(
            f"prediction dict lacks {missing}; expected keys {list(PER_BOX_KEYS)}"
        )
    was_numpy = not isinstance(prediction["boxes"], torch.Tensor)

    def tensor(value, dtype: torch.dtype, device=None) -> torch.Tensor:
        if isinstance(value, torch.Tensor):
            return value.to(dtype=dtype, device=device or value.device)
        # np.array copies: pandas 3 hands out read-only arrays, which torch warns about.
        numpy_dtype = np.float32 if dtype == torch.float32 else np.int64
        return torch.from_numpy(np.array(value, dtype=numpy_dtype))

    boxes = tensor(prediction["boxes"], torch.float32).reshape(-1, 4)
    scores = tensor(prediction["scores"], torch.float32, boxes.device).to(boxes.device)
    labels = tensor(prediction["labels"], torch.int64, boxes.device).to(boxes.device)
    if not len(boxes) == len(scores) == len(labels):
        raise ConfigError(
            f"prediction has {len(boxes)} boxes, {len(scores)} scores and {len(labels)} labels"
        )
    return boxes, scores.reshape(-1), labels.reshape(-1), was_numpy


def _build(
    template: Prediction,
    boxes: torch.Tensor,
    scores: torch.Tensor,
    labels: torch.Tensor,
    as_numpy: bool,
) -> Prediction:
    """A new dict with the other keys of ``template`` and the given per-box arrays."""
    out = {k: v for k, v in template.items() if k not in PER_BOX_KEYS}
    if as_numpy:
        out.update(
            boxes=boxes.detach().cpu().numpy().astype(np.float32),
            scores=scores.detach().cpu().numpy().astype(np.float32),
            labels=labels.detach().cpu().numpy().astype(np.int64),
        )
    else:
        out.update(boxes=boxes, scores=scores, labels=labels)
    return out


def _select(prediction: Prediction, keep: torch.Tensor) -> Prediction:
    boxes, scores, labels, was_numpy = _as_tensors(prediction)
    return _build(prediction, boxes[keep], scores[keep], labels[keep], was_numpy)


def apply_nms(prediction: Prediction, iou_thresh: float = 0.3) -> Prediction:
    """Class-agnostic non-maximum suppression; returns a new dict sorted by score.

    A box is dropped when a higher-scored box of any class overlaps it with IoU
    above ``iou_thresh``.
    """
    boxes, scores, _, _ = _as_tensors(prediction)
    return _select(prediction, torchvision.ops.nms(boxes, scores, iou_thresh))


def classwise_nms(prediction: Prediction, iou_thresh: float = 0.5) -> Prediction:
    """NMS within each label (``torchvision.ops.batched_nms``); boxes of different
    classes never suppress each other. Returns a new dict sorted by score."""
    boxes, scores, labels, _ = _as_tensors(prediction)
    return _select(prediction, torchvision.ops.batched_nms(boxes, scores, labels, iou_thresh))


def classwise_nms_table(table: pd.DataFrame, iou_thresh: float = PREDICT_NMS_IOU) -> pd.DataFrame:
    """Class-wise NMS over a predictions table, image by image (rows kept in order).

    ``table`` has ``image_id, class_id, score, x_min, y_min, x_max, y_max``; a box is
    dropped when a higher-scored box of the same class on the same image overlaps it
    with IoU above ``iou_thresh`` (``torchvision.ops.batched_nms``). ``iou_thresh=1``
    keeps every box.
    """
    if not 0 < iou_thresh <= 1:
        raise ConfigError(f"iou_thresh must be in (0, 1], got {iou_thresh}")
    if table.empty or iou_thresh >= 1:
        return table
    boxes = torch.tensor(table[list(BOX_COLUMNS)].to_numpy(np.float64))
    scores = torch.tensor(table["score"].to_numpy(np.float64))
    # one group per (image, class): batched_nms never lets two groups suppress each other
    groups = table.groupby(["image_id", "class_id"], sort=False).ngroup().to_numpy()
    keep = torchvision.ops.batched_nms(boxes, scores, torch.tensor(groups), iou_thresh)
    mask = np.zeros(len(table), dtype=bool)
    mask[keep.numpy()] = True
    return table[mask]


def filter_by_score(prediction: Prediction, min_score: float) -> Prediction:
    """Keep the boxes with ``score >= min_score`` (a new dict, order kept)."""
    _, scores, _, _ = _as_tensors(prediction)
    return _select(prediction, scores >= min_score)


def hflip_boxes(boxes: torch.Tensor | np.ndarray, width: float) -> torch.Tensor | np.ndarray:
    """Mirror ``[x_min, y_min, x_max, y_max]`` boxes left-right in an image ``width`` wide.

    ``x -> width - x``, so the new ``x_min`` is ``width - x_max``. Applying it twice
    gives the boxes back. Returns a new array/tensor of the same kind.
    """
    if isinstance(boxes, torch.Tensor):
        src = boxes.reshape(-1, 4)
        out = src.clone() if src.is_floating_point() else src.double()
    else:
        src = np.asarray(boxes).reshape(-1, 4)
        out = np.array(src, dtype=src.dtype if src.dtype.kind == "f" else np.float64)
    out[:, 0] = width - src[:, 2]
    out[:, 2] = width - src[:, 0]
    return out


def unflip_prediction(prediction: Prediction, width: float) -> Prediction:
    """Map a prediction made on the horizontally flipped image back to the original."""
    boxes, scores, labels, was_numpy = _as_tensors(prediction)
    return _build(prediction, hflip_boxes(boxes, width), scores.clone(), labels.clone(), was_numpy)


def wbf_predictions(
    predictions: Sequence[Prediction],
    image_hw: tuple[int, int],
    iou_thr: float = 0.55,
    skip_box_thr: float = 0.0,
    weights: Sequence[float] | None = None,
    conf_type: str = "avg",
) -> Prediction:
    """Fuse several predictions of one image with Weighted Boxes Fusion.

    ``ensemble-boxes`` works on boxes normalised to [0, 1], so boxes are divided by
    ``(w, h, w, h)`` of ``image_hw = (height, width)`` (clipped into the image), fused
    per label, and multiplied back. Labels come back exactly (they are small
    integers carried as floats). The result is a torch dict on the first input's
    device, or numpy if the first input is numpy.

    With unequal ``weights`` ensemble-boxes can return a score above 1 (a cluster of
    several boxes of the heavier model: their weighted mean is rescaled by the
    cluster's size over the weights' sum); a submission's scores are probabilities,
    so fused scores are clipped to [0, 1].
    """
    if not predictions:
        raise ConfigError("wbf_predictions needs at least one prediction")
    h, w = image_hw
    scale = np.array([w, h, w, h], dtype=np.float64)
    boxes_list, scores_list, labels_list = [], [], []
    for p in predictions:
        boxes, scores, labels, _ = _as_tensors(p)
        unit = np.clip(boxes.detach().cpu().numpy().astype(np.float64) / scale, 0, 1)
        # ensemble-boxes skips a zero-area box with one warning per box (thousands in a
        # tuning grid): drop them here, with the same result and no flood
        area = (unit[:, 2] > unit[:, 0]) & (unit[:, 3] > unit[:, 1])
        boxes_list.append(unit[area])
        scores_list.append(scores.detach().cpu().numpy().astype(np.float64)[area])
        labels_list.append(labels.detach().cpu().numpy()[area])
    fused_boxes, fused_scores, fused_labels = weighted_boxes_fusion(
        boxes_list,
        scores_list,
        labels_list,
        weights=None if weights is None else list(weights),
        iou_thr=iou_thr,
        skip_box_thr=skip_box_thr,
        conf_type=conf_type,
    )
    first = predictions[0]
    was_numpy = not isinstance(first["boxes"], torch.Tensor)
    device = None if was_numpy else first["boxes"].device
    boxes_t = torch.as_tensor(
        np.asarray(fused_boxes, dtype=np.float64).reshape(-1, 4) * scale, dtype=torch.float32
    )
    scores_t = torch.as_tensor(np.clip(np.asarray(fused_scores), 0.0, 1.0), dtype=torch.float32)
    labels_t = torch.as_tensor(np.rint(np.asarray(fused_labels)).astype(np.int64))
    return _build(first, boxes_t.to(device), scores_t.to(device), labels_t.to(device), was_numpy)


def merge_tta(
    predictions: Sequence[Prediction],
    image_hw: tuple[int, int],
    method: Literal["wbf", "nms"] = "wbf",
    iou_thr: float = 0.55,
    skip_box_thr: float = 0.0,
    weights: Sequence[float] | None = None,
) -> Prediction:
    """Merge test-time-augmented predictions already mapped back to the original image.

    Un-flip first (:func:`unflip_prediction`), then merge with WBF (boxes averaged)
    or with class-wise NMS over all boxes pooled (``iou_thr`` is then the NMS
    threshold and ``skip_box_thr`` a minimum score).
    """
    if method == "wbf":
        return wbf_predictions(predictions, image_hw, iou_thr, skip_box_thr, weights)
    if method != "nms":
        raise ConfigError(f"method must be 'wbf' or 'nms', got {method!r}")
    if not predictions:
        raise ConfigError("merge_tta needs at least one prediction")
    parts = [_as_tensors(p) for p in predictions]
    device = parts[0][0].device
    pooled = {
        "boxes": torch.cat([b.to(device) for b, _, _, _ in parts]),
        "scores": torch.cat([s.to(device) for _, s, _, _ in parts]),
        "labels": torch.cat([lab.to(device) for _, _, lab, _ in parts]),
    }
    merged = classwise_nms(filter_by_score(pooled, skip_box_thr), iou_thr)
    return _build(predictions[0], merged["boxes"], merged["scores"], merged["labels"], parts[0][3])


# ------------------------------------------------- image-level classifier + detector
def check_bands(low: float, high: float) -> None:
    """Refuse bands that are not ``0 <= low <= high <= 1`` (:class:`SubmissionError`)."""
    if not 0.0 <= low <= high <= 1.0:
        raise SubmissionError(
            f"need 0 <= low <= high <= 1 for the bands, got low={low} and high={high}"
        )


def apply_classifier(
    predictions: pd.DataFrame,
    probs: pd.DataFrame | pd.Series,
    low: float = 0.1,
    high: float = 0.9,
    mode: Literal["bands", "soft"] = "bands",
    image_ids: Iterable[str] | None = None,
) -> pd.DataFrame:
    """Combine a detector's predictions table with a classifier's ``p_abnormal``.

    ``mode="bands"`` (the three-band rule of the public VinBigData solutions):

    * ``p < low``: the image is taken as normal: its boxes are dropped and it gets
      ``14 1`` (No finding with score 1);
    * ``low <= p < high``: the boxes stay and ``14 (1 - p)`` is appended;
    * ``p >= high``: the boxes stay with the detector's own No finding row,
      ``1 - best finding score`` (:func:`cxrkit.submission.no_finding_score`), as
      without a classifier; so ``low = high = 0`` gives the detector alone.

    ``mode="soft"``: every finding score is multiplied by ``p`` and ``14 (1 - p)``
    appended (``low``/``high`` unused).

    ``predictions``: image_id, class_id, score and box columns (original pixels);
    class-14 rows in it are replaced. ``probs``: a table ``image_id, p_abnormal``
    (``classify``'s CSV) or a Series indexed by image_id. ``image_ids``: the images
    to cover (default: those of ``probs``); each gets exactly one class-14 row.
    Raises :class:`SubmissionError` when ``low > high``, a probability is outside
    [0, 1], or an image has no probability (naming the first few).
    """
    if mode not in ("bands", "soft"):
        raise ConfigError(f"mode must be 'bands' or 'soft', got {mode!r}")
    if mode == "bands":
        check_bands(low, high)
    p_abnormal = _probabilities(probs)
    preds = predictions.assign(image_id=predictions["image_id"].astype(str))
    findings = preds[preds["class_id"] != NO_FINDING_ID]
    ids = list(p_abnormal.index) if image_ids is None else [str(i) for i in image_ids]
    ids = list(dict.fromkeys(ids))
    needed = list(dict.fromkeys([*ids, *findings["image_id"]]))
    missing = [i for i in needed if i not in p_abnormal.index]
    if missing:
        raise SubmissionError(
            f"the probabilities table has no p_abnormal for {len(missing)} image(s) of the "
            f"predictions: {missing[:5]}{' ...' if len(missing) > 5 else ''}"
        )
    unknown = sorted(set(findings["image_id"]) - set(ids))
    if unknown:
        raise SubmissionError(f"predictions on images not in image_ids: {unknown[:5]}")
    p = p_abnormal.reindex(ids)
    p_box = findings["image_id"].map(p_abnormal)
    if mode == "soft":
        findings = findings.assign(score=findings["score"] * p_box)
        no_finding = 1.0 - p
    else:
        findings = findings[(p_box >= low).to_numpy()]
        default = no_finding_score(findings, ids)
        no_finding = pd.Series(
            np.where(p < low, 1.0, np.where(p < high, 1.0 - p, default)), index=p.index
        )
    x0, y0, x1, y1 = NO_FINDING_BOX
    scores = no_finding.to_numpy(dtype=np.float64)
    rows = pd.DataFrame({"image_id": ids, "class_id": NO_FINDING_ID, "score": scores}).assign(
        x_min=x0, y_min=y0, x_max=x1, y_max=y1
    )
    return pd.concat([findings[PREDICTION_COLUMNS], rows], ignore_index=True)


def _probabilities(probs: pd.DataFrame | pd.Series) -> pd.Series:
    """``p_abnormal`` as a Series indexed by image id (str); SubmissionError when a
    column is missing, an image is listed twice or a value is outside [0, 1]."""
    if isinstance(probs, pd.DataFrame):
        if not {"image_id", "p_abnormal"} <= set(probs.columns):
            raise SubmissionError(
                f"the probabilities table needs columns image_id and p_abnormal, got "
                f"{list(probs.columns)}"
            )
        probs = pd.Series(probs["p_abnormal"].to_numpy(), index=probs["image_id"].astype(str))
    p_abnormal = pd.Series(probs, dtype=np.float64)
    p_abnormal.index = p_abnormal.index.astype(str)
    if p_abnormal.index.duplicated().any():
        dup = list(pd.unique(p_abnormal.index[p_abnormal.index.duplicated()]))
        raise SubmissionError(f"the probabilities table lists image(s) {dup[:5]} more than once")
    if not p_abnormal.between(0.0, 1.0).all():
        bad = p_abnormal[~p_abnormal.between(0.0, 1.0)]
        raise SubmissionError(f"p_abnormal must be in [0, 1], got {bad.head(3).to_dict()}")
    return p_abnormal


@dataclass
class BandChoice:
    """What :func:`tune_bands` chose: the bands, their mAP and the grid it searched.

    ``interval`` and ``gain_interval`` are 90 % paired-bootstrap intervals of the
    tuned mAP and of its gain over the detector alone (``baseline_map``), on the
    same images the bands were tuned on, so they are optimistic: confirm on
    held-out images.
    """

    low: float
    high: float
    map: float
    baseline_map: float
    grid: pd.DataFrame = field(repr=False)
    interval: tuple[float, float] = (np.nan, np.nan)
    gain_interval: tuple[float, float] = (np.nan, np.nan)

    def __str__(self) -> str:
        return (
            f"low {self.low:g}, high {self.high:g}: mAP {self.map:.4f} "
            f"(90 % interval {self.interval[0]:.4f}-{self.interval[1]:.4f}) vs detector alone "
            f"{self.baseline_map:.4f}; gain {self.map - self.baseline_map:+.4f} "
            f"({self.gain_interval[0]:+.4f} to {self.gain_interval[1]:+.4f})"
        )


BAND_GRID = (0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0)


def tune_bands(
    predictions: pd.DataFrame,
    probs: pd.DataFrame | pd.Series,
    truth: pd.DataFrame,
    grid: Sequence[float] = BAND_GRID,
    image_ids: Iterable[str] | None = None,
    n_boot: int = 200,
    seed: int = 0,
) -> BandChoice:
    """Choose ``low``/``high`` of :func:`apply_classifier` by mAP@0.4 on out-of-fold
    predictions (every pair ``low <= high`` of ``grid``), with a bootstrap interval.

    ``predictions``: the joined ``oof.csv`` tables of the detector's fold runs
    (:func:`cxrkit.data.join_out_of_fold`); ``probs``: the classifier's out-of-fold
    ``p_abnormal``; ``truth``: train.csv columns for the same images. Ties go to the
    widest middle band (the smallest ``low``, then the largest ``high``).
    """
    ids = (
        list(dict.fromkeys(truth["image_id"].astype(str)))
        if image_ids is None
        else [str(i) for i in image_ids]
    )
    baseline = apply_classifier(predictions, probs, 0.0, 0.0, image_ids=ids)
    base_map = vinbigdata_map(baseline, truth, image_ids=ids).map
    rows = []
    for low in grid:
        for high in grid:
            if low <= high:
                table = apply_classifier(predictions, probs, low, high, image_ids=ids)
                rows.append((low, high, vinbigdata_map(table, truth, image_ids=ids).map))
    scores = pd.DataFrame(rows, columns=["low", "high", "map"])
    order = scores.assign(neg_high=-scores["high"]).sort_values(
        ["map", "low", "neg_high"], ascending=[False, True, True], kind="stable"
    )
    best = order.iloc[0]
    low, high = float(best["low"]), float(best["high"])
    tuned = apply_classifier(predictions, probs, low, high, image_ids=ids)
    boot = bootstrap_map({"tuned": tuned, "alone": baseline}, truth, ids, n_boot, seed)
    gain = boot["tuned"] - boot["alone"]
    return BandChoice(
        low=low,
        high=high,
        map=float(best["map"]),
        baseline_map=float(base_map),
        grid=scores,
        interval=(float(boot["tuned"].quantile(0.05)), float(boot["tuned"].quantile(0.95))),
        gain_interval=(float(gain.quantile(0.05)), float(gain.quantile(0.95))),
    )
