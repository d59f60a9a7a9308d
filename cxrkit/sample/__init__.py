"""A small synthetic dataset in the exact layout of the Kaggle VinBigData competition.

The real data is 200 GB that only Kaggle users can download, so every notebook also
runs on this sample (:func:`cxrkit.paths.find_data`); notebooks 01 and 02 explore it::

    OUT/train/<image_id>.dicom, OUT/test/<image_id>.dicom   (200 + 50 by default)
    OUT/train.csv, OUT/sample_submission.csv, OUT/test_labels.csv (the test truth)

Three radiologists per image who disagree, the real class imbalance softened, the
DICOM variants of real files (MONOCHROME1, VOI LUT, rescale, RLE, JPEG 2000), fake
patient tags, byte-identical for a seed. Submodules: ``plan`` (what to draw),
``anatomy``/``findings``/``draw``/``render`` (the image), ``dicom_writer``,
``reports`` (label tables), ``generate`` (the folder), ``layout`` (marker, version).
Only ``layout`` loads with the package, so :mod:`cxrkit.paths` stays light.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from cxrkit.sample.layout import MARKER_NAME, SAMPLE_VERSION, TEST_TRUTH_RAD_ID

if TYPE_CHECKING:
    from cxrkit.sample.dicom_writer import read_dicom_display
    from cxrkit.sample.generate import generate_sample
    from cxrkit.sample.plan import CaseSpec, DicomVariant, plan_cases
    from cxrkit.sample.render import ROWS_RANGE, Rendered, render_case
    from cxrkit.sample.reports import TRAIN_COLUMNS

__all__ = [
    "MARKER_NAME",
    "ROWS_RANGE",
    "SAMPLE_VERSION",
    "TEST_TRUTH_RAD_ID",
    "TRAIN_COLUMNS",
    "CaseSpec",
    "DicomVariant",
    "Rendered",
    "generate_sample",
    "plan_cases",
    "read_dicom_display",
    "render_case",
]

# name -> submodule that defines it, imported on first use (PEP 562)
_LAZY: dict[str, str] = {
    "generate_sample": "generate",
    "plan_cases": "plan",
    "CaseSpec": "plan",
    "DicomVariant": "plan",
    "render_case": "render",
    "Rendered": "render",
    "ROWS_RANGE": "render",
    "read_dicom_display": "dicom_writer",
    "TRAIN_COLUMNS": "reports",
}


def __getattr__(name: str) -> Any:
    """Import the submodule that defines ``name`` on first use."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'cxrkit.sample' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"cxrkit.sample.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
