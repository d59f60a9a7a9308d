"""k-fold split, fold runs of the detector and the out-of-fold join (issue 9)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from cxrkit.data import check_fold, fold_split, join_out_of_fold, kfold_assign
from cxrkit.errors import FoldError, ResumeError
from cxrkit.labels import CLASS_NAMES, NO_FINDING_ID
from cxrkit.train import TrainConfig, train_from_folder

COLUMNS = ["image_id", "class_name", "class_id", "rad_id", "x_min", "y_min", "x_max", "y_max"]


def _table(n_images: int = 60, seed: int = 0) -> pd.DataFrame:
    """n_images images: a third normal, the others with 1-3 of 14 findings (rare ones too)."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_images):
        image_id = f"img{i:03d}"
        if i % 3 == 0:
            rows.append([image_id, "No finding", NO_FINDING_ID, "R1", *[np.nan] * 4])
            continue
        weights = np.linspace(1, 0.05, 14)  # class 13 much rarer than class 0
        for c in rng.choice(14, size=rng.integers(1, 4), replace=False, p=weights / weights.sum()):
            rows.append([image_id, CLASS_NAMES[c], int(c), "R1", 10.0, 10.0, 50.0, 50.0])
    return pd.DataFrame(rows, columns=COLUMNS)


def _classes_per_fold(table: pd.DataFrame, folds: pd.Series) -> pd.DataFrame:
    per_image = table.drop_duplicates(["image_id", "class_id"])
    per_image = per_image.assign(fold=per_image["image_id"].map(folds))
    return pd.crosstab(per_image["class_id"], per_image["fold"])


def test_every_image_is_in_exactly_one_fold_and_folds_are_even():
    table = _table()
    folds = kfold_assign(table, folds=5, seed=3)
    assert list(folds.index) == list(pd.unique(table["image_id"]))  # table order, each once
    assert set(folds) == set(range(5))
    sizes = folds.value_counts()
    assert sizes.max() - sizes.min() <= 3


def test_folds_are_stratified_per_class_and_deterministic():
    table = _table(90)
    folds = kfold_assign(table, folds=3, seed=7)
    counts = _classes_per_fold(table, folds)
    totals = counts.sum(axis=1)
    # every class spread within one image of its even share (iterative stratification)
    assert ((counts.sub(totals / 3, axis=0)).abs() <= 1.0 + 1e-9).all().all(), counts
    assert kfold_assign(table, folds=3, seed=7).equals(folds)
    assert not kfold_assign(table, folds=3, seed=8).equals(folds)


def test_fold_split_validates_one_fold_and_the_union_is_every_image():
    table = _table(40)
    folds = kfold_assign(table, 4, seed=1)
    valid_sets = []
    for f in range(4):
        train, valid = fold_split(table, 4, f, seed=1)
        assert set(valid) == set(folds.index[folds == f])
        assert not set(train) & set(valid) and len(train) + len(valid) == 40
        valid_sets.append(set(valid))
    assert set().union(*valid_sets) == set(folds.index)


@pytest.mark.parametrize(
    ("folds", "fold", "match"),
    [
        (5, 5, r"fold must be one of 0\.\.4"),
        (5, -1, r"fold must be one of 0\.\.4"),
        (1, 0, "folds must be a whole number >= 2"),
        (5, None, "give both"),
        (None, 2, "give both"),
    ],
)
def test_impossible_fold_settings_are_refused(folds, fold, match):
    with pytest.raises(FoldError, match=match):
        check_fold(folds, fold)
    with pytest.raises(FoldError, match=match):
        TrainConfig(folds=folds, fold=fold).resolved()


def test_more_folds_than_images_is_refused():
    with pytest.raises(FoldError, match="at least 5 images"):
        kfold_assign(_table(4), folds=5)


@pytest.mark.parametrize(("argv", "message"), [
    (["--folds", "3", "--fold", "3"], "argument --fold: must be one of 0..2, got 3"),
    (["--folds", "1", "--fold", "0"], "argument --folds: must be a whole number >= 2"),
    (["--folds", "3"], "--folds K and --fold F go together"),
    (["--fold", "-1", "--folds", "3"], "argument --fold: must be a whole number >= 0"),
])  # fmt: skip
def test_cli_refuses_a_fold_outside_the_folds_in_one_line(tmp_path, argv, message):
    cmd = [
        sys.executable,
        "-m",
        "cxrkit",
        "train",
        str(tmp_path),
        "t.csv",
        "--out",
        str(tmp_path / "r"),
    ]
    done = subprocess.run([*cmd, *argv], capture_output=True, text=True)
    assert done.returncode == 2
    assert message in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr


# ------------------------------------------------------------------ out-of-fold join
def _oof_tables(folds: pd.Series) -> list[pd.DataFrame]:
    """Per fold: two boxes and a No finding row per image (a detector's oof.csv)."""
    tables = []
    for f in sorted(set(folds)):
        ids = list(folds.index[folds == f])
        rows = [(i, c, 0.5, 0, 0, 1, 1) for i in ids for c in (3, NO_FINDING_ID)]
        tables.append(
            pd.DataFrame(
                rows, columns=["image_id", "class_id", "score", "x_min", "y_min", "x_max", "y_max"]
            )
        )
    return tables


def test_join_gives_each_training_image_exactly_one_out_of_fold_prediction():
    table = _table(50)
    folds = kfold_assign(table, 5, seed=2)
    joined = join_out_of_fold(_oof_tables(folds), image_ids=folds.index)
    nf = joined[joined["class_id"] == NO_FINDING_ID]
    assert nf["image_id"].value_counts().eq(1).all() and set(nf["image_id"]) == set(folds.index)
    assert (joined.groupby("image_id")["fold"].nunique() == 1).all()
    assert (
        joined.set_index("image_id")["fold"]
        .groupby(level=0)
        .first()
        .equals(folds.sort_index().rename("fold"))
    )


def test_join_refuses_an_image_in_two_folds_and_a_missing_one():
    folds = kfold_assign(_table(30), 3, seed=0)
    tables = _oof_tables(folds)
    doubled = [tables[0], pd.concat([tables[1], tables[0].head(2)]), tables[2]]
    with pytest.raises(FoldError, match=r"1 image\(s\) have more than one out-of-fold"):
        join_out_of_fold(doubled)
    with pytest.raises(FoldError, match=r"have no out-of-fold prediction"):
        join_out_of_fold(tables[:2], image_ids=folds.index)
    probs = pd.DataFrame({"image_id": ["a", "a"], "p_abnormal": [0.1, 0.2]})
    with pytest.raises(FoldError, match="more than once"):
        join_out_of_fold([probs])
    with pytest.raises(FoldError, match="not training images"):
        join_out_of_fold(tables, image_ids=list(folds.index)[1:])


# --------------------------------------------------------------------- fold runs
@pytest.mark.slow
def test_fold_runs_mark_their_fold_valid_write_oof_and_resume_checks_the_fold(
    sample_data, preprocessed, tmp_path
):
    from cxrkit.annotations import fuse_boxes, load_annotations, load_meta

    meta = load_meta(preprocessed / "train_meta.csv")
    fused = fuse_boxes(load_annotations(sample_data / "train.csv"), meta)
    cfg = TrainConfig(epochs=1, size=64, batch_size=4, seed=1, folds=2)
    tables = []
    for f in range(2):
        run = tmp_path / f"fold{f}"
        train_from_folder(preprocessed, sample_data / "train.csv", run, cfg, fold=f)
        split = pd.read_csv(run / "split.csv", dtype=str)
        _, valid = fold_split(fused, 2, f, seed=1)
        assert set(split.loc[split["subset"] == "valid", "image_id"]) == set(valid)
        oof = pd.read_csv(run / "oof.csv", dtype={"image_id": str})
        assert set(oof["image_id"]) == set(valid)
        tables.append(oof)
    join_out_of_fold(tables, image_ids=meta["image_id"])
    with pytest.raises(ResumeError, match="fold: the run used 1, this call asks for 0"):
        train_from_folder(preprocessed, sample_data / "train.csv", run, cfg, fold=0, resume=True)
