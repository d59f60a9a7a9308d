"""VinBigData class names, ids and colours, and the label shift for torchvision.

VinBigData ``class_id`` 0-13 are findings and 14 is "No finding". A torchvision
detector reserves label 0 for background, so model labels are ``class_id + 1``
(1-14). "No finding" is never a model label: it is an image-level score written
as ``14 p 0 0 1 1`` in a submission (see :mod:`cxrkit.submission`).
"""

from __future__ import annotations

import numpy as np

from cxrkit.errors import ConfigError, UnknownNameError
from cxrkit.formats import NO_FINDING_BOX as NO_FINDING_BOX  # re-exported

CLASS_NAMES: tuple[str, ...] = (
    "Aortic enlargement",
    "Atelectasis",
    "Calcification",
    "Cardiomegaly",
    "Consolidation",
    "ILD",
    "Infiltration",
    "Lung Opacity",
    "Nodule/Mass",
    "Other lesion",
    "Pleural effusion",
    "Pleural thickening",
    "Pneumothorax",
    "Pulmonary fibrosis",
    "No finding",
)
NO_FINDING_ID: int = 14
NUM_FINDINGS: int = 14  # class ids 0..13 carry boxes
NUM_CLASSES: int = 15  # for the competition metric: 14 findings + No finding
MODEL_NUM_CLASSES: int = NUM_FINDINGS + 1  # torchvision: background + 14 findings

# One colour per class, chosen so that any two of the 14 findings differ by a CIEDE2000
# distance of at least 9 for normal vision and under simulated protanopia, deuteranopia
# and tritanopia (tests/test_plotting.py measures it); the classes radiologists confuse
# (ILD, Infiltration, Lung Opacity, Pulmonary fibrosis) get very different hues.
# Colours from Okabe & Ito and Paul Tol's palettes; No finding is gray.
CLASS_COLORS: tuple[str, ...] = (
    "#dc050c",  # 0 Aortic enlargement: red
    "#a6cee3",  # 1 Atelectasis: pale blue
    "#aa4499",  # 2 Calcification: purple
    "#0077bb",  # 3 Cardiomegaly: blue
    "#ffaabb",  # 4 Consolidation: pink
    "#f0e442",  # 5 ILD: yellow
    "#009e73",  # 6 Infiltration: bluish green
    "#cc79a7",  # 7 Lung Opacity: reddish purple
    "#ee6677",  # 8 Nodule/Mass: rose
    "#ccbb44",  # 9 Other lesion: mustard
    "#56b4e9",  # 10 Pleural effusion: sky blue
    "#117733",  # 11 Pleural thickening: green
    "#882255",  # 12 Pneumothorax: wine
    "#999933",  # 13 Pulmonary fibrosis: olive
    "#808080",  # 14 No finding: gray
)

_NAME_TO_ID = {name: i for i, name in enumerate(CLASS_NAMES)}


def class_name(class_id: int) -> str:
    """Name of a VinBigData class id (0-14)."""
    if not 0 <= int(class_id) < NUM_CLASSES:
        raise ConfigError(f"class_id must be in 0..{NUM_CLASSES - 1}, got {class_id}")
    return CLASS_NAMES[int(class_id)]


def class_id(name: str) -> int:
    """VinBigData class id of a class name, e.g. ``"Cardiomegaly" -> 3``."""
    try:
        return _NAME_TO_ID[name]
    except KeyError:
        raise UnknownNameError(
            f"unknown class name {name!r}; expected one of {list(CLASS_NAMES)}"
        ) from None


def class_color(class_id: int) -> str:
    """Hex colour used for a class in every plot."""
    return CLASS_COLORS[int(class_id)]


def to_model_labels(class_ids: np.ndarray | list[int]) -> np.ndarray:
    """VinBigData class ids (0-13) -> torchvision labels (1-14); 0 stays background."""
    ids = np.asarray(class_ids, dtype=np.int64)
    if ids.size and (ids.min() < 0 or ids.max() >= NUM_FINDINGS):
        raise ConfigError(f"only finding ids 0..{NUM_FINDINGS - 1} become model labels, got {ids}")
    return ids + 1


def from_model_labels(labels: np.ndarray | list[int]) -> np.ndarray:
    """torchvision labels (1-14) -> VinBigData class ids (0-13)."""
    labels = np.asarray(labels, dtype=np.int64)
    if labels.size and (labels.min() < 1 or labels.max() > NUM_FINDINGS):
        raise ConfigError(f"model labels must be in 1..{NUM_FINDINGS}, got {labels}")
    return labels - 1
