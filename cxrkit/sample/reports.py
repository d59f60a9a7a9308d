"""The sample's label tables: what three radiologists wrote, and the exact test truth.

``train.csv`` rows have the real data's flaws (missed findings, jittered boxes,
"No finding" rows); ``test_labels.csv`` holds one exact box per drawn finding.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from cxrkit.formats import TRAIN_COLUMNS  # the competition's train.csv columns
from cxrkit.labels import CLASS_NAMES, NO_FINDING_ID
from cxrkit.sample.findings import Box
from cxrkit.sample.layout import TEST_TRUTH_RAD_ID
from cxrkit.sample.plan import BOX_JITTER, DETECTION_PROB, RAD_IDS, RAD_WEIGHTS

__all__ = ["TRAIN_COLUMNS", "frame", "radiologist_rows", "truth_rows"]


def radiologist_rows(
    image_id: str,
    class_ids: list[int],
    boxes: list[Box],
    rows: int,
    cols: int,
    rng: np.random.Generator,
) -> list[dict]:
    """What three radiologists wrote about one image: misses, jitter and No finding rows."""
    rads = rng.choice(len(RAD_IDS), size=3, replace=False, p=RAD_WEIGHTS)
    rads = [RAD_IDS[i] for i in rads]
    seen = rng.random((len(boxes), 3)) < DETECTION_PROB
    for i in range(len(boxes)):
        if not seen[i].any():  # a finding nobody saw would be a silent wrong label
            seen[i, rng.integers(3)] = True
    out: list[dict] = []
    for j, rad in enumerate(rads):
        scale = rng.normal(1.0, 0.03)  # some radiologists draw bigger boxes than others
        any_box = False
        for i, (c, box) in enumerate(zip(class_ids, boxes, strict=True)):
            if not seen[i, j]:
                continue
            out.append(_row(image_id, c, rad, _jittered(box, scale, rows, cols, rng)))
            any_box = True
        if not any_box:
            out.append(_row(image_id, NO_FINDING_ID, rad, None))
    return out


def _jittered(
    box: Box, scale: float, rows: int, cols: int, rng: np.random.Generator
) -> tuple[float, float, float, float]:
    """One radiologist's version of a box: scaled, edges moved, kept inside the image."""
    x0, y0, x1, y1 = box
    bw, bh = x1 - x0, y1 - y0
    mx, my = (x0 + x1) / 2, (y0 + y1) / 2
    e = rng.normal(0.0, BOX_JITTER, 4)
    jx0 = np.clip(mx - scale * bw / 2 + e[0] * bw, 0, cols - 2)
    jy0 = np.clip(my - scale * bh / 2 + e[1] * bh, 0, rows - 2)
    jx1 = np.clip(mx + scale * bw / 2 + e[2] * bw, jx0 + 2, cols)
    jy1 = np.clip(my + scale * bh / 2 + e[3] * bh, jy0 + 2, rows)
    return jx0, jy0, jx1, jy1


def _row(image_id: str, c: int, rad: str, box: Sequence[float] | None) -> dict:
    """One train.csv row; boxes in whole pixels written as floats (691.0), as the real csv."""
    if box is None:
        coords = [np.nan] * 4
    else:
        coords = [
            float(np.floor(box[0])),
            float(np.floor(box[1])),
            float(np.ceil(box[2])),
            float(np.ceil(box[3])),
        ]
    return dict(zip(TRAIN_COLUMNS, [image_id, CLASS_NAMES[c], c, rad, *coords], strict=True))


def truth_rows(image_id: str, class_ids: list[int], boxes: list[Box]) -> list[dict]:
    """Exact boxes (what was drawn) for test_labels.csv; one No finding row if normal."""
    if not boxes:
        return [_row(image_id, NO_FINDING_ID, TEST_TRUTH_RAD_ID, None)]
    return [_row(image_id, c, TEST_TRUTH_RAD_ID, b) for c, b in zip(class_ids, boxes, strict=True)]


def frame(rows: list[dict]) -> pd.DataFrame:
    """The rows as a table with the competition's columns and dtypes."""
    df = pd.DataFrame(rows, columns=TRAIN_COLUMNS)
    df["class_id"] = df["class_id"].astype("int64")
    for col in ("x_min", "y_min", "x_max", "y_max"):
        df[col] = df[col].astype("float64")
    return df
