"""Detector builders and their weights (taught in notebook 04).

Each detector is a :class:`cxrkit.registry.ModelSpec`; :func:`build_model` looks
the name up there and calls the spec's builder: :func:`build_cxr_small` (a tiny
Faster R-CNN for CPUs) or :func:`build_torchvision_detector` (the seed's
``fasterrcnn_resnet50_fpn``, its ``_v2``, the MobileNet variant), with
``weights="DEFAULT"`` (COCO, needs the internet), ``None`` (random, what tests and
notebooks use) or a local ``.pth`` file, always read with ``weights_only=True``
(:mod:`cxrkit.checkpoints`). The model is built for exactly the input side it is
given (``size``): torchvision's own default would upsample a 512 px image to 800 px
inside the model. :func:`model_from_checkpoint` rebuilds a trained model from its file.
"""

from __future__ import annotations

import math
import os
import urllib.error
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchvision.models import detection
from torchvision.models.detection import FCOS, FasterRCNN, RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.fcos import FCOSHead
from torchvision.models.detection.retinanet import RetinaNetHead
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool
from torchvision.ops.misc import FrozenBatchNorm2d

from cxrkit.anchors import (
    CXR_SMALL_LEVELS,
    CXR_SMALL_STRIDES,
    AnchorSpec,
    fit_anchors,
    stock_anchors,
)
from cxrkit.checkpoints import (
    check_finite,
    check_state_matches,
    classes_in_state,
    is_cxrkit_checkpoint,
    read_weights_file,
    require_kind,
    state_dict_from_file,
)
from cxrkit.errors import CheckpointError, ConfigError, WeightsError
from cxrkit.labels import MODEL_NUM_CLASSES
from cxrkit.registry import MODEL_NAMES as MODEL_NAMES  # re-exported
from cxrkit.registry import ModelSpec, get_spec
from cxrkit.roi_align import CpuMultiScaleRoIAlign

# Re-exported: weight-file reading moved to cxrkit.checkpoints (the one torch.load).
__all__ = [
    "MODEL_NAMES",
    "build_model",
    "build_cxr_small",
    "build_torchvision_detector",
    "model_from_checkpoint",
    "to_pretrained_layout",
    "resolve_anchors",
    "count_parameters",
    "check_finite",
    "check_state_matches",
    "classes_in_state",
    "read_weights_file",
    "state_dict_from_file",
]

CXR_SMALL_SIZE = get_spec("cxr_small").size  # kept for old imports; the spec holds it
# torchvision's resize when none is given (min 800, max 1333): what checkpoints that
# stored no size (format 2, torchvision models) were trained at.
TORCHVISION_RESIZE = (800, 1333)
# cxr_small's stock anchors (CXR_SMALL_ANCHOR_FRACTIONS, CXR_SMALL_ASPECT_RATIOS) live in
# cxrkit.anchors, beside the anchors fitted to a data set's boxes.
AnchorsArg = AnchorSpec | Mapping[str, Any] | str | None


# --------------------------------------------------------------------------- cxr_small
def _gn(channels: int) -> nn.GroupNorm:
    """GroupNorm with up to 8 groups: statistics per image, so batch 2 is as good as 64."""
    return nn.GroupNorm(min(8, channels), channels)


class _ConvGN(nn.Sequential):
    """3x3 convolution -> GroupNorm -> ReLU."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__(
            nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
            _gn(c_out),
            nn.ReLU(inplace=True),
        )


class _ResBlock(nn.Module):
    """A ResNet basic block with GroupNorm (two 3x3 convs and a shortcut)."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = _ConvGN(c_in, c_out, stride)
        self.conv2 = nn.Sequential(nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), _gn(c_out))
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), _gn(c_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv2(self.conv1(x)) + self.shortcut(x))


class CxrSmallBackbone(nn.Module):
    """A slim ResNet-like feature extractor with an FPN on strides 8, 16 and 32.

    Channels 24-32-48-64-96 keep it at about 0.7 M parameters (1.6 M with the box head), so it learns from a
    few hundred images on a CPU. It returns the dict of feature maps that
    ``FasterRCNN`` expects (keys ``"0"``, ``"1"``, ``"2"`` and ``"pool"``) and sets
    ``out_channels``, the one attribute FasterRCNN reads from a backbone.
    """

    def __init__(self, width: int = 1, fpn_channels: int = 64) -> None:
        super().__init__()

        c = [24 * width, 32 * width, 48 * width, 64 * width, 96 * width]
        self.stem = nn.Sequential(_ConvGN(3, c[0], 2), _ConvGN(c[0], c[1], 2))  # stride 4
        self.stage2 = nn.Sequential(_ResBlock(c[1], c[2], 2), _ResBlock(c[2], c[2]))  # 8
        self.stage3 = nn.Sequential(_ResBlock(c[2], c[3], 2), _ResBlock(c[3], c[3]))  # 16
        self.stage4 = nn.Sequential(_ResBlock(c[3], c[4], 2), _ResBlock(c[4], c[4]))  # 32
        self.fpn = FeaturePyramidNetwork(
            [c[2], c[3], c[4]], fpn_channels, extra_blocks=LastLevelMaxPool()
        )
        self.out_channels = fpn_channels

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        c2 = self.stem(x)
        c3 = self.stage2(c2)
        c4 = self.stage3(c3)
        c5 = self.stage4(c4)
        return self.fpn(OrderedDict([("0", c3), ("1", c4), ("2", c5)]))


def _small_backbone_and_anchors(
    name: str, size: int, anchor_spec: AnchorSpec | None, options: dict[str, Any]
) -> tuple[int, CxrSmallBackbone, AnchorGenerator]:
    """What the small anchor-based detectors share: their ``max_size`` (popped from
    ``options``), a :class:`CxrSmallBackbone` and the anchors (stock or fitted) at ``size``."""
    max_size = int(options.pop("max_size", None) or size)
    backbone = CxrSmallBackbone(fpn_channels=int(options.pop("fpn_channels", 64)))
    spec = stock_anchors(size) if anchor_spec is None else anchor_spec.scaled(size)
    if len(spec.sizes) != CXR_SMALL_LEVELS:
        raise ConfigError(
            f"{name} has {CXR_SMALL_LEVELS} feature levels (strides 8-64); the anchors give "
            f"sizes for {len(spec.sizes)}"
        )
    return max_size, backbone, AnchorGenerator(spec.pixel_sizes(), spec.aspect_ratios)


def _cxr_small_detector(
    num_classes: int, size: int, anchor_spec: AnchorSpec | None, options: dict[str, Any]
) -> nn.Module:
    """The small from-scratch detector at ``size`` px (stock anchors when ``anchor_spec`` is None).

    **cxr_small** is a ~1.6 M-parameter Faster R-CNN (:class:`CxrSmallBackbone`:
    GroupNorm instead of BatchNorm, because batch statistics over 2-4 images are
    noise) that trains from scratch on two CPU cores in minutes at 256-384 px.
    Its anchors are chosen for chest findings, as fractions of the image side so
    that they follow ``size``:

    - sizes 4 %-52 % of the side, two per FPN level (strides 8, 16, 32, 64): a
      nodule is 3-8 % of the image width (8-20 px at 256 px), aortic enlargement
      and pleural thickening 5-15 %, effusion and consolidation 15-35 %, and
      cardiomegaly's box spans 35-55 % of the width (NIH box list; VinDr-CXR is
      similar). Stride 8 is the finest level: at 256 px a 16 px nodule still
      covers 2x2 cells, and skipping stride 4 halves the cost (use 384 px for
      the smallest findings).
    - aspect ratios (height / width) 0.4, 0.7, 1.0, 1.5, 2.5: wide boxes for
      cardiomegaly (about 2:1 wide) and apical pleural thickening, tall ones for
      pleural effusion along the costophrenic angle and lateral thickening, square
      for nodules. COCO's (0.5, 1, 2) miss the 0.4 and 2.5 cases by more than the
      0.7 IoU the RPN wants for a positive anchor.
    """
    options = dict(options)
    max_size, backbone, anchors = _small_backbone_and_anchors(
        "cxr_small", size, anchor_spec, options
    )
    # torchvision's pooling, computed as matrix products on a CPU (cxrkit.roi_align)
    roi_pool = CpuMultiScaleRoIAlign(featmap_names=["0", "1", "2"], output_size=7, sampling_ratio=2)
    representation = int(options.pop("representation_size", 256))
    box_head = TwoMLPHead(backbone.out_channels * 7 * 7, representation)
    settings: dict[str, Any] = {
        **_GRAY_NORMALISATION,
        # Fewer proposals than the COCO defaults (2000/1000): at most a few findings
        # per image, and the CPU time goes into the box head.
        "rpn_pre_nms_top_n_train": 1000,
        "rpn_post_nms_top_n_train": 500,
        "rpn_pre_nms_top_n_test": 500,
        "rpn_post_nms_top_n_test": 300,
        "box_batch_size_per_image": 256,
        "box_detections_per_img": 100,
        "box_score_thresh": 0.01,
        **options,
    }
    return FasterRCNN(
        backbone,
        num_classes=None,
        min_size=size,
        max_size=max_size,
        rpn_anchor_generator=anchors,
        box_roi_pool=roi_pool,
        box_head=box_head,
        box_predictor=FastRCNNPredictor(representation, num_classes),
        **settings,
    )


# Gray X-rays: one mean/std for all three (identical) channels.
_GRAY_NORMALISATION: dict[str, Any] = {
    "image_mean": [0.5, 0.5, 0.5],
    "image_std": [0.25, 0.25, 0.25],
}


# The small one-stage models' inference settings: a low score threshold (the metric
# ranks every box; torchvision's default is 0.05 for RetinaNet, 0.2 for FCOS) and
# fewer candidates than COCO's (at most a few findings an image).
_ONE_STAGE_SMALL: dict[str, Any] = {
    **_GRAY_NORMALISATION,
    "score_thresh": 0.01,
    "detections_per_img": 100,
    "topk_candidates": 300,
}


def _head_norm(channels: int) -> nn.GroupNorm:
    """The dense heads' normalisation: GroupNorm, as torchvision's ``_v2`` and FCOS heads
    use, with up to 8 groups for the small heads' 64 channels."""
    return _gn(channels)


def _retina_small_detector(
    num_classes: int, size: int, anchor_spec: AnchorSpec | None, options: dict[str, Any]
) -> nn.Module:
    """**retina_small**: a one-stage RetinaNet on :class:`CxrSmallBackbone`, from scratch.

    No proposals: a dense head predicts, at every anchor of every feature level, the
    15 class scores (sigmoid, trained with the *focal loss*, which down-weights the
    thousands of easy background anchors) and the box offsets. The anchors are
    cxr_small's (stock or fitted, the same :class:`~cxrkit.anchors.AnchorSpec`), so
    the two families see the same candidate shapes and differ in how they score them.
    """
    options = dict(options)
    max_size, backbone, anchors = _small_backbone_and_anchors(
        "retina_small", size, anchor_spec, options
    )
    head = RetinaNetHead(
        backbone.out_channels,
        anchors.num_anchors_per_location()[0],
        num_classes,
        norm_layer=_head_norm,
    )
    head.regression_head._loss_type = "giou"  # as retinanet_resnet50_fpn_v2
    return CxrRetinaNet(
        backbone, num_classes, min_size=size, max_size=max_size,
        anchor_generator=anchors, head=head, **{**_ONE_STAGE_SMALL, **options},
    )  # fmt: skip


def _fcos_small_detector(
    num_classes: int, size: int, anchor_spec: AnchorSpec | None, options: dict[str, Any]
) -> nn.Module:
    """**fcos_small**: a one-stage, anchor-free FCOS on :class:`CxrSmallBackbone`, from scratch.

    Every feature-map cell inside a box predicts its distances to the box's four
    sides, the class (focal loss) and a *centerness* score that ranks cells near
    the box centre above those at its edge. Each level takes boxes of one size
    range (4-8 times its stride), so there are no anchor shapes to choose.
    """
    if anchor_spec is not None:
        raise ConfigError("fcos_small is anchor-free: it takes no fitted anchors")
    options = dict(options)
    max_size = int(options.pop("max_size", None) or size)
    backbone = CxrSmallBackbone(fpn_channels=int(options.pop("fpn_channels", 64)))
    # one "anchor" per cell, the size of its stride: FCOS uses only its centre and level
    anchors = AnchorGenerator(tuple((s,) for s in CXR_SMALL_STRIDES), ((1.0,),) * CXR_SMALL_LEVELS)
    head = FCOSHead(backbone.out_channels, 1, num_classes)  # GroupNorm(32) inside
    return CxrFCOS(
        backbone, num_classes, min_size=size, max_size=max_size,
        anchor_generator=anchors, head=head, **{**_ONE_STAGE_SMALL, **options},
    )  # fmt: skip


class _DropBackground:
    """torchvision's one-stage heads score every class with its own sigmoid, class 0
    (the background) included: it never gets a positive target, but an untrained
    model can still score it above the threshold. Its boxes are dropped here, so a
    one-stage model returns labels 1-14 only, as Faster R-CNN (softmax) does."""

    def postprocess_detections(self, *args: Any, **kwargs: Any) -> list[dict[str, torch.Tensor]]:
        detections = super().postprocess_detections(*args, **kwargs)  # type: ignore[misc]
        return [{k: v[d["labels"] > 0] for k, v in d.items()} for d in detections]


class CxrRetinaNet(_DropBackground, RetinaNet):
    """torchvision's RetinaNet without background boxes (same weights, same state_dict)."""


class CxrFCOS(_DropBackground, FCOS):
    """torchvision's FCOS without background boxes (same weights, same state_dict)."""


_ONE_STAGE_CLASSES: dict[type, type] = {RetinaNet: CxrRetinaNet, FCOS: CxrFCOS}


def _without_background(model: nn.Module) -> nn.Module:
    """A torchvision RetinaNet or FCOS as its cxrkit subclass (no new state); others as they are."""
    if type(model) in _ONE_STAGE_CLASSES:
        model.__class__ = _ONE_STAGE_CLASSES[type(model)]
    return model


# The small from-scratch detectors, by family: the same backbone, three kinds of head.
_SMALL_ARCHITECTURES = {
    "faster_rcnn": _cxr_small_detector,
    "retinanet": _retina_small_detector,
    "fcos": _fcos_small_detector,
}


def build_cxr_small(
    spec: ModelSpec,
    num_classes: int,
    size: int,
    weights: str | os.PathLike | None = None,
    anchor_spec: AnchorSpec | None = None,
    **options: Any,
) -> nn.Module:
    """A small detector of ``spec.family`` on :class:`CxrSmallBackbone` (``cxr_small``,
    ``retina_small``, ``fcos_small``), from scratch (``weights=None``) or from a
    cxrkit file; they have no published weights, so ``"DEFAULT"`` is a :class:`WeightsError`."""
    if isinstance(weights, str) and weights.upper() == "DEFAULT":
        raise WeightsError(
            f"{spec.name} has no published pretrained weights; use weights=None (train from "
            "scratch) or the path of a cxrkit checkpoint"
        )
    model = _SMALL_ARCHITECTURES[spec.family](num_classes, size, anchor_spec, options)
    if weights is not None:
        _load_file_into(model, spec, num_classes, Path(weights))
    return model


# ----------------------------------------------------------------- torchvision models
def _replace_predictor(model: nn.Module, num_classes: int) -> nn.Module:
    """The seed's transfer-learning step: a new class layer with ``num_classes`` outputs.

    Faster R-CNN: a new box predictor (``roi_heads.box_predictor``). One-stage models
    (RetinaNet, FCOS): a new last convolution of the classification head, initialised
    as torchvision does (weights N(0, 0.01), bias ``-log((1 - p) / p)`` with prior
    p = 0.01, so that training starts with every anchor scored as background).
    """
    if hasattr(model, "roi_heads"):
        in_features = model.roi_heads.box_predictor.cls_score.in_features
        model.roi_heads.box_predictor = FastRCNNPredictor(in_features, num_classes)
        return model
    head = model.head.classification_head
    old = head.cls_logits
    new = nn.Conv2d(old.in_channels, head.num_anchors * num_classes, 3, padding=1)
    nn.init.normal_(new.weight, std=0.01)
    nn.init.constant_(new.bias, -math.log((1 - 0.01) / 0.01))
    head.cls_logits, head.num_classes = new, num_classes
    return model


def _changes_resolution(block: nn.Module) -> bool:
    """Whether a MobileNet block downsamples (a strided convolution): where torchvision's
    feature extractor puts its stage boundaries (its private ``_is_cn`` flag)."""
    return any(isinstance(m, nn.Conv2d) and max(m.stride) > 1 for m in block.modules())


def _frozen_parts(body: nn.Module, backbone: str) -> list[nn.Module]:
    """The backbone modules torchvision freezes with ``trainable_backbone_layers=3``."""
    if backbone == "resnet":
        return [m for n, m in body.named_children() if n not in ("layer2", "layer3", "layer4")]
    blocks = list(body.children())  # mobilenet: as torchvision's mobilenet extractor
    stages = [0] + [i for i, b in enumerate(blocks) if _changes_resolution(b)] + [len(blocks) - 1]
    return blocks[: stages[len(stages) - 3]]


def to_pretrained_layout(model: nn.Module, name: str) -> nn.Module:
    """Make a randomly built torchvision detector look like torchvision's pretrained one.

    With COCO weights torchvision freezes BatchNorm (``FrozenBatchNorm2d``: fixed
    statistics, right for batches of 2-8 images; its eps as torchvision sets it for
    those weights, the spec's ``frozen_bn_eps``) and the first backbone layers
    (``trainable_backbone_layers=3``). A model built with ``weights=None`` has plain
    BatchNorm and trains every layer, so its state_dict keys differ
    (``num_batches_tracked``). Loading a local COCO file needs the pretrained layout.
    """
    spec = get_spec(name, "detector")
    body = model.backbone.body
    if spec.frozen_bn_eps is not None:  # None: BatchNorm stays trainable (v2)
        _freeze_batchnorm(body, spec.frozen_bn_eps)
    for module in _frozen_parts(body, spec.backbone):
        for p in module.parameters():
            p.requires_grad_(False)
    if hasattr(model, "cxrkit_config"):
        model.cxrkit_config["pretrained_layout"] = True
    return model


def saved_in_pretrained_layout(name: str, state: Mapping[str, torch.Tensor]) -> bool:
    """Whether weights of model ``name`` were saved in its pretrained layout: a model with
    published weights whose state has no BatchNorm counters (``num_batches_tracked``)
    had frozen BatchNorm (:func:`to_pretrained_layout`)."""
    return bool(get_spec(name).pretrained) and not any(
        k.endswith("num_batches_tracked") for k in state
    )


def _freeze_batchnorm(module: nn.Module, eps: float) -> None:
    """Replace every BatchNorm2d under ``module`` by a ``FrozenBatchNorm2d(eps=eps)`` in place."""
    for child_name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            setattr(module, child_name, FrozenBatchNorm2d(child.num_features, eps=eps))
        else:
            _freeze_batchnorm(child, eps)


def build_torchvision_detector(
    spec: ModelSpec,
    num_classes: int,
    size: int,
    weights: str | os.PathLike | None = None,
    anchor_spec: AnchorSpec | None = None,
    **options: Any,
) -> nn.Module:
    """A torchvision detector resized to ``size`` px: random, COCO (``"DEFAULT"``) or a file."""
    return _without_background(_torchvision_detector(spec, num_classes, size, weights, options))


def _torchvision_detector(
    spec: ModelSpec,
    num_classes: int,
    size: int,
    weights: str | os.PathLike | None,
    options: dict[str, Any],
) -> nn.Module:
    builder = getattr(detection, spec.name)
    options = {"min_size": size, "max_size": size, **options}
    if weights is None:
        return builder(weights=None, weights_backbone=None, num_classes=num_classes, **options)
    if isinstance(weights, str) and weights.upper() == "DEFAULT":
        try:
            model = builder(weights="DEFAULT", **options)
        except (urllib.error.URLError, OSError, RuntimeError) as exc:
            raise WeightsError(
                f"could not download the {spec.pretrained} weights of {spec.name} "
                f"({type(exc).__name__}: {exc}). Offline (e.g. a Kaggle notebook without "
                "internet), attach a dataset that holds the torchvision .pth file and pass its "
                "path as weights=..., or use weights=None to train from random initialisation."
            ) from exc
        return _replace_predictor(model, num_classes)
    model = builder(weights=None, weights_backbone=None, num_classes=num_classes, **options)
    return _load_file_into(model, spec, num_classes, Path(weights))


def _load_file_into(model: nn.Module, spec: ModelSpec, num_classes: int, path: Path) -> nn.Module:
    """Load a local state_dict or cxrkit checkpoint into ``model`` (built for
    ``num_classes``), in the pretrained layout when the file has frozen BatchNorm;
    a file of another class count (COCO's 91) gets a fresh predictor afterwards."""
    state = state_dict_from_file(path, expected_name=spec.name)
    file_classes = classes_in_state(state, path)
    if file_classes != num_classes:
        model = _replace_predictor(model, file_classes)
    if saved_in_pretrained_layout(spec.name, state):
        model.cxrkit_config = {}  # type: ignore[attr-defined]
        model = to_pretrained_layout(model, spec.name)
    check_state_matches(model, state, path, spec.name)
    model.load_state_dict(state)
    if file_classes != num_classes:  # e.g. COCO (91) -> VinBigData (15): the seed's recipe
        model = _replace_predictor(model, num_classes)
    return model


def resolve_anchors(
    anchors: AnchorsArg, boxes: Any = None, size: int = CXR_SMALL_SIZE
) -> AnchorSpec | None:
    """The :class:`AnchorSpec` that ``build_model(anchors=..., boxes=...)`` asks for.

    ``None`` or ``"stock"``: None (the stock anchors). ``"auto"``: fitted to ``boxes``,
    an (N, 2) array of box widths and heights in input pixels at ``size``
    (:func:`cxrkit.anchors.resized_boxes` makes it from a table). An ``AnchorSpec``
    or its ``to_dict()`` (as a checkpoint stores it) is used as it is.
    """
    if anchors is None or (isinstance(anchors, str) and anchors == "stock"):
        return None
    if isinstance(anchors, AnchorSpec):
        return anchors
    if isinstance(anchors, Mapping):
        return AnchorSpec.from_dict(anchors)
    if anchors == "auto":
        if boxes is None:
            raise ConfigError(
                'anchors="auto" fits the anchors to boxes=: pass (N, 2) widths, heights'
            )
        return fit_anchors(boxes, size)
    raise ConfigError(f'anchors must be "stock", "auto", an AnchorSpec or None, got {anchors!r}')


def build_model(
    name: str = "fasterrcnn_resnet50_fpn",
    num_classes: int = MODEL_NUM_CLASSES,
    weights: str | os.PathLike | None = None,
    *,
    size: int | None = None,
    min_size: int | None = None,
    max_size: int | None = None,
    anchors: AnchorsArg = None,
    boxes: Any = None,
    **kwargs: Any,
) -> nn.Module:
    """Build a detector of the registry with ``num_classes`` outputs (background included).

    Args:
        name: a detector of :data:`MODEL_NAMES` (:mod:`cxrkit.registry`).
        num_classes: 15 for VinBigData: background + 14 findings (No finding is never a box).
        weights: ``"DEFAULT"`` (the spec's published weights, downloaded), ``None``
            (random) or a local file (a state_dict or a cxrkit checkpoint).
        size: the input side the model is built for (its internal resize); default:
            the spec's ``size`` (256 for ``cxr_small``, 512 for the torchvision models).
        min_size, max_size: torchvision's two resize settings, for a model that must
            differ from ``size`` (checkpoints written before ``size`` existed).
        anchors, boxes: for models whose spec ``fits_anchors``: ``None``/``"stock"``
            (default), ``"auto"`` (fitted to ``boxes``, (N, 2) widths and heights in
            input pixels, :func:`cxrkit.anchors.fit_anchors`) or an
            :class:`~cxrkit.anchors.AnchorSpec`. Stored in ``model.cxrkit_config``.
        kwargs: passed to ``torchvision.models.detection.FasterRCNN`` (e.g. ``box_score_thresh``).
    """
    spec = get_spec(name, "detector")
    if num_classes < 2:
        raise ConfigError(f"num_classes counts the background and must be >= 2, got {num_classes}")
    if not spec.fits_anchors and anchors not in (None, "stock"):
        fitting = [n for n in MODEL_NAMES if get_spec(n).fits_anchors]
        raise ConfigError(
            f"anchors= (fitted anchors) is for {', '.join(fitting)}; {name} keeps its own"
        )
    side = int(size or min_size or spec.size)
    options = dict(kwargs)
    if max_size is not None or (min_size is not None and size is None):
        options["max_size"] = int(max_size or side)
    anchor_spec = resolve_anchors(anchors, boxes, side) if spec.fits_anchors else None
    model = spec.builder_function()(spec, num_classes, side, weights, anchor_spec, **options)
    # Remember how the model was built, so a checkpoint can rebuild it (model_from_checkpoint).
    config: dict[str, Any] = {
        **getattr(model, "cxrkit_config", {}),
        "name": name,
        "family": spec.family,
        "num_classes": int(num_classes),
        "min_size": int(model.transform.min_size[0]),
        "max_size": int(model.transform.max_size),
        "kwargs": {k: v for k, v in kwargs.items() if isinstance(v, (int, float, str, bool))},
    }
    if anchor_spec is not None:  # stock anchors add nothing: their checkpoints stay as they were
        config["anchors"] = anchor_spec.scaled(side).to_dict()
    model.cxrkit_config = config  # type: ignore[attr-defined]
    return model


def _stored_anchors(config: Mapping[str, Any], path: Path) -> AnchorSpec | None:
    """The fitted anchors a checkpoint's model was built with (None: stock anchors,
    also for checkpoints written before anchors could be fitted)."""
    stored = config.get("anchors")
    if stored is None:
        return None
    try:
        return AnchorSpec.from_dict(stored)
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"checkpoint {path} stores unusable anchors: {exc}") from exc


def model_from_checkpoint(
    path: str | os.PathLike, map_location: Any = "cpu", ckpt: Mapping[str, Any] | None = None
) -> nn.Module:
    """Rebuild the detector a cxrkit checkpoint was saved from and load its weights.

    Uses the stored name, class count and build options (input size, fitted
    anchors, pretrained layout), so ``predict`` needs nothing but the file. No
    download happens (``weights=None`` for the architecture, then the checkpoint's
    weights). ``ckpt``: the file's dict when the caller has read it already (each
    file is read once).
    """
    path = Path(path)
    if ckpt is None:
        ckpt = read_weights_file(path, map_location)
    if not is_cxrkit_checkpoint(ckpt, path):
        raise CheckpointError(
            f"{path} is not a cxrkit checkpoint (no model name stored); build the model with "
            "build_model(name, weights=path) instead"
        )
    require_kind(ckpt, "detector", path)
    config = dict(ckpt.get("model_config") or {})
    name = ckpt.get("model_name") or config.get("name")
    if name not in MODEL_NAMES:
        raise CheckpointError(f"checkpoint {path} names an unknown model {name!r}")
    min_size, max_size = config.get("min_size"), config.get("max_size")
    if min_size is None:  # written before sizes were stored: torchvision's own resize
        min_size, max_size = TORCHVISION_RESIZE
    model = build_model(
        name,
        num_classes=int(ckpt["num_classes"]),
        weights=None,
        min_size=min_size,
        max_size=max_size,
        anchors=_stored_anchors(config, path),
        **dict(config.get("kwargs") or {}),
    )
    state = ckpt["model"]
    if saved_in_pretrained_layout(name, state):
        model = to_pretrained_layout(model, name)  # trained from COCO: FrozenBatchNorm
    check_state_matches(model, state, path, repr(name))
    check_finite(state, path)
    model.load_state_dict(state)
    return model


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable) parameters: ``cxr_small`` has about half a million."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
