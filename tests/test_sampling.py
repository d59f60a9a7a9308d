"""Repeat factor sampling: the LVIS factors, the sampler's epochs, and its use in training."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pandas as pd
import pytest

from cxrkit.distributed import DistInfo
from cxrkit.fit import seed_epoch
from cxrkit.sampling import RepeatFactorSampler, expected_class_exposure, repeat_factors
from cxrkit.train import TrainConfig, make_loaders, read_folder, read_training_table


def _table(images: dict[str, list[int]]) -> pd.DataFrame:
    """One row per (image, class); class 14 rows have no box, as in the fused table."""
    rows = []
    for image_id, classes in images.items():
        for c in classes:
            box = (np.nan,) * 4 if c == 14 else (10.0, 10.0, 50.0, 50.0)
            rows.append((image_id, c, *box))
    return pd.DataFrame(rows, columns=["image_id", "class_id", "x_min", "y_min", "x_max", "y_max"])


def test_repeat_factors_follow_lvis_formula():
    # 40 images: class 12 on 1 (2.5 %), class 3 on 11 (27.5 %; one image holds 12 and 3),
    # 29 normal images (72.5 %)
    images = {f"n{i}": [14] for i in range(29)}
    images.update({f"c{i}": [3] for i in range(9)})
    images["both"] = [12, 3]
    images["c9"] = [3]
    factors = repeat_factors(_table(images), threshold=0.1)
    assert list(factors.index) == list(images)  # the table's order
    assert factors["both"] == pytest.approx(math.sqrt(0.1 / (1 / 40)))  # the rarest class wins: 2.0
    assert factors["c0"] == 1.0  # 27.5 % > 10 %: not repeated
    assert factors["n0"] == 1.0
    # a lower threshold repeats less; 1.0 repeats every class on < 100 % of the images
    assert repeat_factors(_table(images), 0.025)["both"] == pytest.approx(1.0)
    assert repeat_factors(_table(images), 1.0)["c0"] == pytest.approx(math.sqrt(40 / 11))


def test_repeat_factors_refuse_bad_thresholds_and_empty_tables():
    table = _table({"a": [3]})
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="threshold"):
            repeat_factors(table, bad)
    with pytest.raises(ValueError, match="empty"):
        repeat_factors(table.iloc[:0], 0.1)


def test_exposure_counts_images_and_their_repeats():
    images = {f"n{i}": [14] for i in range(19)}
    images["rare"] = [12]
    table = _table(images)
    exposure = expected_class_exposure(table, repeat_factors(table, 0.2))
    assert exposure.loc[12, "images"] == 1
    assert exposure.loc[12, "shown_per_epoch"] == pytest.approx(math.sqrt(0.2 / 0.05))  # 2.0
    assert exposure.loc[14, "shown_per_epoch"] == 19


def test_sampler_repeats_each_index_by_its_factor_on_average():
    factors = [1.0, 2.0, 2.5, 1.25]
    sampler = RepeatFactorSampler(factors, seed=3)
    totals: Counter[int] = Counter()
    epochs = 2000
    for _ in range(epochs):
        epoch = list(sampler)
        counts = Counter(epoch)
        # the whole part always, at most one more
        for i, f in enumerate(factors):
            assert math.floor(f) <= counts[i] <= math.ceil(f)
        totals.update(counts)
    for i, f in enumerate(factors):
        # binomial sd of the fractional part over 2000 epochs is <= 0.011 an epoch
        assert totals[i] / epochs == pytest.approx(f, abs=0.05)
    # len() is the length of the epoch about to run, also for a DataLoader's batches
    for _ in range(20):
        n = len(sampler)
        assert abs(n - sum(factors)) <= 2 and len(list(sampler)) == n


def test_sampler_is_seeded_and_shuffles():
    a = [list(RepeatFactorSampler([1.0] * 50 + [3.0], seed=7)) for _ in range(2)]
    b = list(RepeatFactorSampler([1.0] * 50 + [3.0], seed=7))
    assert a[0] == b  # same seed, same first epoch
    assert a[0] != sorted(a[0])  # shuffled
    sampler = RepeatFactorSampler([1.0] * 50 + [3.0], seed=7)
    assert list(sampler) != list(sampler)  # the next epoch differs
    # asking for the length first draws the same epochs
    asked = RepeatFactorSampler([1.0] * 50 + [3.0], seed=7)
    assert len(asked) > 0 and list(asked) == b


def test_an_epoch_depends_on_seed_and_epoch_only_so_resume_is_exact():
    factors = [1.0] * 30 + [2.6, 1.4]
    running = RepeatFactorSampler(factors, seed=5)
    epochs = {}
    for epoch in (1, 2, 3):
        running.set_epoch(epoch)
        len(running)  # a progress bar asks for the length first
        epochs[epoch] = list(running)
    resumed = RepeatFactorSampler(factors, seed=5)  # a new process, resuming at epoch 3
    resumed.set_epoch(3)
    assert list(resumed) == epochs[3]
    assert epochs[2] != epochs[3]


@pytest.mark.parametrize("bad", [[], [0.5, 1.0], [1.0, float("nan")]])
def test_sampler_refuses_factors_below_one(bad):
    with pytest.raises(ValueError, match="factor"):
        RepeatFactorSampler(bad)


def test_training_loader_repeats_the_rare_images(preprocessed, sample_data):
    image_dir, meta = read_folder(preprocessed)
    table = read_training_table(sample_data / "train.csv", meta)
    ids = table["image_id"].astype(str).unique()
    split = (list(ids[:-10]), list(ids[-10:]))
    cfg = TrainConfig(size=64, repeat_threshold=0.3).resolved()
    train_loader, _ = make_loaders(table, meta, image_dir, split, cfg, DistInfo())
    sampler = train_loader.sampler
    assert isinstance(sampler, RepeatFactorSampler)
    train_ids = train_loader.dataset.image_ids
    expected = repeat_factors(table[table["image_id"].astype(str).isin(split[0])], 0.3)
    seen = Counter(train_ids[i] for i in sampler)
    for image_id, factor in expected.items():
        assert math.floor(factor) <= seen[image_id] <= math.ceil(factor), image_id
    assert expected.max() > 1.5  # some images really are repeated at this threshold
    batches = len(train_loader)  # the progress bar's total is the epoch's true length
    assert sum(1 for _ in train_loader) == batches
    # fit seeds each epoch through seed_epoch, which reaches the sampler's set_epoch
    orders = []
    for _ in range(2):
        seed_epoch(train_loader, cfg.seed, 4)
        orders.append(list(train_loader.sampler))
    assert orders[0] == orders[1]
    with pytest.raises(ValueError, match="torchrun"):
        make_loaders(table, meta, image_dir, split, cfg, DistInfo(rank=0, world_size=2))


def test_cli_option_reaches_the_training_settings():
    from cxrkit.cli import build_parser
    from cxrkit.config import TrainConfig, typed_settings

    parser = build_parser()

    def config(*options: str) -> TrainConfig:
        args = parser.parse_args(["train", "data", "train.csv", "--out", "run", *options])
        return TrainConfig(**typed_settings(args))

    assert config("--repeat-threshold", "0.1").repeat_threshold == 0.1
    assert config().repeat_threshold == "auto"  # decided from the training images
    assert config("--repeat-threshold", "off").repeat_threshold is None
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "d", "t.csv", "--out", "r", "--repeat-threshold", "1.5"])
