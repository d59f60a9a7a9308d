"""cxrkit: chest X-ray abnormality detection (VinBigData / VinDr-CXR), for learning.

The public API (:data:`__all__`, also in the README) is what notebooks 01-07 teach.
Names load lazily, so ``import cxrkit`` stays fast and only pulls in torch when a
model-related name is first used.

>>> import cxrkit
>>> cxrkit.CLASS_NAMES[14]
'No finding'
"""

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it (one module per concept); every error class
# derives from CxrkitError and stays importable from cxrkit.errors and its module
_API: dict[str, str] = {
    "CxrkitError": "errors",  # base of every cxrkit error
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
    "generate_sample": "sample",
    "seed_everything": "utils",
    "try_gpu": "utils",
    "setup_notebook": "utils",
    "check_range": "utils",
    "check_environment": "doctor",
    # DICOM
    "read_xray": "dicom",
    "read_header": "dicom",
    "dicom_shape": "dicom",
    # annotations
    "load_annotations": "annotations",
    "validate_annotations": "annotations",
    "load_meta": "annotations",
    "fuse_boxes": "annotations",
    "rescale_boxes": "annotations",
    "boxes_to_resized": "annotations",
    "boxes_to_original": "annotations",
    # preprocessing, dataset, transforms
    "meta_from_dicoms": "preprocess",
    "preprocess_dicoms": "preprocess",
    "ensure_preprocessed": "preprocess",
    "XrayDataset": "data",
    "TestDataset": "data",
    "collate_fn": "data",
    "split": "data",
    "kfold_assign": "data",
    "fold_split": "data",
    "join_out_of_fold": "data",
    "train_transforms": "transforms",
    "valid_transforms": "transforms",
    "test_transforms": "transforms",
    "repeat_factors": "sampling",
    "RepeatFactorSampler": "sampling",
    # models and training
    "build_model": "models",
    "MODEL_NAMES": "registry",
    "AnchorSpec": "anchors",
    "fit_anchors": "anchors",
    "anchor_coverage": "anchors",
    "grid_coverage": "anchors",
    "choose_input_size": "anchors",
    "load_checkpoint": "checkpoints",
    "save_checkpoint": "checkpoints",
    "model_from_checkpoint": "models",
    "Averager": "engine",
    "train_one_epoch": "engine",
    "evaluate": "engine",
    "predict": "engine",
    "fit": "fit",
    "make_optimizer": "fit",
    "make_scheduler": "fit",
    "choose_profile": "profiles",
    "TrainConfig": "config",
    "train_from_folder": "train",
    "predict_to_submission": "predict",
    "predict_submission": "predict",
    "get_spec": "registry",
    "register_model": "registry",
    "ModelSpec": "registry",
    "build_classifier": "classifier",
    "train_classifier": "classifier",
    "classify": "classifier",
    "predict_ensemble": "predict",
    # post-processing, metric, submission
    "apply_nms": "postprocess",
    "classwise_nms": "postprocess",
    "wbf_predictions": "postprocess",
    "merge_tta": "postprocess",
    "apply_classifier": "postprocess",
    "tune_bands": "postprocess",
    "vinbigdata_map": "metrics",
    "ap_at_ious": "metrics",
    "confusion_at_iou": "metrics",
    "bootstrap_map": "metrics",
    "roc_auc": "metrics",
    "roc_curve": "metrics",
    "calibration_table": "metrics",
    "fuse_tables": "ensemble",
    "tune_fusion": "ensemble",
    "FusionSettings": "ensemble",
    "tune_fusion_from_runs": "predict",
    "truth_found": "metrics",
    "prediction_strings": "submission",
    "validate_submission": "submission",
    "write_submission": "submission",
    # plots
    "show_image": "plotting",
    "draw_boxes": "plotting",
    "plot_class_counts": "plotting",
    "plot_box_stats": "plotting",
    "plot_history": "plotting",
    "plot_pr_curves": "plotting",
    "show_truth_vs_prediction": "plotting",
    "add_class_legend": "plotting",
    "plot_ap_vs_agreement": "plotting",
    "plot_roc": "plotting",
    "plot_calibration": "plotting",
    "plot_band_histogram": "plotting",
    "plot_map_intervals": "plotting",
    "plot_class_ap": "plotting",
    "save_figure": "plotting",
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
