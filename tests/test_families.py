"""Detectors of several families (issue: one-stage detectors, fused out of fold).

Each small family (Faster R-CNN, RetinaNet, FCOS on cxr_small's backbone) trains,
resumes bit for bit, round-trips its checkpoint (which names its family) and
predicts the same submission through the library and the command line; the
full-size one-stage models take a local COCO file; a mixed-family ensemble equals
ensemble-boxes run by hand on the single models' tables; the fusion tuned out of
fold is saved, reused by ``predict --fusion`` and refused for other checkpoints.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from ensemble_boxes import weighted_boxes_fusion
from helpers import crash_in_epoch, one_line_error, run_main

import cxrkit.fit
from cxrkit.annotations import load_meta
from cxrkit.checkpoints import classes_in_state, load_checkpoint
from cxrkit.ensemble import FusionSettings, fuse_tables, tune_fusion, weight_grid
from cxrkit.errors import ConfigError, FoldError
from cxrkit.formats import BOX_COLUMNS
from cxrkit.labels import NO_FINDING_ID
from cxrkit.models import build_model, model_from_checkpoint, to_pretrained_layout
from cxrkit.predict import (
    load_detectors,
    predict_ensemble,
    predict_split,
    tune_fusion_from_runs,
)
from cxrkit.registry import get_spec, model_names
from cxrkit.submission import parse_submission
from cxrkit.train import train_from_folder

SMALL = ("cxr_small", "retina_small", "fcos_small")
SETTINGS = {
    "size": 128,
    "epochs": 2,
    "batch_size": 4,
    "seed": 7,
    "repeat_threshold": None,
    "warmup_iters": 2,
}


@pytest.fixture(scope="module")
def runs(sample_data, preprocessed, tmp_path_factory):
    """One short run of each small family on the tiny sample, same seed (same split)."""
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("families")
    return {
        name: train_from_folder(
            preprocessed, sample_data / "train.csv", root / name, model_name=name, **SETTINGS
        ).out_dir
        for name in SMALL
    }


def test_every_detector_family_is_registered_with_a_one_stage_model_in_two_sizes():
    families = {get_spec(n).family for n in model_names("detector")}
    assert {"faster_rcnn", "retinanet", "fcos"} <= families
    for family in ("retinanet", "fcos"):
        specs = [get_spec(n) for n in model_names("detector") if get_spec(n).family == family]
        assert {s.pretrained for s in specs} == {None, "COCO"}, family  # small + full size


@pytest.mark.parametrize("name", SMALL)
def test_a_small_model_of_each_family_trains_and_its_checkpoint_says_its_family(runs, name):
    ckpt = load_checkpoint(runs[name] / "best.pt")
    assert ckpt["model_name"] == name
    assert ckpt["model_config"]["family"] == get_spec(name).family
    assert classes_in_state(ckpt["model"], name) == 15
    history = pd.read_csv(runs[name] / "history.csv")
    assert np.isfinite(history["loss"]).all() and len(history) == SETTINGS["epochs"]
    # rebuilt from the file alone, the model gives the saved weights back
    model = model_from_checkpoint(runs[name] / "best.pt")
    for key, value in model.state_dict().items():
        assert torch.equal(value, ckpt["model"][key]), key


@pytest.mark.parametrize("name", SMALL)
def test_each_family_predicts_the_same_submission_through_the_library_and_the_cli(
    runs, preprocessed, tmp_path, name
):
    best = runs[name] / "best.pt"
    ours = predict_ensemble([best], preprocessed, tmp_path / "library.csv")
    proc = run_main("predict", best, preprocessed, "--out", tmp_path / "cli.csv")
    assert proc.returncode == 0, proc.stderr
    assert ours.read_bytes() == (tmp_path / "cli.csv").read_bytes()
    if get_spec(name).family != "faster_rcnn":  # cxr_small boxes need more than 8 steps
        table = parse_submission(ours)
        assert len(table[table["class_id"] != NO_FINDING_ID]) > 0


def _every_box(checkpoint):
    """The checkpoint's detector with no score threshold: a model trained for 8 steps
    scores low, and the TTA test needs boxes to flip."""
    detector = load_detectors([checkpoint])[0]
    if hasattr(detector.model, "roi_heads"):
        detector.model.roi_heads.score_thresh = 0.0
    else:
        detector.model.score_thresh = 0.0
    return detector


@pytest.mark.parametrize("name", SMALL)
def test_each_family_takes_flip_tta_with_boxes_inside_the_images(runs, preprocessed, name):
    detector = _every_box(runs[name] / "best.pt")
    plain, ids, meta = predict_split(detector, preprocessed)
    flipped, _, _ = predict_split(detector, preprocessed, tta=True)
    assert len(flipped) > 0 and set(flipped["image_id"]) <= set(ids)
    width = flipped["image_id"].map(meta.set_index("image_id")["dim1"])
    assert (flipped["x_min"] >= 0).all() and (flipped["x_max"] <= width + 1e-3).all()
    assert not flipped[BOX_COLUMNS].equals(plain[BOX_COLUMNS])  # the flip took part


@pytest.mark.parametrize("name", ("retina_small", "fcos_small"))
def test_a_one_stage_run_resumed_after_a_crash_ends_as_the_uninterrupted_one(
    sample_data, preprocessed, tmp_path, monkeypatch, name
):
    csv = sample_data / "train.csv"
    settings = {**SETTINGS, "size": 64, "epochs": 2, "model_name": name}
    straight = train_from_folder(preprocessed, csv, tmp_path / "a", **settings)
    real_epoch = crash_in_epoch(monkeypatch, 2)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train_from_folder(preprocessed, csv, tmp_path / "b", **settings)
    monkeypatch.setattr(cxrkit.fit, "train_one_epoch", real_epoch)
    torch.manual_seed(123)  # the resumed process starts from other random numbers
    resumed = train_from_folder(preprocessed, csv, tmp_path / "b", resume=True, **settings)
    assert resumed.epochs_done == 2
    a, b = load_checkpoint(straight.last)["model"], load_checkpoint(resumed.last)["model"]
    for key, value in a.items():
        assert torch.equal(value, b[key]), key


@pytest.mark.parametrize("name", ("retinanet_resnet50_fpn_v2", "fcos_resnet50_fpn"))
def test_a_full_size_one_stage_model_takes_a_local_coco_file_and_a_new_class_layer(tmp_path, name):
    """The offline Kaggle path for the GPU models: COCO's 91 classes -> VinBigData's 15."""
    torch.manual_seed(0)
    coco = to_pretrained_layout(build_model(name, num_classes=91), name)
    path = tmp_path / "coco.pth"
    torch.save(coco.state_dict(), path)
    assert classes_in_state(coco.state_dict(), path) == 91
    model = build_model(name, num_classes=15, weights=path)
    assert classes_in_state(model.state_dict(), name) == 15
    key = "backbone.fpn.layer_blocks.0.0.weight"
    assert torch.equal(model.state_dict()[key], coco.state_dict()[key])
    frozen = any(type(m).__name__ == "FrozenBatchNorm2d" for m in model.modules())
    assert frozen == (get_spec(name).frozen_bn_eps is not None)
    model.eval()
    with torch.inference_mode():
        out = model([torch.rand(3, 128, 128)])[0]
    assert out["labels"].numel() == 0 or int(out["labels"].max()) < 15


def _reference_fusion(tables, meta, ids, weights, iou_thr, skip):
    """ensemble-boxes called by hand, image by image (scores clipped to 1, see wbf_predictions)."""
    sizes = meta.set_index("image_id")[["dim0", "dim1"]]
    rows = []
    for image_id in ids:
        h, w = sizes.loc[image_id]
        scale = np.array([w, h, w, h], dtype=float)
        parts = [t[t["image_id"] == image_id] for t in tables]
        boxes, scores, labels = weighted_boxes_fusion(
            [np.clip(p[BOX_COLUMNS].to_numpy(float) / scale, 0, 1) for p in parts],
            [p["score"].to_numpy(float) for p in parts],
            [p["class_id"].to_numpy() for p in parts],
            weights=list(weights), iou_thr=iou_thr, skip_box_thr=skip,
        )  # fmt: skip
        for box, score, label in zip(boxes, scores, labels, strict=True):
            rows.append((image_id, int(round(label)), min(float(score), 1.0), *(box * scale)))
    return pd.DataFrame(rows, columns=["image_id", "class_id", "score", *BOX_COLUMNS])


@pytest.mark.parametrize("weights", [(1.0, 1.0), (3.0, 1.0)])
def test_a_mixed_family_ensemble_equals_ensemble_boxes_on_the_single_models_tables(
    runs, preprocessed, tmp_path, weights
):
    checkpoints = [runs["cxr_small"] / "best.pt", runs["fcos_small"] / "best.pt"]
    tables = [predict_split(c, preprocessed)[0] for c in checkpoints]
    meta = load_meta(preprocessed / "test_meta.csv")
    ids = list(meta["image_id"])
    reference = _reference_fusion(tables, meta, ids, weights, 0.5, 0.02)
    assert len(reference) > 0
    ours = fuse_tables(tables, meta, ids, 0.5, 0.02, weights)
    key = ["image_id", "class_id", "score"]
    ours, reference = (t.sort_values(key, ignore_index=True) for t in (ours, reference))
    assert ours[["image_id", "class_id"]].equals(reference[["image_id", "class_id"]])
    np.testing.assert_allclose(ours["score"], reference["score"], atol=1e-6)
    np.testing.assert_allclose(ours[BOX_COLUMNS], reference[BOX_COLUMNS], atol=1e-2)
    assert ours["score"].max() <= 1.0
    # the whole pipeline (predict A.pt B.pt --wbf-weights ... --nms 1) writes those boxes
    sub = predict_ensemble(
        checkpoints, preprocessed, tmp_path / "sub.csv", weights=weights, iou_thr=0.5,
        skip_box_thr=0.02, nms_iou=1.0,
    )  # fmt: skip
    written = parse_submission(sub)
    written = written[written["class_id"] != NO_FINDING_ID]
    assert len(written) == len(reference)


def _toy(model_classes, ids, shift=0.0):
    """A predictions table that finds ``model_classes`` exactly on every image (+ noise boxes)."""
    rows = []
    for i, image_id in enumerate(ids):
        for c in range(6):
            x = 100 + 50 * c
            if c in model_classes:
                rows.append((image_id, c, 0.9, x + shift, 100, x + 40 + shift, 140))
            rows.append((image_id, c, 0.3, 700 + 10 * i, 700, 760 + 10 * i, 760))  # false alarm
    return pd.DataFrame(rows, columns=["image_id", "class_id", "score", *BOX_COLUMNS])


def test_tune_fusion_finds_a_fusion_of_complementary_models_and_saves_it(tmp_path):
    ids = [f"img{i}" for i in range(8)]
    truth = pd.DataFrame(
        [(i, c, "wbf", 100 + 50 * c, 100, 140 + 50 * c, 140) for i in ids for c in range(6)],
        columns=["image_id", "class_id", "rad_id", *BOX_COLUMNS],
    )
    meta = pd.DataFrame({"image_id": ids, "dim0": 1000, "dim1": 1000})
    tables = {"a": _toy({0, 1, 2}, ids), "b": _toy({3, 4, 5}, ids)}
    choice = tune_fusion(tables, truth, meta, ids, n_boot=50)
    assert choice.map > max(choice.single_maps.values()) + 0.2
    assert choice.gain_interval[0] > 0
    assert choice.settings.models == ("a", "b") and choice.settings.images == len(ids)
    path = choice.settings.save(tmp_path / "fusion.json")
    again = FusionSettings.load(path)
    assert again == choice.settings
    again.check_models(["a", "b"])
    with pytest.raises(ConfigError, match="tuned for the models"):
        again.check_models(["b", "a"])
    with pytest.raises(ConfigError, match="2 weights, for 3 checkpoints"):
        again.check_models(["a", "b", "c"])
    (tmp_path / "bad.json").write_text(json.dumps({"weights": [1, 1]}))
    with pytest.raises(ConfigError, match="not a cxrkit fusion file"):
        FusionSettings.load(tmp_path / "bad.json")
    assert weight_grid(2)[0] == (1.0, 1.0) and (2.0, 2.0) not in weight_grid(2)


def test_tune_fusion_from_runs_and_predict_fusion_through_the_cli(runs, preprocessed, tmp_path):
    fusion = tmp_path / "fusion.json"
    pair = [runs["cxr_small"], runs["fcos_small"]]
    proc = run_main("tune-fusion", *pair, "--out", fusion, "--n-boot", "20")
    assert proc.returncode == 0, proc.stderr
    settings = FusionSettings.load(fusion)
    assert settings.models == ("cxr_small", "fcos_small")
    assert settings.images == int(
        (pd.read_csv(runs["cxr_small"] / "split.csv")["subset"] == "valid").sum()
    )
    library = tune_fusion_from_runs([[r] for r in pair], n_boot=20)
    assert library.settings == settings  # the same choice from the library
    checkpoints = [r / "best.pt" for r in pair]
    proc = run_main("predict", *checkpoints, preprocessed, "--out", tmp_path / "cli.csv",
                    "--fusion", fusion)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    ours = predict_ensemble(checkpoints, preprocessed, tmp_path / "lib.csv", fusion=settings)
    assert ours.read_bytes() == (tmp_path / "cli.csv").read_bytes()
    # other checkpoints, another order, or --fusion with a WBF option: one line each
    proc = run_main("predict", *checkpoints[::-1], preprocessed, "--out", tmp_path / "x.csv",
                    "--fusion", fusion)  # fmt: skip
    assert "tuned for the models ['cxr_small', 'fcos_small']" in one_line_error(proc, "predict")
    proc = run_main("predict", *checkpoints, preprocessed, "--out", tmp_path / "x.csv",
                    "--fusion", fusion, "--wbf-iou", "0.5")  # fmt: skip
    assert proc.returncode == 2 and "leave out --wbf-iou" in proc.stderr
    assert not (tmp_path / "x.csv").exists()


def test_tune_fusion_refuses_runs_that_validated_on_other_images(
    runs, sample_data, preprocessed, tmp_path
):
    other = train_from_folder(
        preprocessed, sample_data / "train.csv", tmp_path / "other", model_name="fcos_small",
        **{**SETTINGS, "seed": 8},
    ).out_dir  # fmt: skip
    with pytest.raises(FoldError, match="validated on other images"):
        tune_fusion_from_runs([[runs["cxr_small"]], [other]])
    proc = run_main("tune-fusion", runs["cxr_small"], "--out", tmp_path / "f.json")
    assert "at least 2 models" in one_line_error(proc, "tune-fusion")


@pytest.mark.parametrize("name", ("retina_small", "fcos_small", "retinanet_resnet50_fpn_v2"))
def test_a_one_stage_model_never_returns_the_background_label(name):
    """Its sigmoid scores class 0 too; an untrained head can put it above the threshold."""
    torch.manual_seed(0)
    model = build_model(name, size=128).eval()
    head = model.head.classification_head
    with torch.no_grad():  # background and Cardiomegaly (model label 4) score high everywhere
        bias = head.cls_logits.bias.view(head.num_anchors, head.num_classes)
        bias[:, 0] = bias[:, 4] = 10.0
    image = [torch.rand(3, 128, 128)]
    with torch.inference_mode():
        ours = model(image)[0]
        model.__class__ = model.__class__.__mro__[2]  # torchvision's own RetinaNet / FCOS
        theirs = model(image)[0]
    assert 0 in theirs["labels"].tolist()  # what torchvision returns
    assert set(ours["labels"].tolist()) == {4}


def test_fused_scores_stay_probabilities_where_ensemble_boxes_exceeds_one():
    """Two overlapping boxes of the heavier model form one cluster: ensemble-boxes scores
    it (0.9 * 3 + 0.9 * 3) / 2 * 2 / 4 = 1.35; a submission needs a probability."""
    from cxrkit.postprocess import wbf_predictions

    boxes = [np.array([[0.1, 0.1, 0.3, 0.3], [0.11, 0.1, 0.31, 0.3]]), np.zeros((0, 4))]
    scores, labels = [np.array([0.9, 0.9]), np.zeros(0)], [np.array([2, 2]), np.zeros(0)]
    _, raw, _ = weighted_boxes_fusion(boxes, scores, labels, weights=[3, 1], iou_thr=0.5)
    assert raw.max() > 1.0  # what the library gets wrong
    parts = [
        {"boxes": b * 100, "scores": s, "labels": lab}
        for b, s, lab in zip(boxes, scores, labels, strict=True)
    ]
    fused = wbf_predictions(parts, (100, 100), iou_thr=0.5, weights=[3, 1])
    assert float(fused["scores"].max()) == 1.0


def test_truth_found_marks_the_findings_a_table_reaches():
    from cxrkit.metrics import truth_found

    truth = pd.DataFrame(
        [("a", 3, "r1", 10, 10, 50, 50), ("a", 5, "r1", 100, 100, 150, 150),
         ("b", 14, "r1", 0, 0, 1, 1)],
        columns=["image_id", "class_id", "rad_id", *BOX_COLUMNS],
    )  # fmt: skip
    preds = pd.DataFrame(
        [("a", 3, 0.9, 12, 12, 52, 52), ("a", 5, 0.1, 100, 100, 150, 150),
         ("a", 4, 0.9, 100, 100, 150, 150)],
        columns=["image_id", "class_id", "score", *BOX_COLUMNS],
    )  # fmt: skip
    found = truth_found(preds, truth, min_score=0.2)
    assert found["class_id"].tolist() == [3, 5]  # No finding is not a finding
    assert found["found"].tolist() == [True, False]  # 5: right box, score too low
    assert truth_found(preds, truth)["found"].tolist() == [True, True]


def test_plot_class_ap_draws_a_bar_per_class_and_predictor():
    import matplotlib

    matplotlib.use("Agg")
    from cxrkit.plotting import plot_class_ap

    ax = plot_class_ap({"a": {0: 0.5, 3: 1.0}, "b": {0: 0.25, 3: 0.0, 5: 0.75}})
    assert len(ax.patches) == 2 * 3
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels == ["Aortic enlargement", "Cardiomegaly", "ILD"]  # class order, top down
    assert ax.get_yticks()[0] > ax.get_yticks()[-1]


def test_tune_fusion_takes_each_models_fold_runs_joined_by_commas(
    sample_data, preprocessed, tmp_path
):
    """K fold runs per model: their oof.csv cover every training image once."""
    folds = {}
    for name in ("cxr_small", "fcos_small"):
        folds[name] = [
            train_from_folder(
                preprocessed, sample_data / "train.csv", tmp_path / f"{name}-{k}",
                model_name=name, folds=2, fold=k, **{**SETTINGS, "size": 64, "epochs": 1},
            ).out_dir
            for k in range(2)
        ]  # fmt: skip
    fusion = tmp_path / "fusion.json"
    groups = [",".join(map(str, runs)) for runs in folds.values()]
    proc = run_main("tune-fusion", *groups, "--out", fusion, "--n-boot", "10")
    assert proc.returncode == 0, proc.stderr
    settings = FusionSettings.load(fusion)
    train_ids = pd.read_csv(sample_data / "train.csv")["image_id"].nunique()
    assert settings.images == train_ids  # every training image, out of fold
    assert settings.models == ("cxr_small", "fcos_small")


@pytest.mark.parametrize("name", ("retinanet_resnet50_fpn_v2", "fcos_resnet50_fpn"))
def test_a_full_size_one_stage_model_takes_a_training_step(name):
    """The GPU models train like the others (here one step at 128 px on a CPU)."""
    torch.manual_seed(0)
    model = build_model(name, size=128).train()
    target = {"boxes": torch.tensor([[20.0, 30.0, 70.0, 90.0]]), "labels": torch.tensor([3])}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01)
    key = "head.classification_head.cls_logits.weight"
    before = model.state_dict()[key].clone()
    losses = model([torch.rand(3, 128, 128)], [target])
    loss = sum(losses.values())
    assert torch.isfinite(loss)
    loss.backward()
    optimizer.step()
    assert not torch.equal(model.state_dict()[key], before)
