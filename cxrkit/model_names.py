"""The names of the detectors :func:`cxrkit.models.build_model` knows, and of the classifiers.

Kept apart from :mod:`cxrkit.models` (which imports torch and torchvision) so that
the command line can list them in ``train --help`` and refuse an unknown name
without loading torch.
"""

from __future__ import annotations

MODEL_NAMES: tuple[str, ...] = (
    "fasterrcnn_resnet50_fpn",
    "fasterrcnn_resnet50_fpn_v2",
    "fasterrcnn_mobilenet_v3_large_fpn",
    "cxr_small",
)

# The image-level normal/abnormal classifiers of :func:`cxrkit.classifier.build_classifier`.
CLASSIFIER_NAMES: tuple[str, ...] = ("cls_small", "resnet18", "resnet50", "efficientnet_b0")
