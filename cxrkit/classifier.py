"""Image-level normal/abnormal classifier: train, validate by AUC, classify (notebook 07).

The competition scores a "No finding" line (``14 p 0 0 1 1``) like a class, and a
detector's boxes on a normal image are false positives for every class. An image
classifier answers the question the detector answers badly: is there anything at
all on this image? Its ``p_abnormal`` feeds :func:`cxrkit.postprocess.apply_classifier`.

* target: ``abnormal`` = the image has any finding (a ``class_id != 14`` row) in the
  (fused) annotations; :func:`abnormal_labels`;
* models (:data:`CLASSIFIER_NAMES`): ``cls_small`` (a few conv blocks, from scratch,
  fast on a CPU at 128-256 px) and torchvision's ``resnet18``, ``resnet50``,
  ``efficientnet_b0`` (``weights="DEFAULT"``: ImageNet, downloaded; a local file;
  ``None``), each with one output logit;
* training (:func:`train_classifier`): the detector's run folder
  (:mod:`cxrkit.runs`: ``last.pt``, ``best.pt``, ``history.csv``, ``split.csv``, a
  lock), its split or a fold of :func:`cxrkit.data.fold_split`, and the detector's
  loop, :func:`cxrkit.fit.fit`, given the classifier's loss and validation AUC
  (:func:`classification_task`): exact resume, AMP on CUDA, warmup, clipping, a
  time limit and a stop on a non-finite loss; ``best.pt`` by validation AUC. A fold
  run also writes ``oof.csv`` (``image_id, p_abnormal, abnormal`` of its validation
  images).

Not done: DistributedDataParallel (one process trains; the detector has it).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
import torch
import torchvision
from torch import nn
from torch.utils.data import DataLoader, Dataset

from cxrkit._atomic import write_csv_atomic
from cxrkit._progress import tqdm
from cxrkit.annotations import load_meta
from cxrkit.budget import plan_from_budget
from cxrkit.checkpoints import load_checkpoint, require_kind
from cxrkit.config import ClassifierConfig
from cxrkit.data import check_images_exist, read_png
from cxrkit.distributed import DistInfo, dist_info
from cxrkit.engine import LossFn
from cxrkit.errors import (
    CheckpointError,
    ConfigError,
    DatasetError,
    UnsupportedError,
    WeightsError,
)
from cxrkit.fit import FitResult, Task, fit_run
from cxrkit.labels import NO_FINDING_ID
from cxrkit.metrics import roc_auc
from cxrkit.models import check_finite, check_state_matches, read_weights_file
from cxrkit.registry import CLASSIFIER_NAMES, ModelSpec, get_spec
from cxrkit.runs import (
    OOF_FILE,
    SPLIT_FILE,
    check_resume_settings,
    keep_split,
    planned_epochs,
    prepare_run_folder,
    read_folder,
    read_training_table,
    run_folder_lock,
    run_split,
    table_digest,
    write_out_of_fold_table,
)
from cxrkit.utils import printed_to_file, seed_everything, try_gpu

__all__ = [
    "CLASSIFIER_NAMES",
    "ClassifierConfig",
    "ClassifierResult",
    "abnormal_labels",
    "build_classifier",
    "classification_task",
    "classifier_from_checkpoint",
    "classifier_losses",
    "classify",
    "pos_weight",
    "roc_auc",
    "train_classifier",
]

# ImageNet statistics: the pretrained backbones expect them; harmless from scratch.
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)


# --------------------------------------------------------------------------- models
class ClsSmall(nn.Sequential):
    """Five stride-2 conv blocks (16-128 channels, BatchNorm, ReLU), global average
    pooling and one logit: about 0.3 M parameters, a few seconds per epoch of the
    sample at 256 px on a CPU."""

    def __init__(self, widths: Sequence[int] = (16, 32, 64, 96, 128)) -> None:
        layers: list[nn.Module] = []
        channels = 3
        for width in widths:
            layers += [
                nn.Conv2d(channels, width, 3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
            ]
            channels = width
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(channels, 1)]
        super().__init__(*layers)


# Where each torchvision backbone keeps its last layer (the spec's ``backbone``).
HEADS = {"resnet": "fc", "efficientnet": "classifier.1"}


def _head_name(spec: ModelSpec) -> str:
    return HEADS[spec.backbone]


def _one_logit(model: nn.Module, spec: ModelSpec) -> nn.Module:
    """Replace a torchvision classifier's last layer by a single-logit one."""
    parent_name, _, attr = _head_name(spec).rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    last = parent[int(attr)] if attr.isdigit() else getattr(parent, attr)
    new = nn.Linear(last.in_features, 1)
    if attr.isdigit():
        parent[int(attr)] = new
    else:
        setattr(parent, attr, new)
    return model


def _state_of_file(path: Path) -> dict[str, torch.Tensor]:
    """The state_dict of a classifier checkpoint or of a bare state_dict file."""
    obj = read_weights_file(path)
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        if obj.get("format") == "cxrkit-checkpoint":
            require_kind(obj, "classifier", path)
        obj = obj["model"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path} holds no model state_dict (got {type(obj).__name__})")
    check_finite(obj, path)
    return obj


def _architecture(spec: ModelSpec, is_default: bool) -> nn.Module:
    """The classifier of ``spec`` with one logit: random, or ImageNet weights (downloaded)."""
    if spec.pretrained is None:
        if is_default:
            raise WeightsError(
                f"{spec.name} has no published weights; use weights=None or a checkpoint path"
            )
        return ClsSmall()
    builder = getattr(torchvision.models, spec.name)
    if not is_default:
        return _one_logit(builder(weights=None), spec)
    try:
        return _one_logit(builder(weights="DEFAULT"), spec)
    except (OSError, RuntimeError, ValueError) as exc:
        raise WeightsError(
            f"could not get the {spec.pretrained} weights of {spec.name} ({type(exc).__name__}: "
            f"{exc}); without internet, pass the path of a downloaded .pth file"
        ) from exc


def build_classifier(
    name: str = "cls_small", weights: str | os.PathLike | None = None
) -> nn.Module:
    """A normal/abnormal classifier with one output logit (``sigmoid`` = ``p_abnormal``).

    Args:
        name: a classifier of the registry (:data:`CLASSIFIER_NAMES`).
        weights: ``None`` (random), ``"DEFAULT"`` (the spec's published ImageNet
            weights, downloaded; ``cls_small`` has none) or a local file: a classifier
            checkpoint or a state_dict, read with ``weights_only=True``; an ImageNet
            head (1000 outputs) in the file is replaced by a fresh one-logit head.
    """
    spec = get_spec(name, "classifier")
    is_default = isinstance(weights, str) and weights.upper() == "DEFAULT"
    model = _architecture(spec, is_default)
    if weights is not None and not is_default:
        path = Path(weights)
        state = _state_of_file(path)
        head = _head_name(spec) if spec.backbone in HEADS else None
        if head and f"{head}.weight" in state and state[f"{head}.weight"].shape[0] != 1:
            own = model.state_dict()  # an ImageNet file: keep our one-logit head
            state = {k: v for k, v in state.items() if not k.startswith(head)}
            state.update({k: v for k, v in own.items() if k.startswith(head)})
        check_state_matches(model, state, path, repr(name))
        model.load_state_dict(state)
    model.cxrkit_config = {"name": name, "num_classes": 1, "kind": "classifier"}  # type: ignore[attr-defined]
    return model


def build_classifier_from_spec(
    spec: ModelSpec, weights: str | os.PathLike | None = None, **options: Any
) -> nn.Module:
    """The registry's builder of every classifier: :func:`build_classifier` by spec."""
    return build_classifier(spec.name, weights)


def classifier_from_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> nn.Module:
    """Rebuild the classifier a checkpoint was saved from; a detector's checkpoint is
    a :class:`CheckpointError` (use ``predict`` for it)."""
    path = Path(path)
    ckpt = load_checkpoint(path, map_location=map_location)
    require_kind(ckpt, "classifier", path)
    name = ckpt.get("model_name")
    if name not in CLASSIFIER_NAMES:
        raise CheckpointError(
            f"checkpoint {path} names an unknown classifier {name!r}; known: {list(CLASSIFIER_NAMES)}"
        )
    model = build_classifier(name)
    check_state_matches(model, ckpt["model"], path, repr(name))
    model.load_state_dict(ckpt["model"])
    model.cxrkit_size = int((ckpt.get("config") or {}).get("size") or 256)  # type: ignore[attr-defined]
    model.cxrkit_path = str(path)  # type: ignore[attr-defined]
    return model


# ------------------------------------------------------------------------ targets
def abnormal_labels(annotations: pd.DataFrame) -> pd.Series:
    """1.0 for an image with any finding (``class_id != 14``), 0.0 for a normal one;
    a float Series indexed by image_id (table order)."""
    ids = annotations["image_id"].astype(str)
    has_finding = (annotations["class_id"].astype(int) != NO_FINDING_ID).groupby(ids, sort=False)
    return has_finding.any().astype(np.float64).rename("abnormal")


def pos_weight(labels: Sequence[float] | np.ndarray) -> float:
    """``negatives / positives``, the ``pos_weight`` of ``BCEWithLogitsLoss``.

    The classes are unbalanced (about 70 % of VinBigData's images are normal). With
    this weight each abnormal image counts as ``neg/pos`` normal ones, so both
    classes carry the same total weight in the loss: the model cannot lower it by
    calling everything normal, and its probabilities stay ranked usefully (AUC is
    what is selected on; the bands of :func:`cxrkit.postprocess.apply_classifier`
    are tuned on its outputs, so their calibration shift does not matter).
    1.0 when a class is absent.
    """
    y = np.asarray(labels, dtype=np.float64)
    positives, negatives = float((y > 0.5).sum()), float((y <= 0.5).sum())
    return negatives / positives if positives and negatives else 1.0


# ------------------------------------------------------------------------ dataset
class ClassifierDataset(Dataset):
    """``(image (3, size, size) normalised, label, image_id)`` from the PNGs; with
    ``augment`` a random left-right flip and a small brightness/contrast change
    (drawn from torch's RNG, which :func:`cxrkit.fit.seed_epoch` seeds per epoch)."""

    def __init__(
        self,
        image_dir: str | os.PathLike,
        image_ids: Sequence[str],
        labels: pd.Series | None = None,
        size: int = 256,
        augment: bool = False,
    ) -> None:
        self.image_dir = Path(image_dir)
        self.image_ids = [str(i) for i in image_ids]
        self.labels = labels
        self.size = int(size)
        self.augment = augment

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, str]:
        image_id = self.image_ids[index]
        image = read_png(self.image_dir / f"{image_id}.png")
        if image.shape[:2] != (self.size, self.size):
            image = cv2.resize(image, (self.size, self.size), interpolation=cv2.INTER_AREA)
        x = torch.from_numpy(np.ascontiguousarray(image)).float().div_(255.0)
        if self.augment:
            if float(torch.rand(())) < 0.5:
                x = x.flip(-1)
            gain, shift = (
                1 + 0.2 * (float(torch.rand(())) - 0.5),
                0.1 * (float(torch.rand(())) - 0.5),
            )
            x = (x * gain + shift).clamp_(0, 1)
        x = (x.expand(3, -1, -1) - MEAN) / STD
        y = 0.0 if self.labels is None else float(self.labels[image_id])
        return x, torch.tensor(y, dtype=torch.float32), image_id


# ------------------------------------------------------------------------ training
# A classifier run's result is fit's: ``best_auc``, ``best_epoch``, ``epochs_done``,
# ``history``, ``best``, ``out_dir``; ``str()`` says "best validation AUC ...".
ClassifierResult = FitResult


def classifier_losses(loss_fn: nn.Module) -> LossFn:
    """The classifier's loss on a batch ``(images, labels, image_ids)``: ``loss_fn`` of the
    one logit per image and the 0/1 label, as ``{"loss_bce": loss}`` (what
    :func:`cxrkit.engine.train_one_epoch` minimises)."""

    def batch_losses(
        model: nn.Module, batch: Sequence[Any], device: torch.device
    ) -> dict[str, torch.Tensor]:
        images, labels, _ = batch
        logits = model(images.to(device, non_blocking=True)).squeeze(1).float()
        return {"loss_bce": loss_fn(logits, labels.to(device))}

    return batch_losses


@torch.inference_mode()
def predict_probabilities(
    model: nn.Module, loader: DataLoader, device: torch.device
) -> pd.DataFrame:
    """``image_id, p_abnormal`` (sigmoid of the logit) for every image of ``loader``."""
    model.eval()
    ids, probs = [], []
    for images, _, batch_ids in tqdm(loader, desc="classify", leave=False, dynamic_ncols=True):
        logits = model(images.to(device)).squeeze(1).float()
        probs.append(torch.sigmoid(logits).cpu().numpy().astype(np.float64))
        ids.extend(str(i) for i in batch_ids)
    p = np.concatenate(probs) if probs else np.zeros(0)
    return pd.DataFrame({"image_id": ids, "p_abnormal": p})


def classification_task(loss_fn: nn.Module, labels: pd.Series) -> Task:
    """The classifier's :class:`cxrkit.fit.Task`: :func:`classifier_losses` of ``loss_fn``,
    validated by the AUC of ``p_abnormal`` against ``labels`` (0/1 by image_id); the
    history column is ``val_auc``, the checkpoints' key ``best_auc``."""

    def validation_auc(model: nn.Module, loader: DataLoader, device: torch.device) -> float:
        probs = predict_probabilities(model, loader, device)
        return roc_auc(labels[probs["image_id"]].to_numpy(), probs["p_abnormal"])

    return Task(classifier_losses(loss_fn), validation_auc, metric="auc", metric_label="AUC")


def _loader(dataset: Dataset, cfg: ClassifierConfig, shuffle: bool) -> DataLoader:
    generator = torch.Generator()
    generator.manual_seed(cfg.seed)
    return DataLoader(
        dataset,
        cfg.batch_size,
        shuffle=shuffle,
        num_workers=cfg.num_workers,
        generator=generator if shuffle else None,
        drop_last=shuffle and len(dataset) > cfg.batch_size,  # BatchNorm: no batch of one
    )


@dataclass(frozen=True)
class _RunData:
    """What a classifier run trains and validates on, read from the folder and table."""

    image_dir: Path
    labels: pd.Series
    train_ids: list[str]
    valid_ids: list[str]


def _prepare_run(
    cfg: ClassifierConfig,
    out: Path,
    data_dir: str | os.PathLike,
    annotations_csv: str | os.PathLike,
    resume: bool,
) -> tuple[_RunData, dict[str, Any]]:
    """Read the folder and table, split (or fold) them, check a resume's settings and
    keep ``split.csv``. Returns the run's data and its settings (the ``config`` of
    its checkpoints)."""
    image_dir, meta = read_folder(Path(data_dir))
    table = read_training_table(annotations_csv, meta)
    labels = abnormal_labels(table)
    train_ids, valid_ids = run_split(table, cfg)
    check_images_exist(image_dir, [*train_ids, *valid_ids])
    run_config = {**asdict(cfg), "schedule": "cosine", "kind": "classifier"}
    if cfg.epochs is not None:  # the schedule's length: other epochs would bend the cosine
        run_config["T_max"] = max(1, cfg.epochs)
    run_config["annotations_digest"] = table_digest(table)
    if resume:  # the settings first: a new seed or fold is named, not the split it changes
        check_resume_settings(out, "classifier", run_config, cfg.epochs)
    out.mkdir(parents=True, exist_ok=True)
    keep_split(out / SPLIT_FILE, train_ids, valid_ids, resume, True)
    return _RunData(image_dir, labels, train_ids, valid_ids), run_config


def _refuse_torchrun() -> None:
    """UnsupportedError under torchrun: each rank would train alone into the same files."""
    under_torchrun = int(os.environ.get("WORLD_SIZE", "1") or 1) > 1
    if under_torchrun or dist_info().enabled:
        raise UnsupportedError(
            "train-classifier runs in one process; under torchrun it would train the same "
            "model once per process into one folder. Run it with python -m cxrkit instead"
        )


def _write_out_of_fold(
    out: Path, valid_loader: DataLoader, data: _RunData, device: torch.device
) -> None:
    """A fold run's ``oof.csv``: ``best.pt``'s p_abnormal of each held-out image."""
    best = classifier_from_checkpoint(out / "best.pt").to(device)
    oof = predict_probabilities(best, valid_loader, device)
    table = oof.assign(abnormal=data.labels[oof["image_id"]].to_numpy())
    write_out_of_fold_table(table, out / OOF_FILE, data.valid_ids)


def _fit_classifier(
    cfg: ClassifierConfig,
    data: _RunData,
    out: Path,
    run_config: dict[str, Any],
    device: torch.device,
    resume: bool,
    max_minutes: float | None,
    started: float,
) -> FitResult:
    """Build the loaders, model, AdamW, cosine schedule and weighted loss; without
    ``epochs``, plan them from the time budget (:mod:`cxrkit.budget`); train with
    :func:`cxrkit.fit.fit`; write a fold run's ``oof.csv``."""
    labels, train_ids = data.labels, data.train_ids
    weight = pos_weight(labels[train_ids].to_numpy())
    print(
        f"training classifier {cfg.model_name} on {len(train_ids)} images "
        f"({int(labels[train_ids].sum())} abnormal, pos_weight {weight:.2f}), validating "
        f"on {len(data.valid_ids)} ({cfg.size} px, batch {cfg.batch_size}, device {device})"
    )
    train_ds = ClassifierDataset(data.image_dir, train_ids, labels, cfg.size, augment=True)
    valid_ds = ClassifierDataset(data.image_dir, data.valid_ids, labels, cfg.size)
    train_loader, valid_loader = _loader(train_ds, cfg, True), _loader(valid_ds, cfg, False)
    model = build_classifier(cfg.model_name, cfg.weights).to(device)
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=torch.tensor(weight, device=device))
    if cfg.epochs is None:  # plan the epochs that fit the budget, measured here
        minutes, epochs, reason = plan_from_budget(
            model, train_loader, valid_loader, device, cfg.minutes, started,
            get_spec(cfg.model_name).max_epochs, batch_losses=classifier_losses(loss_fn),
        )  # fmt: skip
        print(reason)
        cfg = replace(cfg, epochs=epochs)
        run_config = {**run_config, "epochs": epochs, "T_max": max(1, epochs)}
        max_minutes = minutes - (time.monotonic() - started) / 60
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, cfg.epochs))
    result = fit_run(
        model, train_loader, valid_loader, out, device, optimizer, scheduler,
        {**run_config, "pos_weight": weight}, task=classification_task(loss_fn, labels),
        resume=resume, max_minutes=max_minutes,
    )  # fmt: skip
    if cfg.folds is not None and result.best.is_file():
        _write_out_of_fold(out, valid_loader, data, device)
    return result


def train_classifier(
    data_dir: str | os.PathLike,
    annotations_csv: str | os.PathLike,
    out_dir: str | os.PathLike,
    config: ClassifierConfig | None = None,
    *,
    resume: bool = False,
    overwrite: bool = False,
    max_minutes: float | None = None,
    verbose: bool = True,
    **settings: Any,
) -> FitResult:
    """Train a normal/abnormal classifier: what ``python -m cxrkit train-classifier`` runs.

    Same inputs and run folder as :func:`cxrkit.train.train_from_folder` (its split or
    fold, ``split.csv``, lock, ``--resume`` / ``--overwrite`` rules), and the same
    loop, :func:`cxrkit.fit.fit`, with :func:`classification_task`: AdamW with a
    cosine schedule, ``BCEWithLogitsLoss(pos_weight=negatives/positives)``
    (:func:`pos_weight`), ``best.pt`` where the validation AUC is highest, an
    optional warmup (``warmup_iters``) and gradient clipping (``max_grad_norm``).
    A NaN or infinite loss stops the run (:class:`cxrkit.errors.NonFiniteLossError`).
    A resume with other settings is a :class:`cxrkit.errors.ResumeError`; one with the
    same settings ends with the same weights as an uninterrupted run (CPU).
    Without ``epochs`` the run plans them from its time budget (``minutes``; default
    by device, :data:`cxrkit.config.DEFAULT_MINUTES`), as ``train`` does; with them,
    ``minutes`` (or ``max_minutes``, its older name) stops before an epoch that would
    end later.

    Returns:
        fit's :class:`cxrkit.fit.FitResult` (``ClassifierResult``): ``best_auc``,
        ``best_epoch``, ``epochs_done``, ``history`` (``val_auc``), ``best``.
    ``verbose=False`` prints nothing but warnings and progress bars: the run's log
    goes to ``out_dir/train.log`` (a notebook training several folds prints its own
    line per fold).
    """
    with printed_to_file(Path(out_dir) / "train.log", enabled=not verbose):
        t_start = time.monotonic()
        cfg = replace(config or ClassifierConfig(), **settings).checked()
        if cfg.minutes is None and max_minutes is not None:  # the older name of minutes=
            cfg = replace(cfg, minutes=max_minutes)
        out = Path(out_dir)
        _refuse_torchrun()
        info = DistInfo()  # one process: the run folder helpers expect a rank
        device = try_gpu()
        with run_folder_lock(out, info, device):
            prepare_run_folder(out, resume, overwrite, info)
            seed_everything(cfg.seed)
            last = out / "last.pt"
            resumed = last if resume and last.is_file() else None
            cfg = replace(cfg, epochs=planned_epochs(cfg.epochs, resumed))
            data, run_config = _prepare_run(cfg, out, data_dir, annotations_csv, resume)
            elapsed = (time.monotonic() - t_start) / 60
            budget = None if cfg.minutes is None else max(0.0, cfg.minutes - elapsed)
            return _fit_classifier(cfg, data, out, run_config, device, resume, budget, t_start)


# ------------------------------------------------------------------------ classify
def classify(
    checkpoints: Sequence[str | os.PathLike | nn.Module],
    data_dir: str | os.PathLike,
    out_csv: str | os.PathLike | None = None,
    split: str = "test",
    batch_size: int = 16,
) -> pd.DataFrame:
    """``image_id, p_abnormal`` for every image of ``data_dir/split``, averaged over
    ``checkpoints`` (e.g. the fold runs' ``best.pt``); written to ``out_csv`` if given.

    A detector's checkpoint is a :class:`CheckpointError` before any image is read.
    A classifier already rebuilt (:func:`classifier_from_checkpoint`) is used as it is,
    so a pipeline that checked the files first reads each of them once.
    """
    if not checkpoints:
        raise ConfigError("classify needs at least one checkpoint")
    models = [  # all checked before any image
        c if isinstance(c, nn.Module) else classifier_from_checkpoint(c) for c in checkpoints
    ]
    data = Path(data_dir)
    meta_path = data / f"{split}_meta.csv"
    if not meta_path.is_file():
        raise DatasetError(
            f"{meta_path} not found: DATA_DIR must be a preprocessed folder with a {split}/ split"
        )
    ids = list(load_meta(meta_path)["image_id"].astype(str))
    check_images_exist(data / split, ids)
    device = try_gpu()
    total = np.zeros(len(ids))
    for given, model in zip(checkpoints, models, strict=True):
        checkpoint = getattr(model, "cxrkit_path", given)
        dataset = ClassifierDataset(data / split, ids, size=model.cxrkit_size)
        loader = DataLoader(dataset, batch_size, shuffle=False)
        p_abnormal = predict_probabilities(model.to(device), loader, device)["p_abnormal"]
        bad = ~np.isfinite(p_abnormal.to_numpy())
        if bad.any():  # finite weights, yet NaN outputs: never an empty column in the CSV
            raise CheckpointError(
                f"classifier {checkpoint} gives p_abnormal NaN for {int(bad.sum())} of "
                f"{len(ids)} images (e.g. {ids[int(np.argmax(bad))]}): its outputs are not "
                "finite, so it cannot rank images; use an earlier checkpoint or train again"
            )
        total += p_abnormal.to_numpy()
    table = pd.DataFrame({"image_id": ids, "p_abnormal": total / len(models)})
    if out_csv is not None:
        write_csv_atomic(table, out_csv)
    return table
