"""Kaggle submission files: build, check, write, read and parse them.

One row per test image: ``image_id,PredictionString`` with
``class score x_min y_min x_max y_max`` groups in original DICOM pixels
(``14 p 0 0 1 1``: an image-level "No finding" score). Taught in notebook 06.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from cxrkit._atomic import write_csv_atomic
from cxrkit.errors import SubmissionError
from cxrkit.formats import (
    BOX_COLUMNS,
    NO_FINDING_BOX,
    PREDICTION_COLUMNS,
    SUBMISSION_COLUMNS,
    formula_like_ids,
    image_sizes,
    path_like_ids,
)
from cxrkit.labels import NO_FINDING_ID, NUM_CLASSES

MAX_LISTED_ERRORS = 10


# ----------------------------------------------------------------- building
def _check_prediction_table(predictions: pd.DataFrame) -> pd.DataFrame:
    missing = [c for c in PREDICTION_COLUMNS if c not in predictions.columns]
    if missing:
        raise SubmissionError(
            f"predictions table lacks column(s) {missing}; expected {PREDICTION_COLUMNS}"
        )
    p = predictions[PREDICTION_COLUMNS].reset_index(drop=True).copy()
    num = p[PREDICTION_COLUMNS[1:]].apply(pd.to_numeric, errors="coerce").astype(np.float64)
    bad = ~np.isfinite(num.to_numpy()).all(axis=1) | ~num["class_id"].isin(range(NUM_CLASSES))
    bad |= ~num["score"].between(0.0, 1.0)
    if bad.any():
        i = int(np.flatnonzero(np.asarray(bad))[0])
        raise SubmissionError(
            f"predictions row {i} (image_id {p['image_id'].iloc[i]!r}): need class_id in "
            f"0..{NUM_CLASSES - 1}, score in [0, 1] and finite box; got {p.iloc[i].to_dict()}"
        )
    p[PREDICTION_COLUMNS[1:]] = num
    p["class_id"] = p["class_id"].astype(np.int64)
    return p


def no_finding_score(
    predictions: pd.DataFrame,
    image_ids: Iterable,
    classifier_scores: Mapping | pd.Series | None = None,
) -> pd.Series:
    """Image-level "No finding" probability ``p`` for ``14 p 0 0 1 1``, indexed by image_id.

    In order of precedence: ``classifier_scores[image_id]`` (a normal-vs-abnormal
    classifier's probability of *normal*), the highest class-14 score already in
    ``predictions``, else ``1 - max finding score`` on the image (1 with no findings).
    """
    ids = pd.Index(list(image_ids), name="image_id")
    p = _check_prediction_table(predictions)
    is_nf = p["class_id"] == NO_FINDING_ID
    best_finding = p[~is_nf].groupby("image_id")["score"].max()
    score = (1.0 - best_finding.reindex(ids)).fillna(1.0)
    given = p[is_nf].groupby("image_id")["score"].max().reindex(ids)
    score = given.where(given.notna(), score)
    if classifier_scores is not None:
        clf = pd.Series(classifier_scores, dtype=np.float64).reindex(ids)
        score = clf.where(clf.notna(), score)
    if not score.between(0.0, 1.0).all():
        bad = score[~score.between(0.0, 1.0)]
        raise SubmissionError(f"No finding scores must be in [0, 1], got {bad.head(3).to_dict()}")
    return score.rename("no_finding")


def add_no_finding(predictions: pd.DataFrame, image_ids: Iterable[str]) -> pd.DataFrame:
    """Append one "No finding" row (class 14, box 0 0 1 1) per image, as a submission does.

    Its score is :func:`no_finding_score` (``1 - best finding score``), so a validation
    mAP counts class 14 exactly like the leaderboard (notebook 05, section 7).
    """
    ids = list(dict.fromkeys(str(i) for i in image_ids))
    findings = predictions[predictions["class_id"] != NO_FINDING_ID]
    nf = no_finding_score(findings, ids)
    x0, y0, x1, y1 = NO_FINDING_BOX
    rows = pd.DataFrame(
        {
            "image_id": nf.index.astype(str),
            "class_id": NO_FINDING_ID,
            "score": nf.to_numpy(dtype=np.float64),
            "x_min": x0,
            "y_min": y0,
            "x_max": x1,
            "y_max": y1,
        }
    )
    return pd.concat([findings, rows], ignore_index=True)


def prediction_strings(
    predictions: pd.DataFrame,
    image_ids: Iterable,
    no_finding_scores: Mapping | pd.Series | None = None,
    *,
    meta: pd.DataFrame | None = None,
    score_decimals: int = 6,
) -> pd.DataFrame:
    """Predictions table (original pixels) -> submission rows ``image_id,PredictionString``.

    One row per id of ``image_ids`` in that order (use the ids of
    ``sample_submission.csv``). Findings are written in descending score with boxes
    rounded to integer pixels (clipped at 0, and to the image when ``meta`` with
    image_id, dim0, dim1 is given), then ``14 p 0 0 1 1`` with ``p`` from
    :func:`no_finding_score` (``no_finding_scores`` overrides it per image). An image
    without predictions gets ``14 1 0 0 1 1``.
    """
    ids = pd.Index(list(image_ids))
    if not ids.is_unique:
        raise SubmissionError(f"image_ids has duplicates, e.g. {list(ids[ids.duplicated()][:3])}")
    p = _check_prediction_table(predictions)
    unknown = ~p["image_id"].isin(ids)
    if unknown.any():
        raise SubmissionError(
            f"{unknown.sum()} prediction(s) are on images not in image_ids, e.g. "
            f"{list(pd.unique(p.loc[unknown, 'image_id'])[:3])}"
        )
    nf = no_finding_score(p, ids, classifier_scores=no_finding_scores)

    f = p[p["class_id"] != NO_FINDING_ID]
    f = f.iloc[np.argsort(-f["score"].to_numpy(), kind="stable")]
    boxes = np.maximum(np.rint(f[BOX_COLUMNS].to_numpy()), 0.0)
    if meta is not None:
        hw = _meta_lookup(meta, f["image_id"])
        size = hw[:, ::-1]  # (width, height)
        boxes[:, :2] = np.minimum(boxes[:, :2], size - 1)
        boxes[:, 2:] = np.minimum(boxes[:, 2:], size)
    boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2] + 1)  # keep at least 1 px wide
    b = boxes.astype(np.int64).astype(str)
    text = (
        f["class_id"].astype(str).to_numpy()
        + " "
        + np.char.mod(f"%.{score_decimals}f", f["score"].to_numpy())
        + " "
        + b[:, 0]
        + " "
        + b[:, 1]
        + " "
        + b[:, 2]
        + " "
        + b[:, 3]
    )
    per_image = pd.Series(text, index=f["image_id"].to_numpy()).groupby(level=0, sort=False)
    joined = per_image.agg(" ".join).reindex(ids)
    x0, y0, x1, y1 = (int(v) for v in NO_FINDING_BOX)
    nf_text = [f"{NO_FINDING_ID} {s:.{score_decimals}f} {x0} {y0} {x1} {y1}" for s in nf.to_numpy()]
    strings = [
        nf_t if pd.isna(j) else f"{j} {nf_t}" for j, nf_t in zip(joined, nf_text, strict=True)
    ]
    return pd.DataFrame({"image_id": ids.to_numpy(), "PredictionString": strings})


def _sizes(meta: pd.DataFrame) -> dict[str, tuple[int, int]]:
    """image_id -> (dim0, dim1); a meta table without those columns is a SubmissionError."""
    try:
        return image_sizes(meta)
    except ValueError as exc:
        raise SubmissionError(str(exc)) from None


def _meta_lookup(meta: pd.DataFrame, image_ids: pd.Series) -> np.ndarray:
    """(n, 2) float array of (dim0, dim1) per id of ``image_ids``."""
    sizes = _sizes(meta)
    absent = [i for i in pd.unique(image_ids) if str(i) not in sizes]
    if absent:
        raise SubmissionError(f"no meta row for image(s) {absent[:3]}")
    return np.array([sizes[str(i)] for i in image_ids], dtype=np.float64).reshape(-1, 2)


# ----------------------------------------------------------------- checking
def read_submission(path: str | os.PathLike) -> pd.DataFrame:
    """Read a submission CSV as strings; raise :class:`SubmissionError` if unreadable.

    Only the file and its columns are checked here; :func:`validate_submission`
    checks the contents.
    """
    path = Path(path)
    if not path.is_file():
        raise SubmissionError(f"{path}: no such submission file")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as e:
        raise SubmissionError(f"{path}: not a readable CSV ({e})") from None
    _check_columns(df, str(path))
    return df


def _check_columns(df: pd.DataFrame, source: str) -> None:
    missing = [c for c in SUBMISSION_COLUMNS if c not in df.columns]
    extra = [c for c in df.columns if c not in SUBMISSION_COLUMNS]
    if missing or extra:
        hint = (
            " (was the index written? use index=False)"
            if any("Unnamed" in c for c in extra)
            else ""
        )
        raise SubmissionError(
            f"{source}: columns must be exactly {SUBMISSION_COLUMNS}; "
            f"missing {missing}, unexpected {extra}{hint}"
        )


def _parse_rows(
    df: pd.DataFrame, source: str, sizes: dict | None
) -> tuple[pd.DataFrame, list[str]]:
    """Parse every PredictionString; return the long predictions table and all errors."""
    errors: list[str] = []
    parts: list[np.ndarray] = []
    part_ids: list[np.ndarray] = []
    for i, (img, s) in enumerate(zip(df["image_id"], df["PredictionString"], strict=True)):
        where = f"{source}: row {i} (image_id {img})"
        if s is None or (isinstance(s, float) and np.isnan(s)) or not str(s).strip():
            errors.append(f"{where}: PredictionString is empty/NaN (write '14 1 0 0 1 1' for none)")
            continue
        tokens = str(s).split()
        if len(tokens) % 6:
            errors.append(
                f"{where}: {len(tokens)} tokens is not a multiple of 6 "
                "('class score x_min y_min x_max y_max' per prediction)"
            )
            continue
        try:
            v = np.array(tokens, dtype=np.float64).reshape(-1, 6)
        except ValueError:
            bad = next(t for t in tokens if not _is_number(t))
            errors.append(f"{where}: token {bad!r} is not a number")
            continue
        row_errors = _check_values(v, where, sizes.get(img) if sizes is not None else None)
        if row_errors:
            errors.extend(row_errors)
            continue
        parts.append(v)
        part_ids.append(np.full(len(v), img, dtype=object))
    v = np.concatenate(parts) if parts else np.zeros((0, 6))
    preds = pd.DataFrame(
        {
            "image_id": np.concatenate(part_ids) if part_ids else np.array([], dtype=object),
            "class_id": v[:, 0].astype(np.int64),
            "score": v[:, 1],
            **{c: v[:, k + 2] for k, c in enumerate(BOX_COLUMNS)},
        }
    )
    return preds, errors


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def _check_values(v: np.ndarray, where: str, size: tuple[int, int] | None) -> list[str]:
    """Errors for one image's (K, 6) prediction array; ``size`` is (rows, cols).

    The checks run on the whole array at once; only rows that fail get a message.
    """
    c, s, x0, y0, x1, y1 = v.T
    with np.errstate(invalid="ignore"):
        finite = np.isfinite(v).all(axis=1)
        bad = ~finite
        bad |= (c != np.floor(c)) | (c < 0) | (c >= NUM_CLASSES)
        bad |= (s < 0) | (s > 1)
        nf = c == NO_FINDING_ID
        bad |= nf & ~(v[:, 2:] == np.asarray(NO_FINDING_BOX)).all(axis=1)
        box_bad = (x1 <= x0) | (y1 <= y0) | (x0 < 0) | (y0 < 0)
        if size is not None:
            box_bad |= (x1 > size[1]) | (y1 > size[0])
        bad |= ~nf & box_bad
    out = []
    for k in np.flatnonzero(bad)[:MAX_LISTED_ERRORS]:
        at = f"{where}, prediction {k}"
        box = f"{x0[k]:g} {y0[k]:g} {x1[k]:g} {y1[k]:g}"
        if not finite[k]:
            out.append(f"{at}: non-finite value in {v[k].tolist()}")
        elif c[k] != int(c[k]) or not 0 <= c[k] < NUM_CLASSES:
            out.append(f"{at}: class id {c[k]:g} is not an integer in 0..{NUM_CLASSES - 1}")
        elif not 0.0 <= s[k] <= 1.0:
            out.append(f"{at}: score {s[k]:g} is outside [0, 1]")
        elif nf[k]:
            out.append(f"{at}: No finding (class 14) must use box 0 0 1 1, got {box}")
        elif x1[k] <= x0[k] or y1[k] <= y0[k]:
            out.append(f"{at}: box {box} needs x_max > x_min and y_max > y_min")
        else:
            lim = f" (image is {size[1]} wide, {size[0]} high)" if size is not None else ""
            out.append(f"{at}: box {box} is outside the image{lim}")
    return out


def _validate(
    df_or_path: pd.DataFrame | str | os.PathLike,
    image_ids: Iterable | None,
    meta: pd.DataFrame | None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Validate and parse in one pass: (submission rows, predictions table)."""
    if isinstance(df_or_path, pd.DataFrame):
        df, source = df_or_path, "submission"
        _check_columns(df, source)
    else:
        df, source = read_submission(df_or_path), str(df_or_path)
    errors: list[str] = []
    ids = df["image_id"].astype(str)
    dup = ids[ids.duplicated()]
    if len(dup):
        errors.append(f"{source}: duplicate image id(s) {list(pd.unique(dup)[:5])}")
    for i in np.flatnonzero(path_like_ids(ids).to_numpy())[:MAX_LISTED_ERRORS]:
        errors.append(
            f"{source}: row {i} (image_id {ids.iloc[i]}): the id is a path, not a name "
            "(an id must not hold '/', '\\' or '..')"
        )
    for i in np.flatnonzero(formula_like_ids(ids).to_numpy())[:MAX_LISTED_ERRORS]:
        errors.append(
            f"{source}: row {i} (image_id {ids.iloc[i]}): the id starts like a spreadsheet "
            "formula ('=', '+', '-' or '@'); a spreadsheet opening the file would run it"
        )
    if image_ids is not None:
        expected = pd.Index([str(i) for i in image_ids])
        missing = expected.difference(ids)
        extra = pd.Index(ids).difference(expected)
        if len(missing):
            errors.append(f"{source}: {len(missing)} image id(s) missing, e.g. {list(missing[:5])}")
        if len(extra):
            errors.append(f"{source}: {len(extra)} unexpected image id(s), e.g. {list(extra[:5])}")
    sizes = None
    if meta is not None:
        sizes = _sizes(meta)
        no_meta = [i for i in ids if i not in sizes]
        if no_meta:
            errors.append(f"{source}: no meta row for image id(s) {no_meta[:5]}")
    preds, row_errors = _parse_rows(df.assign(image_id=ids), source, sizes)
    errors.extend(row_errors)
    if errors:
        shown = "\n  ".join(errors[:MAX_LISTED_ERRORS])
        more = (
            f"\n  ... and {len(errors) - MAX_LISTED_ERRORS} more"
            if len(errors) > MAX_LISTED_ERRORS
            else ""
        )
        raise SubmissionError(f"invalid submission ({len(errors)} problem(s)):\n  {shown}{more}")
    return df, preds


def validate_submission(
    df_or_path: pd.DataFrame | str | os.PathLike,
    image_ids: Iterable | None = None,
    meta: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Check a submission the way Kaggle needs it; return it, or raise :class:`SubmissionError`.

    Checks the columns, duplicate image ids, missing and extra ids against
    ``image_ids`` (e.g. ``sample_submission.csv``'s), every PredictionString (tokens
    in sixes, numbers, class in 0..14, score in [0, 1], ``x_max > x_min``), class 14 as
    ``0 0 1 1``, and, with ``meta`` (image_id, dim0 = rows, dim1 = cols of the
    original), that boxes lie inside their image. All problems are collected and the
    first few listed.
    """
    return _validate(df_or_path, image_ids, meta)[0]


def parse_submission(df: pd.DataFrame | str | os.PathLike) -> pd.DataFrame:
    """Submission rows -> predictions table (image_id, class_id, score, x_min, ..., y_max).

    The inverse of :func:`prediction_strings` (up to the rounding it does), handy for
    scoring a submission with :func:`cxrkit.metrics.vinbigdata_map`.
    """
    return _validate(df, None, None)[1]


def write_submission(
    df: pd.DataFrame,
    path: str | os.PathLike,
    image_ids: Iterable | None = None,
    meta: pd.DataFrame | None = None,
) -> Path:
    """Validate ``df`` (see :func:`validate_submission`) and write it atomically as CSV."""
    validate_submission(df, image_ids=image_ids, meta=meta)
    return write_csv_atomic(df[SUBMISSION_COLUMNS], path)
