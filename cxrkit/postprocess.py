"""Clean up and combine detector outputs: NMS, class-wise NMS, WBF, flip TTA (notebook 05).

Every function takes a torchvision prediction dict (``boxes``, ``scores``,
``labels``; tensors or numpy) and returns a **new** one: the input is never
modified, unlike the seed's ``apply_nms``, which overwrote the raw predictions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
import torchvision.ops
from ensemble_boxes import weighted_boxes_fusion

Prediction = dict  # {"boxes": (N, 4), "scores": (N,), "labels": (N,)}, torch or numpy
PER_BOX_KEYS = ("boxes", "scores", "labels")


def _as_tensors(prediction: Prediction) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, bool]:
    """(boxes float32, scores float32, labels int64, was_numpy) without copying tensors."""
    missing = [k for k in PER_BOX_KEYS if k not in prediction]
    if missing:
        raise KeyError(f"prediction dict lacks {missing}; expected keys {list(PER_BOX_KEYS)}")
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
        raise ValueError(
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
    """
    if not predictions:
        raise ValueError("wbf_predictions needs at least one prediction")
    h, w = image_hw
    scale = np.array([w, h, w, h], dtype=np.float64)
    boxes_list, scores_list, labels_list = [], [], []
    for p in predictions:
        boxes, scores, labels, _ = _as_tensors(p)
        boxes_list.append(np.clip(boxes.detach().cpu().numpy().astype(np.float64) / scale, 0, 1))
        scores_list.append(scores.detach().cpu().numpy().astype(np.float64))
        labels_list.append(labels.detach().cpu().numpy())
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
    scores_t = torch.as_tensor(np.asarray(fused_scores), dtype=torch.float32)
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
        raise ValueError(f"method must be 'wbf' or 'nms', got {method!r}")
    if not predictions:
        raise ValueError("merge_tta needs at least one prediction")
    parts = [_as_tensors(p) for p in predictions]
    device = parts[0][0].device
    pooled = {
        "boxes": torch.cat([b.to(device) for b, _, _, _ in parts]),
        "scores": torch.cat([s.to(device) for _, s, _, _ in parts]),
        "labels": torch.cat([lab.to(device) for _, _, lab, _ in parts]),
    }
    merged = classwise_nms(filter_by_score(pooled, skip_box_thr), iou_thr)
    return _build(predictions[0], merged["boxes"], merged["scores"], merged["labels"], parts[0][3])
