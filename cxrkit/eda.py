"""Label statistics for exploring the annotations: per-class counts and how much the readers agree.

Taught in notebook 01 (EDA); :func:`cxrkit.plotting.plot_class_counts` draws
:func:`summarize`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from cxrkit.formats import BOX_COLUMNS
from cxrkit.labels import CLASS_NAMES, NO_FINDING_ID, NUM_CLASSES
from cxrkit.metrics import elementwise_iou

__all__ = ["summarize", "radiologist_agreement"]


def summarize(df: pd.DataFrame) -> pd.DataFrame:
    """Per-class counts: rows (boxes, or No finding rows), images and radiologists.

    One row per class id 0-14 (classes absent from ``df`` get zeros), with the
    class name, so notebook 01 can print how imbalanced the labels are.
    """
    cls = df["class_id"].astype(np.int64)
    groups = df.groupby(cls)
    table = pd.DataFrame(
        {
            "rows": groups.size(),
            "images": groups["image_id"].nunique(),
            "radiologists": groups["rad_id"].nunique(),
        }
    )
    table = table.reindex(range(NUM_CLASSES), fill_value=0).astype(np.int64)
    table.insert(0, "class_name", list(CLASS_NAMES))
    table.index.name = "class_id"
    return table


def radiologist_agreement(df: pd.DataFrame, iou_thr: float = 0.4) -> pd.DataFrame:
    """How much the radiologists agree, per finding class (use on the *raw* table).

    Columns:

    * ``boxes``: finding boxes of the class; ``images``: images with such a box.
    * ``matched``: fraction of boxes that another radiologist confirmed with a
      box of the same class on the same image at IoU >= ``iou_thr`` (the
      competition's threshold), i.e. how often a second reader "agrees".
    * ``mean_best_iou``: mean over boxes of the best IoU with another
      radiologist's box of the same class and image (0 when there is none).
    * ``mean_pair_iou``: mean IoU over all pairs of boxes of the class drawn on
      one image by two different radiologists (NaN when no such pair exists).
    * ``image_agreement``: among images where at least one radiologist marked
      the class, the fraction where *every* radiologist of the image marked it.

    Low values (typical for Nodule/Mass, Other lesion, Infiltration) mean noisy
    labels: a model cannot beat the readers' own agreement by much. All pairs are
    formed with one self-merge per (image, class), and IoUs computed in numpy.
    """
    ann = df[df["class_id"].astype(np.int64) != NO_FINDING_ID]
    ann = ann.assign(
        image_id=ann["image_id"].astype(str),
        class_id=ann["class_id"].astype(np.int64),
        rad_id=ann["rad_id"].astype(str),
        box=np.arange(len(ann)),
    )[["image_id", "class_id", "rad_id", "box", *BOX_COLUMNS]]
    coords = ann[BOX_COLUMNS].to_numpy(dtype=np.float64, copy=True)
    pairs = ann[["image_id", "class_id", "rad_id", "box"]].merge(
        ann[["image_id", "class_id", "rad_id", "box"]],
        on=["image_id", "class_id"],
        suffixes=("", "_b"),
    )
    pairs = pairs[pairs["rad_id"].to_numpy() != pairs["rad_id_b"].to_numpy()]
    a_idx, b_idx = pairs["box"].to_numpy(), pairs["box_b"].to_numpy()
    iou = elementwise_iou(coords[a_idx], coords[b_idx])

    best = np.zeros(len(ann))
    np.maximum.at(best, a_idx, iou)  # best IoU of each box with any other reader's box
    per_box = pd.DataFrame({"class_id": ann["class_id"].to_numpy(), "best": best})
    per_box["matched"] = best >= iou_thr
    by_class = per_box.groupby("class_id")
    pair_table = pd.DataFrame({"class_id": pairs["class_id"].to_numpy(), "iou": iou})

    readers = df.assign(image_id=df["image_id"].astype(str)).groupby("image_id")["rad_id"].nunique()
    marked = ann.groupby(["image_id", "class_id"])["rad_id"].nunique().reset_index(name="n")
    marked["all"] = marked["n"].to_numpy() >= readers.reindex(marked["image_id"]).to_numpy()

    table = pd.DataFrame(
        {
            "boxes": by_class.size(),
            "images": ann.groupby("class_id")["image_id"].nunique(),
            "matched": by_class["matched"].mean(),
            "mean_best_iou": by_class["best"].mean(),
            "mean_pair_iou": pair_table.groupby("class_id")["iou"].mean(),
            "image_agreement": marked.groupby("class_id")["all"].mean(),
        }
    )
    table.index = table.index.astype(np.int64)
    table.index.name = "class_id"
    table.insert(0, "class_name", [CLASS_NAMES[i] for i in table.index])
    return table
