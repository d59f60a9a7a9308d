"""The normal/abnormal classifier (issue 9): models, targets, AUC, kinds of checkpoints, runs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import run_main

from cxrkit.checkpoints import CheckpointError, load_checkpoint, save_checkpoint
from cxrkit.classifier import (
    ClassifierDataset,
    abnormal_labels,
    build_classifier,
    classifier_from_checkpoint,
    classify,
    pos_weight,
    roc_auc,
    train_classifier,
)
from cxrkit.errors import ResumeError, WeightsError
from cxrkit.labels import NO_FINDING_ID
from cxrkit.metrics import calibration_table, roc_curve
from cxrkit.predict import predict_to_submission
from cxrkit.registry import CLASSIFIER_NAMES


@pytest.mark.parametrize("name", CLASSIFIER_NAMES)
def test_every_classifier_gives_one_logit_per_image(name):
    torch.manual_seed(0)
    model = build_classifier(name).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 3, 64, 64))
    assert tuple(out.shape) == (2, 1) and torch.isfinite(out).all()
    assert model.cxrkit_config["kind"] == "classifier"


def test_small_model_is_small_and_has_no_published_weights():
    model = build_classifier("cls_small")
    assert sum(p.numel() for p in model.parameters()) < 500_000
    with pytest.raises(WeightsError, match="no published weights"):
        build_classifier("cls_small", weights="DEFAULT")
    with pytest.raises(ValueError, match="unknown model 'resnet9'.*cls_small"):
        build_classifier("resnet9")


def test_local_weights_load_and_an_imagenet_head_is_replaced(tmp_path):
    import torchvision

    torch.manual_seed(1)
    imagenet_like = torchvision.models.resnet18(weights=None)  # 1000 outputs
    torch.save(imagenet_like.state_dict(), tmp_path / "r18.pth")
    model = build_classifier("resnet18", weights=tmp_path / "r18.pth")
    assert torch.equal(model.conv1.weight, imagenet_like.conv1.weight)
    assert model.fc.out_features == 1
    small = build_classifier("cls_small")
    torch.save(small.state_dict(), tmp_path / "small.pth")
    again = build_classifier("cls_small", weights=str(tmp_path / "small.pth"))
    assert all(
        torch.equal(a, b)
        for a, b in zip(small.state_dict().values(), again.state_dict().values(), strict=True)
    )


def test_abnormal_means_any_finding_and_pos_weight_balances_the_classes():
    table = pd.DataFrame(
        {
            "image_id": ["a", "a", "b", "c", "c", "d"],
            "class_id": [3, NO_FINDING_ID, NO_FINDING_ID, 0, 8, NO_FINDING_ID],
        }
    )
    labels = abnormal_labels(table)
    assert labels.to_dict() == {"a": 1.0, "b": 0.0, "c": 1.0, "d": 0.0}
    assert pos_weight([1, 0, 0, 0]) == 3.0
    assert pos_weight([1, 1]) == 1.0  # no negatives: nothing to balance
    y = np.array([1, 0, 0, 0, 1, 0])
    w = pos_weight(y)
    assert w * y.sum() == (1 - y).sum()  # equal total weight per class


def test_roc_auc_matches_the_pairwise_definition():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 50)
    s = np.round(rng.random(50), 1)  # ties
    pairs = [(1.0 if a > b else 0.5 if a == b else 0.0) for a in s[y == 1] for b in s[y == 0]]
    assert roc_auc(y, s) == pytest.approx(np.mean(pairs))
    assert roc_auc([1, 1, 0, 0], [0.9, 0.8, 0.1, 0.2]) == 1.0
    assert np.isnan(roc_auc([1, 1], [0.2, 0.3]))


def test_roc_curve_steps_through_each_threshold_and_its_area_is_the_auc():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 60)
    s = np.round(rng.random(60), 1)  # ties: each distinct score is one point
    fpr, tpr, thresholds = roc_curve(y, s)
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0.0, 0.0, 1.0, 1.0)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    for f, t, thr in zip(fpr[1:], tpr[1:], thresholds[1:], strict=True):
        flagged = s >= thr  # the definition of a point, counted directly
        assert t == pytest.approx(flagged[y == 1].mean())
        assert f == pytest.approx(flagged[y == 0].mean())
    assert len(thresholds) == len(np.unique(s)) + 1
    assert np.trapezoid(tpr, fpr) == pytest.approx(roc_auc(y, s))  # ties: diagonal steps
    with pytest.raises(ValueError, match="both classes"):
        roc_curve([1, 1], [0.3, 0.4])


def test_calibration_table_bins_by_predicted_probability():
    y = [0, 0, 1, 0, 1, 1, 1]
    p = [0.05, 0.15, 0.15, 0.55, 0.65, 0.95, 1.0]
    table = calibration_table(y, p, bins=2)
    assert table["images"].tolist() == [3, 4]  # p = 1.0 lands in the last bin
    assert table["share_abnormal"].tolist() == pytest.approx([1 / 3, 3 / 4])
    assert table["mean_p_abnormal"].tolist() == pytest.approx([0.35 / 3, 3.15 / 4])
    assert table[["bin_low", "bin_high"]].to_numpy().tolist() == [[0.0, 0.5], [0.5, 1.0]]
    assert calibration_table(y, p, bins=10)["images"].sum() == len(p)  # empty bins dropped
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        calibration_table([1], [1.5])


def test_dataset_resizes_normalises_and_flips(tmp_path):
    import cv2

    image = np.zeros((40, 40), np.uint8)
    image[:, :10] = 255
    cv2.imwrite(str(tmp_path / "x.png"), image)
    ds = ClassifierDataset(tmp_path, ["x"], pd.Series({"x": 1.0}), size=32)
    x, y, image_id = ds[0]
    assert tuple(x.shape) == (3, 32, 32) and float(y) == 1.0 and image_id == "x"
    assert x[0, :, 0].mean() > x[0, :, -1].mean()
    flipped = ClassifierDataset(tmp_path, ["x"], size=32, augment=True)
    sides = set()
    for seed in range(8):
        torch.manual_seed(seed)
        fx, _, _ = flipped[0]
        sides.add(bool(fx[0, :, 0].mean() > fx[0, :, -1].mean()))
    assert sides == {True, False}


def _classifier_ckpt(path):
    model = build_classifier("cls_small")
    save_checkpoint(path, model, epoch=1, config={"size": 64})
    return path


def test_checkpoints_record_their_kind_and_the_wrong_kind_is_refused(tmp_path):
    ckpt = _classifier_ckpt(tmp_path / "cls.pt")
    assert load_checkpoint(ckpt)["kind"] == "classifier"
    assert classifier_from_checkpoint(ckpt).cxrkit_size == 64
    with pytest.raises(CheckpointError, match="holds a normal/abnormal classifier.*a detector"):
        predict_to_submission(ckpt, tmp_path, tmp_path / "sub.csv")

    from helpers import small_model

    detector = tmp_path / "det.pt"
    save_checkpoint(detector, small_model(64), epoch=1)
    assert load_checkpoint(detector)["kind"] == "detector"
    old = torch.load(detector, weights_only=True)
    del old["kind"]  # a file written before classifiers existed
    torch.save(old, tmp_path / "old.pt")
    assert load_checkpoint(tmp_path / "old.pt").get("kind") is None
    for path in (detector, tmp_path / "old.pt"):
        with pytest.raises(CheckpointError, match="holds a detector.*classifier"):
            classify([path], tmp_path)


def test_classify_cli_refuses_a_detector_in_one_line(tmp_path):
    from helpers import small_model

    save_checkpoint(tmp_path / "det.pt", small_model(64), epoch=1)
    done = run_main("classify", tmp_path / "det.pt", tmp_path, "--out", tmp_path / "p.csv")
    assert done.returncode == 2, done.stderr
    assert "holds a detector" in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "p.csv").exists()


def test_train_classifier_help_names_the_small_cpu_model():
    done = subprocess.run(
        [sys.executable, "-m", "cxrkit", "train-classifier", "--help"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0
    text = " ".join(done.stdout.split())
    assert "cls_small" in text and "CPU" in text and "--folds K" in text


# --------------------------------------------------------------------- training runs
@pytest.mark.slow
def test_classifier_run_resumes_exactly_classifies_and_writes_oof(
    sample_data, preprocessed, tmp_path, monkeypatch
):
    import cxrkit.fit

    csv = sample_data / "train.csv"
    settings = {"epochs": 2, "size": 64, "batch_size": 8, "seed": 3, "folds": 2, "fold": 1}
    whole = train_classifier(preprocessed, csv, tmp_path / "whole", **settings)
    assert whole.epochs_done == 2 and len(whole.history) == 2
    assert load_checkpoint(tmp_path / "whole" / "last.pt")["kind"] == "classifier"

    real_epoch = cxrkit.fit.train_one_epoch  # the classifier trains through fit

    def interrupted(*args, **kwargs):
        if args[4] == 2:  # the epoch number: stop the run in its second epoch
            raise KeyboardInterrupt
        return real_epoch(*args, **kwargs)

    monkeypatch.setattr(cxrkit.fit, "train_one_epoch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train_classifier(preprocessed, csv, tmp_path / "cut", **settings)
    monkeypatch.setattr(cxrkit.fit, "train_one_epoch", real_epoch)
    resumed = train_classifier(preprocessed, csv, tmp_path / "cut", resume=True, **settings)
    assert resumed.epochs_done == 2
    a = torch.load(tmp_path / "whole" / "last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "cut" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)  # exact resume on CPU
    with pytest.raises(ResumeError, match="fold: the run used 1, this call asks for 0"):
        train_classifier(
            preprocessed, csv, tmp_path / "whole", resume=True, **{**settings, "fold": 0}
        )
    with pytest.raises(ResumeError, match="cosine schedule was planned for 2 epochs"):
        train_classifier(
            preprocessed, csv, tmp_path / "whole", resume=True, **{**settings, "epochs": 3}
        )

    split = pd.read_csv(tmp_path / "whole" / "split.csv", dtype=str)
    oof = pd.read_csv(tmp_path / "whole" / "oof.csv", dtype={"image_id": str})
    assert set(oof["image_id"]) == set(split.loc[split["subset"] == "valid", "image_id"])
    assert oof["p_abnormal"].between(0, 1).all()

    out = tmp_path / "probs.csv"
    best = tmp_path / "whole" / "best.pt"
    one = classify([best], preprocessed, out)
    two = classify([best, tmp_path / "cut" / "best.pt"], preprocessed)
    assert list(pd.read_csv(out).columns) == ["image_id", "p_abnormal"]
    assert np.allclose(one["p_abnormal"], two["p_abnormal"])  # the mean of equal models
    test_ids = pd.read_csv(preprocessed / "test_meta.csv", dtype=str)["image_id"]
    assert list(one["image_id"]) == list(test_ids)


# ------------------------------------------------------------- combination (postprocess)
def _preds_and_probs():
    cols = ["image_id", "class_id", "score", "x_min", "y_min", "x_max", "y_max"]
    preds = pd.DataFrame(
        [
            ("n", 3, 0.6, 10, 10, 50, 50),  # p 0.05: normal
            ("m", 0, 0.8, 10, 10, 50, 50),  # p 0.5: middle band
            ("m", 3, 0.3, 20, 20, 60, 60),
            ("m", NO_FINDING_ID, 0.9, 0, 0, 1, 1),  # an earlier class-14 row: replaced
            ("a", 8, 0.7, 5, 5, 9, 9),  # p 0.95: abnormal
        ],
        columns=cols,
    )
    probs = pd.DataFrame({"image_id": ["n", "m", "a", "e"], "p_abnormal": [0.05, 0.5, 0.95, 0.2]})
    return preds, probs


def _no_finding(table):
    rows = table[table["class_id"] == NO_FINDING_ID]
    assert rows["image_id"].is_unique
    return rows.set_index("image_id")["score"].to_dict()


def test_bands_drop_boxes_of_normal_images_and_append_one_minus_p_in_between():
    from cxrkit.postprocess import apply_classifier

    preds, probs = _preds_and_probs()
    out = apply_classifier(preds, probs, low=0.1, high=0.9)
    findings = out[out["class_id"] != NO_FINDING_ID]
    assert sorted(findings["image_id"]) == ["a", "m", "m"]  # n's box dropped
    assert _no_finding(out) == pytest.approx({"n": 1.0, "m": 0.5, "a": 1 - 0.7, "e": 0.8})
    assert set(out["image_id"]) == {"n", "m", "a", "e"}


def test_bands_at_zero_give_the_detector_alone_and_soft_scales_scores():
    from cxrkit.postprocess import apply_classifier
    from cxrkit.submission import add_no_finding

    preds, probs = _preds_and_probs()
    ids = list(probs["image_id"])
    alone = add_no_finding(preds, ids)
    same = apply_classifier(preds, probs, 0.0, 0.0)
    key = ["image_id", "class_id", "score"]
    assert (
        same.sort_values(key)
        .reset_index(drop=True)[key]
        .equals(alone.sort_values(key).reset_index(drop=True)[key].astype({"class_id": "int64"}))
    )
    soft = apply_classifier(preds, probs, mode="soft")
    assert soft.loc[soft["image_id"].eq("m") & soft["class_id"].eq(0), "score"].item() == 0.4
    assert _no_finding(soft) == pytest.approx({"n": 0.95, "m": 0.5, "a": 0.05, "e": 0.8})


def test_combination_refuses_bad_bands_and_missing_probabilities():
    from cxrkit.errors import SubmissionError
    from cxrkit.postprocess import apply_classifier

    preds, probs = _preds_and_probs()
    with pytest.raises(SubmissionError, match="low <= high.*low=0.6 and high=0.3"):
        apply_classifier(preds, probs, low=0.6, high=0.3)
    with pytest.raises(SubmissionError, match=r"no p_abnormal for 1 image\(s\).*\['a'\]"):
        apply_classifier(preds, probs[probs["image_id"] != "a"])
    with pytest.raises(SubmissionError, match=r"no p_abnormal for 1 image\(s\).*\['z'\]"):
        apply_classifier(preds, probs, image_ids=["n", "m", "a", "z"])
    with pytest.raises(SubmissionError, match="more than once"):
        apply_classifier(preds, pd.concat([probs, probs.head(1)]))


def test_tuning_finds_bands_that_remove_false_positives_on_normal_images():
    from cxrkit.metrics import bootstrap_map, vinbigdata_map
    from cxrkit.postprocess import tune_bands

    rng = np.random.default_rng(0)
    truth_rows, pred_rows, probs = [], [], {}
    for i in range(30):
        image_id = f"i{i}"
        abnormal = i % 2 == 0
        if abnormal:
            truth_rows.append((image_id, 3, 10.0, 10.0, 50.0, 50.0))
            pred_rows.append((image_id, 3, 0.5 + 0.4 * rng.random(), 11, 11, 50, 50))
        else:
            truth_rows.append((image_id, NO_FINDING_ID, np.nan, np.nan, np.nan, np.nan))
            pred_rows.append((image_id, 3, 0.6 + 0.4 * rng.random(), 100, 100, 150, 150))  # a FP
        probs[image_id] = 0.7 + 0.3 * rng.random() if abnormal else 0.3 * rng.random()
    truth = pd.DataFrame(
        truth_rows, columns=["image_id", "class_id", "x_min", "y_min", "x_max", "y_max"]
    )
    preds = pd.DataFrame(
        pred_rows, columns=["image_id", "class_id", "score", "x_min", "y_min", "x_max", "y_max"]
    )
    choice = tune_bands(preds, pd.Series(probs), truth, n_boot=20)
    assert 0.3 <= choice.low <= 0.7 and choice.map == pytest.approx(1.0)
    assert choice.baseline_map < 0.9 and choice.gain_interval[0] > 0
    assert choice.interval[0] <= choice.map <= choice.interval[1] + 1e-9
    assert len(choice.grid) == sum(1 for a in range(13) for b in range(13) if a <= b)

    boot = bootstrap_map({"x": preds}, truth, n_boot=5, seed=1)
    assert boot.shape == (5, 1) and boot["x"].between(0, 1).all()
    truth_only = truth.assign(score=1.0)
    from cxrkit.submission import add_no_finding

    perfect = add_no_finding(
        truth_only[truth_only["class_id"] != NO_FINDING_ID].fillna(0), truth["image_id"]
    )
    assert vinbigdata_map(perfect, truth).map == 1.0
    assert (bootstrap_map({"p": perfect}, truth, n_boot=5)["p"] == 1.0).all()


# ----------------------------------------------------------------------- ensembles
def test_fuse_tables_keeps_agreed_boxes_and_halves_a_lone_one():
    from cxrkit.ensemble import fuse_tables

    cols = ["image_id", "class_id", "score", "x_min", "y_min", "x_max", "y_max"]
    a = pd.DataFrame(
        [("x", 3, 0.8, 100, 100, 300, 300), ("x", 0, 0.6, 10, 10, 50, 50)], columns=cols
    )
    b = pd.DataFrame([("x", 3, 0.6, 110, 100, 310, 300)], columns=cols)
    meta = pd.DataFrame({"image_id": ["x", "y"], "dim0": [1000, 800], "dim1": [800, 800]})
    fused = fuse_tables([a, b], meta, ["x", "y"]).sort_values("class_id", ignore_index=True)
    assert list(fused["class_id"]) == [0, 3] and set(fused["image_id"]) == {"x"}
    assert fused["score"].tolist() == pytest.approx([0.3, 0.7])  # lone box: half its score
    assert fused.loc[1, "x_min"] == pytest.approx((100 * 0.8 + 110 * 0.6) / 1.4, abs=1e-3)
    weighted = fuse_tables([a, b], meta, ["x", "y"], weights=[3, 1])
    assert weighted.loc[weighted["class_id"] == 0, "score"].item() == pytest.approx(0.45)
    with pytest.raises(ValueError, match="one per model"):
        fuse_tables([a, b], meta, ["x"], weights=[1])


def test_predict_refuses_a_classifier_as_detector_and_bad_bands_in_one_line(tmp_path):
    cls = _classifier_ckpt(tmp_path / "cls.pt")
    out = ["--out", str(tmp_path / "sub.csv")]
    for argv, message in [
        ([str(cls), str(tmp_path)], "holds a normal/abnormal classifier"),
        ([str(cls), str(cls), str(tmp_path)], "holds a normal/abnormal classifier"),
        (
            [str(cls), str(tmp_path), "--low", "0.6", "--high", "0.3"],
            "--low 0.6 is above --high 0.3",
        ),
        ([str(cls), str(cls), str(tmp_path), "--wbf-weights", "1"], "one per checkpoint"),
        ([str(cls), str(tmp_path), "--low", "1.5"], "argument --low: must be between 0 and 1"),
    ]:
        done = run_main("predict", *argv, *out)
        assert done.returncode == 2, (argv, done.stderr)
        assert message in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert not (tmp_path / "sub.csv").exists()


@pytest.mark.slow
def test_ensemble_with_tta_and_classifier_writes_a_valid_submission(preprocessed, tmp_path):
    from helpers import small_model

    from cxrkit.predict import predict_ensemble
    from cxrkit.submission import parse_submission, validate_submission

    detectors = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = small_model(64)
        path = tmp_path / f"det{seed}.pt"
        save_checkpoint(path, model, epoch=1, config={"size": 64})
        detectors.append(path)
    cls = _classifier_ckpt(tmp_path / "cls.pt")
    ids = pd.read_csv(preprocessed / "test_meta.csv", dtype=str)["image_id"]
    meta = pd.read_csv(preprocessed / "test_meta.csv", dtype={"image_id": str})

    single = predict_to_submission(detectors[0], preprocessed, tmp_path / "single.csv")
    again = subprocess.run(
        [sys.executable, "-m", "cxrkit", "predict", str(detectors[0]), str(preprocessed),
         "--out", str(tmp_path / "cli.csv")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    # the same rows; numbers equal up to float noise (an earlier test in this process may
    # have changed torch's thread count, which moves the last printed digits)
    by_cli, by_library = pd.read_csv(tmp_path / "cli.csv"), pd.read_csv(single)
    assert by_cli["image_id"].tolist() == by_library["image_id"].tolist()
    for a, b in zip(by_cli["PredictionString"], by_library["PredictionString"], strict=True):
        assert np.allclose(np.array(a.split(), float), np.array(b.split(), float), atol=1e-3)

    sub = predict_ensemble(
        detectors, preprocessed, tmp_path / "ens.csv", tta=True, classifiers=[cls],
        low=0.2, high=0.8, probs_csv=tmp_path / "probs.csv",
    )  # fmt: skip
    table = validate_submission(sub, image_ids=ids, meta=meta)
    assert list(table["image_id"]) == list(ids)
    probs = pd.read_csv(tmp_path / "probs.csv", dtype={"image_id": str}).set_index("image_id")
    parsed = parse_submission(sub)
    nf = parsed[parsed["class_id"] == NO_FINDING_ID].set_index("image_id")["score"]
    p = probs["p_abnormal"].reindex(nf.index)
    expected = np.where(p < 0.2, 1.0, np.where(p < 0.8, 1 - p, nf))
    assert np.allclose(nf, expected, atol=1e-6)
    boxes = parsed[parsed["class_id"] != NO_FINDING_ID]
    assert not set(boxes["image_id"]) & set(p.index[p < 0.2])  # likely-normal: no boxes


def test_train_classifier_refuses_torchrun_in_one_line(tmp_path, monkeypatch):
    for name, value in {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0"}.items():
        monkeypatch.setenv(name, value)  # as torchrun sets them
    done = run_main("train-classifier", tmp_path, "t.csv", "--out", tmp_path / "run")
    assert done.returncode == 2 and "under torchrun" in done.stderr, done.stderr
    assert not (tmp_path / "run").exists()


# ------------------------------------------- one training stack (fit): stops, limits, files
FAST = {"epochs": 1, "size": 64, "batch_size": 8, "seed": 3}


def test_legacy_classifier_checkpoint_still_classifies(tmp_path):
    """A best.pt written by the previous release (format 2, before fit trained classifiers)."""
    import cv2

    legacy = Path(__file__).parent / "data" / "legacy" / "classifier_v2.pt"
    model = classifier_from_checkpoint(legacy)
    assert model.cxrkit_size == 32  # its config's size
    assert load_checkpoint(legacy)["best_auc"] == 0.5
    (tmp_path / "test").mkdir()
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        cv2.imwrite(
            str(tmp_path / "test" / f"{name}.png"), rng.integers(0, 255, (40, 40), np.uint8)
        )
    pd.DataFrame({"image_id": ["a", "b"], "dim0": [40, 40], "dim1": [40, 40]}).to_csv(
        tmp_path / "test_meta.csv", index=False
    )
    table = classify([legacy], tmp_path)
    assert table["image_id"].tolist() == ["a", "b"] and table["p_abnormal"].between(0, 1).all()
    x = ClassifierDataset(tmp_path / "test", ["a"], size=32)[0][0]
    with torch.no_grad():
        direct = torch.sigmoid(model.eval()(x[None])).item()
    assert table["p_abnormal"].iloc[0] == pytest.approx(direct, abs=1e-6)


def test_classifier_stops_on_a_non_finite_loss(sample_data, preprocessed, tmp_path):
    from cxrkit.errors import NonFiniteLossError

    run = tmp_path / "run"
    with pytest.raises(NonFiniteLossError, match="Lower the learning rate"):
        train_classifier(preprocessed, sample_data / "train.csv", run, **{**FAST, "epochs": 5},
                         lr=1e6)  # fmt: skip
    for name in ("best.pt", "last.pt"):  # an earlier epoch's file, if any, is finite
        if (run / name).is_file():
            load_checkpoint(run / name)  # a CheckpointError if a weight is NaN or infinite


def test_train_classifier_cli_reports_a_non_finite_loss_in_one_line(
    sample_data, preprocessed, tmp_path
):
    done = run_main(
        "train-classifier", preprocessed, sample_data / "train.csv", "--out", tmp_path / "run",
        "--lr", "1e6", "--epochs", "5", "--size", "64", "--batch-size", "8",
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Lower the learning rate" in lines[0], lines


def test_classifier_honours_max_minutes(sample_data, preprocessed, tmp_path, monkeypatch):
    """fit's clock says each epoch takes 2 minutes: a 3-minute budget allows one."""
    import types

    import cxrkit.fit

    clock = iter(range(0, 10_000, 60))  # each reading one minute later
    monkeypatch.setattr(cxrkit.fit, "time", types.SimpleNamespace(monotonic=lambda: next(clock)))
    result = train_classifier(
        preprocessed, sample_data / "train.csv", tmp_path / "run", **{**FAST, "epochs": 3},
        max_minutes=3,
    )  # fmt: skip
    assert result.epochs_done == 1 and result.stopped_early
    assert "stopped by the time limit" in str(result) and "best validation AUC" in str(result)
    assert pd.read_csv(tmp_path / "run" / "history.csv")["epoch"].tolist() == [1]


def test_classifier_resume_with_another_rate_is_refused(sample_data, preprocessed, tmp_path):
    csv, run = sample_data / "train.csv", tmp_path / "run"
    first = train_classifier(preprocessed, csv, run, **FAST)
    assert first.best_auc == first.best_score and first.best_epoch == 1
    best = load_checkpoint(run / "best.pt")
    assert best["kind"] == "classifier" and best["config"]["size"] == 64
    assert {"best_auc", "best_epoch"} <= set(best) and "best_map" not in best
    assert list(first.history.columns) == ["epoch", "loss", "lr", "val_auc", "seconds"]
    with pytest.raises(ResumeError) as info:
        train_classifier(preprocessed, csv, run, resume=True, **FAST, lr=1e-2, max_grad_norm=1.0)
    assert "lr: the run used 0.001, this call asks for 0.01" in str(info.value)
    assert "max_grad_norm: the run used None, this call asks for 1.0" in str(info.value)
    assert train_classifier(preprocessed, csv, run, resume=True, **FAST).epochs_done == 1


def test_a_quiet_run_prints_nothing_and_logs_in_its_folder(
    sample_data, preprocessed, tmp_path, capsys
):
    run = tmp_path / "run"
    result = train_classifier(preprocessed, sample_data / "train.csv", run, **FAST, verbose=False)
    assert capsys.readouterr().out == ""
    log = (run / "train.log").read_text()
    assert "training classifier" in log and "epoch 1/1 loss" in log
    assert result.epochs_done == 1


def test_classify_refuses_a_classifier_whose_outputs_are_nan(tmp_path):
    """Finite weights, NaN outputs (a BatchNorm variance below 0): refused naming the
    classifier, never a CSV with an empty p_abnormal column."""
    import cv2

    model = build_classifier("cls_small")
    model[1].running_var.fill_(-1.0)  # finite, but sqrt(var + eps) is NaN
    ckpt = save_checkpoint(tmp_path / "nan.pt", model, epoch=1, config={"size": 32})
    (tmp_path / "test").mkdir()
    for image_id in ("a", "b"):
        cv2.imwrite(str(tmp_path / "test" / f"{image_id}.png"), np.full((32, 32), 128, np.uint8))
    (tmp_path / "test_meta.csv").write_text("image_id,dim0,dim1\na,64,64\nb,64,64\n")
    out = tmp_path / "p.csv"
    with pytest.raises(CheckpointError, match=r"nan.pt gives p_abnormal NaN for 2 of 2 images"):
        classify([ckpt], tmp_path, out)
    assert not out.exists()


def test_the_predict_pipeline_reads_each_checkpoint_once(tmp_path, monkeypatch):
    """Two detectors and a classifier: three torch.load calls, one per file."""
    import cv2
    from helpers import small_model

    import cxrkit.checkpoints
    from cxrkit.predict import predict_ensemble

    detectors = []
    for name in ("d1.pt", "d2.pt"):
        detectors.append(save_checkpoint(tmp_path / name, small_model(64), epoch=1))
    cls = save_checkpoint(tmp_path / "c.pt", build_classifier("cls_small"), epoch=1,
                          config={"size": 32})  # fmt: skip
    (tmp_path / "test").mkdir()
    for image_id in ("a", "b"):
        cv2.imwrite(str(tmp_path / "test" / f"{image_id}.png"), np.full((64, 64), 90, np.uint8))
    (tmp_path / "test_meta.csv").write_text("image_id,dim0,dim1\na,128,128\nb,128,128\n")
    reads: list[str] = []
    real_load = torch.load

    def counting_load(f, *args, **kwargs):
        reads.append(Path(getattr(f, "name", f)).name)
        return real_load(f, *args, **kwargs)

    monkeypatch.setattr(cxrkit.checkpoints.torch, "load", counting_load)
    out = predict_ensemble(detectors, tmp_path, tmp_path / "sub.csv", classifiers=[cls])
    assert out.is_file()
    assert sorted(reads) == ["c.pt", "d1.pt", "d2.pt"], reads
