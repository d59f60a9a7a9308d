"""cxrkit.roi_align against torchvision's RoIAlign: same output, same gradients."""

from __future__ import annotations

import ast
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops import roi_align as torchvision_roi_align

from cxrkit import roi_align as cxr_roi_align
from cxrkit.models import build_model
from cxrkit.roi_align import CpuMultiScaleRoIAlign, separable_roi_align


def _boxes(n_images: int, count: int, side_px: float, seed: int) -> torch.Tensor:
    """Random boxes in image pixels, some partly or wholly off the image, some under a cell."""
    gen = torch.Generator().manual_seed(seed)
    corner = torch.rand(count, 2, generator=gen) * side_px * 1.4 - side_px * 0.3
    extent = torch.rand(count, 2, generator=gen) * side_px * 0.5 + 0.5
    extent[: count // 8] = torch.rand(count // 8, 2, generator=gen) * 4  # below one 8-px cell
    image = torch.randint(0, n_images, (count, 1), generator=gen).float()
    return torch.cat([image, corner, corner + extent], dim=1)


@pytest.mark.parametrize(
    ("height", "width", "sampling_ratio"), [(16, 16, 2), (4, 4, 2), (12, 20, 1), (7, 5, 3)]
)
def test_separable_roi_align_matches_torchvision(height, width, sampling_ratio):
    gen = torch.Generator().manual_seed(height * width)
    features = torch.randn(3, 8, height, width, generator=gen, requires_grad=True)
    rois = _boxes(3, 200, max(height, width) * 8, seed=width)
    ours = separable_roi_align(features, rois, 7, 1 / 8, sampling_ratio)
    theirs = torchvision_roi_align(features, rois, (7, 7), 1 / 8, sampling_ratio)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)

    upstream = torch.randn(theirs.shape, generator=gen)
    (grad_ours,) = torch.autograd.grad(ours, features, upstream)
    (grad_theirs,) = torch.autograd.grad(theirs, features, upstream)
    torch.testing.assert_close(grad_ours, grad_theirs, atol=1e-4, rtol=1e-4)


def test_edge_samples_follow_torchvision():
    """A box hanging off every side: clamped within one cell, zero beyond, as torchvision."""
    features = torch.arange(25.0).reshape(1, 1, 5, 5)
    rois = torch.tensor([[0.0, -2.0, -2.0, 6.5, 6.5], [0.0, -3.0, 1.0, 1.0, 3.0]])
    ours = separable_roi_align(features, rois, 3, 1.0, 2)
    theirs = torchvision_roi_align(features, rois, (3, 3), 1.0, 2)
    torch.testing.assert_close(ours, theirs)
    assert ours[1].abs().sum() > 0 and (ours[1, 0, :, 0] == 0).all()  # partly out of range


def test_multiscale_pooler_matches_torchvision_on_fpn_levels():
    gen = torch.Generator().manual_seed(0)
    maps = OrderedDict(
        (name, torch.randn(2, 16, side, side, generator=gen, requires_grad=True))
        for name, side in (("0", 32), ("1", 16), ("2", 8), ("pool", 4))
    )
    boxes = [_boxes(1, 150, 256, seed=s)[:, 1:].clamp(0, 256) for s in (1, 2)]
    boxes = [b[(b[:, 2] > b[:, 0] + 0.1) & (b[:, 3] > b[:, 1] + 0.1)] for b in boxes]
    shapes = [(256, 256), (256, 256)]
    # canonical scale 56: boxes of side 112 px and more pool from level "2"
    ours = CpuMultiScaleRoIAlign(["0", "1", "2"], 7, 2, canonical_scale=56)(maps, boxes, shapes)
    theirs = MultiScaleRoIAlign(["0", "1", "2"], 7, 2, canonical_scale=56)(maps, boxes, shapes)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    upstream = torch.randn(theirs.shape, generator=gen)
    inputs = [maps[k] for k in ("0", "1", "2")]
    for a, b in zip(
        torch.autograd.grad(ours, inputs, upstream),
        torch.autograd.grad(theirs, inputs, upstream),
        strict=True,
    ):
        assert b.abs().sum() > 0  # every level received boxes
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_large_maps_use_torchvision(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the matrix products ran on a large map")

    monkeypatch.setattr(cxr_roi_align, "separable_roi_align", refuse)
    side = int(cxr_roi_align.MAX_DENSE_AREA**0.5) + 1
    features = torch.randn(1, 4, side, side)
    rois = _boxes(1, 10, side * 8, seed=0)
    expected = torchvision_roi_align(features, rois, (7, 7), 1 / 8, 2)
    torch.testing.assert_close(cxr_roi_align.roi_align(features, rois, 7, 1 / 8, 2), expected)
    with pytest.raises(AssertionError, match="large map"):
        cxr_roi_align.roi_align(torch.randn(1, 4, 8, 8), rois, 7, 1 / 8, 2)


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="sampling_ratio"):
        separable_roi_align(torch.randn(1, 1, 4, 4), torch.zeros(1, 5), 7, 1.0, 0)
    with pytest.raises(ValueError, match="output_size must be an int"):
        CpuMultiScaleRoIAlign(["0"], (7, 5), 2)


def test_cxr_small_training_losses_match_torchvision_pooler():
    """Swapping the pooler back to torchvision's gives the same losses and gradients."""
    torch.manual_seed(0)
    model = build_model("cxr_small", weights=None, min_size=128)
    assert isinstance(model.roi_heads.box_roi_pool, CpuMultiScaleRoIAlign)
    model.train()
    images = [torch.rand(3, 128, 128) for _ in range(2)]
    targets = [
        {"boxes": torch.tensor([[10.0, 20.0, 60.0, 90.0]]), "labels": torch.tensor([3])},
        {"boxes": torch.tensor([[30.0, 30.0, 40.0, 45.0]]), "labels": torch.tensor([9])},
    ]

    def losses_and_grad():
        torch.manual_seed(1)  # the same sampled proposals for both poolers
        model.zero_grad()
        losses = model(images, targets)
        sum(losses.values()).backward()
        grad = model.backbone.fpn.layer_blocks[0][0].weight.grad.clone()
        return {k: v.item() for k, v in losses.items()}, grad

    ours, grad_ours = losses_and_grad()
    model.roi_heads.box_roi_pool = MultiScaleRoIAlign(["0", "1", "2"], 7, 2)
    theirs, grad_theirs = losses_and_grad()
    assert ours == pytest.approx(theirs, rel=1e-4, abs=1e-6)
    torch.testing.assert_close(grad_ours, grad_theirs, atol=1e-4, rtol=1e-3)


# ------------------------------------------------ the pooler's helpers, public API only
def test_pooler_helpers_match_torchvisions_private_ones():
    """setup_scales and rois_from_boxes give what torchvision's private helpers give."""
    poolers = pytest.importorskip("torchvision.ops.poolers")
    private = ("_setup_scales", "_convert_to_roi_format")
    if not all(hasattr(poolers, name) for name in private):
        pytest.skip("this torchvision has other private helpers: the pooler tests compare")
    gen = torch.Generator().manual_seed(3)
    maps = [torch.randn(2, 4, side, side, generator=gen) for side in (64, 32, 16, 8)]
    shapes = [(250, 256), (256, 200)]  # padded to 256 x 256
    boxes = [_boxes(1, 40, 256, seed=s)[:, 1:].clamp(0, 256) for s in (4, 5)]
    boxes = [b[(b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])] for b in boxes]
    scales, mapper = cxr_roi_align.setup_scales(maps, shapes, 224, 4)
    their_scales, their_mapper = poolers._setup_scales(maps, shapes, 224, 4)
    assert scales == their_scales == [1 / 4, 1 / 8, 1 / 16, 1 / 32]
    assert (mapper.k_min, mapper.k_max) == (their_mapper.k_min, their_mapper.k_max) == (2, 5)
    assert torch.equal(mapper(boxes), their_mapper(boxes))
    assert torch.equal(cxr_roi_align.rois_from_boxes(boxes), poolers._convert_to_roi_format(boxes))
    with pytest.raises(ValueError, match="image_shapes is empty"):
        cxr_roi_align.setup_scales(maps, [], 224, 4)


# Modules allowed a private torchvision name: none (models.py detects MobileNet's
# stage boundaries from strided convolutions instead of the private ``_is_cn``).
PENDING_PRIVATE_TORCHVISION: set[str] = set()


def private_torchvision_uses(source: str) -> list[str]:
    """Private torchvision names a module's source uses: ``from torchvision... import _x``,
    a ``_module`` in an imported path, or ``getattr(obj, "_x")`` in a module that imports
    torchvision (how private attributes of its objects are read)."""
    tree = ast.parse(source)
    found: list[str] = []
    uses_torchvision = False

    def private(name: str) -> bool:
        return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))

    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "torchvision":
            uses_torchvision = True
            parts = node.module.split(".")
            found += [f"from {node.module} import {a.name}" for a in node.names if private(a.name)]
            found += [f"from {node.module} import ..." for p in parts if private(p)]
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "torchvision":
                    uses_torchvision = True
                    found += [f"import {alias.name}" for p in alias.name.split(".") if private(p)]
    for node in ast.walk(tree):
        if (
            uses_torchvision
            and isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in {"getattr", "hasattr", "setattr"}
            and len(node.args) >= 2
            and isinstance(node.args[1], ast.Constant)
            and isinstance(node.args[1].value, str)
            and private(node.args[1].value)
        ):
            found.append(f"{node.func.id}(..., {node.args[1].value!r})")
    return found


def test_no_module_uses_a_private_torchvision_name():
    package = Path(cxr_roi_align.__file__).parent
    used = {
        str(path.relative_to(package)): private_torchvision_uses(path.read_text())
        for path in sorted(package.rglob("*.py"))
    }
    flagged = {name: uses for name, uses in used.items() if uses}
    assert set(flagged) - PENDING_PRIVATE_TORCHVISION == set(), flagged


def test_the_private_name_scan_finds_a_planted_import():
    planted = "from torchvision.ops.poolers import _setup_scales, MultiScaleRoIAlign\n"
    assert private_torchvision_uses(planted) == [
        "from torchvision.ops.poolers import _setup_scales"
    ]
    assert private_torchvision_uses("import torchvision.ops._utils\n")
    assert private_torchvision_uses("import torchvision\nx = getattr(m, '_is_cn', 0)\n")
    assert private_torchvision_uses("from torchvision.ops import box_iou\n") == []
