"""Read, check, fuse and rescale the VinBigData box annotations (pure pandas/numpy).

Notebook 01 teaches loading, checking and fusing ``train.csv`` (one row per
radiologist and box); notebook 02 the two pixel spaces (original DICOM and
resized PNG). Error messages name CSV lines, counting the header as line 1.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd

from cxrkit._progress import tqdm
from cxrkit.errors import AnnotationError, ConfigError, DataNotFoundError
from cxrkit.formats import (
    BOX_COLUMNS,
    META_COLUMNS,
    TRAIN_COLUMNS,
    formula_like_ids,
    image_sizes,
    path_like_ids,
)
from cxrkit.labels import CLASS_NAMES, NO_FINDING_ID, NUM_CLASSES

__all__ = [
    "AnnotationError",
    "TRAIN_COLUMNS",
    "BOX_COLUMNS",
    "META_COLUMNS",
    "load_annotations",
    "validate_annotations",
    "load_meta",
    "validate_meta",
    "fuse_boxes",
    "check_boxes_inside",
    "rescale_boxes",
    "boxes_to_resized",
    "boxes_to_original",
    "image_class_sets",
    "sizes_of",
]

FUSED_RAD_ID = "wbf"
_PATH_ID = "image_id is a path, not a name (an id must not hold '/', '\\' or '..')"
_FORMULA_ID = (
    "image_id starts like a spreadsheet formula ('=', '+', '-' or '@'): a spreadsheet opening "
    "the CSVs cxrkit writes would run it; rename the image"
)
_MAX_LISTED = 5  # problems spelled out in one error message


# --------------------------------------------------------------------------- helpers


def _line_note() -> str:
    return "line numbers count the CSV header as line 1"


def _raise_problems(
    source: str, problems: list[tuple[int, str, str]], total: int | None = None, what: str = "row"
) -> None:
    """Raise one AnnotationError listing ``(position, image_id, message)`` problems.

    Positions are 0-based row positions, shown as CSV lines (position + 2).
    ``total`` is the number of problems when only some were given as messages.
    """
    if not problems:
        return
    total = len(problems) if total is None else total
    problems = sorted(problems, key=lambda p: p[0])
    lines = [f"line {pos + 2}, image_id {image_id!r}: {msg}" for pos, image_id, msg in problems]
    shown = lines[:_MAX_LISTED]
    more = total - len(shown)
    s = "s" if total > 1 else ""
    body = "\n  ".join(shown)
    tail = f"\n  ... and {more} more" if more else ""
    raise AnnotationError(f"{source}: {total} invalid {what}{s} ({_line_note()}):\n  {body}{tail}")


def _show(value: object) -> str:
    """A cell value for a message: strings quoted, numbers plain (no ``np.int64(...)``)."""
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, np.generic):
        value = value.item()
    return str(value)


def _blank(values: pd.Series) -> np.ndarray:
    """True where a cell is empty: NaN/None or a whitespace-only string."""
    missing = values.isna().to_numpy()
    if not pd.api.types.is_numeric_dtype(values):
        text = values.astype(object).where(~missing, "")
        missing = missing | (text.map(lambda v: isinstance(v, str) and not v.strip()).to_numpy())
    return missing


def _as_table(
    path_or_df: str | os.PathLike | pd.DataFrame, default_name: str
) -> tuple[pd.DataFrame, str]:
    """Read a CSV (or take a DataFrame) and return it with a name for messages."""
    if isinstance(path_or_df, pd.DataFrame):
        return path_or_df, default_name
    path = Path(path_or_df)
    if not path.is_file():
        raise DataNotFoundError(f"{path} does not exist (expected a CSV file)")
    try:
        # ids stay text even if one looks like a number; coordinates are checked later
        df = pd.read_csv(path, dtype={"image_id": str, "rad_id": str, "class_name": str})
    except pd.errors.EmptyDataError:
        raise AnnotationError(f"{path}: the file is empty (no header, no rows)") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise AnnotationError(f"{path}: not a readable CSV file ({exc})") from None
    return df, str(path)


def _check_columns(df: pd.DataFrame, required: list[str], source: str) -> None:
    if not isinstance(df, pd.DataFrame):
        raise AnnotationError(f"{source}: expected a pandas DataFrame, got {type(df).__name__}")
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise AnnotationError(
            f"{source} is missing column(s) {missing}; expected at least {required}, "
            f"found {list(map(str, df.columns))}"
        )
    if len(df) == 0:
        raise AnnotationError(f"{source} has a header but no rows")


# --------------------------------------------------------------------------- validation


def validate_annotations(df: pd.DataFrame, source: str = "train.csv") -> pd.DataFrame:
    """Check a table in ``train.csv`` columns and return a clean copy.

    Checked: the columns of :data:`TRAIN_COLUMNS` (extra columns are kept), at
    least one row, a non-empty ``image_id``, an integer ``class_id`` in 0-14 whose
    ``class_name`` matches, numeric coordinates, a box on every finding (0-13) and
    no box on "No finding" (14), ``x_min < x_max``, ``y_min < y_max`` and no
    negative coordinate. Every bad row is reported with its CSV line (the header
    is line 1, so the row at position ``i`` of ``df`` is line ``i + 2``).

    An *exact* duplicate row (every column equal to an earlier row, e.g. a line
    pasted twice) is dropped with a warning that names its CSV line and the line
    it repeats: it adds no opinion (same radiologist, same box), but kept it would
    count twice in :func:`fuse_boxes` and as a second truth box in the metric.
    Dropping rather than refusing, because the only correct reading of an exact
    copy is one row and a 68,000-line file should not need hand-editing for it.

    Returns a copy with ``image_id``/``class_name``/``rad_id`` as strings,
    ``class_id`` int64, coordinates float64 and a fresh 0..n-1 index; the
    :data:`TRAIN_COLUMNS` come first.
    """
    return _validate_with_lines(df, source)[0]


class _Problems:
    """Bad rows found so far: the first few messages of each kind, and how many in all."""

    def __init__(self, image_ids: np.ndarray) -> None:
        self.image_ids = image_ids
        self.listed: list[tuple[int, str, str]] = []
        self.total = 0

    def report(self, mask: np.ndarray, make_msg: Callable[[int], str]) -> None:
        # format only the first few messages of each kind: a broken file can have 60k bad rows
        self.total += int(mask.sum())
        for pos in np.flatnonzero(mask)[:_MAX_LISTED]:
            self.listed.append((int(pos), self.image_ids[pos], make_msg(int(pos))))


def _check_classes(df: pd.DataFrame, problems: _Problems) -> tuple[np.ndarray, np.ndarray]:
    """``class_id`` as int64 (-1 where unusable) and where it is a known class."""
    # class_id: integer 0..14
    raw_cls = df["class_id"]
    cls_blank = _blank(raw_cls)
    cls_num = pd.to_numeric(raw_cls.where(~cls_blank), errors="coerce").to_numpy(dtype=float)
    cls_bad_type = ~cls_blank & (~np.isfinite(cls_num) | (cls_num != np.round(cls_num)))
    problems.report(cls_blank, lambda p: "class_id is empty")
    problems.report(cls_bad_type, lambda p: f"class_id {_show(raw_cls.iloc[p])} is not an integer")
    cls_ok = ~cls_blank & ~cls_bad_type
    cls_int = np.where(cls_ok, np.nan_to_num(cls_num), -1).astype(np.int64)
    unknown = cls_ok & ((cls_int < 0) | (cls_int >= NUM_CLASSES))
    problems.report(
        unknown, lambda p: f"unknown class_id {cls_int[p]} (expected 0-{NUM_CLASSES - 1})"
    )
    cls_ok &= ~unknown

    # class_name must be the name of class_id
    names = df["class_name"].astype(object).to_numpy()
    expected = np.array(CLASS_NAMES, dtype=object)[np.where(cls_ok, cls_int, 0)]
    problems.report(
        cls_ok & (names != expected),
        lambda p: (
            f"class_name {names[p]!r} does not match class_id {cls_int[p]} "
            f"(which is {CLASS_NAMES[cls_int[p]]!r})"
        ),
    )
    return cls_int, cls_ok


def _check_numbers(
    df: pd.DataFrame, problems: _Problems
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Coordinates as float64 (NaN where blank or bad), where filled, and rows with a bad one."""
    n = len(df)
    coords = np.empty((n, 4), dtype=np.float64)
    present = np.zeros((n, 4), dtype=bool)
    any_bad_number = np.zeros(n, dtype=bool)
    for k, col in enumerate(BOX_COLUMNS):
        raw = df[col]
        blank = _blank(raw)
        num = pd.to_numeric(raw.where(~blank), errors="coerce").to_numpy(dtype=float)
        bad = ~blank & ~np.isfinite(num)
        problems.report(
            bad, lambda p, col=col, raw=raw: f"{col} {_show(raw.iloc[p])} is not a finite number"
        )
        coords[:, k] = np.where(bad, np.nan, num)
        present[:, k] = ~blank & ~bad
        any_bad_number |= bad
    return coords, present, any_bad_number


def _check_boxes(
    cls_int: np.ndarray,
    cls_ok: np.ndarray,
    coords: np.ndarray,
    present: np.ndarray,
    any_bad_number: np.ndarray,
    problems: _Problems,
) -> None:
    """A box on every finding, none on "No finding"; ordered, non-negative corners."""
    finding = cls_ok & (cls_int != NO_FINDING_ID)
    no_finding = cls_ok & (cls_int == NO_FINDING_ID)
    problems.report(
        finding & ~present.all(axis=1) & ~any_bad_number,
        lambda p: (
            f"finding {cls_int[p]} ({CLASS_NAMES[cls_int[p]]}) has no box: "
            "x_min, y_min, x_max, y_max must all be filled"
        ),
    )
    problems.report(
        no_finding & present.any(axis=1),
        lambda p: "a 'No finding' row (class_id 14) has a box; its x_min..y_max must be empty",
    )
    full = finding & present.all(axis=1)
    with np.errstate(invalid="ignore"):
        negative = full & (coords < 0).any(axis=1)
        problems.report(
            negative,
            lambda p: f"negative coordinate in box {coords[p].tolist()} (pixels start at 0)",
        )
        problems.report(
            full & (coords[:, 2] <= coords[:, 0]),
            lambda p: f"x_max {coords[p, 2]:g} <= x_min {coords[p, 0]:g} (box has no width)",
        )
        problems.report(
            full & (coords[:, 3] <= coords[:, 1]),
            lambda p: f"y_max {coords[p, 3]:g} <= y_min {coords[p, 1]:g} (box has no height)",
        )


def _clean_table(
    df: pd.DataFrame, image_ids: pd.Series, cls_int: np.ndarray, coords: np.ndarray
) -> pd.DataFrame:
    """The checked table with clean dtypes, :data:`TRAIN_COLUMNS` first."""
    out = df.copy()
    out["image_id"] = image_ids.astype(str)
    out["class_name"] = out["class_name"].astype(str)
    out["rad_id"] = out["rad_id"].astype(object).where(~_blank(out["rad_id"]), "").astype(str)
    out["class_id"] = cls_int
    for k, col in enumerate(BOX_COLUMNS):
        out[col] = coords[:, k]
    extras = [c for c in out.columns if c not in TRAIN_COLUMNS]
    return out[TRAIN_COLUMNS + extras]


def _validate_with_lines(df: pd.DataFrame, source: str) -> tuple[pd.DataFrame, np.ndarray]:
    """:func:`validate_annotations`, plus the CSV line of each row it returns."""
    _check_columns(df, TRAIN_COLUMNS, source)
    df = df.reset_index(drop=True)
    id_blank = _blank(df["image_id"])
    image_ids = df["image_id"].astype(object).where(~id_blank, "").astype(str).str.strip()
    problems = _Problems(image_ids.to_numpy())
    problems.report(id_blank, lambda p: "image_id is empty")
    problems.report(path_like_ids(image_ids).to_numpy(), lambda p: _PATH_ID)
    problems.report(formula_like_ids(image_ids).to_numpy(), lambda p: _FORMULA_ID)
    cls_int, cls_ok = _check_classes(df, problems)
    coords, present, any_bad_number = _check_numbers(df, problems)
    _check_boxes(cls_int, cls_ok, coords, present, any_bad_number, problems)
    _raise_problems(source, problems.listed, problems.total)

    out = _clean_table(df, image_ids, cls_int, coords)
    lines = np.arange(len(df)) + 2  # CSV lines: the header is line 1
    # called from here, so that its warning's stacklevel points at the user's call
    return _drop_exact_duplicates(out, lines, source)


def _drop_exact_duplicates(
    df: pd.DataFrame, lines: np.ndarray, source: str
) -> tuple[pd.DataFrame, np.ndarray]:
    """Drop rows equal in every column to an earlier row, with a warning naming both lines."""
    dup = df.duplicated(keep="first").to_numpy()
    if not dup.any():
        return df, lines
    first = df.groupby(list(df.columns), dropna=False, sort=False).ngroup().to_numpy()
    first_line = pd.Series(lines).groupby(first).transform("min").to_numpy()
    pairs = [f"line {lines[p]} = line {first_line[p]}" for p in np.flatnonzero(dup)]
    more = f", ... and {len(pairs) - _MAX_LISTED} more" if len(pairs) > _MAX_LISTED else ""
    warnings.warn(
        f"{source}: dropped {len(pairs)} exact duplicate row(s) ({', '.join(pairs[:_MAX_LISTED])}"
        f"{more}; {_line_note()}): a repeated row would count the same box twice",
        stacklevel=4,
    )
    keep = ~dup
    return df[keep].reset_index(drop=True), lines[keep]


def load_annotations(path_or_df: str | os.PathLike | pd.DataFrame) -> pd.DataFrame:
    """Read ``train.csv`` (or a fused table, or ``test_labels.csv``) and validate it.

    A DataFrame is validated as is (messages then call it "annotations").
    See :func:`validate_annotations` for the checks and the returned dtypes.
    """
    df, source = _as_table(path_or_df, "annotations")
    return _validate_with_lines(df, source)[0]


def _load_with_lines(
    path_or_df: str | os.PathLike | pd.DataFrame,
) -> tuple[pd.DataFrame, str, np.ndarray]:
    """:func:`load_annotations`, plus a name for messages and the CSV line of each row."""
    df, source = _as_table(path_or_df, "annotations")
    out, lines = _validate_with_lines(df, source)
    return out, source, lines


# --------------------------------------------------------------------------- meta tables


def validate_meta(df: pd.DataFrame, source: str = "meta") -> pd.DataFrame:
    """Check an ``image_id,dim0,dim1`` table and return a clean copy.

    ``dim0`` is the number of rows (height) and ``dim1`` the number of columns
    (width) of the *original* DICOM, as in the public resized datasets. Sizes must
    be positive integers and every image id must appear once.
    """
    _check_columns(df, META_COLUMNS, source)
    df = df.reset_index(drop=True)
    blank = _blank(df["image_id"])
    ids = df["image_id"].astype(object).where(~blank, "").astype(str).str.strip()
    problems: list[tuple[int, str, str]] = []
    for pos in np.flatnonzero(blank):
        problems.append((int(pos), "", "image_id is empty"))
    for pos in np.flatnonzero(path_like_ids(ids).to_numpy()):
        problems.append((int(pos), ids.iloc[pos], _PATH_ID))
    for pos in np.flatnonzero(formula_like_ids(ids).to_numpy()):
        problems.append((int(pos), ids.iloc[pos], _FORMULA_ID))
    dup = ids.duplicated(keep="first").to_numpy() & ~blank
    for pos in np.flatnonzero(dup):
        first = int(np.flatnonzero(ids.to_numpy() == ids.iloc[pos])[0])
        problems.append(
            (int(pos), ids.iloc[pos], f"duplicate image_id (first on line {first + 2})")
        )
    sizes = {}
    for col in ("dim0", "dim1"):
        raw = df[col]
        num = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=float)
        bad = ~np.isfinite(num) | (num != np.round(np.nan_to_num(num)))
        for pos in np.flatnonzero(bad):
            problems.append(
                (int(pos), ids.iloc[pos], f"{col} {_show(raw.iloc[pos])} is not an integer")
            )
        nonpos = ~bad & (np.nan_to_num(num) <= 0)
        for pos in np.flatnonzero(nonpos):
            problems.append(
                (int(pos), ids.iloc[pos], f"{col} {_show(raw.iloc[pos])} is not positive")
            )
        sizes[col] = np.where(bad, 0, np.nan_to_num(num)).astype(np.int64)
    _raise_problems(source, problems)
    out = df.copy()
    out["image_id"] = ids.astype(str)
    out["dim0"] = sizes["dim0"]
    out["dim1"] = sizes["dim1"]
    extras = [c for c in out.columns if c not in META_COLUMNS]
    return out[META_COLUMNS + extras]


def load_meta(path: str | os.PathLike | pd.DataFrame) -> pd.DataFrame:
    """Read and validate a meta CSV (``image_id,dim0,dim1``), e.g. ``train_meta.csv``."""
    df, source = _as_table(path, "meta")
    return validate_meta(df, source=source)


# --------------------------------------------------------------------------- fusion


def sizes_of(image_ids: pd.Series, meta: pd.DataFrame, purpose: str) -> np.ndarray:
    """(n, 2) float array of (height, width) per id of ``image_ids``, from a validated meta.

    Raises :class:`AnnotationError` naming the ids missing from ``meta`` and what
    they were ``purpose`` (e.g. ``"to normalise boxes"``).
    """
    sizes = image_sizes(meta)
    missing = pd.Index(image_ids.unique()).difference(pd.Index(list(sizes), dtype=object))
    if len(missing):
        shown = list(missing[:10])
        more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
        raise AnnotationError(
            f"{len(missing)} image id(s) are missing from the meta table, needed {purpose}: "
            f"{shown}{more}"
        )
    return np.array([sizes[i] for i in image_ids], dtype=np.float64).reshape(-1, 2)


def _boxes_outside(
    ann: pd.DataFrame, meta: pd.DataFrame, purpose: str
) -> tuple[np.ndarray, np.ndarray]:
    """(height, width) of each row's image (NaN on No finding rows) and the rows whose
    box reaches beyond it (``x_max > dim1`` or ``y_max > dim0``); validated tables."""
    is_finding = ann["class_id"].to_numpy() != NO_FINDING_ID
    boxes = ann[BOX_COLUMNS].to_numpy(dtype=np.float64)
    hw = np.full((len(ann), 2), np.nan)
    if is_finding.any():
        hw[is_finding] = sizes_of(ann.loc[is_finding, "image_id"], meta, purpose)
    outside = is_finding & ((boxes[:, 2] > hw[:, 1]) | (boxes[:, 3] > hw[:, 0]))
    return hw, outside


def _outside_examples(ann: pd.DataFrame, lines: np.ndarray, hw: np.ndarray, pos) -> str:
    """The first three boxes beyond their image, with CSV line, image id and size."""
    boxes = ann[BOX_COLUMNS].to_numpy(dtype=np.float64)
    return ", ".join(
        f"line {lines[p]} image_id {ann['image_id'].iat[p]!r} box {boxes[p].tolist()} "
        f"vs size (h={hw[p, 0]:g}, w={hw[p, 1]:g})"
        for p in pos[:3]
    )


def _refuse_outside(
    source: str,
    ann: pd.DataFrame,
    lines: np.ndarray,
    hw: np.ndarray,
    outside: np.ndarray,
    hint: str = "",
) -> None:
    """Raise the one-line AnnotationError for boxes beyond their image."""
    pos = np.flatnonzero(outside)
    raise AnnotationError(
        f"{source}: {len(pos)} box(es) reach beyond their image "
        f"({_outside_examples(ann, lines, hw, pos)}; {_line_note()}); is the meta table "
        f"of the original DICOM sizes (not of resized PNGs)?{hint}"
    )


def check_boxes_inside(
    annotations: pd.DataFrame | str | os.PathLike,
    meta: pd.DataFrame | str | os.PathLike,
    *,
    skip_unknown: bool = False,
) -> pd.DataFrame:
    """Load ``annotations`` and refuse any box reaching beyond its image; return the table.

    The same check as :func:`fuse_boxes` makes, for a table that is not fused again
    (an already fused ``rad_id == "wbf"`` table, ``test_labels.csv``): a box beyond
    its image means a wrong meta table or a wrong row, and clipping it silently
    would train on (or score against) a box nobody drew. The
    :class:`AnnotationError` names the file, the CSV line and the image.
    ``skip_unknown=True`` leaves out the rows of images that ``meta`` lacks (a
    caller that trains without them) instead of refusing them.
    """
    ann, source, lines = _load_with_lines(annotations)
    meta = load_meta(meta)
    checked, checked_lines = ann, lines
    if skip_unknown:
        known = ann["image_id"].isin(set(meta["image_id"])).to_numpy()
        checked, checked_lines = ann[known].reset_index(drop=True), lines[known]
    hw, outside = _boxes_outside(checked, meta, "to check boxes")
    if outside.any():
        _refuse_outside(source, checked, checked_lines, hw, outside)
    return ann


def fuse_boxes(
    annotations: pd.DataFrame | str | os.PathLike,
    meta: pd.DataFrame | str | os.PathLike,
    iou_thr: float = 0.4,
    skip_box_thr: float = 0.0,
    conf_type: str = "avg",
    *,
    clip: bool = False,
) -> pd.DataFrame:
    """Fuse the radiologists' boxes of each image into one consensus set with WBF.

    **Why fuse?** Three radiologists read each training image and rarely draw the
    same rectangle: one finding often appears as three slightly different boxes.
    Training on all of them teaches the detector to predict duplicates and
    counts one lesion three times. Weighted Boxes Fusion (Solovyev et al., 2021,
    the ``ensemble-boxes`` package) clusters boxes of the same class that overlap
    by more than ``iou_thr`` and replaces each cluster by the score-weighted
    *average* of its coordinates. Unlike NMS, which keeps one box and discards the
    others, WBF uses every radiologist's opinion. A box that no other radiologist
    confirmed is kept as it is (its fused score would be 1/3).

    **Why normalise?** ``weighted_boxes_fusion`` expects coordinates in [0, 1]
    (it clips anything outside with a warning), so boxes are divided by the
    image width (``dim1``) and height (``dim0``) from ``meta`` and multiplied back
    afterwards. This is why a meta table of the *original* DICOM sizes is needed.

    Each radiologist of an image is one "model" of WBF (in order of first
    appearance in the table, including radiologists who said "No finding", who
    contribute an empty list), every box has score 1, and the class id is the WBF
    label, so boxes are only fused within a class. WBF is order dependent; the
    order used here is the row order of the table, which makes the result
    reproducible and identical to calling ``ensemble_boxes.weighted_boxes_fusion``
    yourself with the same lists (the tests check this). WBF averages in float32,
    so fused corners carry ~1e-7 relative error (a ten-thousandth of a pixel).

    Args:
        annotations: a table in :data:`TRAIN_COLUMNS` (or a CSV path); validated.
        meta: ``image_id,dim0,dim1`` of the original images (or a CSV path).
        iou_thr: IoU above which two boxes of one class join the same cluster
            (0.4, the competition's matching threshold, is the common choice).
        skip_box_thr: passed to WBF; boxes scoring below it are ignored. All
            input scores are 1, so this only matters for values above 1.
        conf_type: passed to WBF; affects only the fused scores, which this
            table does not keep.
        clip: boxes reaching beyond the image (``x_max > dim1`` or
            ``y_max > dim0``) usually mean that the meta table does not describe
            the original images (for instance sizes of resized PNGs), so they
            raise an :class:`AnnotationError` by default. With ``clip=True`` they
            are clipped to the image with a warning (boxes left with no area are
            dropped; an image left with no box becomes "No finding").

    Returns:
        A table in :data:`TRAIN_COLUMNS` with ``rad_id`` ``"wbf"`` and boxes in
        original pixels, images in their order of first appearance and boxes
        sorted by class. An image with no finding box keeps exactly one
        "No finding" row; an image where any radiologist drew a finding keeps only
        its fused finding boxes. ``attrs["source_rows"]`` holds the number of
        rows read (after exact duplicates were dropped).
    """
    # ensemble_boxes pulls in numba (about a second): imported on first use, not with the module
    from ensemble_boxes import weighted_boxes_fusion

    _check_wbf_args(iou_thr, conf_type)
    ann, source, lines = _load_with_lines(annotations)
    meta = load_meta(meta)
    is_finding = ann["class_id"].to_numpy() != NO_FINDING_ID
    boxes = ann[BOX_COLUMNS].to_numpy(dtype=np.float64, copy=True)  # NaN on No finding rows

    hw, outside = _boxes_outside(ann, meta, "to normalise boxes")
    if outside.any():
        is_finding &= ~_clip_or_refuse(source, ann, lines, hw, outside, boxes, clip)
    scale = np.concatenate([hw[:, ::-1], hw[:, ::-1]], axis=1)  # (w, h, w, h)
    wbf = partial(
        weighted_boxes_fusion, iou_thr=iou_thr, skip_box_thr=skip_box_thr, conf_type=conf_type
    )
    fused = _fuse_images(ann, is_finding, boxes / scale, hw, wbf)
    fused.attrs["source_rows"] = len(ann)
    return fused


def _check_wbf_args(iou_thr: float, conf_type: str) -> None:
    """Refuse WBF settings that ``ensemble_boxes`` would reject by exiting the process."""
    # ensemble_boxes calls exit() on a bad conf_type: check here and raise instead
    conf_types = ("avg", "max", "box_and_model_avg", "absent_model_aware_avg")
    if conf_type not in conf_types:
        raise ConfigError(f"conf_type must be one of {conf_types}, got {conf_type!r}")
    if not 0.0 <= iou_thr <= 1.0:
        raise ConfigError(f"iou_thr must be in [0, 1], got {iou_thr}")


def _clip_or_refuse(
    source: str,
    ann: pd.DataFrame,
    lines: np.ndarray,
    hw: np.ndarray,
    outside: np.ndarray,
    boxes: np.ndarray,
    clip: bool,
) -> np.ndarray:
    """Refuse boxes beyond their image, or (``clip``) clip ``boxes`` in place with a warning.

    Returns the rows whose clipped box has no area left (to be dropped).
    """
    pos = np.flatnonzero(outside)
    if not clip:
        _refuse_outside(source, ann, lines, hw, outside, " Use clip=True to clip them.")
    example = _outside_examples(ann, lines, hw, pos)
    boxes[:, [0, 2]] = np.minimum(boxes[:, [0, 2]], hw[:, [1]])
    boxes[:, [1, 3]] = np.minimum(boxes[:, [1, 3]], hw[:, [0]])
    empty = outside & ((boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1]))
    warnings.warn(
        f"clipped {len(pos)} box(es) to their image ({example}); "
        f"{int(empty.sum())} of them had no area left and were dropped",
        stacklevel=3,  # the caller of fuse_boxes
    )
    return empty


def _fuse_images(
    ann: pd.DataFrame, is_finding: np.ndarray, norm: np.ndarray, hw: np.ndarray, wbf: Callable
) -> pd.DataFrame:
    """Fuse each image's normalised boxes (``norm``) and build the fused table."""
    class_ids = ann["class_id"].to_numpy()
    image_codes, image_uniques = pd.factorize(ann["image_id"])
    rad_ids = ann["rad_id"].to_numpy()
    order = np.argsort(image_codes, kind="stable")  # row order kept within an image
    starts = np.searchsorted(image_codes[order], np.arange(len(image_uniques) + 1))

    out_ids, out_cls, out_boxes = [], [], []
    for i, image_id in enumerate(tqdm(image_uniques, desc="fusing boxes (WBF)", unit="img")):
        rows = order[starts[i] : starts[i + 1]]
        fused = _fuse_one_image(rows, is_finding, rad_ids, norm, class_ids, wbf)
        if fused is None:
            out_ids.append(image_id)
            out_cls.append(np.array([NO_FINDING_ID]))
            out_boxes.append(np.full((1, 4), np.nan))
            continue
        labels, coords = fused
        h, w = hw[rows[is_finding[rows]][0]]
        out_ids.append(np.full(len(labels), image_id, dtype=object))
        out_cls.append(labels)
        out_boxes.append(coords * np.array([w, h, w, h]))
    return _fused_table(out_ids, out_cls, out_boxes)


def _fuse_one_image(
    rows: np.ndarray,
    is_finding: np.ndarray,
    rad_ids: np.ndarray,
    norm: np.ndarray,
    class_ids: np.ndarray,
    wbf: Callable,
) -> tuple[np.ndarray, np.ndarray] | None:
    """WBF over one image's rows, one "model" per radiologist: (labels, boxes) sorted by
    class, or None when the image has no finding box or WBF skipped every box."""
    if not is_finding[rows].any():
        return None
    rad_codes, _ = pd.factorize(rad_ids[rows])  # radiologists in order of appearance
    boxes_list, scores_list, labels_list = [], [], []
    for r in range(rad_codes.max() + 1):
        sel = rows[(rad_codes == r) & is_finding[rows]]
        boxes_list.append(norm[sel])
        scores_list.append(np.ones(len(sel)))
        labels_list.append(class_ids[sel])
    fused, _scores, labels = wbf(boxes_list, scores_list, labels_list)
    if len(labels) == 0:  # every box skipped (skip_box_thr > 1)
        return None
    labels = labels.astype(np.int64)
    keep = np.argsort(labels, kind="stable")  # by class, WBF order within a class
    return labels[keep], fused[keep]


def _fused_table(out_ids: list, out_cls: list, out_boxes: list) -> pd.DataFrame:
    """The fused rows, collected per image, as a table in :data:`TRAIN_COLUMNS`."""
    cls = np.concatenate(out_cls).astype(np.int64)
    ids = np.concatenate([np.atleast_1d(np.asarray(x, dtype=object)) for x in out_ids])
    coords = np.concatenate(out_boxes).astype(np.float64)
    result = pd.DataFrame(
        {
            "image_id": pd.Series(ids, dtype=object).astype(str),
            "class_name": pd.Series(np.array(CLASS_NAMES, dtype=object)[cls]).astype(str),
            "class_id": cls,
            "rad_id": pd.Series([FUSED_RAD_ID] * len(cls), dtype=object).astype(str),
        }
    )
    for k, col in enumerate(BOX_COLUMNS):
        result[col] = coords[:, k]
    return result[TRAIN_COLUMNS]


# --------------------------------------------------------------------------- box spaces


def _hw(size: int | tuple[int, int] | np.ndarray) -> np.ndarray:
    """``512 -> (512, 512)``; ``(h, w)`` stays; also accepts an (N, 2) array."""
    arr = np.asarray(size, dtype=np.float64)
    if arr.ndim == 0:
        arr = np.array([arr, arr])
    if arr.shape[-1] != 2 or np.any(arr <= 0):
        raise ConfigError(
            f"size must be an int or a (height, width) pair of positive numbers, got {size}"
        )
    return arr


def rescale_boxes(
    boxes: np.ndarray,
    from_hw: int | tuple[int, int] | np.ndarray,
    to_hw: int | tuple[int, int] | np.ndarray,
) -> np.ndarray:
    """Scale ``[x_min, y_min, x_max, y_max]`` boxes from one image size to another.

    x is scaled by ``to_w / from_w`` and y by ``to_h / from_h`` (per axis: a
    3000x2500 DICOM squashed to 512x512 is scaled differently along x and y).
    Sizes are ``(height, width)`` pairs, an int for a square, or ``(N, 2)``
    arrays giving one size per box. NaN boxes stay NaN. Returns float64 (N, 4).
    """
    boxes = np.asarray(boxes, dtype=np.float64)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ConfigError(f"boxes must have shape (N, 4), got {boxes.shape}")
    src, dst = _hw(from_hw), _hw(to_hw)
    src = np.broadcast_to(src, (len(boxes), 2)) if src.ndim == 1 else src
    dst = np.broadcast_to(dst, (len(boxes), 2)) if dst.ndim == 1 else dst
    # multiply first, then divide: keeps integer sizes exact and round trips within 1e-12
    out = boxes.copy()
    out[:, [0, 2]] = boxes[:, [0, 2]] * dst[:, [1]] / src[:, [1]]
    out[:, [1, 3]] = boxes[:, [1, 3]] * dst[:, [0]] / src[:, [0]]
    return out


def _convert(df: pd.DataFrame, meta: pd.DataFrame, size, to_resized: bool) -> pd.DataFrame:
    meta = load_meta(meta)
    missing_cols = [c for c in ["image_id", *BOX_COLUMNS] if c not in df.columns]
    if missing_cols:
        raise AnnotationError(f"box table is missing column(s) {missing_cols}")
    out = df.copy()
    boxes = out[BOX_COLUMNS].to_numpy(dtype=np.float64, copy=True)
    has_box = ~np.isnan(boxes).any(axis=1)
    if has_box.any():
        original = sizes_of(out.loc[has_box, "image_id"].astype(str), meta, "to rescale boxes")
        resized = _hw(size)
        src, dst = (original, resized) if to_resized else (resized, original)
        boxes[has_box] = rescale_boxes(boxes[has_box], src, dst)
    for k, col in enumerate(BOX_COLUMNS):
        out[col] = boxes[:, k]
    return out


def boxes_to_resized(
    df: pd.DataFrame, meta: pd.DataFrame | str | os.PathLike, size: int | tuple[int, int]
) -> pd.DataFrame:
    """Copy of ``df`` with boxes moved from original DICOM pixels to the resized image.

    ``meta`` gives each image's original ``dim0`` (height) and ``dim1`` (width);
    ``size`` is the resized image: an int for a square (the public "resized 512"
    copies) or ``(height, width)``. Rows without a box (No finding) are left alone.
    """
    return _convert(df, meta, size, to_resized=True)


def boxes_to_original(
    df: pd.DataFrame, meta: pd.DataFrame | str | os.PathLike, size: int | tuple[int, int]
) -> pd.DataFrame:
    """Inverse of :func:`boxes_to_resized`: resized-image pixels back to DICOM pixels.

    Use it on predictions before scoring or writing a submission, which are in
    original pixels.
    """
    return _convert(df, meta, size, to_resized=False)


# --------------------------------------------------------------------------- summaries


def image_class_sets(df: pd.DataFrame) -> pd.Series:
    """Map each image id to the frozenset of its class ids (for stratified splits).

    An image with any finding gets the set of its finding ids (a radiologist's
    "No finding" on the same image is ignored, as in the fused table); an image
    with no finding at all gets ``frozenset({14})``.
    """
    ids = df["image_id"].astype(str)
    cls = df["class_id"].astype(np.int64)
    sets = cls.groupby(ids, sort=False).agg(lambda s: frozenset(int(c) for c in s.unique()))

    def drop_no_finding(s: frozenset) -> frozenset:
        return s - {NO_FINDING_ID} if len(s) > 1 else s

    result = sets.map(drop_no_finding)
    result.index.name = "image_id"
    result.name = "class_ids"
    return result
