"""A small synthetic dataset in the exact layout of the Kaggle VinBigData competition.

The real competition data is 200 GB of DICOMs that only Kaggle users can download,
so every notebook of cxrkit can also run on a *sample* written by this module::

    OUT/train/<image_id>.dicom      200 synthetic chest radiographs (default)
    OUT/test/<image_id>.dicom        50 more, without labels in train.csv
    OUT/train.csv                    image_id,class_name,class_id,rad_id,x_min,y_min,x_max,y_max
    OUT/sample_submission.csv        image_id,PredictionString ("14 1 0 0 1 1" everywhere)
    OUT/test_labels.csv              the test truth (train.csv columns) to score locally
    OUT/.cxrkit-sample               marker: version, seed and counts

What makes it a useful stand-in for the real thing:

* **Labels behave like the real ones.** Three radiologists per image (mostly R8,
  R9 and R10, as in the real train set); each one may miss a finding the others
  saw (and then writes a "No finding" row if he saw nothing at all), and their
  boxes disagree by a few percent. Class frequencies follow the real imbalance
  (Aortic enlargement and Cardiomegaly common, Pneumothorax rare), softened so
  that every finding appears a few times; about a third of the images are normal.
* **Images look like chest X-rays** (body, lungs, heart, spine, ribs, clavicles,
  diaphragm) and each of the 14 findings has its own consistent appearance at a
  plausible place, whose box is the true extent of what was drawn. A small
  Faster R-CNN can learn them from 200 images in minutes.
* **DICOMs vary as real ones do**: MONOCHROME1 and MONOCHROME2, BitsStored 10-16,
  window centre/width, VOI LUT sequences, rescale slope/intercept, RLE and JPEG
  2000 lossless compression, non-square sizes. Fake but realistic patient tags
  (``PatientName`` "ANONYMOUS", sex, age) are present so later modules can check
  they never copy them to their outputs.
* **Deterministic**: the same seed gives byte-identical files (UIDs derived from
  the seed, no timestamps). Each image has its own child random generator, so
  images can be drawn independently (in any order, or in parallel).

Radiograph convention: the patient faces you, so the patient's *left* (heart,
aortic knob) is on the image *right*.

Notebooks 01 (EDA) and 02 (DICOM) explore this sample, and every notebook runs on
it by default (:func:`cxrkit.paths.find_data`). The generator is split by idea:

* :mod:`~cxrkit.sample.plan`: which images, findings, radiologists, DICOM variants;
* :mod:`~cxrkit.sample.anatomy` and :mod:`~cxrkit.sample.findings`: drawing the chest
  and its findings (with :mod:`~cxrkit.sample.draw`), :mod:`~cxrkit.sample.render`
  one whole image;
* :mod:`~cxrkit.sample.dicom_writer`: storing it as DICOM;
* :mod:`~cxrkit.sample.reports`: the label tables;
* :mod:`~cxrkit.sample.generate`: the folder; :mod:`~cxrkit.sample.layout`: its
  marker and version.

Only the constants of :mod:`~cxrkit.sample.layout` load with this package; the
other names load on first use, so :mod:`cxrkit.paths` can read
:data:`SAMPLE_VERSION` without importing OpenCV, pandas and pydicom.
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
