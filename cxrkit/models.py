"""Faster R-CNN builders and their weights (taught in notebook 04).

:func:`build_model` builds the seed's ``fasterrcnn_resnet50_fpn``, its ``_v2``, a
MobileNet variant, or ``cxr_small`` (a tiny detector for CPUs), with
``weights="DEFAULT"`` (COCO, needs the internet), ``None`` (random, what tests and
notebooks use) or a local ``.pth`` file, always read with ``weights_only=True``.
Training checkpoints are :mod:`cxrkit.checkpoints`.
"""

from __future__ import annotations

import os
import pickle
import re
import urllib.error
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchvision.models import detection
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool
from torchvision.ops.misc import FrozenBatchNorm2d

from cxrkit.anchors import CXR_SMALL_LEVELS, AnchorSpec, fit_anchors, stock_anchors
from cxrkit.errors import CheckpointError, WeightsError
from cxrkit.labels import MODEL_NUM_CLASSES
from cxrkit.model_names import MODEL_NAMES as MODEL_NAMES  # re-exported
from cxrkit.roi_align import CpuMultiScaleRoIAlign

CXR_SMALL_SIZE = 256  # default input side of cxr_small, in pixels
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


def _build_cxr_small(
    num_classes: int,
    min_size: int | None,
    max_size: int | None,
    anchor_spec: AnchorSpec | None = None,
    **kwargs: Any,
) -> nn.Module:
    """The small from-scratch detector (see :func:`build_model` for the anchors).

    ``anchor_spec`` None: the stock anchors; otherwise its sizes, scaled to ``min_size``.
    """

    size = int(min_size or CXR_SMALL_SIZE)
    max_size = int(max_size or size)
    backbone = CxrSmallBackbone(fpn_channels=int(kwargs.pop("fpn_channels", 64)))
    spec = stock_anchors(size) if anchor_spec is None else anchor_spec.scaled(size)
    if len(spec.sizes) != CXR_SMALL_LEVELS:
        raise ValueError(
            f"cxr_small has {CXR_SMALL_LEVELS} feature levels (strides 8-64); the anchors give "
            f"sizes for {len(spec.sizes)}"
        )
    anchors = AnchorGenerator(spec.pixel_sizes(), spec.aspect_ratios)
    # torchvision's pooling, computed as matrix products on a CPU (cxrkit.roi_align)
    roi_pool = CpuMultiScaleRoIAlign(featmap_names=["0", "1", "2"], output_size=7, sampling_ratio=2)
    representation = int(kwargs.pop("representation_size", 256))
    box_head = TwoMLPHead(backbone.out_channels * 7 * 7, representation)
    defaults: dict[str, Any] = {
        # Gray X-rays: one mean/std for all three (identical) channels.
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.25, 0.25, 0.25],
        # Fewer proposals than the COCO defaults (2000/1000): at most a few findings
        # per image, and the CPU time goes into the box head.
        "rpn_pre_nms_top_n_train": 1000,
        "rpn_post_nms_top_n_train": 500,
        "rpn_pre_nms_top_n_test": 500,
        "rpn_post_nms_top_n_test": 300,
        "box_batch_size_per_image": 256,
        "box_detections_per_img": 100,
        "box_score_thresh": 0.01,
    }
    defaults.update(kwargs)
    return FasterRCNN(
        backbone,
        num_classes=None,
        min_size=size,
        max_size=max_size,
        rpn_anchor_generator=anchors,
        box_roi_pool=roi_pool,
        box_head=box_head,
        box_predictor=FastRCNNPredictor(representation, num_classes),
        **defaults,
    )


# ----------------------------------------------------------------- torchvision models
def _torchvision_builder(name: str):

    return getattr(detection, name)


def _replace_predictor(model: nn.Module, num_classes: int) -> nn.Module:
    """The seed's transfer-learning step: a new box predictor with ``num_classes`` outputs."""

    in_features = model.roi_heads.box_predictor.cls_score.in_features
    model.roi_heads.box_predictor = FastRCNNPredictor(in_features, num_classes)
    return model


def to_pretrained_layout(model: nn.Module, name: str) -> nn.Module:
    """Make a randomly built torchvision detector look like torchvision's pretrained one.

    With COCO weights torchvision freezes BatchNorm (``FrozenBatchNorm2d``: fixed
    statistics, right for batches of 2-8 images) and the first backbone layers
    (``trainable_backbone_layers=3``). A model built with ``weights=None`` has plain
    BatchNorm and trains every layer, so its state_dict keys differ
    (``num_batches_tracked``). Loading a local COCO file needs the pretrained layout.
    """

    body = model.backbone.body
    if name != "fasterrcnn_resnet50_fpn_v2":  # v2 keeps trainable BatchNorm
        _freeze_batchnorm(body, FrozenBatchNorm2d)
    if name.startswith("fasterrcnn_resnet50"):
        frozen = [m for n, m in body.named_children() if n not in ("layer2", "layer3", "layer4")]
    else:  # mobilenet: as torchvision's _mobilenet_extractor with trainable_layers=3
        blocks = list(body.children())
        stages = (
            [0]
            + [i for i, b in enumerate(blocks) if getattr(b, "_is_cn", False)]
            + [len(blocks) - 1]
        )
        frozen = blocks[: stages[len(stages) - 3]]
    for module in frozen:
        for p in module.parameters():
            p.requires_grad_(False)
    return model


def _freeze_batchnorm(module: nn.Module, frozen_cls: type[nn.Module]) -> None:
    """Replace every BatchNorm2d under ``module`` by ``frozen_cls`` in place."""
    for child_name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            frozen = frozen_cls(child.num_features, eps=child.eps)
            setattr(module, child_name, frozen)
        else:
            _freeze_batchnorm(child, frozen_cls)


def _build_torchvision(
    name: str,
    num_classes: int,
    weights: str | os.PathLike | None,
    min_size: int | None,
    max_size: int | None,
    **kwargs: Any,
) -> nn.Module:
    builder = _torchvision_builder(name)
    if min_size is not None:
        kwargs["min_size"] = int(min_size)
    if max_size is not None:
        kwargs["max_size"] = int(max_size)
    if weights is None:
        return builder(weights=None, weights_backbone=None, num_classes=num_classes, **kwargs)
    if isinstance(weights, str) and weights.upper() == "DEFAULT":
        try:
            model = builder(weights="DEFAULT", **kwargs)
        except (urllib.error.URLError, OSError, RuntimeError) as exc:
            raise WeightsError(
                f"could not download the COCO weights of {name} ({type(exc).__name__}: {exc}). "
                "Offline (e.g. a Kaggle notebook without internet), attach a dataset that holds "
                "the torchvision .pth file and pass its path as weights=..., or use weights=None "
                "to train from random initialisation."
            ) from exc
        return _replace_predictor(model, num_classes)
    return _build_from_file(name, num_classes, Path(weights), kwargs)


def _build_from_file(name: str, num_classes: int, path: Path, kwargs: dict[str, Any]) -> nn.Module:
    """Build ``name`` and load a local state_dict or cxrkit checkpoint into it."""
    state = state_dict_from_file(path, expected_name=name)
    file_classes = classes_in_state(state, path)
    if name == "cxr_small":
        model = _build_cxr_small(
            file_classes, kwargs.pop("min_size", None), kwargs.pop("max_size", None), **kwargs
        )
    else:
        builder = _torchvision_builder(name)
        model = builder(weights=None, weights_backbone=None, num_classes=file_classes, **kwargs)
        if not any(k.endswith("num_batches_tracked") for k in state):
            model = to_pretrained_layout(model, name)
    check_state_matches(model, state, path, name)
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
            raise ValueError(
                'anchors="auto" fits the anchors to boxes=: pass (N, 2) widths, heights'
            )
        return fit_anchors(boxes, size)
    raise ValueError(f'anchors must be "stock", "auto", an AnchorSpec or None, got {anchors!r}')


def _cxr_small_model(
    num_classes: int,
    weights: str | os.PathLike | None,
    min_size: int | None,
    max_size: int | None,
    anchors: AnchorsArg,
    boxes: Any,
    kwargs: dict[str, Any],
) -> tuple[nn.Module, Any]:
    """``cxr_small`` from scratch or from a file, and its fitted anchors (None: stock).

    **cxr_small** is a ~1.6 M-parameter Faster R-CNN (:class:`CxrSmallBackbone`:
    GroupNorm instead of BatchNorm, because batch statistics over 2-4 images are
    noise) that trains from scratch on two CPU cores in minutes at 256-384 px.
    Its anchors are chosen for chest findings, as fractions of the image side so
    that they follow ``min_size``:

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
    spec = resolve_anchors(anchors, boxes, int(min_size or CXR_SMALL_SIZE))
    if spec is not None:
        kwargs["anchor_spec"] = spec
    if isinstance(weights, str) and weights.upper() == "DEFAULT":
        raise WeightsError(
            "cxr_small has no published pretrained weights; use weights=None (train from "
            "scratch) or the path of a cxrkit checkpoint"
        )
    if weights is None:
        return _build_cxr_small(num_classes, min_size, max_size, **kwargs), spec
    file_kwargs = {"min_size": min_size, "max_size": max_size, **kwargs}
    return _build_from_file("cxr_small", num_classes, Path(weights), file_kwargs), spec


def build_model(
    name: str = "fasterrcnn_resnet50_fpn",
    num_classes: int = MODEL_NUM_CLASSES,
    weights: str | os.PathLike | None = None,
    *,
    min_size: int | None = None,
    max_size: int | None = None,
    anchors: AnchorsArg = None,
    boxes: Any = None,
    **kwargs: Any,
) -> nn.Module:
    """Build a Faster R-CNN detector with ``num_classes`` outputs (background included).

    Parameters
    ----------
    name:
        One of :data:`MODEL_NAMES`.
    num_classes:
        15 for VinBigData: background + 14 findings (No finding is never a box).
    weights:
        ``"DEFAULT"`` (COCO, downloaded), ``None`` (random) or a local file; see the
        module docstring. ``cxr_small`` has no published weights: ``None`` or a file.
    min_size, max_size:
        The resize done inside the model (``GeneralizedRCNNTransform``). torchvision
        defaults to 800/1333, which upsamples a 512 px PNG; ``cxr_small`` defaults to
        256/256.
    anchors, boxes:
        ``cxr_small`` only. ``None``/``"stock"`` (default): the anchors below;
        ``"auto"``: fitted to ``boxes`` ((N, 2) widths and heights in input pixels,
        :func:`cxrkit.anchors.fit_anchors`); or an :class:`~cxrkit.anchors.AnchorSpec`.
        Fitted anchors are stored in ``model.cxrkit_config`` and so in checkpoints.
    kwargs:
        Passed to ``torchvision.models.detection.FasterRCNN`` (e.g. ``box_score_thresh``).

    ``cxr_small`` and the choice of its stock anchors: :func:`_cxr_small_model`.
    """
    if name not in MODEL_NAMES:
        raise ValueError(f"unknown model {name!r}; choose one of {list(MODEL_NAMES)}")
    if num_classes < 2:
        raise ValueError(f"num_classes counts the background and must be >= 2, got {num_classes}")
    if name != "cxr_small" and anchors not in (None, "stock"):
        raise ValueError(f"anchors= is for cxr_small; {name} keeps torchvision's anchors")
    spec = None
    if name == "cxr_small":
        model, spec = _cxr_small_model(
            num_classes, weights, min_size, max_size, anchors, boxes, kwargs
        )
    else:
        model = _build_torchvision(name, num_classes, weights, min_size, max_size, **kwargs)
    # Remember how the model was built, so a checkpoint can rebuild it (model_from_checkpoint).
    if name == "cxr_small":  # store the sizes in effect, not None (the default may change)
        min_size, max_size = model.transform.min_size[0], model.transform.max_size
    model.cxrkit_config = {  # type: ignore[attr-defined]
        "name": name,
        "num_classes": int(num_classes),
        "min_size": min_size,
        "max_size": max_size,
        "kwargs": {k: v for k, v in kwargs.items() if isinstance(v, (int, float, str, bool))},
    }
    if spec is not None:  # stock anchors add nothing: their checkpoints stay as they were
        model.cxrkit_config["anchors"] = spec.scaled(int(min_size)).to_dict()  # type: ignore[attr-defined]
    return model


# ------------------------------------------------------------------ weight files
def read_weights_file(path: Path, map_location: Any = "cpu") -> Any:
    """``torch.load(path, weights_only=True)``; a missing or unreadable file is a CheckpointError."""
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many types for a broken or foreign file
        reason = f"{type(exc).__name__}: {_first_sentences(exc)}"
        if isinstance(exc, pickle.UnpicklingError) and str(exc).startswith(_REFUSED):
            reason = _unpickling_reason(exc)
            if "global" in reason.lower():  # it asks to import and call Python code
                raise CheckpointError(
                    f"checkpoint {path} was refused: {reason} A weights file never needs "
                    "this, and loading it with weights_only=False could run code hidden in "
                    "it; use a checkpoint written by cxrkit or torch.save(model.state_dict())"
                ) from exc
        raise CheckpointError(
            f"checkpoint {path} could not be read ({reason}); the file is corrupt, "
            "truncated, or not a PyTorch state_dict/cxrkit checkpoint"
        ) from exc


_REFUSED = "Weights only load failed"  # how torch's weights_only refusals begin


def _first_sentences(exc: BaseException, limit: int = 300) -> str:
    """The first line of an error message, cut after a whole sentence if longer than ``limit``."""
    text = (str(exc).strip().splitlines() or [""])[0].strip()
    if len(text) <= limit:
        return text
    end = text.rfind(". ", 0, limit)
    return text[: end + 1] if end > 0 else text[:limit].rsplit(" ", 1)[0] + " ..."


def _unpickling_reason(exc: BaseException) -> str:
    """What torch's weights_only unpickler refused, without its advice to turn the check off.

    torch's message is the advice ("Re-running torch.load with weights_only set to
    False will likely succeed ... Do it only if you got the file from a trusted
    source."), the reason (after "WeightsUnpickler error:" in some versions) and a
    link. Only the reason's first sentence is kept, whole.
    """
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))  # torch bolds part of it for terminals
    text = text.split("WeightsUnpickler error:", 1)[-1]
    advice = (_REFUSED, "Check the documentation")
    paragraphs = [p for p in text.split("\n\n") if p.strip() and not p.strip().startswith(advice)]
    reason = " ".join(paragraphs[0].split()) if paragraphs else ""
    sentence = re.match(r"(.+?\.)(\s|$)", reason)
    if sentence:
        return sentence.group(1)
    return reason + "." if reason else "it holds Python objects other than tensors."


def state_dict_from_file(path: Path, expected_name: str | None = None) -> dict[str, torch.Tensor]:
    """The model state_dict inside a cxrkit checkpoint or a bare state_dict file."""
    obj = read_weights_file(path)
    if isinstance(obj, Mapping) and isinstance(obj.get("model"), Mapping):
        # a cxrkit checkpoint, or torchvision references' {"model": ..., "optimizer": ...}
        name = obj.get("model_name")
        if expected_name is not None and name is not None and name != expected_name:
            raise CheckpointError(
                f"checkpoint {path} holds a {name!r} model, not {expected_name!r}; build "
                f"{name!r} or use model_from_checkpoint({str(path)!r})"
            )
        obj = obj["model"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path} holds no model state_dict (got {type(obj).__name__})")
    check_finite(obj, path)
    return dict(obj)


def check_finite(state: Mapping[str, Any], path: Any) -> None:
    """Refuse weights with NaN or infinite values, naming the file and the first bad tensor.

    Such a model predicts nothing useful (every score NaN, so every image gets the
    same "No finding" row), yet would write a submission that looks whole.
    """
    for key, value in state.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            finite = torch.isfinite(value)
            if not bool(finite.all()):
                bad = int(finite.numel() - finite.sum())
                raise CheckpointError(
                    f"checkpoint {path} has non-finite weights: {key} holds {bad} NaN or "
                    f"infinite value(s) of {value.numel()} (the training diverged); use an "
                    "earlier checkpoint, or train again with a lower --lr"
                )


def classes_in_state(state: Mapping[str, torch.Tensor], path: Any) -> int:
    """The class count of a Faster R-CNN state_dict (rows of its box classifier)."""
    key = "roi_heads.box_predictor.cls_score.weight"
    if key not in state:
        raise CheckpointError(
            f"{path} is not a Faster R-CNN state_dict (no {key!r}); first keys: {list(state)[:3]}"
        )
    return int(state[key].shape[0])


def check_state_matches(
    model: nn.Module, state: Mapping[str, torch.Tensor], path: Any, what: str
) -> None:
    """Raise CheckpointError naming the first mismatches instead of PyTorch's wall of text."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in own.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or shapes:
        parts = []
        if shapes:
            parts.append(f"{len(shapes)} shape mismatch(es), e.g. {shapes[:2]}")
        if missing:
            parts.append(f"{len(missing)} missing key(s), e.g. {missing[:2]}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s), e.g. {unexpected[:2]}")
        raise CheckpointError(
            f"checkpoint {path} does not fit the {what} model: " + "; ".join(parts)
        )


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable) parameters: ``cxr_small`` has about half a million."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
