"""Model builders, weights handling and checkpoints (no download, no GPU needed)."""

from __future__ import annotations

import random
import urllib.error

import numpy as np
import pytest
import torch

from cxrkit.checkpoints import (
    CheckpointError,
    classes_in_state,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from cxrkit.models import (
    MODEL_NAMES,
    WeightsError,
    build_model,
    count_parameters,
    model_from_checkpoint,
    to_pretrained_layout,
)
from cxrkit.registry import get_spec

torch.set_num_threads(1)


def _small(num_classes: int = 15, size: int = 128):
    torch.manual_seed(0)
    return build_model("cxr_small", num_classes=num_classes, min_size=size, max_size=size)


def _batch(n: int = 2, size: int = 128):
    g = torch.Generator().manual_seed(1)
    images = [torch.rand(3, size, size, generator=g) for _ in range(n)]
    targets = [
        {"boxes": torch.tensor([[10.0, 20.0, 60.0, 50.0]]), "labels": torch.tensor([4])},
        {"boxes": torch.zeros((0, 4)), "labels": torch.zeros(0, dtype=torch.int64)},  # normal
    ][:n]
    return images, targets


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_every_model_builds_offline_with_15_outputs(name):
    model = build_model(name, num_classes=15, weights=None)
    assert classes_in_state(model.state_dict(), name) == 15
    if hasattr(model, "roi_heads"):  # two-stage: a box per class
        assert model.roi_heads.box_predictor.bbox_pred.out_features == 15 * 4
    else:  # one-stage: one class-agnostic box per anchor
        assert model.head.classification_head.num_classes == 15
    assert model.cxrkit_config["name"] == name
    assert model.cxrkit_config["family"] == get_spec(name).family


def test_cxr_small_is_small_and_trains_on_empty_and_nonempty_targets():
    model = _small()
    assert count_parameters(model) < 3_000_000
    # 2 sizes x 5 aspect ratios per location, tall and wide ratios included
    assert model.rpn.anchor_generator.num_anchors_per_location() == [10, 10, 10, 10]
    ratios = model.rpn.anchor_generator.aspect_ratios[0]
    assert min(ratios) <= 0.5 and max(ratios) >= 2.0
    no_batchnorm = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert not no_batchnorm, "cxr_small must not use BatchNorm (batch 2-4)"
    model.train()
    images, targets = _batch()
    losses = model(images, targets)
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    model.eval()
    with torch.inference_mode():
        out = model(images)
    assert len(out) == 2 and out[0]["boxes"].shape[1] == 4


def test_anchor_sizes_follow_the_input_size():
    small = build_model("cxr_small", min_size=256).rpn.anchor_generator.sizes
    large = build_model("cxr_small", min_size=512).rpn.anchor_generator.sizes
    assert large[0][0] == pytest.approx(2 * small[0][0], abs=1)
    assert large[-1][-1] == pytest.approx(2 * small[-1][-1], abs=1)


def test_bad_names_and_weights():
    with pytest.raises(ValueError, match="unknown model"):
        build_model("yolo")
    with pytest.raises(ValueError, match="num_classes"):
        build_model("cxr_small", num_classes=1)
    with pytest.raises(WeightsError, match="weights=None"):
        build_model("cxr_small", weights="DEFAULT")


def test_failed_download_says_what_to_do_offline(monkeypatch):
    import torchvision.models.detection as det

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no internet")

    monkeypatch.setattr(det, "fasterrcnn_resnet50_fpn", offline)
    with pytest.raises(WeightsError) as info:
        build_model("fasterrcnn_resnet50_fpn", weights="DEFAULT")
    message = str(info.value)
    assert "Kaggle" in message and ".pth" in message and "weights=None" in message


def test_pretrained_layout_matches_torchvision(monkeypatch):
    """Our offline COCO layout has the keys and frozen layers torchvision's pretrained model has."""
    import torchvision.models._api as api
    from torchvision.models import mobilenet_v3_large
    from torchvision.models.detection import fasterrcnn_mobilenet_v3_large_fpn
    from torchvision.ops.misc import FrozenBatchNorm2d

    # Pretend the ImageNet backbone download happened: hand back random weights.
    backbone_state = mobilenet_v3_large(norm_layer=FrozenBatchNorm2d).state_dict()
    monkeypatch.setattr(api.WeightsEnum, "get_state_dict", lambda self, *a, **k: backbone_state)
    reference = fasterrcnn_mobilenet_v3_large_fpn(
        weights=None, weights_backbone="DEFAULT", num_classes=91
    )
    ours = to_pretrained_layout(
        build_model("fasterrcnn_mobilenet_v3_large_fpn", num_classes=91),
        "fasterrcnn_mobilenet_v3_large_fpn",
    )
    assert list(ours.state_dict()) == list(reference.state_dict())
    frozen_ours = [n for n, p in ours.named_parameters() if not p.requires_grad]
    frozen_ref = [n for n, p in reference.named_parameters() if not p.requires_grad]
    assert frozen_ours == frozen_ref and frozen_ours


def test_local_coco_file_loads_then_gets_a_new_predictor(tmp_path):
    """The Kaggle offline path: a 91-class COCO state_dict file + weights=path."""
    name = "fasterrcnn_mobilenet_v3_large_fpn"
    torch.manual_seed(0)
    coco = to_pretrained_layout(build_model(name, num_classes=91), name)
    path = tmp_path / "coco.pth"
    torch.save(coco.state_dict(), path)
    model = build_model(name, num_classes=15, weights=path)
    assert model.roi_heads.box_predictor.cls_score.out_features == 15
    key = "backbone.fpn.layer_blocks.0.0.weight"
    assert torch.equal(model.state_dict()[key], coco.state_dict()[key])
    assert any(type(m).__name__ == "FrozenBatchNorm2d" for m in model.modules())


def test_checkpoint_round_trip_restores_everything(tmp_path):
    model = _small()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    images, targets = _batch()
    sum(model(images, targets).values()).backward()
    opt.step()
    sched.step()
    path = save_checkpoint(tmp_path / "run" / "last.pt", model, opt, sched, epoch=3, best_map=0.25)
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]  # no temp file left behind

    other = _small()
    ckpt = load_checkpoint(path, other)
    assert ckpt["epoch"] == 3 and ckpt["best_map"] == 0.25
    assert ckpt["model_name"] == "cxr_small" and ckpt["num_classes"] == 15
    for (k, a), b in zip(model.state_dict().items(), other.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    opt2 = torch.optim.SGD(other.parameters(), lr=0.1, momentum=0.9)
    opt2.load_state_dict(ckpt["optimizer"])
    assert opt2.state_dict()["state"][0]["momentum_buffer"].shape == next(model.parameters()).shape

    rebuilt = model_from_checkpoint(path)
    assert rebuilt.transform.min_size == (128,)
    model.eval()
    rebuilt.eval()
    with torch.inference_mode():
        a, b = model(images[:1]), rebuilt(images[:1])
    assert torch.equal(a[0]["boxes"], b[0]["boxes"])


def test_checkpoint_of_another_class_count_or_model_is_refused(tmp_path):
    path = save_checkpoint(tmp_path / "c.pt", _small(num_classes=15))
    with pytest.raises(CheckpointError, match="15 classes but the model has 5"):
        load_checkpoint(path, _small(num_classes=5))
    mobile = build_model("fasterrcnn_mobilenet_v3_large_fpn", num_classes=15)
    with pytest.raises(CheckpointError, match="'cxr_small' model"):
        load_checkpoint(path, mobile)
    with pytest.raises(CheckpointError, match="cxr_small"):
        build_model("fasterrcnn_mobilenet_v3_large_fpn", weights=path)


def test_missing_and_corrupt_checkpoints(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")
    with pytest.raises(CheckpointError, match="does not exist"):
        model_from_checkpoint(tmp_path / "nope.pt")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(garbage)
    good = save_checkpoint(tmp_path / "good.pt", _small())
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:2000])
    with pytest.raises(CheckpointError):
        load_checkpoint(truncated, _small())
    plain = tmp_path / "plain.pt"
    torch.save({"a": 1}, plain)
    with pytest.raises(CheckpointError, match="no model state_dict|not a Faster R-CNN"):
        load_checkpoint(plain)


def test_rng_state_round_trip():
    state = rng_state()
    a = (random.random(), np.random.rand(), torch.rand(1).item())  # noqa: NPY002
    set_rng_state(state)
    b = (random.random(), np.random.rand(), torch.rand(1).item())  # noqa: NPY002
    assert a == b
