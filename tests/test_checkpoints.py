"""Checkpoints written before the engine/fit/train split (format version 1) still work.

The version 1 file is built here by hand with exactly the keys that cxrkit wrote
then (``fit`` of commit b8d1809: ``save_checkpoint(..., best_map=, best_epoch=,
seed=, history_rows=, train_args=, size=)``, ``version`` 1), so the test does
not depend on old code being around.
"""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from cxrkit.checkpoints import (
    CHECKPOINT_FORMAT,
    CheckpointError,
    checkpoint_size,
    load_checkpoint,
    rng_state,
    save_checkpoint,
)
from cxrkit.fit import ResumeError, fit, make_optimizer, make_scheduler
from cxrkit.models import build_model, model_from_checkpoint

torch.set_num_threads(1)
CPU = torch.device("cpu")
SIZE = 64


def _model():
    torch.manual_seed(0)
    return build_model("cxr_small", min_size=SIZE, max_size=SIZE)


def _version1_checkpoint(path, epoch=1):
    """What ``fit(..., lr=0.01, step_size=3, seed=3)`` of cxrkit before the split saved."""
    model = _model()
    optimizer = make_optimizer(model, lr=0.01)
    scheduler = make_scheduler(optimizer, "step", epochs=2)
    for _ in range(epoch):
        optimizer.step()
        scheduler.step()
    train_args = {
        "data_dir": "/somewhere/pre", "annotations_csv": "/somewhere/train.csv",
        "model_name": "cxr_small", "epochs": 2, "batch_size": 4, "weights": None,
        "lr": 0.01, "valid_fraction": 0.2, "seed": 3, "size": SIZE, "world_size": 1,
    }  # fmt: skip
    state = {
        "format": CHECKPOINT_FORMAT,
        "version": 1,
        "model_name": "cxr_small",
        "num_classes": 15,
        "model_config": dict(model.cxrkit_config),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "epoch": epoch,
        "rng": rng_state(),
        "best_map": 0.1,
        "best_epoch": 1,
        "seed": 3,
        "history_rows": epoch,
        "train_args": train_args,
        "size": SIZE,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    pd.DataFrame({"epoch": range(1, epoch + 1), "loss": 1.0}).to_csv(
        path.parent / "history.csv", index=False
    )
    return model


def test_version1_checkpoint_loads_and_rebuilds(tmp_path):
    path = tmp_path / "run" / "last.pt"
    model = _version1_checkpoint(path)
    ckpt = load_checkpoint(path, _model())
    assert ckpt["version"] == 1 and ckpt["epoch"] == 1
    # its settings in today's place (notebook 05 reads ckpt["config"]["size"])
    assert ckpt["config"]["size"] == SIZE and ckpt["config"]["seed"] == 3
    assert ckpt["config"]["schedule"] == "step" and ckpt["config"]["lr"] == 0.01
    rebuilt = model_from_checkpoint(path)
    for a, b in zip(model.state_dict().values(), rebuilt.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert checkpoint_size(ckpt) == SIZE  # predict_to_submission's image size


def test_version1_checkpoint_resumes_and_checks_its_settings(fused_loader, tmp_path):
    path = tmp_path / "run" / "last.pt"
    _version1_checkpoint(path)

    def resume(lr=0.01, seed=3, config=None):
        model = _model()
        optimizer = make_optimizer(model, lr=lr)
        scheduler = make_scheduler(optimizer, "step", epochs=2)
        return fit(model, fused_loader, None, path.parent, 2, CPU, optimizer, scheduler,
                   resume=True, seed=seed, config=config)  # fmt: skip

    with pytest.raises(ResumeError) as info:
        resume(lr=0.02, seed=4, config={"size": 128})
    msg = str(info.value)
    assert "lr: the run used 0.01, this call asks for 0.02" in msg
    assert "seed: the run used 3, this call asks for 4" in msg
    assert "size: the run used 64, this call asks for 128" in msg  # from train_args
    result = resume(config={"size": SIZE})
    assert result.epochs_done == 2
    new = torch.load(path, weights_only=True)
    assert new["version"] == 2 and new["config"]["seed"] == 3 and new["epoch"] == 2


def test_a_newer_format_is_refused_clearly(tmp_path):
    path = save_checkpoint(tmp_path / "c.pt", _model())
    ckpt = torch.load(path, weights_only=True)
    torch.save({**ckpt, "version": 99}, path)
    with pytest.raises(CheckpointError, match="version 99, written by a newer cxrkit"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="upgrade cxrkit"):
        model_from_checkpoint(path)


@pytest.fixture
def fused_loader(sample_data, preprocessed):
    from torch.utils.data import DataLoader

    from cxrkit.annotations import fuse_boxes, load_annotations, load_meta
    from cxrkit.data import XrayDataset, collate_fn
    from cxrkit.transforms import train_transforms

    meta = load_meta(preprocessed / "train_meta.csv")
    table = fuse_boxes(load_annotations(sample_data / "train.csv"), meta)
    table = table[table["image_id"].isin(sorted(set(table["image_id"]))[:8])]
    dataset = XrayDataset(table, preprocessed / "train", train_transforms(SIZE, seed=0))
    g = torch.Generator().manual_seed(0)
    return DataLoader(dataset, 4, shuffle=True, collate_fn=collate_fn, generator=g)
