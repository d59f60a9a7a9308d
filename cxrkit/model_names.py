"""Old home of the model names; they now come from :mod:`cxrkit.registry` (no torch)."""

from cxrkit.registry import CLASSIFIER_NAMES, MODEL_NAMES

__all__ = ["CLASSIFIER_NAMES", "MODEL_NAMES"]
