"""Run folders (cxrkit.runs): the inputs, split.csv, oof.csv and the resume checks."""

from __future__ import annotations

import pandas as pd
import pytest

from cxrkit.checkpoints import CheckpointError, save_checkpoint
from cxrkit.classifier import build_classifier
from cxrkit.errors import DataNotFoundError, DatasetError, ResumeError
from cxrkit.runs import (
    check_resume_settings,
    keep_split,
    read_folder,
    write_out_of_fold_table,
)


def test_a_folder_without_train_meta_is_data_not_found(tmp_path):
    with pytest.raises(DataNotFoundError, match="train_meta.csv not found.*preprocess"):
        read_folder(tmp_path)
    assert issubclass(DataNotFoundError, FileNotFoundError)  # older `except` clauses still work


def test_cxrkit_train_still_exports_the_helpers_it_used_to_define():
    import cxrkit.runs
    import cxrkit.train

    for name in ("read_folder", "read_training_table", "run_split", "keep_split"):
        assert getattr(cxrkit.train, name) is getattr(cxrkit.runs, name)


def test_a_resume_refuses_another_split(tmp_path):
    path = tmp_path / "split.csv"
    keep_split(path, ["a", "b"], ["c"], resume=False, write=True)
    (tmp_path / "last.pt").write_bytes(b"")  # a run to resume
    keep_split(path, ["b", "a"], ["c"], resume=True, write=True)  # same split, other order
    with pytest.raises(ResumeError, match=r"split differs .* \(4 row\(s\) differ\)"):
        keep_split(path, ["a", "c"], ["b"], resume=True, write=True)


def test_a_resume_refuses_another_kind_of_model_and_other_settings(tmp_path):
    config = {"lr": 0.001, "seed": 3, "epochs": 2}
    save_checkpoint(tmp_path / "last.pt", build_classifier("cls_small"), epoch=1, config=config)
    check_resume_settings(tmp_path, "classifier", {**config, "num_workers": 4}, 2)
    with pytest.raises(CheckpointError, match="holds a normal/abnormal classifier"):
        check_resume_settings(tmp_path, "detector", config, 2)
    with pytest.raises(ResumeError, match="seed: the run used 3, this call asks for 4"):
        check_resume_settings(tmp_path, "classifier", {**config, "seed": 4}, 2)
    check_resume_settings(tmp_path / "new", "detector", config, 2)  # nothing to resume yet


def test_out_of_fold_table_covers_exactly_the_validation_images(tmp_path):
    table = pd.DataFrame({"image_id": ["a", "b"], "p_abnormal": [0.2, 0.9], "abnormal": [0, 1]})
    path = write_out_of_fold_table(table, tmp_path / "oof.csv", ["a", "b"])
    assert pd.read_csv(path).equals(table)
    with pytest.raises(DatasetError, match=r"1 without a row \(e.g. \['c'\]\)"):
        write_out_of_fold_table(table, tmp_path / "oof2.csv", ["a", "b", "c"])
    assert not (tmp_path / "oof2.csv").exists()


def test_table_digest_sees_boxes_not_row_order_or_float_noise():
    from cxrkit.runs import table_digest

    table = pd.DataFrame(
        {"image_id": ["a", "b"], "class_id": [3, 14], "x_min": [1.0, None],
         "y_min": [2.0, None], "x_max": [30.0, None], "y_max": [40.0, None]}
    )  # fmt: skip
    assert table_digest(table) == table_digest(table.iloc[::-1])
    assert table_digest(table) == table_digest(table.assign(x_max=[30.0000001, None]))
    assert table_digest(table) != table_digest(table.assign(x_max=[31.0, None]))
