"""The time budget: epochs planned from measured steps, honoured, and resumed exactly."""

from __future__ import annotations

import time

import pandas as pd
import pytest
import torch
from helpers import crash_in_epoch, loaders, run_main, small_model

import cxrkit.budget
import cxrkit.fit
from cxrkit.budget import EpochCost, budget_minutes, measure_epoch, plan_epochs
from cxrkit.checkpoints import load_checkpoint
from cxrkit.config import AUTO_REPEAT_THRESHOLD, DEFAULT_MINUTES, TrainConfig
from cxrkit.models import model_from_checkpoint
from cxrkit.sampling import choose_repeat_threshold
from cxrkit.train import train_from_folder

CPU = torch.device("cpu")


def test_the_plan_fills_the_budget_within_one_epoch_and_the_models_ceiling():
    cost = EpochCost(step_s=0.5, steps=20, valid_batch_s=0.25, valid_batches=4, save_s=0.0)
    assert cost.seconds == 11.0
    epochs, why = plan_epochs(2, 10.0, cost, max_epochs=60)
    assert epochs == int(0.95 * 110 / 11) == 9
    assert why.startswith("epochs 9: an epoch takes about 11.0 s here") and "1.8 min left" in why
    assert plan_epochs(60, 0.0, cost, max_epochs=60)[0] == 60  # 310 would fit: capped
    assert "capped at the model's max_epochs 60" in plan_epochs(60, 0.0, cost, 60)[1]
    one, why = plan_epochs(0.1, 5.0, cost, max_epochs=60)  # not even one epoch fits
    assert one == 1 and "training one epoch anyway" in why


def test_the_default_budget_depends_on_the_device_and_an_asked_one_wins():
    minutes, why = budget_minutes(None, CPU)
    assert minutes == DEFAULT_MINUTES["cpu"] == 10
    assert why == "the default budget on a CPU of 10 minutes (--minutes)"
    assert budget_minutes(None, torch.device("cuda"))[0] == DEFAULT_MINUTES["cuda"] == 60
    assert budget_minutes(2.5, CPU) == (2.5, "the 2.5-minute budget asked for")


def test_measuring_leaves_the_model_untouched(fused, preprocessed):
    train, valid = loaders(fused, preprocessed, size=64)
    model = small_model(64)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cost = measure_epoch(model, train, valid, CPU)
    assert cost.step_s > 0 and cost.valid_batch_s > 0 and cost.save_s > 0
    assert cost.steps == len(train) and cost.valid_batches == len(valid)
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name


def test_auto_repeat_sampling_turns_on_only_for_rare_classes():
    def table(counts: dict[int, int], n_images: int) -> pd.DataFrame:
        rows, image = [], 0
        for class_id, n in counts.items():
            for _ in range(n):
                rows.append({"image_id": f"i{image}", "class_id": class_id})
                image += 1
        rows += [{"image_id": f"i{i}", "class_id": 14} for i in range(image, n_images)]
        return pd.DataFrame(rows).assign(x_min=0.0, y_min=0.0, x_max=1.0, y_max=1.0)

    rare = table({3: 30, 8: 5}, 100)  # Nodule/Mass on 5 % of the images
    threshold, why = choose_repeat_threshold(rare, "auto", AUTO_REPEAT_THRESHOLD)
    assert threshold == AUTO_REPEAT_THRESHOLD
    assert "1 class(es) on fewer than 10% of the 100 training images (Nodule/Mass on 5)" in why
    common = table({3: 30, 8: 20}, 100)
    assert choose_repeat_threshold(common, "auto", AUTO_REPEAT_THRESHOLD)[0] is None
    assert choose_repeat_threshold(rare, None, AUTO_REPEAT_THRESHOLD)[0] is None  # off wins
    assert choose_repeat_threshold(common, 0.3, AUTO_REPEAT_THRESHOLD)[0] == 0.3


def test_train_without_epochs_plans_them_and_the_help_states_the_default():
    assert TrainConfig().resolved().epochs is None  # planned when the run starts
    assert TrainConfig().resolved().size == "auto"  # cxr_small: from the training boxes
    text = " ".join(run_main("train", "--help").stdout.split())
    assert "--minutes M time budget of the run in minutes" in text
    assert "(default: 10 on a CPU, 60 on a GPU)" in text
    assert "as many as fit the time budget" in text


def test_a_tiny_budget_ends_in_time_with_a_loadable_checkpoint(
    sample_data, preprocessed, tmp_path, capsys
):
    minutes = 0.25
    start = time.monotonic()
    run = train_from_folder(
        preprocessed, sample_data / "train.csv", tmp_path / "run", size=64, minutes=minutes
    )
    seconds = time.monotonic() - start
    history = pd.read_csv(tmp_path / "run" / "history.csv")
    # the plan leaves 5 % of the time; a last epoch slower than measured may overrun by a bit
    assert seconds <= minutes * 60 + history["seconds"].max(), (seconds, history)
    planned = load_checkpoint(run.last)["config"]["epochs"]
    printed = capsys.readouterr().out
    assert f"epochs {planned}: an epoch takes about" in printed, printed
    assert planned >= 2 and len(history) == run.epochs_done
    # the plan keeps 5 % in hand, but the first steps time an untrained model (its
    # validation finds fewer boxes): on tiny epochs the time limit may drop a few
    assert run.epochs_done >= 0.8 * planned, printed
    model = model_from_checkpoint(run.best)
    assert sum(p.numel() for p in model.parameters()) > 0


@pytest.mark.slow
def test_a_budgeted_run_resumed_after_a_crash_ends_as_the_uninterrupted_one(
    sample_data, preprocessed, tmp_path, monkeypatch, capsys
):
    """The plan is saved with the run: the resume finishes it, bit for bit."""
    # Both runs must plan the same epochs: the measurement is fixed at 20 s an epoch
    # (2 fit into 95 % of a minute less the start-up); the real epochs take about 2 s.
    fixed = EpochCost(step_s=4.0, steps=5, valid_batch_s=0.0, valid_batches=0, save_s=0.0)
    monkeypatch.setattr(cxrkit.budget, "measure_epoch", lambda *a, **k: fixed)
    csv, settings = sample_data / "train.csv", {"size": 64, "minutes": 1.0, "seed": 5}
    straight = train_from_folder(preprocessed, csv, tmp_path / "a", **settings)
    planned = straight.epochs_done
    assert planned == load_checkpoint(straight.last)["config"]["epochs"] >= 2

    real_epoch = crash_in_epoch(monkeypatch, 2)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train_from_folder(preprocessed, csv, tmp_path / "b", **settings)
    monkeypatch.setattr(cxrkit.fit, "train_one_epoch", real_epoch)
    capsys.readouterr()
    resumed = train_from_folder(preprocessed, csv, tmp_path / "b", resume=True, **settings)
    assert f"epochs {planned}: the plan of the run being resumed" in capsys.readouterr().out
    assert resumed.epochs_done == planned
    a, b = load_checkpoint(straight.last)["model"], load_checkpoint(resumed.last)["model"]
    for name, value in a.items():
        assert torch.equal(value, b[name]), name


def test_a_classifier_without_epochs_plans_them_from_its_budget(
    sample_data, preprocessed, tmp_path, capsys
):
    from cxrkit.classifier import train_classifier

    minutes = 0.2
    start = time.monotonic()
    run = train_classifier(
        preprocessed, sample_data / "train.csv", tmp_path / "cls", size=64, batch_size=8,
        minutes=minutes,
    )  # fmt: skip
    seconds = time.monotonic() - start
    printed = capsys.readouterr().out
    planned = load_checkpoint(run.last)["config"]["epochs"]
    assert f"epochs {planned}: an epoch takes about" in printed, printed
    assert run.epochs_done == planned >= 2
    assert seconds <= minutes * 60 + run.history["seconds"].max()


def test_max_minutes_the_older_name_is_the_budget_too(
    sample_data, preprocessed, tmp_path, monkeypatch
):
    """train_from_folder(max_minutes=1) without epochs plans for 1 minute, not the default 10."""
    fixed = EpochCost(step_s=4.0, steps=5, valid_batch_s=0.0, valid_batches=0, save_s=0.0)
    monkeypatch.setattr(cxrkit.budget, "measure_epoch", lambda *a, **k: fixed)
    run = train_from_folder(
        preprocessed, sample_data / "train.csv", tmp_path / "run", size=64, max_minutes=1
    )
    assert load_checkpoint(run.last)["config"]["epochs"] == 2  # 95 % of ~1 min / 20 s


def test_training_cost_is_measured_and_leaves_the_random_numbers_alone():
    """The line notebooks 04 and 07 print before they train: steps times a measured step."""
    torch.manual_seed(3)
    expected = torch.rand(3)
    torch.manual_seed(3)
    line = cxrkit.budget.training_cost("cxr_small", 64, 2, 15, CPU, what="a test")
    assert torch.equal(torch.rand(3), expected)  # building and stepping a model drew nothing
    assert line.startswith("a test: 15 image passes = 8 steps of 2 images at 64 px, about ")
    seconds = float(line.split("(")[2].split(" s a step")[0])
    assert 0 < seconds < 30 and "this CPU (" in line and "AMP" not in line
