"""Augmentation pipelines: boxes follow the pixels exactly, vanish with their labels."""

from __future__ import annotations

import albumentations as A
import numpy as np
import pytest
import torch

from cxrkit.transforms import (
    bbox_params,
    reseed,
    test_transforms,
    train_transforms,
    valid_transforms,
)


def _canvas(h: int, w: int, boxes: list[list[float]], values: list[int]) -> np.ndarray:
    """Black uint8 image with a filled rectangle of gray ``value`` per box."""
    image = np.zeros((h, w), np.uint8)
    for (x0, y0, x1, y1), v in zip(boxes, values, strict=True):
        image[int(y0) : int(y1), int(x0) : int(x1)] = v
    return image


def test_resize_scales_boxes_per_axis_exactly():
    image = np.zeros((300, 400), np.uint8)
    boxes = [[40.0, 30.0, 200.0, 150.0], [0.0, 0.0, 400.0, 300.0]]
    out = valid_transforms(size=200)(image=image, bboxes=boxes, labels=[3, 5])
    assert tuple(out["image"].shape) == (1, 200, 200)
    expected = np.array(boxes) * [200 / 400, 200 / 300, 200 / 400, 200 / 300]
    np.testing.assert_allclose(np.asarray(out["bboxes"]), expected, atol=1e-4)
    assert list(out["labels"]) == [3, 5]


def test_horizontal_flip_mirrors_boxes_exactly():
    w = 256
    pipeline = A.Compose([A.HorizontalFlip(p=1.0)], bbox_params=bbox_params())
    boxes = np.array([[10.0, 20.0, 60.0, 90.0], [100.0, 5.0, 250.0, 40.0]])
    image = _canvas(128, w, boxes.tolist(), [200, 100])
    out = pipeline(image=image, bboxes=boxes, labels=[1, 2])
    expected = np.stack([w - boxes[:, 2], boxes[:, 1], w - boxes[:, 0], boxes[:, 3]], axis=1)
    np.testing.assert_allclose(np.asarray(out["bboxes"]), expected, atol=1e-4)
    np.testing.assert_array_equal(out["image"], image[:, ::-1])
    assert list(out["labels"]) == [1, 2]


def test_box_leaving_the_image_is_dropped_with_its_label():
    pipeline = A.Compose(
        [A.Affine(translate_px={"x": 150, "y": 0}, p=1.0)], bbox_params=bbox_params()
    )
    boxes = [[10.0, 10.0, 60.0, 60.0], [180.0, 10.0, 240.0, 60.0], [90.0, 70.0, 200.0, 120.0]]
    out = pipeline(image=np.zeros((128, 256), np.uint8), bboxes=boxes, labels=[7, 9, 4])
    # box 1 moves out of frame; box 2 keeps 256-240 = 16 of 110 px (15 % < 30 %): dropped
    assert list(out["labels"]) == [7]
    np.testing.assert_allclose(np.asarray(out["bboxes"]), [[160.0, 10.0, 210.0, 60.0]], atol=1e-3)


def test_partially_visible_box_is_clipped_not_dropped():
    pipeline = A.Compose(
        [A.Affine(translate_px={"x": 40, "y": 0}, p=1.0)], bbox_params=bbox_params()
    )
    out = pipeline(
        image=np.zeros((128, 256), np.uint8), bboxes=[[180.0, 10.0, 240.0, 60.0]], labels=[2]
    )
    np.testing.assert_allclose(np.asarray(out["bboxes"]), [[220.0, 10.0, 256.0, 60.0]], atol=1e-3)
    assert list(out["labels"]) == [2]


def test_train_transforms_keep_labels_aligned_and_findings_inside_boxes():
    """Rectangles of gray 60, 120, 180, 240 labelled 1..4: after any augmentation the
    box labelled k still frames the k-th brightest rectangle (intensity transforms are
    monotonic, so the brightness order survives), and is brighter than the background."""
    size = 256
    boxes = [[20, 20, 80, 70], [150, 30, 230, 100], [30, 150, 110, 220], [160, 160, 240, 240]]
    labels = [1, 2, 3, 4]
    image = _canvas(size, size, boxes, [60, 120, 180, 240])
    pipeline = train_transforms(size=size, hflip_p=0.5, seed=0)
    n_seen = 0
    for _ in range(30):
        out = pipeline(image=image, bboxes=np.array(boxes, float), labels=labels)
        img = out["image"][0].numpy().astype(float)
        assert out["image"].dtype == torch.uint8 and tuple(out["image"].shape) == (1, size, size)
        assert len(out["bboxes"]) == len(out["labels"])
        means = []
        for (x0, y0, x1, y1), _label in zip(out["bboxes"], out["labels"], strict=True):
            assert 0 <= x0 < x1 <= size and 0 <= y0 < y1 <= size
            cx, cy, qw, qh = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 4, (y1 - y0) / 4
            core = img[int(cy - qh) : int(cy + qh) + 1, int(cx - qw) : int(cx + qw) + 1]
            means.append(core.mean())
        labs = list(out["labels"])
        assert [labs[i] for i in np.argsort(means)] == sorted(labs), (labs, means)
        background = np.median(img)
        assert all(m > background + 20 for m in means)
        n_seen += len(labs)
    assert n_seen >= 30 * 3  # boxes inside the frame are almost never dropped


def test_pipelines_are_deterministic_for_a_seed():
    image = np.random.default_rng(0).integers(0, 255, (128, 128), dtype=np.uint8)
    box = [[20.0, 20.0, 90.0, 100.0]]
    runs = []
    for _ in range(2):
        pipeline = train_transforms(size=128, seed=7)
        runs.append([pipeline(image=image, bboxes=box, labels=[1]) for _ in range(5)])
    for a, b in zip(*runs, strict=True):
        assert torch.equal(a["image"], b["image"])
        np.testing.assert_allclose(np.asarray(a["bboxes"]), np.asarray(b["bboxes"]))
    other = train_transforms(size=128, seed=8)
    outs = [other(image=image, bboxes=box, labels=[1])["image"] for _ in range(5)]
    assert any(not torch.equal(x, r["image"]) for x, r in zip(outs, runs[0], strict=True))


def test_reseed_shares_one_stream_between_transforms():
    """With albumentations' own seeding every transform gets the same stream, so a
    flip (p=0.5) and a dropout (p=0.5) would always fire together."""
    pipeline = reseed(
        A.Compose([A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5)], save_applied_params=True),
        seed=3,
    )
    image = np.arange(16, dtype=np.uint8).reshape(4, 4)
    together = set()
    for _ in range(40):
        out = pipeline(image=image)
        names = {name for name, _ in out["applied_transforms"]}
        together.add(("HorizontalFlip" in names, "VerticalFlip" in names))
    assert len(together) == 4  # all combinations occur: the decisions are independent


def test_no_vertical_flip_and_no_big_rotation_in_train():
    names = {type(t).__name__ for t in train_transforms().transforms}
    assert "VerticalFlip" not in names
    affine = next(t for t in train_transforms().transforms if isinstance(t, A.Affine))
    assert max(abs(a) for a in affine.rotate) <= 10


@pytest.mark.parametrize("size", [64, 128])
def test_test_transforms_resize_without_boxes(size):
    out = test_transforms(size)(image=np.zeros((100, 80), np.uint8))
    assert tuple(out["image"].shape) == (1, size, size)


def test_sample_findings_stay_inside_their_boxes_after_augmentation():
    """The sample generator renders each chest with and without its findings
    (``Rendered.image`` / ``Rendered.base``). Augmenting both with the same random
    draws, the difference (= the findings) must stay inside the augmented boxes."""
    import cv2

    from cxrkit.annotations import rescale_boxes
    from cxrkit.sample import plan_cases, render_case

    size = 256
    cases = [c for c in plan_cases(3, 12, 0) if c.class_ids][:4]
    assert cases
    ratios = []
    for spec in cases:
        rendered = render_case(spec)
        to_png = [
            cv2.resize(
                (im * 255).round().astype(np.uint8), (size, size), interpolation=cv2.INTER_AREA
            )
            for im in (rendered.image, rendered.base)
        ]
        boxes = rescale_boxes(np.array(rendered.boxes), rendered.image.shape, size)
        labels = np.array(rendered.class_ids) + 1
        pipeline = train_transforms(size, hflip_p=0.5)
        for k in range(8):
            out = []
            for image in to_png:  # same seed: same flip, affine, gamma, noise...
                out.append(reseed(pipeline, k)(image=image, bboxes=boxes, labels=labels))
            diff = np.abs(out[0]["image"][0].numpy().astype(float) - out[1]["image"][0].numpy())
            inside = np.zeros_like(diff, bool)
            for x0, y0, x1, y1 in out[0]["bboxes"]:
                inside[max(0, int(y0) - 2) : int(y1) + 3, max(0, int(x0) - 2) : int(x1) + 3] = True
            assert list(out[0]["labels"]) == list(labels)  # nothing dropped, order kept
            ratios.append(diff[inside].sum() / diff.sum())
    # CLAHE (p=0.1) spreads a little contrast change around a finding: hence not 1.0
    assert min(ratios) > 0.6 and np.median(ratios) > 0.85, ratios
