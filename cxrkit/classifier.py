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
* training (:func:`train_classifier`): the detector's run folder (``last.pt``,
  ``best.pt``, ``history.csv``, ``split.csv``, a lock), its split or a fold of
  :func:`cxrkit.data.fold_split`, epochs seeded from ``(seed, epoch)`` so that a
  resume is exact, AMP on CUDA, ``best.pt`` by validation AUC; a fold run also
  writes ``oof.csv`` (``image_id, p_abnormal`` of its validation images).

Not done: DistributedDataParallel (one process trains; the detector has it).
"""

from __future__ import annotations

import contextlib
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
from cxrkit.checkpoints import load_checkpoint, require_kind, save_checkpoint
from cxrkit.data import check_fold, check_images_exist, read_png
from cxrkit.distributed import DistInfo, dist_info
from cxrkit.engine import Averager
from cxrkit.errors import CheckpointError, DatasetError, UnsupportedError, WeightsError
from cxrkit.fit import refuse_other_settings, seed_epoch
from cxrkit.labels import NO_FINDING_ID
from cxrkit.metrics import roc_auc
from cxrkit.model_names import CLASSIFIER_NAMES
from cxrkit.models import check_finite, check_state_matches, read_weights_file
from cxrkit.train import (
    keep_split,
    prepare_run_folder,
    read_folder,
    read_training_table,
    run_folder_lock,
    run_split,
)
from cxrkit.utils import seed_everything, try_gpu

__all__ = [
    "CLASSIFIER_NAMES",
    "ClassifierConfig",
    "ClassifierResult",
    "abnormal_labels",
    "build_classifier",
    "classifier_from_checkpoint",
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


def _head_name(name: str) -> str:
    return "fc" if name.startswith("resnet") else "classifier.1"


def _one_logit(model: nn.Module, name: str) -> nn.Module:
    """Replace a torchvision classifier's last layer by a single-logit one."""
    if name.startswith("resnet"):
        model.fc = nn.Linear(model.fc.in_features, 1)
    else:  # efficientnet: classifier = Sequential(Dropout, Linear)
        model.classifier[1] = nn.Linear(model.classifier[1].in_features, 1)
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


def build_classifier(
    name: str = "cls_small", weights: str | os.PathLike | None = None
) -> nn.Module:
    """A normal/abnormal classifier with one output logit (``sigmoid`` = ``p_abnormal``).

    ``weights``: ``None`` (random), ``"DEFAULT"`` (torchvision's ImageNet weights,
    downloaded; not for ``cls_small``) or a local file: a classifier checkpoint or a
    state_dict, read with ``weights_only=True``; an ImageNet head (1000 outputs) in
    the file is replaced by a fresh one-logit head.
    """
    if name not in CLASSIFIER_NAMES:
        raise ValueError(f"unknown classifier {name!r}; choose one of {list(CLASSIFIER_NAMES)}")
    is_default = isinstance(weights, str) and weights.upper() == "DEFAULT"
    if name == "cls_small":
        if is_default:
            raise WeightsError(
                "cls_small has no published weights; use weights=None or a checkpoint path"
            )
        model: nn.Module = ClsSmall()
    elif is_default:
        try:
            model = _one_logit(getattr(torchvision.models, name)(weights="DEFAULT"), name)
        except (OSError, RuntimeError, ValueError) as exc:
            raise WeightsError(
                f"could not get the ImageNet weights of {name} ({type(exc).__name__}: {exc}); "
                "without internet, pass the path of a downloaded .pth file"
            ) from exc
    else:
        model = _one_logit(getattr(torchvision.models, name)(weights=None), name)
    if weights is not None and not is_default:
        path = Path(weights)
        state = _state_of_file(path)
        head = f"{_head_name(name)}.weight"
        if head in state and state[head].shape[0] != 1:  # an ImageNet file: keep our head
            own = model.state_dict()
            state = {k: v for k, v in state.items() if not k.startswith(_head_name(name))}
            state.update({k: v for k, v in own.items() if k.startswith(_head_name(name))})
        check_state_matches(model, state, path, repr(name))
        model.load_state_dict(state)
    model.cxrkit_config = {"name": name, "num_classes": 1, "kind": "classifier"}  # type: ignore[attr-defined]
    return model


def classifier_from_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> nn.Module:
    """Rebuild the classifier a checkpoint was saved from; a detector's checkpoint is
    a :class:`CheckpointError` (use ``predict`` for it)."""
    path = Path(path)
    ckpt = load_checkpoint(path, map_location=map_location)
    require_kind(ckpt, "classifier", path)
    name = ckpt.get("model_name")
    if name not in CLASSIFIER_NAMES:
        raise CheckpointError(f"checkpoint {path} names an unknown classifier {name!r}")
    model = build_classifier(name)
    check_state_matches(model, ckpt["model"], path, repr(name))
    model.load_state_dict(ckpt["model"])
    model.cxrkit_size = int((ckpt.get("config") or {}).get("size") or 256)  # type: ignore[attr-defined]
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
@dataclass(frozen=True)
class ClassifierConfig:
    """Every setting of a classifier run, with its default (``train-classifier``)."""

    model_name: str = "cls_small"
    epochs: int = 10
    batch_size: int = 16
    size: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-4
    weights: str | None = None
    valid_fraction: float = 0.2
    seed: int = 42
    num_workers: int = 0
    folds: int | None = None
    fold: int | None = None

    def checked(self) -> ClassifierConfig:
        if self.model_name not in CLASSIFIER_NAMES:
            raise ValueError(
                f"unknown classifier {self.model_name!r}; choose one of {list(CLASSIFIER_NAMES)}"
            )
        check_fold(self.folds, self.fold)
        return replace(self, weights=None if self.weights is None else str(self.weights))


@dataclass
class ClassifierResult:
    """What :func:`train_classifier` did."""

    out_dir: Path
    epochs_done: int
    best_auc: float | None
    best_epoch: int | None
    history: pd.DataFrame

    @property
    def best(self) -> Path:
        return self.out_dir / "best.pt"

    def __str__(self) -> str:
        best = "n/a" if self.best_auc is None else f"{self.best_auc:.4f} (epoch {self.best_epoch})"
        return f"trained {self.epochs_done} epoch(s); best validation AUC {best}; files in {self.out_dir}"


def train_epoch(
    model: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    loss_fn: nn.Module,
    device: torch.device,
    scaler: torch.amp.GradScaler | None,
    epoch: int,
) -> float:
    """One pass; the mean loss (:class:`cxrkit.engine.Averager`), a progress bar."""
    model.train()
    loss_avg = Averager()
    autocast = (
        torch.autocast("cuda", dtype=torch.float16)
        if scaler is not None
        else contextlib.nullcontext()  # not even a disabled autocast on the CPU
    )
    bar = tqdm(loader, desc=f"epoch {epoch}", leave=False, dynamic_ncols=True)
    for images, labels, _ in bar:
        images, labels = images.to(device, non_blocking=True), labels.to(device)
        with autocast:
            loss = loss_fn(model(images).squeeze(1).float(), labels)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        loss_avg.send(float(loss.detach()))
        bar.set_postfix(loss=f"{loss_avg.value:.4f}")
    bar.close()
    return loss_avg.value


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


def _prepare_run(
    cfg: ClassifierConfig,
    out: Path,
    data_dir: str | os.PathLike,
    annotations_csv: str | os.PathLike,
    resume: bool,
) -> tuple[Path, pd.Series, tuple[list[str], list[str]], dict[str, Any]]:
    """Read the folder and table, split (or fold) them, check a resume's settings and
    keep ``split.csv``. Returns the PNG folder, the labels, the split and the settings."""
    image_dir, meta = read_folder(Path(data_dir))
    table = read_training_table(annotations_csv, meta)
    labels = abnormal_labels(table)
    train_ids, valid_ids = run_split(table, cfg)
    check_images_exist(image_dir, [*train_ids, *valid_ids])
    last = out / "last.pt"
    # the schedule's length too: a resume with other epochs would bend the cosine
    schedule = {"schedule": "cosine", "T_max": max(1, cfg.epochs)}
    settings_now = {**asdict(cfg), **schedule, "kind": "classifier"}
    if resume and last.is_file():
        saved = load_checkpoint(last)
        require_kind(saved, "classifier", last)
        refuse_other_settings(last, saved.get("config") or {}, settings_now, cfg.epochs)
    out.mkdir(parents=True, exist_ok=True)
    keep_split(out / "split.csv", train_ids, valid_ids, resume, True)
    return image_dir, labels, (train_ids, valid_ids), settings_now


def _restore(
    last: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: Any,
    device: torch.device,
) -> tuple[int, float | None, int | None, list[dict[str, Any]]]:
    """Load ``last.pt`` into the training objects; the epoch done, the best AUC and
    its epoch, and the history rows up to that epoch."""
    ckpt = load_checkpoint(last, map_location=device)
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    if scaler is not None and ckpt.get("scaler") is not None:
        scaler.load_state_dict(ckpt["scaler"])
    start = int(ckpt["epoch"])
    history: list[dict[str, Any]] = []
    if (last.parent / "history.csv").is_file():
        old = pd.read_csv(last.parent / "history.csv")
        history = old[old["epoch"] <= start].to_dict("records")
    print(f"resuming from {last} after epoch {start}")
    return start, ckpt.get("best_auc"), ckpt.get("best_epoch"), history


def _refuse_torchrun() -> None:
    """UnsupportedError under torchrun: each rank would train alone into the same files."""
    under_torchrun = int(os.environ.get("WORLD_SIZE", "1") or 1) > 1
    if under_torchrun or dist_info().enabled:
        raise UnsupportedError(
            "train-classifier runs in one process; under torchrun it would train the same "
            "model once per process into one folder. Run it with python -m cxrkit instead"
        )


def _epoch_row(
    model: nn.Module,
    loaders: tuple[DataLoader, DataLoader],
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    loss_fn: nn.Module,
    scaler: Any,
    labels: pd.Series,
    device: torch.device,
    epoch: int,
) -> dict[str, Any]:
    """Train one epoch (0-based ``epoch``), step the schedule, validate: the history row."""
    t0 = time.monotonic()
    train_loader, valid_loader = loaders
    lr_now = optimizer.param_groups[0]["lr"]
    loss = train_epoch(model, train_loader, optimizer, loss_fn, device, scaler, epoch + 1)
    scheduler.step()
    probs = predict_probabilities(model, valid_loader, device)
    auc = roc_auc(labels[probs["image_id"]].to_numpy(), probs["p_abnormal"])
    seconds = time.monotonic() - t0
    return {"epoch": epoch + 1, "loss": loss, "lr": lr_now, "val_auc": auc, "seconds": seconds}


def _write_out_of_fold(
    out: Path, valid_loader: DataLoader, labels: pd.Series, device: torch.device
) -> None:
    """A fold run's ``oof.csv``: ``best.pt``'s p_abnormal of each held-out image."""
    best = classifier_from_checkpoint(out / "best.pt").to(device)
    oof = predict_probabilities(best, valid_loader, device)
    write_csv_atomic(oof.assign(abnormal=labels[oof["image_id"]].to_numpy()), out / "oof.csv")


def train_classifier(
    data_dir: str | os.PathLike,
    annotations_csv: str | os.PathLike,
    out_dir: str | os.PathLike,
    config: ClassifierConfig | None = None,
    *,
    resume: bool = False,
    overwrite: bool = False,
    **settings: Any,
) -> ClassifierResult:
    """Train a normal/abnormal classifier: what ``python -m cxrkit train-classifier`` runs.

    Same inputs and run folder as :func:`cxrkit.train.train_from_folder` (its split or
    fold, ``split.csv``, lock, ``--resume`` / ``--overwrite`` rules). AdamW with a
    cosine schedule, ``BCEWithLogitsLoss(pos_weight=negatives/positives)``
    (:func:`pos_weight`), ``best.pt`` where the validation AUC is highest. A resume
    with other settings is a :class:`cxrkit.errors.ResumeError`; one with the same
    settings ends with the same weights as an uninterrupted run (CPU).
    """
    cfg = replace(config or ClassifierConfig(), **settings).checked()
    out = Path(out_dir)
    _refuse_torchrun()
    info = DistInfo()  # one process: the run folder helpers expect a rank
    device = try_gpu()
    with run_folder_lock(out, info, device):
        prepare_run_folder(out, resume, overwrite, info)
        seed_everything(cfg.seed)
        image_dir, labels, (train_ids, valid_ids), settings_now = _prepare_run(
            cfg, out, data_dir, annotations_csv, resume
        )
        last = out / "last.pt"
        weight = pos_weight(labels[train_ids].to_numpy())
        print(
            f"training classifier {cfg.model_name} on {len(train_ids)} images "
            f"({int(labels[train_ids].sum())} abnormal, pos_weight {weight:.2f}), validating "
            f"on {len(valid_ids)} ({cfg.size} px, batch {cfg.batch_size}, device {device})"
        )
        train_loader = _loader(
            ClassifierDataset(image_dir, train_ids, labels, cfg.size, augment=True), cfg, True
        )
        valid_loader = _loader(
            ClassifierDataset(image_dir, valid_ids, labels, cfg.size), cfg, False
        )
        model = build_classifier(cfg.model_name, cfg.weights).to(device)
        loss_fn = nn.BCEWithLogitsLoss(pos_weight=torch.tensor(weight, device=device))
        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, cfg.epochs))
        scaler = torch.amp.GradScaler("cuda") if device.type == "cuda" else None
        start, best_auc, best_epoch, history = 0, None, None, []
        if resume and last.is_file():
            start, best_auc, best_epoch, history = _restore(
                last, model, optimizer, scheduler, scaler, device
            )
        for epoch in range(start, cfg.epochs):
            seed_epoch(train_loader, cfg.seed, epoch)
            row = _epoch_row(
                model, (train_loader, valid_loader), optimizer, scheduler, loss_fn, scaler, labels,
                device, epoch,
            )  # fmt: skip
            history.append(row)
            loss, auc, seconds = row["loss"], row["val_auc"], row["seconds"]
            improved = best_auc is None or (np.isfinite(auc) and auc > best_auc)
            if improved:
                best_auc, best_epoch = (auc if np.isfinite(auc) else None), epoch + 1
            extra = {"best_auc": best_auc, "best_epoch": best_epoch, "pos_weight": weight}
            if scaler is not None:
                extra["scaler"] = scaler.state_dict()
            for path in (last, out / "best.pt") if improved else (last,):
                save_checkpoint(
                    path, model, optimizer, scheduler, epoch + 1, config=settings_now, **extra
                )
            write_csv_atomic(pd.DataFrame(history), out / "history.csv")
            print(
                f"epoch {epoch + 1}/{cfg.epochs} loss {loss:.4f} val AUC {auc:.4f} ({seconds:.0f} s)",
                flush=True,
            )
        if cfg.folds is not None and (out / "best.pt").is_file():
            _write_out_of_fold(out, valid_loader, labels, device)
    done = int(history[-1]["epoch"]) if history else start
    return ClassifierResult(out, done, best_auc, best_epoch, pd.DataFrame(history))


# ------------------------------------------------------------------------ classify
def classify(
    checkpoints: Sequence[str | os.PathLike],
    data_dir: str | os.PathLike,
    out_csv: str | os.PathLike | None = None,
    split: str = "test",
    batch_size: int = 16,
) -> pd.DataFrame:
    """``image_id, p_abnormal`` for every image of ``data_dir/split``, averaged over
    ``checkpoints`` (e.g. the fold runs' ``best.pt``); written to ``out_csv`` if given.

    A detector's checkpoint is a :class:`CheckpointError` before any image is read.
    """
    if not checkpoints:
        raise ValueError("classify needs at least one checkpoint")
    models = [classifier_from_checkpoint(c) for c in checkpoints]  # all checked first
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
    for model in models:
        dataset = ClassifierDataset(data / split, ids, size=model.cxrkit_size)
        loader = DataLoader(dataset, batch_size, shuffle=False)
        probs = predict_probabilities(model.to(device), loader, device)
        total += probs["p_abnormal"].to_numpy()
    table = pd.DataFrame({"image_id": ids, "p_abnormal": total / len(models)})
    if out_csv is not None:
        write_csv_atomic(table, out_csv)
    return table
