"""cxrkit.postprocess against torchvision.ops and ensemble-boxes called directly."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
import torch
import torchvision.ops
from ensemble_boxes import weighted_boxes_fusion

from cxrkit.formats import BOX_COLUMNS
from cxrkit.postprocess import (
    apply_nms,
    classwise_nms,
    classwise_nms_table,
    filter_by_score,
    hflip_boxes,
    merge_tta,
    unflip_prediction,
    wbf_predictions,
)

H, W = 600, 800


def make_prediction(seed: int, n: int = 40, numpy: bool = False) -> dict:
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * torch.tensor([W - 100, H - 100])
    wh = 20 + torch.rand(n, 2, generator=g) * 80
    p = {
        "boxes": torch.cat([xy, xy + wh], dim=1),
        "scores": torch.rand(n, generator=g),
        "labels": torch.randint(1, 5, (n,), generator=g),
    }
    return {k: v.numpy() for k, v in p.items()} if numpy else p


def empty(numpy: bool = False) -> dict:
    p = {
        "boxes": torch.zeros(0, 4),
        "scores": torch.zeros(0),
        "labels": torch.zeros(0, dtype=torch.int64),
    }
    return {k: v.numpy() for k, v in p.items()} if numpy else p


def assert_same(a: dict, b: dict) -> None:
    for k in ("boxes", "scores", "labels"):
        np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]))


def test_apply_nms_matches_torchvision_and_does_not_mutate():
    p = make_prediction(0)
    before = copy.deepcopy(p)
    out = apply_nms(p, 0.3)
    keep = torchvision.ops.nms(before["boxes"], before["scores"], 0.3)
    assert 0 < len(keep) < len(before["boxes"])  # the case actually suppresses something
    assert_same(out, {k: v[keep] for k, v in before.items()})
    assert_same(p, before)  # the input is untouched (the seed's version mutated it)
    assert out is not p and isinstance(out["boxes"], torch.Tensor)
    out["boxes"][:] = 0  # and the output does not alias the input
    assert_same(p, before)


def test_classwise_nms_matches_batched_nms():
    p = make_prediction(1, n=60)
    before = copy.deepcopy(p)
    out = classwise_nms(p, 0.5)
    keep = torchvision.ops.batched_nms(p["boxes"], p["scores"], p["labels"], 0.5)
    assert_same(out, {k: v[keep] for k, v in before.items()})
    assert_same(p, before)
    # a box overlapping only a box of another class survives class-wise NMS
    two = {
        "boxes": torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 10]]),
        "scores": torch.tensor([0.9, 0.8]),
        "labels": torch.tensor([1, 2]),
    }
    assert len(classwise_nms(two)["boxes"]) == 2 and len(apply_nms(two)["boxes"]) == 1


def test_numpy_in_numpy_out_and_extra_keys_kept():
    p = make_prediction(2, numpy=True)
    p["image_id"] = "abc"
    before = copy.deepcopy(p)
    for out in (apply_nms(p), classwise_nms(p), filter_by_score(p, 0.5), unflip_prediction(p, W)):
        assert isinstance(out["boxes"], np.ndarray) and out["labels"].dtype == np.int64
        assert out["image_id"] == "abc"
    assert_same(p, before)
    assert_same(apply_nms(p), apply_nms(make_prediction(2)))


def test_filter_by_score():
    p = make_prediction(3)
    out = filter_by_score(p, 0.5)
    assert torch.equal(out["scores"], p["scores"][p["scores"] >= 0.5])
    assert len(filter_by_score(p, 1.1)["boxes"]) == 0


@pytest.mark.parametrize("numpy", [False, True])
def test_empty_predictions(numpy):
    e = empty(numpy)
    for out in (
        apply_nms(e),
        classwise_nms(e),
        filter_by_score(e, 0.1),
        unflip_prediction(e, W),
        wbf_predictions([e, e], (H, W)),
        merge_tta([e, e], (H, W), method="nms"),
    ):
        assert tuple(out["boxes"].shape) == (0, 4) and len(out["labels"]) == 0


def test_hflip_twice_is_identity_and_known_values():
    b = torch.tensor([[10.0, 20.0, 110.0, 220.0]])
    assert torch.equal(hflip_boxes(b, 800), torch.tensor([[690.0, 20.0, 790.0, 220.0]]))
    p = make_prediction(4)
    torch.testing.assert_close(
        hflip_boxes(hflip_boxes(p["boxes"], W), W), p["boxes"], atol=1e-4, rtol=0
    )
    ints = p["boxes"].round()  # exact in float32: flipping twice is exactly the identity
    assert torch.equal(hflip_boxes(hflip_boxes(ints, W), W), ints)
    nb = p["boxes"].numpy().copy()
    np.testing.assert_allclose(hflip_boxes(hflip_boxes(nb, W), W), nb, rtol=0, atol=1e-4)
    assert np.array_equal(nb, p["boxes"].numpy())  # input untouched
    flipped = hflip_boxes(nb, W)
    assert np.all(flipped[:, 2] > flipped[:, 0])


def test_wbf_matches_ensemble_boxes():
    preds = [make_prediction(5), make_prediction(6)]
    preds[1]["boxes"] = preds[0]["boxes"] + 3.0  # a second "model" that mostly agrees
    before = copy.deepcopy(preds)
    out = wbf_predictions(preds, (H, W), iou_thr=0.55, weights=[2, 1])
    scale = np.array([W, H, W, H])
    eb, es, el = weighted_boxes_fusion(
        [np.clip(p["boxes"].numpy() / scale, 0, 1) for p in before],
        [p["scores"].numpy() for p in before],
        [p["labels"].numpy() for p in before],
        weights=[2, 1],
        iou_thr=0.55,
    )
    np.testing.assert_allclose(out["boxes"].numpy(), eb * scale, rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(out["scores"].numpy(), es, rtol=1e-6)
    assert out["labels"].dtype == torch.int64
    assert np.array_equal(out["labels"].numpy(), el.astype(np.int64))
    assert set(out["labels"].tolist()) <= set(before[0]["labels"].tolist())
    for a, b in zip(preds, before, strict=True):
        assert_same(a, b)


def test_merge_tta_flip_round_trip():
    p = make_prediction(7)
    flipped_pred = {**p, "boxes": hflip_boxes(p["boxes"], W)}  # a perfectly equivariant model
    back = unflip_prediction(flipped_pred, W)
    torch.testing.assert_close(back["boxes"], p["boxes"])
    merged = merge_tta([p, back], (H, W), method="wbf")
    alone = wbf_predictions([p], (H, W))
    torch.testing.assert_close(merged["boxes"], alone["boxes"], rtol=0, atol=1e-3)
    nms = merge_tta([p, back], (H, W), method="nms", iou_thr=0.5)
    torch.testing.assert_close(nms["boxes"], classwise_nms(p, 0.5)["boxes"])
    with pytest.raises(ValueError, match="method"):
        merge_tta([p], (H, W), method="mean")


def test_bad_input_messages():
    with pytest.raises(KeyError, match="lacks"):
        apply_nms({"boxes": torch.zeros(0, 4)})
    with pytest.raises(ValueError, match="2 boxes, 1 scores"):
        apply_nms({"boxes": torch.zeros(2, 4), "scores": torch.zeros(1), "labels": torch.zeros(2)})


def test_read_only_numpy_input_gives_no_warning():
    """pandas 3 returns read-only arrays from to_numpy(); torch would warn on them."""
    import warnings

    import numpy as np

    from cxrkit.postprocess import apply_nms

    boxes = np.array([[0, 0, 10, 10], [1, 1, 10, 10]], dtype=np.float32)
    boxes.flags.writeable = False
    scores = np.array([0.9, 0.8], dtype=np.float32)
    scores.flags.writeable = False
    labels = np.array([1, 1])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        kept = apply_nms({"boxes": boxes, "scores": scores, "labels": labels}, iou_thresh=0.3)
    assert len(kept["boxes"]) == 1


def test_nms_of_a_table_is_torchvision_per_image_and_class():
    """classwise_nms_table == batched_nms run image by image (predict's final step)."""
    rows = []
    for image in range(3):
        p = make_prediction(10 + image, n=30)
        for box, score, label in zip(p["boxes"], p["scores"], p["labels"], strict=True):
            rows.append({"image_id": f"img{image}", "class_id": int(label) - 1,
                         "score": float(score), **dict(zip(BOX_COLUMNS, box.tolist(), strict=True))})  # fmt: skip
    table = pd.DataFrame(rows)
    kept = classwise_nms_table(table, 0.3)
    expected = []
    for _, part in table.groupby("image_id", sort=False):
        boxes = torch.tensor(part[list(BOX_COLUMNS)].to_numpy())
        keep = torchvision.ops.batched_nms(
            boxes,
            torch.tensor(part["score"].to_numpy()),
            torch.tensor(part["class_id"].to_numpy()),
            0.3,
        )
        expected += part.index[keep.numpy()].tolist()
    assert 0 < len(kept) < len(table)  # the case suppresses something
    assert sorted(kept.index) == sorted(expected)
    assert list(kept.index) == sorted(kept.index)  # rows keep their order
    # two identical boxes on two images never suppress each other
    same = pd.concat([table.iloc[:1].assign(image_id="a"), table.iloc[:1].assign(image_id="b")])
    assert len(classwise_nms_table(same, 0.3)) == 2
    assert classwise_nms_table(table, 1.0).equals(table)  # 1 keeps every box
    with pytest.raises(ValueError, match=r"iou_thresh must be in \(0, 1\]"):
        classwise_nms_table(table, 0.0)
