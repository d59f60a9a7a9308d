"""Datasets, collate and the stratified split, on tiny hand-made data and on the sample."""

from __future__ import annotations

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader

from cxrkit.data import (
    DatasetError,
    TestDataset,
    XrayDataset,
    collate_fn,
    split,
    worker_init_fn,
)
from cxrkit.transforms import train_transforms, valid_transforms

COLUMNS = ["image_id", "class_name", "class_id", "rad_id", "x_min", "y_min", "x_max", "y_max"]
NAMES = {0: "Aortic enlargement", 3: "Cardiomegaly", 8: "Nodule/Mass", 14: "No finding"}


def _row(image_id, class_id, box=(np.nan,) * 4, rad="R1"):
    return [image_id, NAMES[class_id], class_id, rad, *box]


@pytest.fixture()
def tiny(tmp_path):
    """3 images, originals 200 rows x 160 cols (and 100 x 100), PNGs 64 x 64 in train/."""
    image_dir = tmp_path / "train"
    image_dir.mkdir()
    for i, image_id in enumerate(["a", "b", "c"]):
        cv2.imwrite(str(image_dir / f"{image_id}.png"), np.full((64, 64), 50 * i, np.uint8))
    pd.DataFrame(
        {"image_id": ["a", "b", "c"], "dim0": [200, 200, 100], "dim1": [160, 160, 100]}
    ).to_csv(tmp_path / "train_meta.csv", index=False)
    annotations = pd.DataFrame(
        [
            _row("a", 3, (40, 50, 120, 150)),
            _row("a", 8, (0, 0, 16, 20), rad="R2"),
            _row("a", 14, rad="R3"),  # one radiologist saw nothing: ignored, "a" has boxes
            _row("b", 14),
            _row("b", 14, rad="R2"),
            _row("c", 0, (90, 10, 130, 50)),  # sticks out of the 100 x 100 image: clipped
        ],
        columns=COLUMNS,
    )
    return annotations, image_dir


def test_targets_are_rescaled_with_the_meta_table(tiny):
    annotations, image_dir = tiny
    ds = XrayDataset(annotations, image_dir)
    assert len(ds) == 3 and ds.image_ids == ["a", "b", "c"]
    image, target, image_id = ds[0]
    assert image_id == "a"
    assert image.dtype == torch.float32 and tuple(image.shape) == (3, 64, 64)
    assert float(image.min()) >= 0 and float(image.max()) <= 1
    sx, sy = 64 / 160, 64 / 200  # per axis: width from dim1, height from dim0
    expected = np.array([[40 * sx, 50 * sy, 120 * sx, 150 * sy], [0, 0, 16 * sx, 20 * sy]])
    np.testing.assert_allclose(target["boxes"].numpy(), expected, rtol=1e-6)
    assert target["boxes"].dtype == torch.float32
    assert target["labels"].tolist() == [4, 9]  # class_id + 1
    assert target["labels"].dtype == torch.int64
    assert target["image_id"].tolist() == [0] and target["image_id"].dtype == torch.int64
    np.testing.assert_allclose(
        target["area"].numpy(),
        (expected[:, 2] - expected[:, 0]) * (expected[:, 3] - expected[:, 1]),
    )
    assert target["iscrowd"].tolist() == [0, 0]


def test_negatives_have_empty_targets_or_are_dropped(tiny):
    annotations, image_dir = tiny
    _, target, image_id = XrayDataset(annotations, image_dir)[1]
    assert image_id == "b"
    assert tuple(target["boxes"].shape) == (0, 4) and target["boxes"].dtype == torch.float32
    assert target["labels"].shape == (0,) and target["area"].shape == (0,)
    assert XrayDataset(annotations, image_dir, keep_negatives=False).image_ids == ["a", "c"]


def test_boxes_outside_the_image_are_clipped(tiny):
    annotations, image_dir = tiny
    _, target, _ = XrayDataset(annotations, image_dir)[2]
    s = 64 / 100
    np.testing.assert_allclose(target["boxes"].numpy(), [[90 * s, 10 * s, 64, 50 * s]], rtol=1e-6)


def test_gray_pixels_are_replicated_to_three_channels(tiny):
    annotations, image_dir = tiny
    image, _, _ = XrayDataset(annotations, image_dir)[2]
    assert torch.equal(image[0], image[1]) and torch.equal(image[1], image[2])
    assert torch.allclose(image[0], torch.full((64, 64), 100 / 255))


def test_missing_meta_rows_and_missing_images_are_clear_errors(tiny, tmp_path):
    annotations, image_dir = tiny
    extra = pd.concat([annotations, pd.DataFrame([_row("zz", 14)], columns=COLUMNS)])
    with pytest.raises(DatasetError, match="zz"):
        XrayDataset(extra, image_dir)
    (image_dir / "b.png").unlink()
    (image_dir / "c.png").write_bytes(b"not a png")
    ds = XrayDataset(annotations, image_dir)
    with pytest.raises(DatasetError, match=r"b\.png.*does not exist"):
        ds[1]
    with pytest.raises(DatasetError, match=r"c\.png.*cannot be decoded"):
        ds[2]
    with pytest.raises(DatasetError, match="meta"):
        XrayDataset(annotations, tmp_path / "elsewhere")


def test_transforms_and_collate_in_a_dataloader(tiny):
    annotations, image_dir = tiny
    ds = XrayDataset(annotations, image_dir, transforms=valid_transforms(32))
    images, targets, ids = next(iter(DataLoader(ds, batch_size=3, collate_fn=collate_fn)))
    assert ids == ("a", "b", "c")
    assert all(tuple(im.shape) == (3, 32, 32) and im.dtype == torch.float32 for im in images)
    np.testing.assert_allclose(
        targets[0]["boxes"].numpy(),
        XrayDataset(annotations, image_dir)[0][1]["boxes"].numpy() / 2,
        rtol=1e-5,
    )  # 64 -> 32 px
    assert targets[1]["boxes"].shape == (0, 4)


def test_worker_init_fn_gives_each_worker_its_own_augmentations(tmp_path):
    """Without reseeding, two workers would return identical augmented images."""
    image_dir = tmp_path / "train"
    image_dir.mkdir()
    rng = np.random.default_rng(0)
    cv2.imwrite(str(image_dir / "x.png"), rng.integers(0, 255, (64, 64), dtype=np.uint8))
    pd.DataFrame({"image_id": ["x"], "dim0": [64], "dim1": [64]}).to_csv(
        tmp_path / "train_meta.csv", index=False
    )
    annotations = pd.DataFrame([_row("x", 3, (10, 10, 40, 40))] * 1, columns=COLUMNS)

    class Twice(XrayDataset):
        def __len__(self):
            return 2

        def __getitem__(self, index):
            return super().__getitem__(0)

    ds = Twice(annotations, image_dir, transforms=train_transforms(64, seed=0))
    torch.manual_seed(0)
    loader = DataLoader(
        ds, batch_size=1, num_workers=2, collate_fn=collate_fn, worker_init_fn=worker_init_fn
    )
    (a, *_), (b, *_) = list(loader)
    assert not torch.equal(a[0], b[0])


def test_test_dataset_lists_pngs_and_returns_png_size(tiny, tmp_path):
    _, image_dir = tiny
    ds = TestDataset(image_dir)
    assert ds.image_ids == ["a", "b", "c"]
    image, image_id, hw = ds[1]
    assert image_id == "b" and hw == (64, 64) and tuple(image.shape) == (3, 64, 64)
    from cxrkit.transforms import test_transforms

    image, _, hw = TestDataset(image_dir, ids=["c"], transforms=test_transforms(32))[0]
    assert tuple(image.shape) == (3, 32, 32) and hw == (64, 64)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetError, match="no .png"):
        TestDataset(empty)


def test_collate_fn_transposes_the_batch():
    assert collate_fn([(1, "a", 3), (2, "b", 4)]) == ((1, 2), ("a", "b"), (3, 4))


# --------------------------------------------------------------------------- split


def _rare_table() -> pd.DataFrame:
    """40 images: 30 normal, 6 with Cardiomegaly, 2 with a Nodule, 2 with Aortic
    enlargement (one of them also Cardiomegaly)."""
    rows = [_row(f"n{i:02d}", 14) for i in range(30)]
    rows += [_row(f"c{i}", 3, (1, 1, 5, 5)) for i in range(6)]
    rows += [_row("m0", 8, (1, 1, 5, 5)), _row("m1", 8, (1, 1, 5, 5))]
    rows += [_row("a0", 0, (1, 1, 5, 5)), _row("c0", 0, (2, 2, 6, 6)), _row("a1", 0, (1, 1, 5, 5))]
    return pd.DataFrame(rows, columns=COLUMNS)


def _classes(df: pd.DataFrame, ids: list[str]) -> pd.Series:
    return df[df["image_id"].isin(ids)].groupby("class_id")["image_id"].nunique()


@pytest.mark.parametrize("seed", [0, 1, 42])
def test_split_puts_rare_classes_on_both_sides(seed):
    df = _rare_table()
    train_ids, valid_ids = split(df, valid_fraction=0.2, seed=seed)
    assert not set(train_ids) & set(valid_ids)
    assert set(train_ids) | set(valid_ids) == set(df["image_id"])
    assert 6 <= len(valid_ids) <= 10  # about 20 % of 40
    for ids in (train_ids, valid_ids):
        present = _classes(df, ids)
        for c in (0, 3, 8, 14):
            assert present.get(c, 0) >= 1, (c, ids)


def test_split_is_deterministic_for_a_seed():
    df = _rare_table()
    assert split(df, seed=5) == split(df, seed=5)
    assert {tuple(split(df, seed=s)[1]) for s in range(5)}.__len__() > 1


def test_split_rejects_bad_fractions():
    with pytest.raises(ValueError, match="valid_fraction"):
        split(_rare_table(), valid_fraction=1.0)


def test_split_on_the_sample(sample_data):
    from cxrkit.annotations import image_class_sets, load_annotations

    df = load_annotations(sample_data / "train.csv")
    train_ids, valid_ids = split(df, valid_fraction=0.25, seed=0)
    assert not set(train_ids) & set(valid_ids)
    assert sorted(train_ids + valid_ids) == sorted(df["image_id"].unique())
    n = df["image_id"].nunique()
    assert abs(len(valid_ids) - 0.25 * n) <= max(2, 0.1 * n)
    sets = image_class_sets(df)
    for c in {c for s in sets for c in s}:
        on = [i for i, s in sets.items() if c in s]
        if len(on) >= 2 and len(on) >= 4:  # common enough that both sides must have it
            assert set(on) & set(valid_ids) and set(on) & set(train_ids), c


def test_dataset_on_the_preprocessed_sample(sample_data, preprocessed):
    from cxrkit.annotations import load_annotations

    df = load_annotations(sample_data / "train.csv")
    ds = XrayDataset(df, preprocessed / "train", transforms=train_transforms(256, seed=0))
    assert len(ds) == df["image_id"].nunique()
    for i in range(len(ds)):
        image, target, _ = ds[i]
        assert tuple(image.shape) == (3, 256, 256)
        assert len(target["boxes"]) == len(target["labels"])
        assert (target["labels"] >= 1).all() and (target["labels"] <= 14).all()
