"""Fuse the predictions tables of several detectors with weighted boxes fusion (notebook 07).

:func:`fuse_tables` fuses the tables of fold runs or different models image by
image; :mod:`cxrkit.predict` runs it as one step of the prediction pipeline
(each detector predicts, with TTA if asked, so flips are fused per model first).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from cxrkit.engine import predictions_to_frame
from cxrkit.errors import ConfigError
from cxrkit.formats import BOX_COLUMNS, image_sizes
from cxrkit.labels import NO_FINDING_ID, to_model_labels
from cxrkit.postprocess import wbf_predictions

__all__ = ["fuse_tables"]


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
