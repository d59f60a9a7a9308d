"""The competition's table formats, defined once: column lists, the "No finding" box,
and the image-size lookup from a meta table.

* ``TRAIN_COLUMNS``: ``train.csv`` (one row per box and radiologist);
* ``BOX_COLUMNS``: the four box corners, in original DICOM pixels;
* ``PREDICTION_COLUMNS``: a predictions table (one row per predicted box);
* ``TRUTH_COLUMNS``: the truth the metric needs;
* ``META_COLUMNS``: a meta table, ``dim0`` = rows (height), ``dim1`` = columns (width);
* ``SUBMISSION_COLUMNS``: a Kaggle submission.

The lists are lists (not tuples) because pandas reads ``df[list]`` as columns.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

from cxrkit.errors import AnnotationError

__all__ = [
    "BOX_COLUMNS",
    "TRAIN_COLUMNS",
    "PREDICTION_COLUMNS",
    "TRUTH_COLUMNS",
    "META_COLUMNS",
    "SUBMISSION_COLUMNS",
    "NO_FINDING_BOX",
    "image_sizes",
    "path_like_ids",
]

BOX_COLUMNS: list[str] = ["x_min", "y_min", "x_max", "y_max"]
TRAIN_COLUMNS: list[str] = ["image_id", "class_name", "class_id", "rad_id", *BOX_COLUMNS]
PREDICTION_COLUMNS: list[str] = ["image_id", "class_id", "score", *BOX_COLUMNS]
TRUTH_COLUMNS: list[str] = ["image_id", "class_id", *BOX_COLUMNS]
META_COLUMNS: list[str] = ["image_id", "dim0", "dim1"]
SUBMISSION_COLUMNS: list[str] = ["image_id", "PredictionString"]

# The box a submission writes for "No finding" (``14 p 0 0 1 1``).
NO_FINDING_BOX: tuple[float, float, float, float] = (0.0, 0.0, 1.0, 1.0)


def image_sizes(meta: pd.DataFrame | Mapping[Any, Any]) -> dict[str, tuple[int, int]]:
    """``image_id -> (dim0, dim1)`` (original rows, columns) from a meta table.

    ``meta`` is a table with ``image_id`` (a column or the index), ``dim0`` and
    ``dim1``, or already a mapping ``image_id -> (dim0, dim1)``. Ids become
    strings; the first row of a repeated id wins. Raises
    :class:`~cxrkit.errors.AnnotationError` naming the missing columns.

    >>> image_sizes(pd.DataFrame({"image_id": ["a"], "dim0": [3], "dim1": [4]}))
    {'a': (3, 4)}
    """
    if isinstance(meta, Mapping):
        return {str(k): (int(v[0]), int(v[1])) for k, v in meta.items()}
    table = meta.reset_index() if "image_id" not in meta.columns else meta
    missing = [c for c in META_COLUMNS if c not in table.columns]
    if missing:
        raise AnnotationError(f"meta table lacks column(s) {missing}; expected image_id,dim0,dim1")
    sizes: dict[str, tuple[int, int]] = {}
    for i, h, w in zip(table["image_id"], table["dim0"], table["dim1"], strict=True):
        sizes.setdefault(str(i), (int(h), int(w)))
    return sizes


# An image id names a file (``<id>.png``, ``<id>.dicom``) inside a split folder; with
# one of these in it, it would name a file elsewhere (``../train/<id>``).
PATH_PARTS: tuple[str, ...] = ("/", "\\", "..")


def path_like_ids(image_ids: pd.Series) -> pd.Series:
    """True where an image id is a path rather than a name (holds ``/``, ``\\`` or ``..``).

    >>> path_like_ids(pd.Series(["a1b2", "../train/a1b2", "x\\y"])).tolist()
    [False, True, True]
    """
    return image_ids.astype(str).map(lambda i: any(part in i for part in PATH_PARTS)).astype(bool)


# A spreadsheet runs a cell that starts with one of these as a formula (CSV injection):
# an id that does would be code, not a name, in the CSVs cxrkit writes.
FORMULA_STARTS: tuple[str, ...] = ("=", "+", "-", "@")


def formula_like_ids(image_ids: pd.Series) -> pd.Series:
    """True where an image id starts like a spreadsheet formula (``=``, ``+``, ``-``, ``@``).

    Real VinBigData ids are hexadecimal; such an id would be run, not shown, by a
    spreadsheet that opens a submission or a table cxrkit wrote.

    >>> formula_like_ids(pd.Series(["a1b2", "=HYPERLINK(1)", "-x"])).tolist()
    [False, True, True]
    """
    return image_ids.astype(str).str.startswith(FORMULA_STARTS).astype(bool)
