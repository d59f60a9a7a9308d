"""The model registry: one :class:`ModelSpec` per model, the only place that knows models.

Every question the rest of cxrkit asks about a model ("which input size by
default?", "does it take fitted anchors?", "what do COCO weights look like
inside?", "which learning rate and schedule?") is a field of its spec, never a
comparison with its name. Adding a model is one :func:`register_model` call and
its builder. The pattern is torchvision's ``register_model`` / ``get_model`` /
``get_model_weights`` (``torchvision.models``), with the training recipe kept
beside the architecture, as torchvision's references keep theirs per model.

This module imports no torch, so the command line can list the models in its
help and refuse an unknown name instantly; :meth:`ModelSpec.builder_function`
imports the builder when a model is really built.

>>> get_spec("cxr_small").size
256
>>> "cxr_small" in model_names("detector")
True
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from cxrkit.errors import ConfigError

Task = Literal["detector", "classifier"]


@dataclass(frozen=True)
class ModelSpec:
    """What cxrkit knows about one model: how to build it and how it trains best.

    Args:
        name: the registry key (``--model NAME``).
        task: ``"detector"`` (boxes) or ``"classifier"`` (one normal/abnormal logit).
        family: the architecture family: ``"faster_rcnn"`` (two-stage: proposals, then a
            box head), ``"retinanet"`` or ``"fcos"`` (one-stage: a dense head scores every
            cell) or ``"classifier"``; checkpoints say it.
        builder: ``"module:function"`` that builds it, called as
            ``function(spec, num_classes=..., size=..., weights=..., **options)``.
        summary: one line for ``--help`` and the notebooks.
        size: default input side in pixels; the model is built for exactly the side
            it is trained at (no resize inside the model beyond it).
        epochs: the length of the notebooks' short teaching run (:mod:`cxrkit.profiles`);
            a run without ``epochs`` plans its own from its time budget (:mod:`cxrkit.budget`).
        max_epochs: the most epochs a time budget plans (a fast GPU on a small
            dataset would otherwise plan hundreds).
        batch_size: the batch of a run.
        optimizer: ``"sgd"`` (momentum 0.9) or ``"adamw"``.
        lr, weight_decay: the optimizer's rate and decay.
        schedule: ``"cosine"`` (to 0 at the last epoch) or ``"step"`` (x0.1 every 3).
        warmup_iters: steps of linear warmup in the first epoch (0: none).
        max_grad_norm: gradient clipping (None: none).
        fits_anchors: whether its anchors can be fitted to the training boxes.
        size_from_data: whether a run without ``size`` chooses the input side from the
            training boxes (:func:`cxrkit.anchors.choose_input_size`) rather than ``size``.
        pretrained: what ``weights="DEFAULT"`` loads (``"COCO"``, ``"ImageNet"``) or
            None when no published weights exist.
        backbone: the backbone kind the pretrained layout depends on
            (``"resnet"``, ``"mobilenet"``, or the model's own).
        frozen_bn_eps: with pretrained weights, BatchNorm is frozen
            (``FrozenBatchNorm2d``) with this eps, as torchvision sets it for those
            weights; None: BatchNorm stays trainable (e.g. ``_v2``).
    """

    name: str
    task: Task
    family: str
    builder: str
    summary: str
    size: int
    epochs: int = 10
    max_epochs: int = 60
    batch_size: int = 4
    optimizer: str = "sgd"
    lr: float = 0.005
    weight_decay: float = 0.0005
    schedule: str = "step"
    warmup_iters: int = 0
    max_grad_norm: float | None = None
    fits_anchors: bool = False
    size_from_data: bool = False
    pretrained: str | None = None
    backbone: str = ""
    frozen_bn_eps: float | None = None

    def builder_function(self) -> Callable[..., Any]:
        """The builder, imported now (this is where torch gets imported)."""
        module, function = self.builder.split(":")
        return getattr(importlib.import_module(module), function)

    def training_defaults(self) -> dict[str, Any]:
        """The settings of a run that default to this model's recipe (TrainConfig's names).

        Not ``epochs``: a run plans them from its time budget (:mod:`cxrkit.budget`).
        """
        return {
            "size": "auto" if self.size_from_data else self.size,
            "batch_size": self.batch_size,
            "lr": self.lr,
            "weight_decay": self.weight_decay,
            "schedule": self.schedule,
            "warmup_iters": self.warmup_iters,
            "max_grad_norm": self.max_grad_norm,
        }


_REGISTRY: dict[str, ModelSpec] = {}


def register_model(spec: ModelSpec) -> ModelSpec:
    """Add ``spec`` to the registry (a name can be registered once)."""
    if spec.name in _REGISTRY:
        raise ConfigError(f"a model named {spec.name!r} is registered already")
    if spec.task not in ("detector", "classifier"):
        raise ConfigError(
            f"{spec.name}: task must be 'detector' or 'classifier', got {spec.task!r}"
        )
    _REGISTRY[spec.name] = spec
    return spec


def model_names(task: Task | None = "detector") -> tuple[str, ...]:
    """The registered names of ``task`` (all models with ``task=None``), in registration order."""
    return tuple(name for name, spec in _REGISTRY.items() if task is None or spec.task == task)


def get_spec(name: str, task: Task | None = None) -> ModelSpec:
    """The spec of ``name``; a :class:`ConfigError` listing the choices if it is unknown
    or (with ``task``) a model of another task."""
    spec = _REGISTRY.get(str(name))
    choices = list(model_names(task))
    if spec is None:
        raise ConfigError(f"unknown model {name!r}; choose one of {choices}")
    if task is not None and spec.task != task:
        raise ConfigError(f"{name!r} is a {spec.task}, not a {task}; choose one of {choices}")
    return spec


# ------------------------------------------------------------------------ detectors
_SMALL = "cxrkit.models:build_cxr_small"
_TORCHVISION = "cxrkit.models:build_torchvision_detector"

register_model(
    ModelSpec(
        "cxr_small",
        "detector",
        "faster_rcnn",
        _SMALL,
        "a 1.6 M-parameter Faster R-CNN for CPUs, trained from scratch (GroupNorm)",
        size=256,
        lr=0.02,
        schedule="cosine",
        warmup_iters=50,
        max_grad_norm=10.0,
        fits_anchors=True,
        size_from_data=True,
        backbone="cxr_small",
    )
)
# The one-stage families on the same backbone: what differs from cxr_small is the head.
# Their recipe is cxr_small's (measured: benchmarks/bench_families.py).
_SMALL_RECIPE: dict[str, Any] = {
    "size": 256,
    "lr": 0.01,
    "schedule": "cosine",
    "warmup_iters": 50,
    "max_grad_norm": 10.0,
    "size_from_data": True,
    "backbone": "cxr_small",
}
register_model(
    ModelSpec(
        "retina_small",
        "detector",
        "retinanet",
        _SMALL,
        "a one-stage RetinaNet (focal loss) on cxr_small's backbone, from scratch",
        fits_anchors=True,
        **_SMALL_RECIPE,
    )
)
register_model(
    ModelSpec(
        "fcos_small",
        "detector",
        "fcos",
        _SMALL,
        "a one-stage, anchor-free FCOS (centerness) on cxr_small's backbone, from scratch",
        **_SMALL_RECIPE,
    )
)
register_model(
    ModelSpec(
        "fasterrcnn_resnet50_fpn",
        "detector",
        "faster_rcnn",
        _TORCHVISION,
        "the seed notebook's Faster R-CNN, ResNet-50 FPN (COCO weights)",
        size=512,
        pretrained="COCO",
        backbone="resnet",
        frozen_bn_eps=0.0,
    )
)
register_model(
    ModelSpec(
        "fasterrcnn_resnet50_fpn_v2",
        "detector",
        "faster_rcnn",
        _TORCHVISION,
        "Faster R-CNN v2, ResNet-50 FPN with trainable BatchNorm (COCO weights)",
        size=512,
        pretrained="COCO",
        backbone="resnet",
    )
)
register_model(
    ModelSpec(
        "fasterrcnn_mobilenet_v3_large_fpn",
        "detector",
        "faster_rcnn",
        _TORCHVISION,
        "Faster R-CNN on MobileNet v3 large (COCO weights): lighter than ResNet-50",
        size=512,
        pretrained="COCO",
        backbone="mobilenet",
        frozen_bn_eps=1e-5,
    )
)
# torchvision's one-stage references train at lr 0.01 (batch 16) with warmup and clip
# nothing; a from-scratch run (no weights offline) needs the clipping the small ones have.
_ONE_STAGE_RECIPE: dict[str, Any] = {
    "size": 512,
    "lr": 0.01,
    "max_grad_norm": 10.0,
    "warmup_iters": 100,
    "pretrained": "COCO",
    "backbone": "resnet",
}
register_model(
    ModelSpec(
        "retinanet_resnet50_fpn_v2",
        "detector",
        "retinanet",
        _TORCHVISION,
        "RetinaNet v2, ResNet-50 FPN, one-stage with the focal loss (COCO weights)",
        **_ONE_STAGE_RECIPE,
    )
)
register_model(
    ModelSpec(
        "fcos_resnet50_fpn",
        "detector",
        "fcos",
        _TORCHVISION,
        "FCOS, ResNet-50 FPN, one-stage and anchor-free (COCO weights)",
        frozen_bn_eps=1e-5,  # torchvision freezes BatchNorm with its default eps for them
        **_ONE_STAGE_RECIPE,
    )
)

# ---------------------------------------------------------------------- classifiers
_CLASSIFIER = "cxrkit.classifier:build_classifier_from_spec"
_CLASSIFIER_RECIPE: dict[str, Any] = {
    "size": 256,
    "batch_size": 16,
    "optimizer": "adamw",
    "lr": 1e-3,
    "weight_decay": 1e-4,
    "schedule": "cosine",
}

register_model(
    ModelSpec(
        "cls_small",
        "classifier",
        "classifier",
        _CLASSIFIER,
        "five conv blocks, 0.3 M parameters, from scratch: seconds an epoch on a CPU",
        backbone="cls_small",
        **_CLASSIFIER_RECIPE,
    )
)
for _name, _backbone in (("resnet18", "resnet"), ("resnet50", "resnet")):
    register_model(
        ModelSpec(
            _name,
            "classifier",
            "classifier",
            _CLASSIFIER,
            f"torchvision's {_name} with one logit (ImageNet weights)",
            pretrained="ImageNet",
            backbone=_backbone,
            **_CLASSIFIER_RECIPE,
        )
    )
register_model(
    ModelSpec(
        "efficientnet_b0",
        "classifier",
        "classifier",
        _CLASSIFIER,
        "torchvision's efficientnet_b0 with one logit (ImageNet weights)",
        pretrained="ImageNet",
        backbone="efficientnet",
        **_CLASSIFIER_RECIPE,
    )
)

MODEL_NAMES: tuple[str, ...] = model_names("detector")
CLASSIFIER_NAMES: tuple[str, ...] = model_names("classifier")
