"""Several detectors, flip TTA and a normal/abnormal classifier in one submission (notebook 07).

:func:`fuse_tables` fuses the predictions tables of several detectors (fold runs
or different models) image by image with weighted boxes fusion;
:func:`predict_ensemble` is what ``python -m cxrkit predict CKPT CKPT ... [--tta]
[--classifier CLS ...]`` runs: each detector predicts (with TTA if asked, so TTA
composes with the ensemble: flips are fused per model first), the models are fused,
and the classifiers' mean ``p_abnormal`` is applied with
:func:`cxrkit.postprocess.apply_classifier`. One detector without a classifier is
:func:`cxrkit.train.predict_to_submission`, unchanged.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from cxrkit.checkpoints import load_checkpoint, require_kind
from cxrkit.classifier import classify
from cxrkit.engine import predictions_to_frame
from cxrkit.errors import ConfigError
from cxrkit.formats import BOX_COLUMNS, image_sizes
from cxrkit.labels import NO_FINDING_ID, to_model_labels
from cxrkit.postprocess import apply_classifier, check_bands, wbf_predictions
from cxrkit.submission import prediction_strings, write_submission
from cxrkit.train import check_detector_checkpoint, predict_split

__all__ = ["fuse_tables", "predict_ensemble"]


def fuse_tables(
    tables: Sequence[pd.DataFrame],
    meta: pd.DataFrame | Mapping,
    image_ids: Sequence[str],
    iou_thr: float = 0.55,
    skip_box_thr: float = 0.0,
    weights: Sequence[float] | None = None,
) -> pd.DataFrame:
    """Fuse the predictions tables of several detectors with weighted boxes fusion.

    Boxes in original pixels are normalised by each image's ``(dim0, dim1)`` from
    ``meta`` (:func:`cxrkit.postprocess.wbf_predictions`), fused per class, and
    returned as one predictions table (no No finding rows). A box only one of N
    models found keeps ``1/N`` of its score (WBF's ``avg``), so agreement ranks
    first. ``weights``: one per table (default equal).
    """
    if not tables:
        raise ConfigError("fuse_tables needs at least one table")
    if weights is not None and len(weights) != len(tables):
        raise ConfigError(f"{len(weights)} weights for {len(tables)} tables: give one per model")
    sizes = image_sizes(meta)
    groups = []
    for table in tables:
        table = table[table["class_id"] != NO_FINDING_ID]
        groups.append(dict(tuple(table.groupby(table["image_id"].astype(str), sort=False))))
    outputs, hw = [], []
    for image_id in image_ids:
        h, w = sizes[str(image_id)]
        parts = []
        for g in groups:
            rows = g.get(str(image_id))
            if rows is None:
                parts.append(
                    {"boxes": np.zeros((0, 4)), "scores": np.zeros(0), "labels": np.zeros(0)}
                )
            else:
                parts.append(
                    {
                        "boxes": rows[BOX_COLUMNS].to_numpy(np.float64),
                        "scores": rows["score"].to_numpy(np.float64),
                        "labels": to_model_labels(rows["class_id"].to_numpy(np.int64)),
                    }
                )
        fused = wbf_predictions(parts, (h, w), iou_thr, skip_box_thr, weights)
        outputs.append(fused)
        hw.append((h, w))
    # predictions_to_frame maps model labels back to class ids (meta None: boxes unchanged)
    return predictions_to_frame(outputs, [str(i) for i in image_ids], hw, None)


def predict_ensemble(
    checkpoints: Sequence[str | os.PathLike],
    data_dir: str | os.PathLike,
    out_csv: str | os.PathLike,
    split: str = "test",
    tta: bool = False,
    batch_size: int = 4,
    *,
    classifiers: Sequence[str | os.PathLike] = (),
    low: float = 0.1,
    high: float = 0.9,
    mode: str = "bands",
    iou_thr: float = 0.55,
    skip_box_thr: float = 0.0,
    weights: Sequence[float] | None = None,
    probs_csv: str | os.PathLike | None = None,
) -> Path:
    """Predict ``data_dir/split`` with several detectors (+ classifiers) and write a submission.

    Every checkpoint's kind is checked before any image is read (a classifier given
    as a detector or the reverse is a :class:`cxrkit.errors.CheckpointError`). With
    one detector no fusion happens. ``classifiers``: their mean ``p_abnormal``
    (:func:`cxrkit.classifier.classify`, also written to ``probs_csv`` if given) is
    applied with :func:`cxrkit.postprocess.apply_classifier` (``low``, ``high``,
    ``mode``). ``iou_thr``, ``skip_box_thr``, ``weights``: the WBF of the detectors.
    """
    if not checkpoints:
        raise ConfigError("predict needs at least one detector checkpoint")
    for checkpoint in checkpoints:
        check_detector_checkpoint(checkpoint)
    for checkpoint in classifiers:
        require_kind(load_checkpoint(checkpoint), "classifier", checkpoint)
    if classifiers and mode == "bands":
        check_bands(low, high)
    tables, ids, meta = [], None, None
    for checkpoint in checkpoints:
        preds, ids, meta = predict_split(checkpoint, data_dir, split, tta, batch_size)
        tables.append(preds)
    preds = (
        tables[0]
        if len(tables) == 1
        else fuse_tables(tables, meta, ids, iou_thr, skip_box_thr, weights)
    )
    if classifiers:
        probs = classify(classifiers, data_dir, probs_csv, split=split)
        preds = apply_classifier(preds, probs, low, high, mode=mode, image_ids=ids)
    submission = prediction_strings(preds, ids, meta=meta)
    return write_submission(submission, out_csv, image_ids=ids, meta=meta)
