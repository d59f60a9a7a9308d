"""One prediction pipeline: N >= 1 detector checkpoints -> one submission (notebooks 06-07).

``python -m cxrkit predict A.pt [B.pt ...] DATA --out SUB.csv`` and the library
run the same steps, in this order:

1. **read** every checkpoint once (:func:`load_detectors`; kinds and class counts
   are checked before any image is read, and the output path before any work);
2. **predict** each detector on the split, flip TTA inside each model when asked
   (:func:`predict_split`): one predictions table per detector, original pixels;
3. **table steps**, each a function ``(table, context) -> table``
   (:data:`TableStep`): the weighted boxes fusion of several detectors
   (:func:`fuse_step`), class-wise NMS of the final boxes (:func:`nms_step`, IoU
   0.3 by default) and the classifier's ``p_abnormal`` (:func:`classifier_step`).
   A new post-processing step is one more function in this list, and it runs for
   one checkpoint as for many;
4. **write** the submission (No finding rows, validation, atomic write).

Detectors of different families fuse best with settings tuned out of fold
(notebook 08): :func:`tune_fusion_from_runs` predicts each run's validation
images (``split.csv``, or a fold run's ``oof.csv``), chooses the WBF weights, IoU
and skip threshold there (:func:`cxrkit.ensemble.tune_fusion`) and saves them;
``predict_ensemble(..., fusion=FILE)`` (``predict --fusion FILE``) uses them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd
from torch import nn

from cxrkit._atomic import check_writable
from cxrkit.annotations import load_meta
from cxrkit.checkpoints import checkpoint_size, load_checkpoint, require_kind
from cxrkit.classifier import classifier_from_checkpoint, classify
from cxrkit.data import TestDataset, check_images_exist, join_out_of_fold
from cxrkit.engine import predict
from cxrkit.ensemble import FusionChoice, FusionSettings, fuse_tables, tune_fusion
from cxrkit.errors import CheckpointError, ConfigError, DataNotFoundError, FoldError
from cxrkit.labels import MODEL_NUM_CLASSES, NO_FINDING_ID
from cxrkit.models import classes_in_state, model_from_checkpoint
from cxrkit.postprocess import (
    PREDICT_NMS_IOU,
    apply_classifier,
    check_bands,
    classwise_nms_table,
)
from cxrkit.runs import OOF_FILE, read_training_table
from cxrkit.submission import prediction_strings, write_submission
from cxrkit.train import predict_images
from cxrkit.transforms import test_transforms
from cxrkit.utils import try_gpu

__all__ = [
    "Detector",
    "PredictContext",
    "TableStep",
    "classifier_step",
    "fuse_step",
    "load_detectors",
    "predict_split",
    "predict_submission",
    "predict_tables",
    "predict_to_submission",
    "predict_ensemble",
    "tune_fusion_from_runs",
    "validation_predictions",
]


# ----------------------------------------------------------------- checkpoints
@dataclass
class Detector:
    """A detector checkpoint read once: its path, its dict and the rebuilt model."""

    path: Path
    ckpt: dict[str, Any]
    model: nn.Module

    @property
    def size(self) -> int:
        """The image side it was trained at: the run's config, else the model's own."""
        return checkpoint_size(self.ckpt)


def check_detector_checkpoint(checkpoint: str | os.PathLike) -> dict[str, Any]:
    """Read a detector checkpoint for prediction, refusing a classifier's or one trained
    for another class count (:class:`CheckpointError`) before any image is read."""
    ckpt = load_checkpoint(checkpoint)  # clear CheckpointError if missing, corrupt or NaN
    require_kind(ckpt, "detector", checkpoint)  # not a classifier's
    classes = classes_in_state(ckpt["model"], checkpoint)
    if classes != MODEL_NUM_CLASSES:  # before any image: its submission would be wrong
        raise CheckpointError(
            f"checkpoint {checkpoint} predicts {classes} classes, but a VinBigData model has "
            f"{MODEL_NUM_CLASSES} (background + the 14 findings): it was trained for "
            "another task and cannot write a valid submission"
        )
    return ckpt


def load_detectors(checkpoints: Sequence[str | os.PathLike | Detector]) -> list[Detector]:
    """Read and check every detector checkpoint (each file once), then rebuild the models;
    a :class:`Detector` already loaded passes as it is."""
    if not checkpoints:
        raise ConfigError("predict needs at least one detector checkpoint")
    read = [
        c if isinstance(c, Detector) else (Path(c), check_detector_checkpoint(c))
        for c in checkpoints
    ]  # all checked before any model is built
    return [
        r
        if isinstance(r, Detector)
        else Detector(r[0], r[1], model_from_checkpoint(r[0], ckpt=r[1]))
        for r in read
    ]


# -------------------------------------------------------------------- predict
def read_split(data_dir: str | os.PathLike, split: str = "test") -> tuple[pd.DataFrame, list[str]]:
    """The meta table and image ids of ``data_dir/split``, checking that every PNG is there."""
    data = Path(data_dir)
    meta_path = data / f"{split}_meta.csv"
    if not meta_path.is_file():
        raise DataNotFoundError(
            f"{meta_path} not found: DATA_DIR must be a preprocessed folder with a {split}/ split"
        )
    meta = load_meta(meta_path)
    ids = list(meta["image_id"].astype(str))
    check_images_exist(data / split, ids)
    return meta, ids


def _detector(checkpoint: str | os.PathLike | Detector) -> Detector:
    if isinstance(checkpoint, Detector):
        return checkpoint
    return load_detectors([checkpoint])[0]


def predict_split(
    checkpoint: str | os.PathLike | Detector,
    data_dir: str | os.PathLike,
    split: str = "test",
    tta: bool = False,
    batch_size: int = 4,
    num_workers: int = 0,
) -> tuple[pd.DataFrame, list[str], pd.DataFrame]:
    """A detector's predictions table (original pixels, no No finding rows) on
    ``data_dir/split``, with the image ids and the meta table."""
    detector = _detector(checkpoint)
    meta, ids = read_split(data_dir, split)
    dataset = TestDataset(
        Path(data_dir) / split, ids=ids, transforms=test_transforms(detector.size)
    )
    device = try_gpu()
    model = detector.model.to(device)
    preds = predict(
        model, dataset, device, meta, batch_size=batch_size, tta=tta, num_workers=num_workers
    )
    return preds, dataset.image_ids, meta


@dataclass
class PredictContext:
    """What a table step may need besides the table: the images, sizes and settings."""

    image_ids: list[str]
    meta: pd.DataFrame
    data_dir: Path
    split: str
    tables: list[pd.DataFrame] = field(default_factory=list)  # one per detector


TableStep = Callable[[pd.DataFrame, PredictContext], pd.DataFrame]


def fuse_step(
    iou_thr: float = 0.55, skip_box_thr: float = 0.0, weights: Sequence[float] | None = None
) -> TableStep:
    """Weighted boxes fusion of the detectors' tables (:func:`cxrkit.ensemble.fuse_tables`);
    with one detector its table passes unchanged."""
    if weights is not None:
        weights = [float(w) for w in weights]

    def fuse(table: pd.DataFrame, ctx: PredictContext) -> pd.DataFrame:
        if len(ctx.tables) == 1:
            return table
        return fuse_tables(ctx.tables, ctx.meta, ctx.image_ids, iou_thr, skip_box_thr, weights)

    return fuse


def nms_step(iou_thresh: float = PREDICT_NMS_IOU) -> TableStep:
    """Class-wise NMS of the table, image by image
    (:func:`cxrkit.postprocess.classwise_nms_table`; 1 keeps every box)."""

    def suppress(table: pd.DataFrame, ctx: PredictContext) -> pd.DataFrame:
        return classwise_nms_table(table, iou_thresh)

    return suppress


def classifier_step(
    classifiers: Sequence[str | os.PathLike],
    low: float = 0.1,
    high: float = 0.9,
    mode: str = "bands",
    probs_csv: str | os.PathLike | None = None,
) -> TableStep:
    """The classifiers' mean ``p_abnormal`` applied to the table
    (:func:`cxrkit.postprocess.apply_classifier`); checked when the step is made."""
    models = [classifier_from_checkpoint(c) for c in classifiers]  # each file read once
    if mode == "bands":
        check_bands(low, high)

    def apply(table: pd.DataFrame, ctx: PredictContext) -> pd.DataFrame:
        probs = classify(models, ctx.data_dir, probs_csv, split=ctx.split)
        return apply_classifier(table, probs, low, high, mode=mode, image_ids=ctx.image_ids)

    return apply


def predict_tables(
    detectors: Sequence[Detector],
    data_dir: str | os.PathLike,
    split: str = "test",
    tta: bool = False,
    batch_size: int = 4,
    num_workers: int = 0,
) -> PredictContext:
    """Each detector's predictions table on ``data_dir/split``, in one context."""
    ctx = None
    for detector in detectors:
        table, ids, meta = predict_split(detector, data_dir, split, tta, batch_size, num_workers)
        if ctx is None:
            ctx = PredictContext(ids, meta, Path(data_dir), split)
        ctx.tables.append(table)
    if ctx is None:
        raise ConfigError("predict needs at least one detector checkpoint")
    return ctx


def predict_submission(
    checkpoints: Sequence[str | os.PathLike | Detector],
    data_dir: str | os.PathLike,
    out_csv: str | os.PathLike,
    split: str = "test",
    tta: bool = False,
    batch_size: int = 4,
    *,
    steps: Sequence[TableStep] | None = None,
    num_workers: int = 0,
) -> Path:
    """Predict ``data_dir/split`` with one or more detectors and write a submission.

    Args:
        checkpoints: detector checkpoints (``RUN/best.pt``), each read once.
        data_dir: a preprocessed folder (``SPLIT/*.png``, ``SPLIT_meta.csv``).
        out_csv: the submission to write (checked before any image is predicted).
        split: the split of ``data_dir`` to predict.
        tta: average each detector with its horizontal flip.
        batch_size: images per batch.
        steps: the table steps after prediction; default ``[fuse_step(), nms_step()]``
            (WBF of several detectors, then class-wise NMS at IoU 0.3). Add
            :func:`classifier_step` for a classifier.
        num_workers: DataLoader worker processes.
    """
    check_writable(out_csv)
    detectors = load_detectors(checkpoints)
    ctx = predict_tables(detectors, data_dir, split, tta, batch_size, num_workers)
    table = ctx.tables[0]
    for step in [fuse_step(), nms_step()] if steps is None else steps:
        table = step(table, ctx)
    submission = prediction_strings(table, ctx.image_ids, meta=ctx.meta)
    return write_submission(submission, out_csv, image_ids=ctx.image_ids, meta=ctx.meta)


def predict_to_submission(
    checkpoint: str | os.PathLike,
    data_dir: str | os.PathLike,
    out_csv: str | os.PathLike,
    split: str = "test",
    tta: bool = False,
    batch_size: int = 4,
    num_workers: int = 0,
) -> Path:
    """One detector's submission: :func:`predict_submission` with one checkpoint."""
    return predict_submission(
        [checkpoint], data_dir, out_csv, split, tta, batch_size, num_workers=num_workers
    )


def predict_ensemble(
    checkpoints: Sequence[str | os.PathLike],
    data_dir: str | os.PathLike,
    out_csv: str | os.PathLike,
    split: str = "test",
    tta: bool = False,
    batch_size: int = 4,
    *,
    classifiers: Sequence[str | os.PathLike] = (),
    low: float = 0.1,
    high: float = 0.9,
    mode: str = "bands",
    iou_thr: float = 0.55,
    skip_box_thr: float = 0.0,
    weights: Sequence[float] | None = None,
    probs_csv: str | os.PathLike | None = None,
    nms_iou: float = PREDICT_NMS_IOU,
    fusion: FusionSettings | str | os.PathLike | None = None,
) -> Path:
    """Several detectors fused with WBF, class-wise NMS, then the classifiers:
    :func:`predict_submission` with ``[fuse_step(...), nms_step(...), classifier_step(...)]``.

    ``fusion``: settings tuned out of fold (:func:`tune_fusion_from_runs`, or the JSON
    file it saved); they replace ``weights``, ``iou_thr``, ``skip_box_thr`` and
    ``nms_iou``, and the checkpoints must be the models it was tuned for, in order.
    """
    detectors: Sequence[str | os.PathLike | Detector] = checkpoints
    if fusion is not None:
        settings = fusion if isinstance(fusion, FusionSettings) else FusionSettings.load(fusion)
        check_writable(out_csv)  # before any checkpoint is read
        detectors = load_detectors(checkpoints)  # each file once: its name, then its model
        settings.check_models([str(d.ckpt.get("model_name")) for d in detectors])
        weights, iou_thr, skip_box_thr = settings.weights, settings.iou_thr, settings.skip_box_thr
        nms_iou = settings.nms_iou
    if weights is not None and len(weights) != len(checkpoints):
        raise ConfigError(
            f"{len(weights)} WBF weights for {len(checkpoints)} checkpoints: give one per model"
        )
    steps = [fuse_step(iou_thr, skip_box_thr, weights), nms_step(nms_iou)]
    if classifiers:
        steps.append(classifier_step(classifiers, low, high, mode, probs_csv))
    return predict_submission(detectors, data_dir, out_csv, split, tta, batch_size, steps=steps)


# ------------------------------------------------------- fusion tuned out of fold
def _run_validation(run: Path) -> tuple[pd.DataFrame, list[str], dict[str, Any]]:
    """One run's predictions of its validation images (no No finding rows), their ids
    and the run's config: its ``oof.csv`` when it has one (a fold run), else
    ``best.pt`` predicting the ``valid`` images of its ``split.csv``."""
    best = run / "best.pt"
    ckpt = check_detector_checkpoint(best)
    config = dict(ckpt.get("config") or {})
    if "data_dir" not in config:
        raise CheckpointError(f"{best} does not say which data it trained on (a cxrkit run's does)")
    oof = run / OOF_FILE
    if oof.is_file():
        table = pd.read_csv(oof, dtype={"image_id": str})
        return table[table["class_id"] != NO_FINDING_ID], list(pd.unique(table["image_id"])), config
    split = run / "split.csv"
    if not split.is_file():
        raise DataNotFoundError(f"{split} not found: is {run} a cxrkit training run?")
    subsets = pd.read_csv(split, dtype=str)
    ids = list(subsets.loc[subsets["subset"] == "valid", "image_id"])
    if not ids:
        raise FoldError(f"{split} lists no validation image: nothing out of fold to tune on")
    data = Path(config["data_dir"])
    if not (data / "train_meta.csv").is_file():
        raise DataNotFoundError(
            f"{run} trained on {data}, which holds no train_meta.csv any more: its validation "
            "images are needed to tune out of fold (preprocess them there again)"
        )
    check_images_exist(data / "train", ids)
    meta = load_meta(data / "train_meta.csv")
    table = predict_images(best, data / "train", meta, ids, try_gpu(), ckpt=ckpt)
    return table, ids, config


def validation_predictions(
    runs: Sequence[str | os.PathLike],
) -> tuple[pd.DataFrame, list[str], dict[str, Any]]:
    """A model's out-of-fold predictions: one run's validation images, or the joined
    ``oof.csv`` of its fold runs (each image exactly once). Returns the table (original
    pixels), the image ids and the first run's config."""
    parts = [_run_validation(Path(r)) for r in runs]
    if len(parts) == 1:
        return parts[0]
    table = join_out_of_fold([t for t, _, _ in parts]).drop(columns="fold")
    ids = [i for _, part_ids, _ in parts for i in part_ids]
    return table, ids, parts[0][2]


def tune_fusion_from_runs(
    models: Sequence[Sequence[str | os.PathLike]],
    out: str | os.PathLike | None = None,
    **grid: Any,
) -> FusionChoice:
    """Tune the fusion of several trained detectors on their out-of-fold predictions.

    Args:
        models: per model, its run folder (one run) or its fold runs. Every model
            must have validated on the same images with the same annotations (train
            them with the same ``seed`` and ``valid_fraction``, or the same folds).
        out: where to save the chosen :class:`FusionSettings` (JSON), if given.
        grid: passed to :func:`cxrkit.ensemble.tune_fusion` (``iou_grid``...).
    """
    if len(models) < 2:
        raise ConfigError(f"tuning a fusion needs at least 2 models, got {len(models)}")
    if out is not None:
        check_writable(out)
    tables, names, first_ids, first = {}, [], None, None
    for runs in models:
        table, ids, config = validation_predictions(runs)
        label = " ".join(str(r) for r in runs)
        if first is None:
            first_ids, first = set(ids), config
        elif set(ids) != first_ids or config.get("annotations_digest") != first.get(
            "annotations_digest"
        ):
            raise FoldError(
                f"{label} validated on other images or annotations than {models[0]} "
                f"({len(set(ids) ^ first_ids)} image(s) differ): train every model with the "
                "same data, --seed and --valid-fraction (or the same --folds)"
            )
        name = str(config.get("model_name"))
        names.append(name)
        key = name if name not in tables else f"{name} ({label})"
        tables[key] = table
    assert first is not None and first_ids is not None
    data = Path(first["data_dir"])
    meta = load_meta(data / "train_meta.csv")
    ids = sorted(first_ids)
    truth = read_training_table(first["annotations_csv"], meta)
    truth = truth[truth["image_id"].astype(str).isin(first_ids)]
    choice = tune_fusion(tables, truth, meta, ids, **grid)
    choice.settings = replace(choice.settings, models=tuple(names))
    if out is not None:
        choice.settings.save(out)
    return choice
