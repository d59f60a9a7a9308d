"""fit: exact resume, and a resume refuses other settings (one saved config dict)."""

from __future__ import annotations

from dataclasses import asdict

import pandas as pd
import pytest
import torch
from helpers import loaders, small_model

from cxrkit.fit import ResumeError, fit, make_optimizer, make_scheduler
from cxrkit.models import build_model
from cxrkit.train import TrainConfig, train_from_folder

torch.set_num_threads(1)
CPU = torch.device("cpu")


def _fit(model, train, valid, out, epochs, *, lr=0.01, schedule="step", step_size=3, **kw):
    optimizer = make_optimizer(model, lr=lr)
    scheduler = make_scheduler(optimizer, schedule, epochs, step_size=step_size)
    return fit(model, train, valid, out, epochs, CPU, optimizer, scheduler, **kw)


@pytest.mark.slow
def test_fit_resume_gives_the_same_weights(fused, preprocessed, tmp_path):
    """Interrupt after epoch 1, resume: bit-identical to an uninterrupted 2-epoch run."""
    kw = {"lr": 0.01, "warmup_iters": 2, "step_size": 1, "seed": 3}
    train, valid = loaders(fused, preprocessed)
    straight = small_model()
    result = _fit(straight, train, valid, tmp_path / "a", 2, **kw)
    assert result.epochs_done == 2

    train, valid = loaders(fused, preprocessed)
    _fit(small_model(), train, valid, tmp_path / "b", 1, **kw)  # "interrupted"
    torch.manual_seed(123)  # the resumed process starts from other random numbers
    train, valid = loaders(fused, preprocessed)
    resumed = build_model("cxr_small", min_size=128, max_size=128)
    again = _fit(resumed, train, valid, tmp_path / "b", 2, resume=True, **kw)
    assert again.epochs_done == 2
    for (name, a), b in zip(straight.named_parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b), name

    history = pd.read_csv(tmp_path / "b" / "history.csv")
    assert history["epoch"].tolist() == [1, 2]
    assert {"loss", "lr", "val_map", "seconds", "loss_classifier"} <= set(history.columns)
    best = torch.load(tmp_path / "b" / "best.pt", weights_only=True)
    assert best["epoch"] == int(history["val_map"].idxmax()) + 1  # best by validation mAP


@pytest.mark.slow
def test_resume_refuses_other_settings(fused, preprocessed, tmp_path):
    """The saved optimizer/scheduler would silently override a new rate or schedule."""
    kw = {"lr": 0.01, "seed": 3, "schedule": "cosine"}
    train, _ = loaders(fused, preprocessed, size=64)
    _fit(small_model(64), train, None, tmp_path, 1, **kw)

    def resume(epochs, **changes):
        return _fit(small_model(64), train, None, tmp_path, epochs, resume=True,
                    **{**kw, **changes})  # fmt: skip

    with pytest.raises(ResumeError, match="planned for 1 epochs .* would rise again"):
        resume(3)
    with pytest.raises(ResumeError, match="schedule: the run used 'cosine'"):
        resume(1, schedule="step")
    with pytest.raises(ResumeError, match="lr: the run used 0.01, this call asks for 0.02"):
        resume(1, lr=0.02)
    with pytest.raises(ResumeError, match="seed: the run used 3"):
        resume(1, seed=4)
    with pytest.raises(ResumeError, match="warmup_iters: the run used 0, this call asks for 5"):
        resume(1, warmup_iters=5)
    assert resume(1).epochs_done == 1  # same settings: nothing left to do, no error


@pytest.mark.slow
def test_train_config_is_saved_and_a_resume_names_each_changed_field(
    sample_data, preprocessed, tmp_path
):
    cfg = TrainConfig(epochs=1, size=64, batch_size=4, seed=1)
    run = tmp_path / "run"
    train_from_folder(preprocessed, sample_data / "train.csv", run, cfg)
    saved = torch.load(run / "last.pt", weights_only=True)["config"]
    resolved = asdict(cfg.resolved())
    assert resolved.pop("repeat_threshold") == "auto"  # decided when the run starts:
    assert saved["repeat_threshold"] in (None, 0.1)  # saved as decided, never "auto"
    assert resolved.items() <= saved.items()  # every other field, defaults resolved
    assert saved["lr"] == 0.02 and saved["schedule"] == "cosine"  # cxr_small's defaults
    assert saved["world_size"] == 1 and saved["data_dir"] == str(preprocessed)

    with pytest.raises(ResumeError) as info:
        train_from_folder(
            preprocessed, sample_data / "train.csv", run, cfg, resume=True,
            batch_size=2, momentum=0.5,
        )  # fmt: skip
    msg = str(info.value)
    assert "batch_size: the run used 4, this call asks for 2" in msg
    assert "momentum: the run used 0.9, this call asks for 0.5" in msg
    # settings that may change: the epochs of a step schedule, the worker count, paths
    with pytest.raises(ResumeError, match="epochs: the cosine schedule was planned for 1"):
        train_from_folder(preprocessed, sample_data / "train.csv", run, cfg, resume=True, epochs=2)
    again = train_from_folder(
        preprocessed, sample_data / "train.csv", run, cfg, resume=True, num_workers=0
    )
    assert again.epochs_done == 1
    # the same images and classes with other boxes: a resume would train on them silently
    moved = pd.read_csv(sample_data / "train.csv")
    moved["x_max"] = moved["x_max"] - 1
    other = tmp_path / "moved.csv"
    moved.to_csv(other, index=False)
    with pytest.raises(ResumeError, match="annotations_digest: .*boxes or images changed"):
        train_from_folder(preprocessed, other, run, cfg, resume=True)


def test_train_config_defaults_per_model():
    small = TrainConfig().resolved()
    assert (small.size, small.lr, small.schedule, small.warmup_iters) == (
        "auto",
        0.02,
        "cosine",
        50,
    )
    assert small.epochs is None and small.repeat_threshold == "auto"  # decided by the run
    seed = TrainConfig(model_name="fasterrcnn_resnet50_fpn", lr=0.01, weights="coco.pth")
    seed = seed.resolved()
    assert (seed.size, seed.lr, seed.schedule, seed.max_grad_norm) == (512, 0.01, "step", None)
    scratch = TrainConfig(model_name="fasterrcnn_resnet50_fpn").resolved()  # no COCO weights
    assert (scratch.warmup_iters, scratch.max_grad_norm) == (50, 10.0)
    assert TrainConfig(size=0).resolved().size == "auto"  # --size 0 meant the default
    assert TrainConfig(model_name="fasterrcnn_resnet50_fpn", size=0).resolved().size == 512


# ------------------------------------------------------------ fit with another task
def _toy_data(n: int = 16, size: int = 32):
    """Random images whose label is whether their mean is positive: a task fit knows nothing of."""
    g = torch.Generator().manual_seed(0)
    images = (
        torch.randn(n, 3, size, size, generator=g)
        + torch.linspace(-0.5, 0.5, n)[:, None, None, None]
    )
    labels = (images.mean(dim=(1, 2, 3)) > 0).float()
    ids = [f"t{i}" for i in range(n)]
    return [(images[i : i + 4], labels[i : i + 4], ids[i : i + 4]) for i in range(0, n, 4)]


def _accuracy(model, loader, device):
    model.eval()
    with torch.no_grad():
        hits = [((model(x).squeeze(1) > 0).float() == y).float().mean() for x, y, _ in loader]
    return float(torch.stack(hits).mean())


def _toy_task(loss=None):
    from cxrkit.classifier import classifier_losses
    from cxrkit.fit import Task

    losses = classifier_losses(loss or torch.nn.BCEWithLogitsLoss())
    return Task(losses, _accuracy, metric="acc", metric_label="accuracy")


def _toy_fit(out, epochs, **kw):
    from cxrkit.classifier import build_classifier

    torch.manual_seed(0)
    model = build_classifier("cls_small")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=2)
    data = _toy_data()
    kw = {"task": _toy_task(), **kw}
    return model, fit(model, data, data, out, epochs, CPU, optimizer, scheduler, **kw)


def test_fit_trains_any_task_and_names_its_metric(tmp_path):
    model, result = _toy_fit(tmp_path / "a", 2, warmup_iters=2, max_grad_norm=1.0)
    assert result.metric == "acc" and result.epochs_done == 2
    assert list(result.history.columns) == ["epoch", "loss", "lr", "val_acc", "seconds"]
    assert result.best_score == result.history["val_acc"].max()
    assert "best validation accuracy" in str(result)
    with pytest.raises(AttributeError, match="validated by 'acc'"):
        _ = result.best_map
    best = torch.load(result.best, weights_only=True)
    assert best["best_acc"] == result.best_score and best["kind"] == "classifier"
    assert best["config"]["max_grad_norm"] == 1.0 and "best_map" not in best

    _toy_fit(tmp_path / "b", 1, warmup_iters=2, max_grad_norm=1.0)  # "interrupted"
    resumed, again = _toy_fit(tmp_path / "b", 2, warmup_iters=2, max_grad_norm=1.0, resume=True)
    assert again.epochs_done == 2 and again.best_score == result.best_score
    for (name, a), b in zip(model.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), name  # exact resume, whatever the task


def test_fit_stops_on_a_non_finite_loss_and_saves_nothing_of_it(tmp_path):
    from cxrkit.errors import NonFiniteLossError

    def nan_loss(logits, labels):
        return (logits - labels).mean() * float("nan")

    with pytest.raises(NonFiniteLossError, match="epoch 1, iteration 0.*t0"):
        _toy_fit(tmp_path, 1, task=_toy_task(nan_loss))
    assert not (tmp_path / "best.pt").exists() and not (tmp_path / "last.pt").exists()


def test_fit_takes_the_truth_with_the_task_not_beside_it(tmp_path):
    from cxrkit.errors import ConfigError

    with pytest.raises(ConfigError, match="detection task"):
        _toy_fit(tmp_path, 1, valid_truth=pd.DataFrame())
    with pytest.raises(ConfigError, match="schedule must be"):
        make_scheduler(make_optimizer(small_model(64)), "linear")
