"""Run folders: what ``train`` and ``train-classifier`` write, and the checks around them.

A run folder (``--out``) holds one training run, detector or classifier alike:

* ``last.pt``: the checkpoint after the latest epoch (what ``--resume`` continues);
* ``best.pt``: the checkpoint of the best validation epoch (mAP@0.4 or AUC);
* ``history.csv``: one row per epoch (losses, rate, validation score, seconds);
* ``split.csv``: which images trained and which validated (``image_id, subset``);
* ``oof.csv``: a fold run's out-of-fold predictions of its validation images;
* ``.cxrkit-run.lock``: while a training writes into it (:mod:`cxrkit._runlock`).

The helpers here read the preprocessed folder and the annotations, choose the
split, lock and prepare the folder, and refuse a resume with other settings or
another split. The checkpoints and ``history.csv`` are written by :func:`cxrkit.fit.fit`.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import pandas as pd
import torch

from cxrkit._atomic import write_csv_atomic
from cxrkit._runlock import run_lock
from cxrkit.annotations import check_boxes_inside, fuse_boxes, load_annotations, load_meta
from cxrkit.checkpoints import load_checkpoint, require_kind
from cxrkit.data import fold_split
from cxrkit.data import split as split_ids
from cxrkit.distributed import DistInfo, broadcast_flag
from cxrkit.errors import (
    AnnotationError,
    DataNotFoundError,
    DatasetError,
    OverwriteError,
    ResumeError,
)
from cxrkit.fit import refuse_other_settings

__all__ = [
    "OOF_FILE",
    "RUN_FILES",
    "SPLIT_FILE",
    "SplitSettings",
    "check_resume_settings",
    "keep_split",
    "prepare_run_folder",
    "read_folder",
    "read_training_table",
    "run_folder_lock",
    "run_split",
    "table_digest",
    "write_out_of_fold_table",
]

RUN_FILES = ("last.pt", "best.pt", "history.csv")  # what makes a folder hold a run
SPLIT_FILE = "split.csv"
OOF_FILE = "oof.csv"


# ------------------------------------------------------------------ the inputs
def read_folder(data: Path) -> tuple[Path, pd.DataFrame]:
    """The PNG folder and the meta table of a preprocessed folder.

    Raises:
        DataNotFoundError: ``data`` has no ``train_meta.csv`` (not a preprocessed folder).
    """
    meta_path = Path(data) / "train_meta.csv"
    if not meta_path.is_file():
        raise DataNotFoundError(
            f"{meta_path} not found: DATA_DIR must be a preprocessed folder "
            "(python -m cxrkit preprocess RAW_DIR DATA_DIR)"
        )
    return Path(data) / "train", load_meta(meta_path)


def read_training_table(annotations_csv: str | os.PathLike, meta: pd.DataFrame) -> pd.DataFrame:
    """Load the annotations; fuse the radiologists' boxes when there are several per image."""
    table = load_annotations(annotations_csv)
    if len(table) == 0:
        raise AnnotationError(f"{annotations_csv} has no annotation rows: nothing to train on")
    known = set(meta["image_id"].astype(str))
    ids = table["image_id"].astype(str)
    absent = sorted(set(ids) - known)
    if absent:
        warnings.warn(
            f"{len(absent)} annotated image(s) are not in the preprocessed folder "
            f"(e.g. {absent[:3]}); they are left out",
            stacklevel=2,
        )
        table = table[ids.isin(known)]
        if len(table) == 0:
            raise AnnotationError(
                f"none of the images of {annotations_csv} is in the preprocessed folder"
            )
    readers = table.groupby("image_id")["rad_id"].nunique()
    if (readers > 1).any() and not (table["rad_id"].astype(str) == "wbf").all():
        table = fuse_boxes(table, meta)  # refuses a box beyond its image
    else:  # used as it is (e.g. already fused): refuse the same boxes fuse_boxes would
        with warnings.catch_warnings():  # read twice: warn about duplicate rows once
            warnings.simplefilter("ignore")
            check_boxes_inside(annotations_csv, meta, skip_unknown=True)
    return table


# -------------------------------------------------------------------- the split
class SplitSettings(Protocol):
    """The settings that choose a run's split (a TrainConfig or a ClassifierConfig)."""

    folds: int | None
    fold: int | None
    valid_fraction: float
    seed: int


def run_split(table: pd.DataFrame, cfg: SplitSettings) -> tuple[list[str], list[str]]:
    """The run's (train, valid) ids: fold ``cfg.fold`` of ``cfg.folds`` validates, or
    a stratified ``valid_fraction`` without folds."""
    if cfg.folds is not None:
        return fold_split(table, cfg.folds, cfg.fold, seed=cfg.seed)
    return split_ids(table, valid_fraction=cfg.valid_fraction, seed=cfg.seed)


def keep_split(
    path: Path, train_ids: Sequence[str], valid_ids: Sequence[str], resume: bool, write: bool
) -> None:
    """Save the run's train/valid split (``split.csv``: image_id, subset) beside its
    checkpoints, so the validation images can be found again later; when resuming,
    check that the split is still the one the run was trained with.

    Args:
        path: the run's ``split.csv``.
        train_ids: the images that train.
        valid_ids: the images that validate.
        resume: whether this call continues the run in ``path.parent``.
        write: whether to write the file (rank 0 only, under DDP).

    Raises:
        ResumeError: a resume whose split differs from the saved one.
    """
    table = pd.DataFrame(
        {
            "image_id": [*map(str, train_ids), *map(str, valid_ids)],
            "subset": ["train"] * len(train_ids) + ["valid"] * len(valid_ids),
        }
    ).sort_values("image_id", ignore_index=True)
    if resume and path.is_file() and (path.parent / "last.pt").is_file():
        old = pd.read_csv(path, dtype=str).sort_values("image_id", ignore_index=True)
        if not old.equals(table.astype(str)):
            moved = len(set(map(tuple, old.values)) ^ set(map(tuple, table.values)))
            raise ResumeError(
                f"cannot resume {path.parent}: the train/valid split differs from the run's "
                f"{path.name} ({moved} row(s) differ) although the seed and the validation "
                "fraction are the run's, so the annotations or the preprocessed folder "
                "changed. Use the run's data, or another output folder for a new run."
            )
    if write:
        write_csv_atomic(table, path)


# ------------------------------------------------------------------- the folder
@contextlib.contextmanager
def run_folder_lock(out: Path, info: DistInfo, device: torch.device) -> Iterator[None]:
    """Rank 0 holds the run folder's lock (:func:`cxrkit._runlock.run_lock`); when it
    cannot, every rank refuses (no rank is left waiting for the others)."""
    with contextlib.ExitStack() as stack:
        refusal: OverwriteError | None = None
        if info.is_main:
            try:
                stack.enter_context(run_lock(out))
            except OverwriteError as exc:
                refusal = exc
        if broadcast_flag(refusal is not None, device):
            raise refusal or OverwriteError(f"{out} is in use by another training")
        yield


def prepare_run_folder(out: Path, resume: bool, overwrite: bool, info: DistInfo) -> None:
    """Refuse to replace a finished run unless asked; remove what an interrupted
    checkpoint write left (``.last.pt.*.tmp.pt``). Called with the folder locked."""
    found = [name for name in RUN_FILES if (out / name).is_file()]
    if found and not resume and not overwrite:
        raise OverwriteError(
            f"{out} already holds a run ({', '.join(found)}): continue it with --resume "
            "(resume=True), train the new model into a new output folder, or replace the "
            "run with --overwrite (overwrite=True)"
        )
    if not info.is_main:
        return
    if found and overwrite and not resume:
        for name in found:
            (out / name).unlink()
        print(f"{out}: removed the earlier run's {', '.join(found)} (--overwrite)")
    written = (*RUN_FILES, SPLIT_FILE)
    partial = sorted(p for name in written for p in out.glob(f".{name}.*.tmp*"))
    for p in partial:
        p.unlink(missing_ok=True)
    if partial:
        names = ", ".join(p.name for p in partial)
        print(f"{out}: removed {len(partial)} partial file(s) of an interrupted write ({names})")


def planned_epochs(epochs: int | None, last: Path | None, show: bool = True) -> int | None:
    """``epochs``, or for a resume without them the run's own plan saved in ``last``
    (``last.pt``): a run planned from its time budget finishes that plan."""
    if epochs is not None or last is None:
        return epochs
    saved = (load_checkpoint(last).get("config") or {}).get("epochs")
    if saved is None:
        raise ResumeError(f"{last} does not say how many epochs its run planned; give epochs=")
    if show:
        print(f"epochs {int(saved)}: the plan of the run being resumed (saved in {last.name})")
    return int(saved)


def check_resume_settings(out: Path, kind: str, settings: Mapping[str, Any], epochs: int) -> None:
    """Refuse to resume ``out/last.pt`` if it holds another kind of model
    (:class:`cxrkit.errors.CheckpointError`) or other settings (:class:`ResumeError`).

    Called before :func:`keep_split` compares the split: a different seed, fold or
    validation fraction is then named as the cause, not the split it changes.
    :func:`cxrkit.fit.fit` checks again, with the optimizer's and scheduler's settings.
    """
    last = out / "last.pt"
    if not last.is_file():
        return
    saved = load_checkpoint(last)
    require_kind(saved, kind, last)
    refuse_other_settings(last, saved.get("config") or {}, settings, epochs)


def table_digest(table: pd.DataFrame) -> str:
    """A short fingerprint of an annotation table's content (images, classes, boxes).

    Saved in a run's config, so that ``--resume`` with a table whose boxes changed
    (the same file name, or another) is refused instead of training on other boxes.
    Row order and float noise below 0.001 px do not change it.
    """
    columns = [
        c for c in ("image_id", "class_id", "x_min", "y_min", "x_max", "y_max") if c in table
    ]
    rows = table[columns].copy()
    rows["image_id"] = rows["image_id"].astype(str)
    boxes = [c for c in columns if c.startswith(("x_", "y_"))]
    rows[boxes] = rows[boxes].astype(float).round(3)
    text = rows.sort_values(columns, ignore_index=True).to_csv(index=False)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# ------------------------------------------------------------- out-of-fold table
def write_out_of_fold_table(
    table: pd.DataFrame, out_csv: str | os.PathLike, valid_ids: Sequence[str]
) -> Path:
    """Write a fold run's out-of-fold table (``oof.csv``) atomically, after checking
    that it covers exactly the run's validation images.

    The rows come from the task: a detector's predictions (several rows per image,
    plus a No finding row), a classifier's ``image_id, p_abnormal, abnormal``.
    :func:`cxrkit.data.join_out_of_fold` later joins the tables of the K fold runs.

    Raises:
        DatasetError: an image of ``valid_ids`` has no row, or a row is of another image.
    """
    found = set(table["image_id"].astype(str))
    expected = {str(i) for i in valid_ids}
    if found != expected:
        missing, extra = sorted(expected - found), sorted(found - expected)
        raise DatasetError(
            f"out-of-fold table for {out_csv} does not match the validation images: "
            f"{len(missing)} without a row (e.g. {missing[:3]}), "
            f"{len(extra)} not validated here (e.g. {extra[:3]})"
        )
    write_csv_atomic(table, out_csv)
    return Path(out_csv)
