"""Training, validation and prediction loops for torchvision detectors.

The names follow torchvision's ``references/detection/engine.py``
(``train_one_epoch(model, optimizer, data_loader, device, epoch, ...)``,
``evaluate`` under ``torch.inference_mode()``), grown from the seed notebook's
bare loop::

    for images, targets, image_ids in train_loader:
        loss_dict = model(images, targets)
        losses = sum(loss_dict.values())
        optimizer.zero_grad()
        losses.backward()
        optimizer.step()
        loss_hist.send(losses.item())

What this module adds, and why:

- :func:`train_one_epoch`: a progress bar with the running loss, mixed precision
  on a GPU (``torch.autocast`` + ``GradScaler``), a linear learning-rate warmup,
  and a clear stop on a NaN/inf loss (training on after one is wasted time).
- :func:`evaluate`: the competition metric (VinBigData mAP@0.4) on the validation
  images, with boxes mapped back to original DICOM pixels, the same way the test
  submission is scored. Training loss is not a model-selection criterion.
- :func:`fit`: epochs, the seed's optimizer (SGD lr 0.005, momentum 0.9, weight
  decay 0.0005, StepLR), checkpoints ``last.pt`` (every epoch) and ``best.pt`` (by
  validation mAP), ``history.csv``, an optional time budget, and an **exact
  resume**: interrupting after epoch k and resuming gives the same weights as an
  uninterrupted run (on CPU, fixed seeds).
- :func:`predict`: batched inference, optional horizontal-flip TTA, predictions
  in original pixels as a table ready for :mod:`cxrkit.metrics` and
  :mod:`cxrkit.submission`.
- :func:`train_from_folder` / :func:`predict_to_submission`: what
  ``python -m cxrkit train`` / ``predict`` run, DistributedDataParallel included
  (``torchrun --nproc_per_node=N -m cxrkit train ...``).
"""

from __future__ import annotations

import math
import os
import random
import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from cxrkit._progress import tqdm
from cxrkit.errors import AnnotationError, ResumeError
from cxrkit.formats import NO_FINDING_BOX, PREDICTION_COLUMNS, image_sizes
from cxrkit.labels import NO_FINDING_ID, from_model_labels
from cxrkit.models import load_checkpoint, load_into_model, save_checkpoint, unwrap

DEBUG_SEEN_IDS_ENV = "CXRKIT_DEBUG_SEEN_IDS_DIR"  # test hook: log the image ids each rank trains on


# ------------------------------------------------------------------------- Averager
class Averager:
    """Running mean of the values sent to it (the seed notebook's loss tracker).

    ``send(x)`` adds a value, ``value`` is the mean so far (0 before any value) and
    ``reset()`` starts over, typically at each epoch. torchvision's
    ``references/detection/utils.py`` has the grown-up form, ``SmoothedValue``: a
    windowed median/mean plus the global average, synchronised across processes.
    """

    def __init__(self) -> None:
        self.current_total = 0.0
        self.iterations = 0

    def send(self, value: float) -> None:
        self.current_total += float(value)
        self.iterations += 1

    @property
    def value(self) -> float:
        return self.current_total / self.iterations if self.iterations else 0.0

    def reset(self) -> None:
        self.current_total = 0.0
        self.iterations = 0


# ---------------------------------------------------------------- distributed helpers
@dataclass(frozen=True)
class DistInfo:
    """Where this process stands in a ``torchrun`` job (rank 0 of 1 without one)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def dist_info() -> DistInfo:
    """This process's rank and world size (from ``torch.distributed`` once initialised)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        local = int(os.environ.get("LOCAL_RANK", dist.get_rank()))
        return DistInfo(dist.get_rank(), dist.get_world_size(), local)
    return DistInfo()


def setup_distributed() -> DistInfo:
    """Join the process group ``torchrun`` describes with RANK/WORLD_SIZE/LOCAL_RANK.

    NCCL when a GPU is available (one GPU per process, ``cuda:LOCAL_RANK``), gloo
    on CPU. Without those variables (a plain ``python -m cxrkit train``), nothing
    happens and the run is single-process.
    """
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or not dist.is_available():
        return DistInfo()
    if not dist.is_initialized():
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if torch.cuda.is_available():
            torch.cuda.set_device(local_rank)
            dist.init_process_group("nccl", init_method="env://")
        else:
            dist.init_process_group("gloo", init_method="env://")
    return dist_info()


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _broadcast_flag(flag: bool, device: torch.device) -> bool:
    """Rank 0's decision (e.g. "stop now, the time is up"), shared with every rank."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return flag
    where = device if dist.get_backend() == "nccl" else torch.device("cpu")
    t = torch.tensor([1 if flag else 0], device=where)
    dist.broadcast(t, src=0)
    return bool(t.item())


# ------------------------------------------------------------------------ batches
def _to_device(images: Sequence[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    return [img.to(device, non_blocking=True) for img in images]


def _targets_to_device(targets: Sequence[Mapping[str, Any]], device: torch.device) -> list[dict]:
    return [
        {
            k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v
            for k, v in t.items()
        }
        for t in targets
    ]


def _images_and_ids(batch: Sequence[Sequence[Any]]) -> tuple[Sequence[torch.Tensor], list[str]]:
    """Images and image ids of a collated batch from XrayDataset or TestDataset.

    ``XrayDataset`` yields ``(images, targets, ids)``; ``TestDataset`` yields
    ``(images, ids, sizes)``.
    """
    images = batch[0]
    if len(batch) >= 3 and batch[1] and isinstance(batch[1][0], Mapping):
        return images, [str(i) for i in batch[2]]
    return images, [str(i) for i in batch[1]]


def _log_debug(kind: str, items: Iterable[str]) -> None:
    """Test hook: append ``items`` to ``$CXRKIT_DEBUG_SEEN_IDS_DIR/{kind}-rank{rank}.txt``.

    ``kind`` is ``"seen"`` (the image ids this rank trains on) or ``"wrote"`` (files
    it wrote); tests/test_ddp.py checks that ranks see disjoint shards and that
    rank 0 alone writes. Does nothing unless the variable is set.
    """
    folder = os.environ.get(DEBUG_SEEN_IDS_ENV)
    if not folder:
        return
    Path(folder).mkdir(parents=True, exist_ok=True)
    with open(Path(folder) / f"{kind}-rank{dist_info().rank}.txt", "a") as f:
        f.writelines(f"{i}\n" for i in items)


# ------------------------------------------------------------------- train one epoch
def train_one_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    data_loader: Iterable,
    device: torch.device,
    epoch: int,
    scaler: torch.amp.GradScaler | None = None,
    print_freq: int = 0,
    *,
    warmup_iters: int = 0,
    warmup_factor: float = 0.001,
    max_grad_norm: float | None = None,
) -> dict[str, float]:
    """Train for one pass over ``data_loader``; return the mean of each loss.

    Parameters
    ----------
    scaler:
        A ``torch.amp.GradScaler`` turns on mixed precision (``torch.autocast`` in
        float16): about twice the throughput on a recent GPU. Pass it only on
        CUDA; on CPU it is ignored.
    print_freq:
        Also print the running losses every ``print_freq`` iterations (0: only the
        progress bar, whose postfix shows the running loss).
    warmup_iters:
        Raise the learning rate linearly from ``warmup_factor * lr`` to ``lr`` over
        the first iterations (torchvision does this in epoch 0): large updates on
        random initial weights are what makes a detector's loss explode.
    max_grad_norm:
        Clip the gradient norm (``None``: no clipping).

    Raises ``FloatingPointError`` naming the epoch, the iteration and every loss
    as soon as the total loss is NaN or infinite.
    """
    model.train()
    use_amp = scaler is not None and device.type == "cuda"
    loss_hist = Averager()
    per_loss: dict[str, Averager] = {}
    total = len(data_loader) if hasattr(data_loader, "__len__") else None
    warmup_iters = min(warmup_iters, (total - 1) if total else warmup_iters)
    base_lrs = [group["lr"] for group in optimizer.param_groups]
    debug_ids = bool(os.environ.get(DEBUG_SEEN_IDS_ENV))

    bar = tqdm(data_loader, total=total, desc=f"epoch {epoch}", leave=False, dynamic_ncols=True)
    for i, (images, targets, image_ids) in enumerate(bar):
        if i < warmup_iters:  # linear warmup: factor goes warmup_factor -> 1
            alpha = i / warmup_iters
            factor = warmup_factor * (1 - alpha) + alpha
            for group, base in zip(optimizer.param_groups, base_lrs, strict=True):
                group["lr"] = base * factor
        elif i == warmup_iters and warmup_iters > 0:
            for group, base in zip(optimizer.param_groups, base_lrs, strict=True):
                group["lr"] = base
        if debug_ids:
            _log_debug("seen", image_ids)
        images = _to_device(images, device)
        targets = _targets_to_device(targets, device)
        with torch.autocast(device_type="cuda", dtype=torch.float16, enabled=use_amp):
            loss_dict = model(images, targets)
            losses = sum(loss_dict.values())
        loss_value = float(losses.detach())
        if not math.isfinite(loss_value):
            values = {k: float(v.detach()) for k, v in loss_dict.items()}
            raise FloatingPointError(
                f"loss is {loss_value} at epoch {epoch}, iteration {i} (images {list(image_ids)}): "
                f"{values}. Lower the learning rate, add warmup, or check the boxes of these images."
            )
        optimizer.zero_grad(set_to_none=True)
        if use_amp:
            scaler.scale(losses).backward()
            if max_grad_norm is not None:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
            scaler.step(optimizer)
            scaler.update()
        else:
            losses.backward()
            if max_grad_norm is not None:
                nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
            optimizer.step()

        loss_hist.send(loss_value)
        for k, v in loss_dict.items():
            per_loss.setdefault(k, Averager()).send(float(v.detach()))
        bar.set_postfix(loss=f"{loss_hist.value:.4f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}")
        if print_freq and (i % print_freq == 0 or i + 1 == total) and dist_info().is_main:
            parts = " ".join(f"{k}={a.value:.4f}" for k, a in per_loss.items())
            print(f"epoch {epoch} [{i + 1}/{total}] loss={loss_hist.value:.4f} {parts}", flush=True)
    bar.close()
    if 0 < warmup_iters:  # an epoch shorter than the warmup still ends at the full lr
        for group, base in zip(optimizer.param_groups, base_lrs, strict=True):
            group["lr"] = base
    return {"loss": loss_hist.value, **{k: a.value for k, a in per_loss.items()}}


# ------------------------------------------------------------------------ predicting
def _meta_sizes(
    meta: pd.DataFrame | Mapping | str | os.PathLike | None,
) -> dict[str, tuple[int, int]]:
    """image_id -> (dim0, dim1) of the original DICOM, from a meta table."""
    if meta is None:
        return {}
    if isinstance(meta, (str, os.PathLike)):
        from cxrkit.annotations import load_meta

        meta = load_meta(meta)
    return image_sizes(meta)


@torch.inference_mode()
def predict_images(
    model: nn.Module,
    images: Sequence[torch.Tensor],
    device: torch.device,
    tta: bool = False,
) -> list[dict[str, torch.Tensor]]:
    """Raw predictions (CPU tensors, boxes in the input image's pixels) for a list of images.

    With ``tta=True`` each image is also predicted flipped left-right; those boxes
    are flipped back (:func:`cxrkit.postprocess.unflip_prediction`) and both sets
    are merged with weighted boxes fusion (:func:`cxrkit.postprocess.merge_tta`).
    """
    model.eval()
    images = _to_device(images, device)
    outputs = [{k: v.detach().cpu() for k, v in o.items()} for o in model(images)]
    if not tta:
        return outputs
    from cxrkit.postprocess import merge_tta, unflip_prediction

    flipped = model([img.flip(-1) for img in images])
    merged = []
    for img, out, out_f in zip(images, outputs, flipped, strict=True):
        h, w = img.shape[-2:]
        back = unflip_prediction({k: v.detach().cpu() for k, v in out_f.items()}, width=w)
        merged.append(merge_tta([out, back], image_hw=(int(h), int(w))))
    return merged


def predictions_to_frame(
    outputs: Sequence[Mapping[str, Any]],
    image_ids: Sequence[str],
    image_sizes: Sequence[tuple[int, int]],
    meta: pd.DataFrame | Mapping | None,
) -> pd.DataFrame:
    """Per-image prediction dicts -> the predictions table in ORIGINAL pixels.

    ``image_sizes`` are the ``(h, w)`` of the images the model saw; each box is
    rescaled from there to the DICOM's ``(dim0, dim1)`` of the meta table (per
    axis). ``class_id = label - 1``. With ``meta=None`` boxes stay in model pixels.
    """
    from cxrkit.annotations import rescale_boxes

    sizes = _meta_sizes(meta)
    frames = []
    for out, image_id, hw in zip(outputs, image_ids, image_sizes, strict=True):
        boxes = torch.as_tensor(out["boxes"]).detach().cpu().double().numpy().reshape(-1, 4)
        if not len(boxes):
            continue
        if meta is not None:
            if image_id not in sizes:
                raise ValueError(f"image {image_id!r} has no row in the meta table (dim0, dim1)")
            boxes = rescale_boxes(boxes, hw, sizes[image_id])
        labels = torch.as_tensor(out["labels"]).cpu().numpy().astype(np.int64)
        frames.append(
            pd.DataFrame(
                {
                    "image_id": image_id,
                    "class_id": from_model_labels(labels),
                    "score": torch.as_tensor(out["scores"]).cpu().double().numpy(),
                    "x_min": boxes[:, 0],
                    "y_min": boxes[:, 1],
                    "x_max": boxes[:, 2],
                    "y_max": boxes[:, 3],
                }
            )
        )
    if not frames:
        return pd.DataFrame({c: pd.Series(dtype="float64") for c in PREDICTION_COLUMNS}).astype(
            {"image_id": object, "class_id": np.int64}
        )
    return pd.concat(frames, ignore_index=True)


def _postprocess(out: dict, score_thr: float, nms: float | None) -> dict:
    from cxrkit.postprocess import classwise_nms, filter_by_score

    if score_thr > 0:
        out = filter_by_score(out, score_thr)
    if nms is not None:
        out = classwise_nms(out, nms)
    return out


def _predict_loader(
    model: nn.Module,
    loader: Iterable,
    device: torch.device,
    meta: pd.DataFrame | Mapping | None,
    tta: bool,
    score_thr: float,
    nms: float | None,
    desc: str,
) -> tuple[pd.DataFrame, list[str]]:
    frames, all_ids = [], []
    total = len(loader) if hasattr(loader, "__len__") else None
    for batch in tqdm(loader, total=total, desc=desc, leave=False, dynamic_ncols=True):
        images, ids = _images_and_ids(batch)
        outputs = predict_images(model, images, device, tta=tta)
        outputs = [_postprocess(o, score_thr, nms) for o in outputs]
        sizes = [tuple(int(s) for s in img.shape[-2:]) for img in images]
        frames.append(predictions_to_frame(outputs, ids, sizes, meta))
        all_ids.extend(ids)
    frames = [f for f in frames if len(f)]
    table = (
        pd.concat(frames, ignore_index=True) if frames else predictions_to_frame([], [], [], meta)
    )
    return table, all_ids


def predict(
    model: nn.Module,
    dataset: torch.utils.data.Dataset,
    device: torch.device,
    meta: pd.DataFrame | Mapping | None,
    batch_size: int = 4,
    tta: bool = False,
    score_thr: float = 0.0,
    nms: float | None = None,
    num_workers: int = 0,
) -> pd.DataFrame:
    """Predict every image of ``dataset``; return the predictions table in original pixels.

    ``dataset`` is a :class:`cxrkit.data.TestDataset` (or an ``XrayDataset``, whose
    targets are ignored). Columns: image_id, class_id (0-13), score, x_min, y_min,
    x_max, y_max. ``score_thr`` drops weak boxes (keep 0 for mAP: low-score boxes
    can only add recall at the end of the ranking); ``nms`` is an extra class-wise
    NMS IoU threshold on top of the detector's own (0.5). No "No finding" rows:
    :func:`cxrkit.submission.prediction_strings` adds them.
    """
    from torch.utils.data import DataLoader

    from cxrkit.data import collate_fn

    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=collate_fn,
    )
    table, _ = _predict_loader(model, loader, device, meta, tta, score_thr, nms, "predict")
    return table


def add_no_finding(predictions: pd.DataFrame, image_ids: Iterable[str]) -> pd.DataFrame:
    """Append one "No finding" row (class 14, box 0 0 1 1) per image, as a submission does.

    Its score is :func:`cxrkit.submission.no_finding_score` (``1 - best finding
    score``), so a validation mAP counts class 14 exactly like the leaderboard.
    """
    from cxrkit.submission import no_finding_score

    ids = list(dict.fromkeys(str(i) for i in image_ids))
    findings = predictions[predictions["class_id"] != NO_FINDING_ID]
    nf = no_finding_score(findings, ids)
    x0, y0, x1, y1 = NO_FINDING_BOX
    rows = pd.DataFrame(
        {
            "image_id": nf.index.astype(str),
            "class_id": NO_FINDING_ID,
            "score": nf.to_numpy(dtype=np.float64),
            "x_min": x0,
            "y_min": y0,
            "x_max": x1,
            "y_max": y1,
        }
    )
    return pd.concat([findings, rows], ignore_index=True)


def evaluate(
    model: nn.Module,
    data_loader: Iterable,
    device: torch.device,
    truth_df: pd.DataFrame,
    meta: pd.DataFrame | Mapping,
    *,
    tta: bool = False,
    iou_thr: float = 0.4,
) -> dict[str, Any]:
    """Validation mAP@0.4 (the competition metric) of ``model`` on ``data_loader``.

    Predictions are mapped back to original pixels with ``meta`` and scored with
    :func:`cxrkit.metrics.vinbigdata_map` against ``truth_df`` (``train.csv``
    columns, original pixels; raw or fused) restricted to the loader's images,
    with a "No finding" score per image as in a submission. Returns
    ``{"map": float, "ap": {class_id: AP}, "result": MapResult, "predictions": table}``.
    """
    from cxrkit.metrics import vinbigdata_map

    model = unwrap(model)
    with torch.inference_mode():
        preds, ids = _predict_loader(model, data_loader, device, meta, tta, 0.0, None, "evaluate")
    truth = truth_df[truth_df["image_id"].astype(str).isin(set(ids))]
    scored = add_no_finding(preds, ids)
    result = vinbigdata_map(scored, truth, iou_thr=iou_thr, image_ids=ids)
    return {"map": result.map, "ap": dict(result.ap), "result": result, "predictions": scored}


# ---------------------------------------------------------------------------- fit
@dataclass
class FitResult:
    """What :func:`fit` did: where the files are and the best validation mAP."""

    out_dir: Path
    epochs_done: int
    best_map: float | None
    best_epoch: int | None
    history: pd.DataFrame = field(repr=False)
    stopped_early: bool = False

    @property
    def last(self) -> Path:
        return self.out_dir / "last.pt"

    @property
    def best(self) -> Path:
        return self.out_dir / "best.pt"

    def __str__(self) -> str:
        best = "n/a" if self.best_map is None else f"{self.best_map:.4f} (epoch {self.best_epoch})"
        stop = " (stopped by the time limit)" if self.stopped_early else ""
        return f"trained {self.epochs_done} epoch(s){stop}; best validation mAP@0.4 {best}; files in {self.out_dir}"


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """The seed of one epoch: a pure function of (seed, epoch, rank)."""
    return (seed * 1_000_003 + epoch * 7919 + rank * 104_729) % 2**31


def seed_epoch(loader: Any, seed: int, epoch: int) -> None:
    """Make everything random in epoch ``epoch`` depend on ``(seed, epoch)`` only.

    This is what makes ``resume`` exact without replaying any random numbers:
    Python/NumPy/torch global RNGs (RPN and ROI sampling draw from torch's), the
    loader's shuffling (its ``generator``, or torch's global RNG when it has none;
    ``DistributedSampler.set_epoch`` under DDP), and the albumentations pipeline of
    the dataset (worker processes reseed from the loader via
    :func:`cxrkit.data.worker_init_fn`).
    """
    rank = dist_info().rank
    s = epoch_seed(seed, epoch, rank)
    random.seed(s)
    np.random.seed(s)  # noqa: NPY002 - libraries may draw from the global RNG
    torch.manual_seed(s)
    sampler = getattr(loader, "sampler", None)
    if hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch)
    generator = getattr(loader, "generator", None)
    if isinstance(generator, torch.Generator):
        generator.manual_seed(epoch_seed(seed, epoch))  # same order on every rank
    dataset = getattr(loader, "dataset", None)
    while hasattr(dataset, "dataset"):  # torch.utils.data.Subset
        dataset = dataset.dataset
    transforms = getattr(dataset, "transforms", None)
    if hasattr(transforms, "set_random_state"):
        from cxrkit.transforms import reseed

        reseed(transforms, s)


def _truth_and_meta(
    loader: Any, truth: pd.DataFrame | None, meta: pd.DataFrame | Mapping | None
) -> tuple[pd.DataFrame, pd.DataFrame | Mapping]:
    """Validation truth and meta: given, or read back from an XrayDataset."""
    ds = getattr(loader, "dataset", None)
    if meta is None and isinstance(getattr(ds, "meta", None), pd.DataFrame):
        meta = ds.meta.rename_axis("image_id").reset_index()
    if truth is None and callable(getattr(ds, "truth_table", None)):
        truth = ds.truth_table()
    if truth is None or meta is None:
        raise ValueError(
            "fit needs the validation truth (train.csv columns, original pixels) and the meta "
            "table: pass valid_truth= and valid_meta=, or use a cxrkit.data.XrayDataset"
        )
    return truth, meta


def _jsonable(d: Mapping[str, Any]) -> dict[str, Any]:
    """Plain values only, so the checkpoint loads with weights_only=True."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Path):
            v = str(v)
        if v is None or isinstance(v, (bool, int, float, str)):
            out[k] = v
    return out


# Training arguments of train_from_folder that a resumed run must share with the
# original one (lr, seed and the schedule are checked from fit's own state). Paths
# may differ (folders get moved); epochs may grow with StepLR.
RESUME_ARGS = ("model_name", "size", "batch_size", "valid_fraction")


def _check_resume(
    path: Path,
    ckpt: Mapping[str, Any],
    *,
    epochs: int,
    lr: float,
    schedule: str,
    seed: int,
    extra: Mapping[str, Any] | None,
) -> None:
    """Refuse to resume a checkpoint whose settings differ from this call's.

    ``optimizer.load_state_dict`` and ``scheduler.load_state_dict`` would silently put
    the old rate and schedule back, so the run would not be the one asked for. Every
    difference is listed in one :class:`ResumeError`.
    """
    problems = []
    sched = ckpt.get("scheduler") or {}
    saved_kind = "cosine" if "T_max" in sched else "step" if "step_size" in sched else None
    if saved_kind is not None and saved_kind != schedule:
        problems.append(f"schedule: the run used {saved_kind!r}, this call asks for {schedule!r}")
    elif saved_kind == "cosine" and int(sched["T_max"]) != max(1, epochs):
        problems.append(
            f"epochs: the cosine schedule was planned for {sched['T_max']} epochs and brings "
            f"the rate to 0 there; with epochs={epochs} it would "
            + ("rise again" if epochs > int(sched["T_max"]) else "stop before reaching 0")
            + f" (resume with epochs={sched['T_max']})"
        )
    groups = (ckpt.get("optimizer") or {}).get("param_groups") or [{}]
    saved_lr = groups[0].get("initial_lr")
    if saved_lr is not None and not math.isclose(float(saved_lr), float(lr), rel_tol=1e-9):
        problems.append(f"lr: the run used {saved_lr}, this call asks for {lr}")
    if ckpt.get("seed") is not None and int(ckpt["seed"]) != int(seed):
        problems.append(f"seed: the run used {ckpt['seed']}, this call asks for {seed}")
    saved = ckpt.get("train_args") or {}
    now = (extra or {}).get("train_args") or {}
    problems += [
        f"{key}: the run used {saved[key]!r}, this call asks for {now[key]!r}"
        for key in RESUME_ARGS
        if key in saved and key in now and saved[key] != now[key]
    ]
    if problems:
        raise ResumeError(
            f"cannot resume {path} with other settings: "
            + "; ".join(problems)
            + ". Use the run's settings, or another output folder for a new run."
        )


def fit(
    model: nn.Module,
    train_loader: Iterable,
    valid_loader: Iterable | None,
    out_dir: str | os.PathLike,
    epochs: int,
    device: torch.device,
    lr: float = 0.005,
    momentum: float = 0.9,
    weight_decay: float = 0.0005,
    step_size: int = 3,
    gamma: float = 0.1,
    resume: bool = False,
    *,
    schedule: str = "step",
    warmup_iters: int = 0,
    max_grad_norm: float | None = None,
    valid_truth: pd.DataFrame | None = None,
    valid_meta: pd.DataFrame | Mapping | None = None,
    seed: int = 42,
    max_minutes: float | None = None,
    amp: bool | None = None,
    print_freq: int = 0,
    extra: Mapping[str, Any] | None = None,
) -> FitResult:
    """Train for ``epochs`` epochs with checkpoints, validation and exact resume.

    The defaults are the seed notebook's: SGD (lr 0.005, momentum 0.9, weight decay
    0.0005) and ``StepLR(step_size=3, gamma=0.1)`` as in torchvision's detection
    tutorial. ``schedule="cosine"`` decays the rate smoothly to zero over
    ``epochs`` instead (better for short from-scratch runs); ``warmup_iters``
    adds a linear warmup at the start of epoch 1.

    Every epoch writes ``out_dir/last.pt`` (model, optimizer, scheduler, epoch,
    best mAP) and a row of ``out_dir/history.csv`` (epoch, losses, lr, val_map,
    seconds), both atomically; ``best.pt`` is rewritten when the validation
    mAP@0.4 improves (without a ``valid_loader`` it follows ``last.pt``).

    ``resume=True`` continues from ``last.pt`` (:class:`ResumeError` if its schedule,
    planned epochs for a cosine schedule, rate or seed differ from this call's).
    Each epoch's randomness is seeded from ``(seed, epoch)`` (:func:`seed_epoch`),
    so an interrupted and resumed run ends with the same weights as an
    uninterrupted one on CPU. (GPU kernels such
    as ``roi_align``'s backward use atomic adds and are not bit-reproducible.)

    ``max_minutes`` stops before an epoch that would end after the budget
    (estimated from the epochs so far); ``amp`` (default: on for CUDA) uses
    mixed precision. Under DDP (``model`` wrapped in DistributedDataParallel)
    rank 0 alone validates, prints and writes files.
    """
    from cxrkit._atomic import write_csv_atomic

    start_time = time.monotonic()
    info = dist_info()
    out = Path(out_dir)
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if schedule == "step":
        scheduler: Any = torch.optim.lr_scheduler.StepLR(
            optimizer, step_size=step_size, gamma=gamma
        )
    elif schedule == "cosine":
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, epochs))
    else:
        raise ValueError(f"schedule must be 'step' or 'cosine', got {schedule!r}")
    use_amp = device.type == "cuda" if amp is None else (amp and device.type == "cuda")
    scaler = torch.amp.GradScaler("cuda") if use_amp else None
    if valid_loader is not None:
        valid_truth, valid_meta = _truth_and_meta(valid_loader, valid_truth, valid_meta)

    start_epoch, best_map, best_epoch = 0, None, None
    history: list[dict[str, Any]] = []
    last_path, best_path, history_path = out / "last.pt", out / "best.pt", out / "history.csv"
    if resume:
        if last_path.is_file():
            ckpt = load_checkpoint(last_path, map_location=device)
            _check_resume(
                last_path, ckpt, epochs=epochs, lr=lr, schedule=schedule, seed=seed, extra=extra
            )
            load_into_model(model, ckpt, last_path)
            if ckpt.get("optimizer") is not None:
                optimizer.load_state_dict(ckpt["optimizer"])
            if ckpt.get("scheduler") is not None:
                scheduler.load_state_dict(ckpt["scheduler"])
            if scaler is not None and ckpt.get("scaler") is not None:
                scaler.load_state_dict(ckpt["scaler"])
            start_epoch = int(ckpt.get("epoch", 0))
            best_map, best_epoch = ckpt.get("best_map"), ckpt.get("best_epoch")
            if history_path.is_file():
                old = pd.read_csv(history_path)
                history = old[old["epoch"] <= start_epoch].to_dict("records")
            if info.is_main:
                print(f"resuming from {last_path} after epoch {start_epoch}")
        elif info.is_main:
            print(f"resume: no {last_path} yet, starting from epoch 1")

    stopped_early = False
    epoch_times: list[float] = []
    for epoch in range(start_epoch, epochs):
        if max_minutes is not None:
            elapsed = time.monotonic() - start_time
            guess = float(np.mean(epoch_times)) if epoch_times else 0.0
            stop = elapsed + guess > max_minutes * 60
            if _broadcast_flag(stop, device):
                stopped_early = True
                if info.is_main:
                    print(f"time limit of {max_minutes} min: stopping before epoch {epoch + 1}")
                break
        t0 = time.monotonic()
        seed_epoch(train_loader, seed, epoch)
        lr_now = optimizer.param_groups[0]["lr"]
        losses = train_one_epoch(
            model,
            optimizer,
            train_loader,
            device,
            epoch + 1,
            scaler=scaler,
            print_freq=print_freq,
            warmup_iters=warmup_iters if epoch == 0 else 0,
            max_grad_norm=max_grad_norm,
        )
        scheduler.step()
        val_map = float("nan")
        if valid_loader is not None and info.is_main:
            val_map = evaluate(model, valid_loader, device, valid_truth, valid_meta)["map"]
        seconds = time.monotonic() - t0
        epoch_times.append(seconds)
        row = {"epoch": epoch + 1, **losses, "lr": lr_now, "val_map": val_map, "seconds": seconds}
        history.append(row)
        if info.is_main:
            improved = valid_loader is None or best_map is None or val_map > best_map
            if improved and valid_loader is not None:
                best_map, best_epoch = val_map, epoch + 1
            state = {
                "best_map": best_map,
                "best_epoch": best_epoch,
                "seed": seed,
                "history_rows": len(history),
                **(dict(extra) if extra else {}),
            }
            if scaler is not None:
                state["scaler"] = scaler.state_dict()
            save_checkpoint(last_path, model, optimizer, scheduler, epoch + 1, **state)
            if improved:
                save_checkpoint(best_path, model, optimizer, scheduler, epoch + 1, **state)
            write_csv_atomic(pd.DataFrame(history), history_path)
            _log_debug("wrote", ["last.pt", "history.csv", *(["best.pt"] if improved else [])])
            val = "" if valid_loader is None else f" val mAP@0.4 {val_map:.4f}"
            print(
                f"epoch {epoch + 1}/{epochs} loss {losses['loss']:.4f}{val} ({seconds:.0f} s)",
                flush=True,
            )
        _barrier()
    done = history[-1]["epoch"] if history else start_epoch
    return FitResult(out, int(done), best_map, best_epoch, pd.DataFrame(history), stopped_early)


# ----------------------------------------------------------------- command-line runs
# Defaults of train_from_folder per model: cxr_small learns from scratch, so it wants
# a higher learning rate with a warmup and a cosine decay; the COCO-initialised
# torchvision models keep the seed's recipe.
SMALL_DEFAULTS: dict[str, Any] = {
    "size": 256,
    "lr": 0.02,
    "schedule": "cosine",
    "warmup_iters": 50,
    "max_grad_norm": 10.0,
}
SEED_DEFAULTS: dict[str, Any] = {
    "size": 512,
    "lr": 0.005,
    "schedule": "step",
    "warmup_iters": 0,
    "max_grad_norm": None,
}


def _read_training_table(annotations_csv: str | os.PathLike, meta: pd.DataFrame) -> pd.DataFrame:
    """Load the annotations; fuse the radiologists' boxes when there are several per image."""
    from cxrkit.annotations import fuse_boxes, load_annotations

    table = load_annotations(annotations_csv)
    if len(table) == 0:
        raise AnnotationError(f"{annotations_csv} has no annotation rows: nothing to train on")
    known = set(meta["image_id"].astype(str))
    ids = table["image_id"].astype(str)
    absent = sorted(set(ids) - known)
    if absent:
        warnings.warn(
            f"{len(absent)} annotated image(s) are not in the preprocessed folder "
            f"(e.g. {absent[:3]}); they are left out",
            stacklevel=2,
        )
        table = table[ids.isin(known)]
        if len(table) == 0:
            raise AnnotationError(
                f"none of the images of {annotations_csv} is in the preprocessed folder"
            )
    readers = table.groupby("image_id")["rad_id"].nunique()
    if (readers > 1).any() and not (table["rad_id"].astype(str) == "wbf").all():
        table = fuse_boxes(table, meta)
    return table


def _keep_split(
    path: Path, train_ids: Sequence[str], valid_ids: Sequence[str], resume: bool, write: bool
) -> None:
    """Save the run's train/valid split (``split.csv``: image_id, subset) beside its
    checkpoints, so the validation images can be found again later; when resuming,
    check that the split is still the one the run was trained with."""
    from cxrkit._atomic import write_csv_atomic

    table = pd.DataFrame(
        {
            "image_id": [*map(str, train_ids), *map(str, valid_ids)],
            "subset": ["train"] * len(train_ids) + ["valid"] * len(valid_ids),
        }
    ).sort_values("image_id", ignore_index=True)
    if resume and path.is_file() and (path.parent / "last.pt").is_file():
        old = pd.read_csv(path, dtype=str).sort_values("image_id", ignore_index=True)
        if not old.equals(table.astype(str)):
            moved = len(set(map(tuple, old.values)) ^ set(map(tuple, table.values)))
            raise ResumeError(
                f"cannot resume {path.parent}: the train/valid split differs from the run's "
                f"{path.name} ({moved} row(s) differ), so the annotations or the preprocessed "
                "folder changed. Use the run's data, or another output folder for a new run."
            )
    if write:
        write_csv_atomic(table, path)


def train_from_folder(
    data_dir: str | os.PathLike,
    annotations_csv: str | os.PathLike,
    out_dir: str | os.PathLike,
    model_name: str = "cxr_small",
    epochs: int = 10,
    batch_size: int = 4,
    weights: str | os.PathLike | None = None,
    resume: bool = False,
    lr: float | None = None,
    valid_fraction: float = 0.2,
    seed: int = 42,
    num_workers: int = 0,
    max_minutes: float | None = None,
    size: int | None = None,
) -> FitResult:
    """Train a detector on a preprocessed folder: what ``python -m cxrkit train`` runs.

    ``data_dir`` is the output of :func:`cxrkit.preprocess.preprocess_dicoms`
    (``train/*.png`` and ``train_meta.csv``); ``annotations_csv`` is the raw
    ``train.csv`` (fused here with :func:`cxrkit.annotations.fuse_boxes` when an
    image has several radiologists) or a fused table, in original pixels. The
    images are split into train/valid (stratified, ``valid_fraction``), and
    :func:`fit` writes ``last.pt``, ``best.pt`` and ``history.csv`` into
    ``out_dir``, beside ``split.csv`` (which images validate). ``resume=True``
    continues ``out_dir/last.pt`` and raises :class:`ResumeError` if the settings
    or the split differ from the run's. ``size`` is the side the images are
    resized to (default 256 for ``cxr_small``, 512 otherwise); ``lr`` defaults per model (see
    ``SMALL_DEFAULTS`` / ``SEED_DEFAULTS``). ``max_minutes`` bounds the whole run.

    Under ``torchrun`` (RANK/WORLD_SIZE set) it trains with DistributedDataParallel:
    each process sees a different shard of the images (``DistributedSampler``),
    rank 0 alone validates and writes files.
    """
    from torch.utils.data import DataLoader, DistributedSampler

    from cxrkit.annotations import load_meta
    from cxrkit.data import XrayDataset, collate_fn, worker_init_fn
    from cxrkit.data import split as split_ids
    from cxrkit.models import build_model
    from cxrkit.transforms import train_transforms, valid_transforms
    from cxrkit.utils import seed_everything, try_gpu

    t_start = time.monotonic()
    info = setup_distributed()
    try:
        device = try_gpu(info.local_rank)
        seed_everything(seed)
        data = Path(data_dir)
        image_dir, meta_path = data / "train", data / "train_meta.csv"
        if not meta_path.is_file():
            raise FileNotFoundError(
                f"{meta_path} not found: DATA_DIR must be a preprocessed folder "
                "(python -m cxrkit preprocess RAW_DIR DATA_DIR)"
            )
        meta = load_meta(meta_path)
        table = _read_training_table(annotations_csv, meta)
        defaults = dict(SMALL_DEFAULTS if model_name == "cxr_small" else SEED_DEFAULTS)
        size = int(size or defaults["size"])
        lr = float(lr if lr is not None else defaults["lr"])

        train_ids, valid_ids = split_ids(table, valid_fraction=valid_fraction, seed=seed)
        _keep_split(Path(out_dir) / "split.csv", train_ids, valid_ids, resume, info.is_main)
        ids = table["image_id"].astype(str)
        train_ds = XrayDataset(
            table[ids.isin(set(train_ids))], image_dir, train_transforms(size, seed=seed), meta=meta
        )
        valid_ds = XrayDataset(
            table[ids.isin(set(valid_ids))], image_dir, valid_transforms(size), meta=meta
        )
        sampler = (
            # drop_last: no image is repeated to even out the shards (each rank sees
            # different images); at most world_size - 1 images sit out an epoch.
            DistributedSampler(
                train_ds, info.world_size, info.rank, shuffle=True, seed=seed, drop_last=True
            )
            if info.enabled
            else None
        )
        generator = torch.Generator()
        generator.manual_seed(seed)
        train_loader = DataLoader(
            train_ds,
            batch_size=batch_size,
            shuffle=sampler is None,
            sampler=sampler,
            num_workers=num_workers,
            collate_fn=collate_fn,
            worker_init_fn=worker_init_fn,
            generator=generator,
            drop_last=len(train_ds) > batch_size,  # no batch of one at the end
        )
        valid_loader = DataLoader(
            valid_ds,
            batch_size=batch_size,
            shuffle=False,
            num_workers=num_workers,
            collate_fn=collate_fn,
        )
        model_kw: dict[str, Any] = {}
        if model_name == "cxr_small" or size != SEED_DEFAULTS["size"]:
            model_kw = {"min_size": size, "max_size": size}
        model = build_model(model_name, weights=weights, **model_kw).to(device)
        if info.enabled:
            model = nn.parallel.DistributedDataParallel(
                model, device_ids=[info.local_rank] if device.type == "cuda" else None
            )
        if info.is_main:
            print(
                f"training {model_name} on {len(train_ds)} images, validating on {len(valid_ds)} "
                f"({size} px, batch {batch_size}, lr {lr}, device {device}"
                f"{f', {info.world_size} processes' if info.enabled else ''})"
            )
        args = _jsonable(
            {
                "data_dir": data,
                "annotations_csv": Path(annotations_csv),
                "model_name": model_name,
                "epochs": epochs,
                "batch_size": batch_size,
                "weights": None if weights is None else str(weights),
                "lr": lr,
                "valid_fraction": valid_fraction,
                "seed": seed,
                "size": size,
                "world_size": info.world_size,
            }
        )
        budget = None
        if max_minutes is not None:
            budget = max_minutes - (time.monotonic() - t_start) / 60
        return fit(
            model,
            train_loader,
            valid_loader,
            out_dir,
            epochs,
            device,
            lr=lr,
            resume=resume,
            schedule=defaults["schedule"],
            warmup_iters=defaults["warmup_iters"],
            max_grad_norm=defaults["max_grad_norm"],
            seed=seed,
            max_minutes=budget,
            extra={"train_args": args, "size": size},
        )
    finally:
        import torch.distributed as dist

        if info.enabled and dist.is_initialized():
            _barrier()
            dist.destroy_process_group()


def predict_to_submission(
    checkpoint: str | os.PathLike,
    data_dir: str | os.PathLike,
    out_csv: str | os.PathLike,
    split: str = "test",
    tta: bool = False,
    batch_size: int = 4,
    num_workers: int = 0,
) -> Path:
    """Predict ``data_dir/split`` with a checkpoint and write a submission CSV.

    What ``python -m cxrkit predict RUN_DIR/best.pt DATA_DIR --out SUB.csv`` runs.
    The model is rebuilt from the checkpoint (:func:`cxrkit.models.model_from_checkpoint`),
    images are resized to the training size, boxes mapped back to original pixels
    with ``data_dir/{split}_meta.csv``, and every image gets its findings plus a
    ``14 p 0 0 1 1`` No finding entry (:func:`cxrkit.submission.prediction_strings`).
    """
    from cxrkit.annotations import load_meta
    from cxrkit.data import TestDataset
    from cxrkit.models import model_from_checkpoint
    from cxrkit.submission import prediction_strings, write_submission
    from cxrkit.transforms import test_transforms
    from cxrkit.utils import try_gpu

    ckpt = load_checkpoint(checkpoint)  # clear CheckpointError if missing or corrupt
    model = model_from_checkpoint(checkpoint)
    size = int(ckpt.get("size") or (ckpt.get("model_config") or {}).get("min_size") or 512)
    data = Path(data_dir)
    meta_path = data / f"{split}_meta.csv"
    if not meta_path.is_file():
        raise FileNotFoundError(
            f"{meta_path} not found: DATA_DIR must be a preprocessed folder with a {split}/ split"
        )
    meta = load_meta(meta_path)
    dataset = TestDataset(
        data / split, ids=list(meta["image_id"].astype(str)), transforms=test_transforms(size)
    )
    device = try_gpu()
    model.to(device)
    preds = predict(
        model, dataset, device, meta, batch_size=batch_size, tta=tta, num_workers=num_workers
    )
    submission = prediction_strings(preds, dataset.image_ids, meta=meta)
    return write_submission(submission, out_csv, image_ids=dataset.image_ids, meta=meta)
