"""Fuse the predictions tables of several detectors with weighted boxes fusion (notebooks 07-08).

:func:`fuse_tables` fuses the tables of fold runs or different models image by
image; :mod:`cxrkit.predict` runs it as one step of the prediction pipeline
(each detector predicts, with TTA if asked, so flips are fused per model first).

:func:`tune_fusion` chooses the fusion's settings (a weight per model, WBF's IoU
and skip threshold) by mAP@0.4 on *out-of-fold* predictions: each model's
predictions of images it did not train on, never the test set. The choice is a
:class:`FusionSettings`, saved as JSON (:meth:`FusionSettings.save`) and read back
by ``python -m cxrkit predict A.pt B.pt DATA --fusion fusion.json``.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxrkit._atomic import atomic_path
from cxrkit.engine import predictions_to_frame
from cxrkit.errors import ConfigError
from cxrkit.formats import BOX_COLUMNS, image_sizes
from cxrkit.labels import NO_FINDING_ID, to_model_labels
from cxrkit.metrics import bootstrap_map, vinbigdata_map
from cxrkit.postprocess import PREDICT_NMS_IOU, classwise_nms_table, wbf_predictions
from cxrkit.submission import add_no_finding

__all__ = [
    "FusionChoice",
    "FusionSettings",
    "fuse_tables",
    "fused_submission_table",
    "tune_fusion",
    "weight_grid",
]

# What tune_fusion searches. The first of each is the untuned default (predict's own).
WBF_IOU_GRID: tuple[float, ...] = (0.55, 0.3, 0.4, 0.5, 0.6, 0.7)
WBF_SKIP_GRID: tuple[float, ...] = (0.0, 0.02, 0.05, 0.1)
WEIGHT_STEPS: tuple[float, ...] = (1.0, 2.0, 3.0)
FUSION_FORMAT = 1  # the JSON layout of FusionSettings


def _per_image(
    tables: Sequence[pd.DataFrame], image_ids: Sequence[str]
) -> list[list[dict[str, np.ndarray]]]:
    """Each image's boxes, scores and model labels from each table (no No finding rows):
    the arrays WBF takes, split once (a tuning grid fuses them many times)."""
    empty = {"boxes": np.zeros((0, 4)), "scores": np.zeros(0), "labels": np.zeros(0)}
    split = []
    for table in tables:
        table = table[table["class_id"] != NO_FINDING_ID]
        columns = {
            "boxes": table[BOX_COLUMNS].to_numpy(np.float64),
            "scores": table["score"].to_numpy(np.float64),
            "labels": to_model_labels(table["class_id"].to_numpy(np.int64)),
        }
        rows = table.groupby(table["image_id"].astype(str).to_numpy()).indices
        split.append(
            {image_id: {k: v[i] for k, v in columns.items()} for image_id, i in rows.items()}
        )
    return [[by_image.get(str(i), empty) for by_image in split] for i in image_ids]


def _fuse_per_image(
    per_image: Sequence[Sequence[dict[str, np.ndarray]]],
    meta: pd.DataFrame | Mapping,
    image_ids: Sequence[str],
    iou_thr: float,
    skip_box_thr: float,
    weights: Sequence[float] | None,
) -> pd.DataFrame:
    sizes = image_sizes(meta)
    outputs, hw = [], []
    for image_id, parts in zip(image_ids, per_image, strict=True):
        h, w = sizes[str(image_id)]
        outputs.append(wbf_predictions(parts, (h, w), iou_thr, skip_box_thr, weights))
        hw.append((h, w))
    # predictions_to_frame maps model labels back to class ids (meta None: boxes unchanged)
    return predictions_to_frame(outputs, [str(i) for i in image_ids], hw, None)


def fuse_tables(
    tables: Sequence[pd.DataFrame],
    meta: pd.DataFrame | Mapping,
    image_ids: Sequence[str],
    iou_thr: float = 0.55,
    skip_box_thr: float = 0.0,
    weights: Sequence[float] | None = None,
) -> pd.DataFrame:
    """Fuse the predictions tables of several detectors with weighted boxes fusion.

    Boxes in original pixels are normalised by each image's ``(dim0, dim1)`` from
    ``meta`` (:func:`cxrkit.postprocess.wbf_predictions`), fused per class, and
    returned as one predictions table (no No finding rows). A box only one of N
    models found keeps ``1/N`` of its score (WBF's ``avg``), so agreement ranks
    first. ``weights``: one per table (default equal).
    """
    if not tables:
        raise ConfigError("fuse_tables needs at least one table")
    if weights is not None and len(weights) != len(tables):
        raise ConfigError(f"{len(weights)} weights for {len(tables)} tables: give one per model")
    ids = [str(i) for i in image_ids]
    return _fuse_per_image(_per_image(tables, ids), meta, ids, iou_thr, skip_box_thr, weights)


# ------------------------------------------------------------------ tuned fusion
@dataclass(frozen=True)
class FusionSettings:
    """How ``predict`` fuses several detectors: what :func:`tune_fusion` chooses.

    Args:
        weights: one WBF weight per model, in the order of the checkpoints.
        iou_thr: IoU above which boxes of the same class fuse.
        skip_box_thr: boxes scored below this are left out of the fusion.
        nms_iou: the class-wise NMS after the fusion (1: none).
        models: the model names, in order, so that ``predict`` can refuse checkpoints
            given in another order than the one the weights were tuned for.
        oof_map, single_maps, images: what the tuning measured (for the record).
    """

    weights: tuple[float, ...]
    iou_thr: float = 0.55
    skip_box_thr: float = 0.0
    nms_iou: float = PREDICT_NMS_IOU
    models: tuple[str, ...] = ()
    oof_map: float | None = None
    single_maps: tuple[float, ...] = ()
    images: int = 0

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types, with the format number."""
        return {"format": FUSION_FORMAT, **asdict(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: Any = "fusion settings") -> FusionSettings:
        """Check and rebuild the settings :meth:`to_dict` wrote (a clear error names ``source``)."""
        if data.get("format") != FUSION_FORMAT or "weights" not in data:
            raise ConfigError(f"{source} is not a cxrkit fusion file (format {FUSION_FORMAT})")
        known = {f for f in cls.__dataclass_fields__}
        values = {k: v for k, v in data.items() if k in known}
        for key in ("weights", "models", "single_maps"):
            values[key] = tuple(values.get(key, ()))
        settings = cls(**values)
        if not settings.weights or min(settings.weights) <= 0:
            raise ConfigError(f"{source}: weights must be positive, got {settings.weights}")
        for name, value in (("iou_thr", settings.iou_thr), ("nms_iou", settings.nms_iou)):
            if not 0 < value <= 1:
                raise ConfigError(f"{source}: {name} must be in (0, 1], got {value}")
        if not 0 <= settings.skip_box_thr < 1:
            raise ConfigError(
                f"{source}: skip_box_thr must be in [0, 1), got {settings.skip_box_thr}"
            )
        return settings

    def save(self, path: str | os.PathLike) -> Path:
        """Write the settings as JSON, atomically."""
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> FusionSettings:
        """Read settings written by :meth:`save`."""
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"fusion file {path} not found (write it with tune-fusion)") from None
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"cannot read fusion file {path}: {exc}") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"{path} is not a cxrkit fusion file")
        return cls.from_dict(data, path)

    def check_models(self, names: Sequence[str]) -> None:
        """Refuse models that are not, in order, the ones the settings were tuned for."""
        if len(names) != len(self.weights):
            raise ConfigError(
                f"the fusion settings hold {len(self.weights)} weights, for {len(names)} "
                "checkpoints: give the checkpoints it was tuned for"
            )
        if self.models and tuple(names) != tuple(self.models):
            raise ConfigError(
                f"the fusion settings were tuned for the models {list(self.models)}, in that "
                f"order; the checkpoints are {list(names)}"
            )


def fused_submission_table(
    tables: Sequence[pd.DataFrame],
    meta: pd.DataFrame | Mapping,
    image_ids: Sequence[str],
    settings: FusionSettings,
    per_image: Sequence[Sequence[dict[str, np.ndarray]]] | None = None,
) -> pd.DataFrame:
    """What ``predict`` scores with ``settings``: WBF (several tables), class-wise NMS,
    and one No finding row per image (:func:`cxrkit.submission.add_no_finding`).
    ``per_image``: the tables already split by image (a tuning loop splits them once)."""
    if len(tables) == 1:
        table = tables[0]
    else:
        ids = [str(i) for i in image_ids]
        table = _fuse_per_image(
            _per_image(tables, ids) if per_image is None else per_image,
            meta, ids, settings.iou_thr, settings.skip_box_thr, settings.weights,
        )  # fmt: skip
    if settings.nms_iou < 1:
        table = classwise_nms_table(table, settings.nms_iou)
    return add_no_finding(table, image_ids)


def weight_grid(models: int, steps: Sequence[float] = WEIGHT_STEPS) -> list[tuple[float, ...]]:
    """Every weighting of ``models`` models from ``steps``, each ratio once (equal first):
    (2, 2) weighs as (1, 1) and is left out."""
    seen, grid = set(), []
    for combo in itertools.product(steps, repeat=models):
        key = tuple(round(w / min(combo), 6) for w in combo)
        if key not in seen:
            seen.add(key)
            grid.append(tuple(float(w) for w in combo))
    return grid


@dataclass
class FusionChoice:
    """What :func:`tune_fusion` chose and measured on the out-of-fold images."""

    settings: FusionSettings
    map: float
    single_maps: dict[str, float]
    default_map: float
    grid: pd.DataFrame = field(repr=False)
    gain_interval: tuple[float, float] = (np.nan, np.nan)

    @property
    def best_single(self) -> str:
        """The model that scored highest alone out of fold."""
        return max(self.single_maps, key=lambda k: self.single_maps[k])

    def __str__(self) -> str:
        s = self.settings
        singles = ", ".join(f"{k} {v:.4f}" for k, v in self.single_maps.items())
        return (
            f"weights {list(s.weights)}, WBF IoU {s.iou_thr:g}, skip {s.skip_box_thr:g}: "
            f"out-of-fold mAP {self.map:.4f} on {s.images} images (untuned fusion "
            f"{self.default_map:.4f}; alone: {singles}); gain over {self.best_single} "
            f"{self.map - self.single_maps[self.best_single]:+.4f} (90 % interval "
            f"{self.gain_interval[0]:+.4f} to {self.gain_interval[1]:+.4f}, in-sample)"
        )


def tune_fusion(
    tables: Mapping[str, pd.DataFrame],
    truth: pd.DataFrame,
    meta: pd.DataFrame | Mapping,
    image_ids: Iterable[str],
    *,
    iou_grid: Sequence[float] = WBF_IOU_GRID,
    skip_grid: Sequence[float] = WBF_SKIP_GRID,
    weights: Sequence[Sequence[float]] | None = None,
    nms_iou: float = PREDICT_NMS_IOU,
    n_boot: int = 200,
    seed: int = 0,
) -> FusionChoice:
    """Choose the WBF weights, IoU and skip threshold by mAP@0.4 on out-of-fold predictions.

    Args:
        tables: one out-of-fold predictions table per model (name -> table, original
            pixels), all of the same images, which none of the models trained on.
        truth: train.csv columns (fused) of those images.
        meta: ``image_id, dim0, dim1`` of those images (for WBF's normalisation).
        image_ids: the images scored.
        iou_grid, skip_grid, weights: what is searched (default: :data:`WBF_IOU_GRID`,
            :data:`WBF_SKIP_GRID` and :func:`weight_grid`).
        nms_iou: the class-wise NMS after the fusion, as ``predict`` runs it.
        n_boot, seed: the paired bootstrap of the gain over the best single model.

    Ties go to the earlier grid point: equal weights, then predict's defaults.
    The interval is in-sample (the same images chose the settings), so it is
    optimistic; the test set says what the choice is worth.
    """
    if len(tables) < 2:
        raise ConfigError(f"tune_fusion needs the tables of at least 2 models, got {len(tables)}")
    ids = [str(i) for i in dict.fromkeys(image_ids)]
    names, parts = list(tables), list(tables.values())

    def score(table: pd.DataFrame) -> float:
        return vinbigdata_map(table, truth, image_ids=ids).map

    singles = {
        n: score(fused_submission_table([t], meta, ids, FusionSettings((1.0,), nms_iou=nms_iou)))
        for n, t in tables.items()
    }
    rows, per_image = [], _per_image(parts, ids)  # split once, fused for every grid point
    for w, iou, skip in itertools.product(weights or weight_grid(len(parts)), iou_grid, skip_grid):
        settings = FusionSettings(tuple(w), iou, skip, nms_iou)
        table = fused_submission_table(parts, meta, ids, settings, per_image)
        rows.append((tuple(w), iou, skip, score(table)))
    grid = pd.DataFrame(rows, columns=["weights", "iou_thr", "skip_box_thr", "map"])
    best = grid.iloc[int(np.argmax(grid["map"].to_numpy()))]  # first of the ties
    best_single = max(singles, key=lambda k: singles[k])
    settings = FusionSettings(
        tuple(best["weights"]), float(best["iou_thr"]), float(best["skip_box_thr"]), nms_iou,
        models=tuple(names), oof_map=float(best["map"]),
        single_maps=tuple(singles[n] for n in names), images=len(ids),
    )  # fmt: skip
    fused = fused_submission_table(parts, meta, ids, settings)
    alone = fused_submission_table(
        [tables[best_single]], meta, ids, FusionSettings((1.0,), nms_iou=nms_iou)
    )
    boot = bootstrap_map({"fused": fused, "alone": alone}, truth, ids, n_boot, seed)
    gain = boot["fused"] - boot["alone"]
    return FusionChoice(
        settings=settings,
        map=float(best["map"]),
        single_maps=singles,
        default_map=float(grid["map"].iloc[0]),
        grid=grid,
        gain_interval=(float(gain.quantile(0.05)), float(gain.quantile(0.95))),
    )
