"""cxrkit: chest X-ray abnormality detection (VinBigData / VinDr-CXR), for learning.

The public API is listed in :data:`__all__` and in the README. Names load lazily,
so ``import cxrkit`` and ``python -m cxrkit sample`` stay fast and only pull in
torch when a model-related name is first used.

>>> import cxrkit
>>> cxrkit.CLASS_NAMES[14]
'No finding'
"""

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it (one module per concept, see GUIDE.md)
_API: dict[str, str] = {
    "CxrkitError": "errors",  # base of every error below
    # labels
    "CLASS_NAMES": "labels",
    "NO_FINDING_ID": "labels",
    "NUM_FINDINGS": "labels",
    "class_name": "labels",
    "class_id": "labels",
    "class_color": "labels",
    "to_model_labels": "labels",
    "from_model_labels": "labels",
    # finding data
    "find_data": "paths",
    "sample_dir": "paths",
    "work_dir": "paths",
    "DataNotFoundError": "paths",
    "generate_sample": "sample",
    "seed_everything": "utils",
    "try_gpu": "utils",
    "setup_notebook": "utils",
    "check_range": "utils",
    # DICOM
    "read_xray": "dicom",
    "read_xray_reference": "dicom",
    "read_header": "dicom",
    "dicom_shape": "dicom",
    "DicomReadError": "dicom",
    # annotations
    "load_annotations": "annotations",
    "validate_annotations": "annotations",
    "AnnotationError": "annotations",
    "load_meta": "annotations",
    "meta_from_dicoms": "preprocess",
    "fuse_boxes": "annotations",
    "rescale_boxes": "annotations",
    "boxes_to_resized": "annotations",
    "boxes_to_original": "annotations",
    # preprocessing, dataset, transforms
    "preprocess_dicoms": "preprocess",
    "ensure_preprocessed": "preprocess",
    "XrayDataset": "data",
    "TestDataset": "data",
    "collate_fn": "data",
    "split": "data",
    "train_transforms": "transforms",
    "valid_transforms": "transforms",
    "test_transforms": "transforms",
    # models and training
    "build_model": "models",
    "MODEL_NAMES": "models",
    "load_checkpoint": "checkpoints",
    "save_checkpoint": "checkpoints",
    "model_from_checkpoint": "checkpoints",
    "CheckpointError": "checkpoints",
    "WeightsError": "models",
    "Averager": "engine",
    "train_one_epoch": "engine",
    "evaluate": "engine",
    "predict": "engine",
    "fit": "fit",
    "make_optimizer": "fit",
    "make_scheduler": "fit",
    "ResumeError": "fit",
    "NonFiniteLossError": "engine",
    "TrainConfig": "train",
    "train_from_folder": "train",
    "predict_to_submission": "train",
    # post-processing, metric, submission
    "apply_nms": "postprocess",
    "classwise_nms": "postprocess",
    "wbf_predictions": "postprocess",
    "merge_tta": "postprocess",
    "vinbigdata_map": "metrics",
    "prediction_strings": "submission",
    "validate_submission": "submission",
    "write_submission": "submission",
    "SubmissionError": "submission",
}

__all__ = sorted(_API)


def __getattr__(name: str) -> Any:
    """Import the defining module on first use of a public name (PEP 562)."""
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'cxrkit' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"cxrkit.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
