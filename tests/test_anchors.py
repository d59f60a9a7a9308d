"""Anchors and input size fitted to the training boxes (cxrkit.anchors, issue 13).

k-means with the 1 - IoU distance finds planted box shapes; the coverage and the
chosen size follow from a hand-made table; fitted anchors travel in the checkpoint
so that ``model_from_checkpoint`` (what ``predict`` uses) rebuilds the same model,
while a checkpoint without anchors still loads with the stock ones.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch

from cxrkit.anchors import (
    AnchorSpec,
    anchor_coverage,
    choose_input_size,
    fit_anchors,
    grid_anchors,
    grid_coverage,
    kmeans_iou,
    resized_boxes,
    shape_iou,
    stock_anchors,
)
from cxrkit.checkpoints import CheckpointError, save_checkpoint
from cxrkit.cli import build_parser
from cxrkit.config import TrainConfig, resolve, typed_settings
from cxrkit.errors import ConfigError
from cxrkit.models import build_model, model_from_checkpoint
from cxrkit.sample.findings import FINDING_VARIANTS
from cxrkit.sample.plan import plan_cases
from cxrkit.sample.render import render_case

torch.set_num_threads(1)
SIZE = 64

# three planted shapes: small squares, wide boxes, thin tall bands
PLANTED = np.array([[8.0, 8.0], [40.0, 20.0], [6.0, 60.0]])


def _planted_boxes(n_per: int = 60, spread: float = 0.08, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    parts = [c * np.exp(rng.normal(0.0, spread, size=(n_per, 2))) for c in PLANTED]
    return np.concatenate(parts)


def test_kmeans_recovers_planted_clusters():
    wh = _planted_boxes()
    centres, assign = kmeans_iou(wh, 3, seed=0)
    order = np.argsort(PLANTED.prod(axis=1))  # centres come sorted by area
    np.testing.assert_allclose(centres, PLANTED[order], rtol=0.1)
    # every planted group lands in one cluster of its own
    groups = assign.reshape(3, -1)
    assert all(len(set(g)) == 1 for g in groups) and len({g[0] for g in groups}) == 3


def test_kmeans_is_deterministic_and_checks_its_input():
    wh = _planted_boxes(seed=2)
    a, _ = kmeans_iou(wh, 4, seed=5)
    b, _ = kmeans_iou(wh, 4, seed=5)
    np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="distinct box shapes"):
        kmeans_iou(np.ones((3, 2)), 2)
    with pytest.raises(ValueError, match="positive"):
        kmeans_iou(np.array([[1.0, 0.0], [2.0, 2.0]]), 1)


def test_fit_anchors_layout_and_thin_shapes():
    wh = _planted_boxes()
    spec = fit_anchors(wh, 256)
    # cxr_small's layout: 4 levels x 2 sizes, 5 ratios shared by all levels
    assert [len(level) for level in spec.sizes] == [2, 2, 2, 2]
    assert len(set(spec.aspect_ratios)) == 1 and len(spec.aspect_ratios[0]) == 5
    flat = [s for level in spec.sizes for s in level]
    assert flat == sorted(flat), "smallest sizes on the finest level"
    assert max(spec.aspect_ratios[0]) > 6, "the thin tall bands (ratio 10) get a tall anchor"
    assert min(spec.aspect_ratios[0]) < 0.7, "the wide boxes (ratio 0.5) get a wide anchor"
    best = shape_iou(wh, spec.shapes()).max(axis=1)
    assert (best >= 0.7).mean() > 0.95
    # the stock anchors cannot reach the bands
    stock_best = shape_iou(wh[-60:], stock_anchors(256).shapes()).max(axis=1)
    assert (stock_best < 0.5).all()


def _table_and_meta() -> tuple[pd.DataFrame, pd.DataFrame]:
    """Two images: a (100 rows x 100 cols), b (200 rows x 100 cols)."""
    meta = pd.DataFrame({"image_id": ["a", "b"], "dim0": [100, 200], "dim1": [100, 100]})
    rows = [
        # image, class, x0, y0, x1, y1 (original pixels)
        ("a", 0, 0, 0, 10, 10),  # 10x10: IoU 1 with the 10x10 anchor
        ("a", 0, 0, 0, 10, 5),  # 10x5: IoU 0.5
        ("b", 0, 0, 0, 10, 14),  # 10x7 once b's rows are halved: IoU 0.7
        ("a", 8, 0, 0, 20, 20),  # 20x20: IoU 0.25
        ("a", 14, 0, 0, 1, 1),  # No finding: not a box
    ]
    table = pd.DataFrame(rows, columns=["image_id", "class_id", "x_min", "y_min", "x_max", "y_max"])
    table["class_name"] = table["class_id"].map({0: "Aortic enlargement", 8: "Nodule/Mass"})
    return table, meta


def test_coverage_per_class_on_a_synthetic_table():
    table, meta = _table_and_meta()
    one = AnchorSpec(((10.0,),), ((1.0,),), image_size=100)
    cov = anchor_coverage(table, meta, one)
    assert list(cov.index) == ["Aortic enlargement", "Nodule/Mass", "all"]
    assert cov.loc["Aortic enlargement", "boxes"] == 3
    assert cov.loc["Aortic enlargement", "iou>=0.5"] == pytest.approx(1.0)
    assert cov.loc["Aortic enlargement", "iou>=0.7"] == pytest.approx(2 / 3)
    assert cov.loc["Nodule/Mass", "iou>=0.5"] == 0.0
    assert cov.loc["all", "boxes"] == 4 and cov.loc["all", "iou>=0.5"] == pytest.approx(0.75)
    # at input side 200 every box doubles and so does the anchor: same coverage
    pd.testing.assert_frame_equal(cov, anchor_coverage(table, meta, one, size=200))


def test_choose_input_size_keeps_the_small_boxes_visible():
    meta = pd.DataFrame({"image_id": [f"i{k}" for k in range(10)], "dim0": 1000, "dim1": 1000})
    # shorter sides 20 px (2 %) on every image: the 10th percentile is 2 % of the side
    table = pd.DataFrame(
        {"image_id": meta["image_id"], "class_id": 11, "x_min": 0, "y_min": 0, "x_max": 20}
    ).assign(y_max=200)
    size, reason = choose_input_size(table, meta, min_pixels=6, budget=(256, 512))
    assert size == 320  # 6 / 0.02 = 300, rounded up to a multiple of 32
    assert "2.0 %" in reason and "320 px" in reason
    size, reason = choose_input_size(table, meta, min_pixels=12, budget=(256, 512))
    assert size == 512 and "budget" in reason  # 600 px needed, capped
    size, _ = choose_input_size(table, meta, min_pixels=2, budget=(256, 512))
    assert size == 256


def test_resized_boxes_scale_each_axis():
    table, meta = _table_and_meta()
    boxes = resized_boxes(table, meta, 50)
    assert len(boxes) == 4  # No finding left out
    np.testing.assert_allclose(boxes[["w", "h"]].to_numpy()[2], [5.0, 3.5])
    assert {"x", "y"} <= set(boxes.columns)  # the top-left corner, for grid_coverage
    with pytest.raises(ValueError, match="not in meta"):
        resized_boxes(table, meta[meta["image_id"] == "a"], 50)


@pytest.mark.parametrize("size", [384, 200])
def test_grid_anchors_are_the_ones_the_model_uses(size):
    """Same boxes, same order as cxr_small's RPN makes on a real forward pass (200 px
    is padded to 224, so the coarsest stride is 56, not 64)."""
    spec = _fitted_spec()
    model = build_model("cxr_small", num_classes=15, min_size=size, anchors=spec).eval()
    seen = {}

    def keep(_module, _inputs, output) -> None:
        seen["anchors"] = output[0]

    hook = model.rpn.anchor_generator.register_forward_hook(keep)
    with torch.no_grad():
        model([torch.zeros(3, size, size)])
    hook.remove()
    np.testing.assert_allclose(grid_anchors(spec, size), seen["anchors"].numpy())


def test_grid_coverage_counts_the_offset_from_the_nearest_anchor_centre():
    # one 8 x 8 anchor a level; anchors are centred on multiples of the stride
    spec = AnchorSpec(((8.0,),) * 4, ((1.0,),) * 4, image_size=64)
    meta = pd.DataFrame({"image_id": ["a"], "dim0": [64], "dim1": [64]})
    rows = [
        ("a", 0, 4, 4, 12, 12),  # centred on (8, 8): IoU 1
        ("a", 8, 0, 4, 8, 12),  # centred on (4, 8), 4 px off any centre: IoU 32 / 96
    ]
    table = pd.DataFrame(rows, columns=["image_id", "class_id", "x_min", "y_min", "x_max", "y_max"])
    cov = grid_coverage(table, meta, spec)
    assert cov.loc["Aortic enlargement", "median IoU"] == pytest.approx(1.0)
    assert cov.loc["Nodule/Mass", "median IoU"] == pytest.approx(1 / 3)
    # centred, both boxes fit the anchor exactly
    assert anchor_coverage(table, meta, spec).loc["all", "iou>=0.7"] == 1.0
    assert cov.loc["all", "iou>=0.7"] == 0.5
    with pytest.raises(ValueError, match="strides"):
        grid_anchors(spec, 64, strides=(8, 16))


def _fitted_spec() -> AnchorSpec:
    return fit_anchors(_planted_boxes() * SIZE / 256, SIZE)


def test_build_model_with_fitted_anchors_and_checkpoint_round_trip(tmp_path):
    spec = _fitted_spec()
    torch.manual_seed(0)
    model = build_model("cxr_small", min_size=SIZE, max_size=SIZE, anchors=spec)
    generator = model.rpn.anchor_generator
    assert generator.aspect_ratios[0] == spec.aspect_ratios[0]
    assert generator.sizes == tuple(tuple(round(s) for s in level) for level in spec.sizes)
    assert generator.sizes != build_model("cxr_small", min_size=SIZE).rpn.anchor_generator.sizes
    assert model.cxrkit_config["anchors"] == spec.to_dict()

    path = save_checkpoint(tmp_path / "fitted.pt", model, epoch=1)
    raw = torch.load(path, weights_only=True)  # plain lists: safe to load
    assert raw["model_config"]["anchors"]["aspect_ratios"][0] == list(spec.aspect_ratios[0])
    rebuilt = model_from_checkpoint(path).eval()  # what predict_to_submission uses
    assert rebuilt.rpn.anchor_generator.sizes == generator.sizes
    assert rebuilt.rpn.anchor_generator.aspect_ratios == generator.aspect_ratios
    model.eval()
    image = torch.rand(3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        ours, theirs = model([image])[0], rebuilt([image])[0]
    torch.testing.assert_close(ours["boxes"], theirs["boxes"])


def test_auto_anchors_from_boxes_and_their_errors():
    wh = _planted_boxes() * SIZE / 256
    model = build_model("cxr_small", min_size=SIZE, max_size=SIZE, anchors="auto", boxes=wh)
    assert model.cxrkit_config["anchors"] == fit_anchors(wh, SIZE).to_dict()
    with pytest.raises(ValueError, match="boxes="):
        build_model("cxr_small", min_size=SIZE, anchors="auto")
    with pytest.raises(ConfigError, match="cxr_small"):
        build_model("fasterrcnn_mobilenet_v3_large_fpn", anchors="auto", boxes=wh)
    with pytest.raises(ValueError, match="same, non-zero number"):
        AnchorSpec(((4.0, 8.0), (16.0,)), ((1.0,), (1.0,)), 64)


def test_a_checkpoint_without_anchors_still_loads_with_the_stock_ones(tmp_path):
    torch.manual_seed(0)
    model = build_model("cxr_small", min_size=SIZE, max_size=SIZE)
    assert "anchors" not in model.cxrkit_config  # stock checkpoints are as before
    path = save_checkpoint(tmp_path / "stock.pt", model)
    rebuilt = model_from_checkpoint(path)
    assert rebuilt.rpn.anchor_generator.sizes == stock_anchors(SIZE).sizes
    assert rebuilt.rpn.anchor_generator.sizes == model.rpn.anchor_generator.sizes


def test_a_checkpoint_with_broken_anchors_is_a_clear_error(tmp_path):
    torch.manual_seed(0)
    model = build_model("cxr_small", min_size=SIZE, max_size=SIZE, anchors=_fitted_spec())
    model.cxrkit_config["anchors"] = {"sizes": [[8.0]]}
    path = save_checkpoint(tmp_path / "broken.pt", model)
    with pytest.raises(CheckpointError, match="unusable anchors"):
        model_from_checkpoint(path)


def test_cli_options():
    parser = build_parser()

    def config(*options: str) -> TrainConfig:
        return TrainConfig(
            **typed_settings(parser.parse_args(["train", "d", "t.csv", "--out", "o", *options]))
        )

    assert (
        config("--anchors", "auto").anchors == "auto" and config("--anchors", "auto").size is None
    )
    assert resolve(config("--anchors", "auto")).size == "auto"  # the data chooses it
    assert config("--size", "auto").size == "auto"
    assert config("--size", "320").size == 320
    assert config().anchors == "stock"
    assert parser.parse_args(["sample", "o", "--variant", "small_thin"]).variant == "small_thin"
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "d", "t.csv", "--out", "o", "--size", "big"])


def test_small_thin_variant_draws_small_nodules_and_thin_bands():
    assert FINDING_VARIANTS == ("default", "small_thin")
    cases = [c for c in plan_cases(7, 40, 0, finding_variant="small_thin") if c.class_ids][:12]
    forced = [replace(c, class_ids=(8, 11)) for c in cases]
    sides, aspects = [], []
    for spec in forced:
        rendered = render_case(spec)
        rows, cols = rendered.meta["rows"], rendered.meta["cols"]
        for c, (x0, y0, x1, y1) in zip(rendered.class_ids, rendered.boxes, strict=True):
            w, h = (x1 - x0) / cols, (y1 - y0) / rows
            if c == 8:
                sides.append(max(w, h))
            elif c == 11:
                aspects.append((h / w, w))
    assert len(sides) == len(aspects) == len(forced)
    assert 0.025 <= min(sides) and max(sides) <= 0.07, sides  # 3-6 % (+ rounding, aspect)
    assert all(6 <= a <= 14 and 0.012 <= w <= 0.032 for a, w in aspects), aspects
    # the variant changes how findings look, not the plan: same image, same id
    default = render_case(replace(forced[0], finding_variant="default"))
    assert default.meta["image_id"] == render_case(forced[0]).meta["image_id"]


@pytest.mark.slow
def test_train_with_auto_anchors_stores_them_and_predict_uses_them(
    sample_data, preprocessed, tmp_path, capsys, monkeypatch
):
    """One short epoch through train_from_folder (what ``train --anchors auto`` runs):
    the size and anchors are chosen and printed, saved in best.pt, and
    predict_to_submission rebuilds the model with them."""
    import cxrkit.train as train_module

    result = train_module.train_from_folder(
        preprocessed, sample_data / "train.csv", tmp_path / "run", epochs=1, anchors="auto", seed=0
    )
    printed = capsys.readouterr().out
    assert "input size 256 px" in printed and "fitted anchors at 256 px" in printed
    assert "Pleural thickening" in printed or "Cardiomegaly" in printed  # the coverage table
    ckpt = torch.load(result.best, weights_only=True)
    stored = AnchorSpec.from_dict(ckpt["model_config"]["anchors"])
    assert ckpt["config"]["anchors"] == "auto" and ckpt["config"]["size"] == 256

    import cxrkit.predict as predict_module

    built = []
    real = predict_module.model_from_checkpoint

    def spy(path, *args, **kwargs):
        model = real(path, *args, **kwargs)
        built.append(model)
        return model

    monkeypatch.setattr(predict_module, "model_from_checkpoint", spy)
    predict_module.predict_to_submission(result.best, preprocessed, tmp_path / "sub.csv")
    generator = built[0].rpn.anchor_generator
    assert generator.aspect_ratios[0] == stored.aspect_ratios[0]
    assert generator.sizes == tuple(tuple(round(s) for s in level) for level in stored.sizes)


def test_too_few_boxes_for_auto_anchors_is_a_clear_error(tmp_path):
    """Through the CLI: one line naming the problem and the way out, exit status 2."""

    import cv2
    from helpers import run_main

    data = tmp_path / "pre"
    (data / "train").mkdir(parents=True)
    cv2.imwrite(str(data / "train" / "a.png"), np.zeros((64, 64, 3), np.uint8))
    cv2.imwrite(str(data / "train" / "b.png"), np.zeros((64, 64, 3), np.uint8))
    pd.DataFrame({"image_id": ["a", "b"], "dim0": 640, "dim1": 640}).to_csv(
        data / "train_meta.csv", index=False
    )
    rows = [
        ("a", "Nodule/Mass", 8, "R1", 10, 10, 40, 40),
        ("b", "Nodule/Mass", 8, "R1", 100, 100, 160, 170),
    ]
    columns = ["image_id", "class_name", "class_id", "rad_id", "x_min", "y_min", "x_max", "y_max"]
    pd.DataFrame(rows, columns=columns).to_csv(tmp_path / "train.csv", index=False)
    out = run_main(
        "train", data, tmp_path / "train.csv", "--out", tmp_path / "run", "--anchors", "auto",
        "--valid-fraction", "0.5",
    )  # fmt: skip
    assert out.returncode == 2, out.stderr
    assert "cannot fit anchors" in out.stderr and "--anchors stock" in out.stderr
    assert "Traceback" not in out.stderr
