"""The loops: train one epoch, evaluate, predict (notebook 04 trains, 05 and 06 predict).

Names and signatures follow torchvision's ``references/detection/engine.py``; the
seed notebook's bare loop grew a progress bar, AMP on a GPU, a linear warmup,
gradient clipping and a stop on a non-finite loss on every rank at once.

:func:`train_one_epoch` trains any model: what differs between a detector and the
normal/abnormal classifier is how a batch becomes losses (``batch_losses``:
:func:`detector_losses` by default, :func:`cxrkit.classifier.classifier_losses`),
so this is the one place where cxrkit calls ``backward``. Epochs, checkpoints and
resume are :mod:`cxrkit.fit`; the command line's runs are :mod:`cxrkit.train`.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, TypeAlias

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader

from cxrkit._progress import tqdm
from cxrkit.annotations import load_meta, rescale_boxes
from cxrkit.data import collate_fn
from cxrkit.distributed import any_rank, dist_info, gather_objects, unwrap
from cxrkit.errors import DatasetError, NonFiniteLossError
from cxrkit.formats import BOX_COLUMNS, PREDICTION_COLUMNS, image_sizes
from cxrkit.labels import from_model_labels
from cxrkit.metrics import vinbigdata_map
from cxrkit.postprocess import classwise_nms, filter_by_score, merge_tta, unflip_prediction
from cxrkit.submission import add_no_finding


# ------------------------------------------------------------------------- Averager
class Averager:
    """Running mean of the values sent to it (the seed notebook's loss tracker).

    ``send(x)`` adds a value, ``value`` is the mean so far (0 before any), ``reset()``
    starts over. torchvision's grown-up form is ``references/detection/utils.py``'s
    ``SmoothedValue`` (windowed median/mean, synchronised across processes).
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


# ------------------------------------------------------------------------ batches
def _to_device(images: Sequence[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    return [img.to(device, non_blocking=True) for img in images]


def _targets_to_device(targets: Sequence[Mapping[str, Any]], device: torch.device) -> list[dict]:
    def move(v: Any) -> Any:
        return v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v

    return [{k: move(v) for k, v in t.items()} for t in targets]


def _images_and_ids(batch: Sequence[Sequence[Any]]) -> tuple[Sequence[torch.Tensor], list[str]]:
    """Images and ids of a batch: XrayDataset's (images, targets, ids), TestDataset's (images, ids, sizes)."""
    images = batch[0]
    if len(batch) >= 3 and batch[1] and isinstance(batch[1][0], Mapping):
        return images, [str(i) for i in batch[2]]
    return images, [str(i) for i in batch[1]]


# ------------------------------------------------------------------------- losses
# A batch is ``(inputs, targets, image_ids)``, as both cxrkit's detection loaders
# (collate_fn) and the classifier's loader yield it.
Batch: TypeAlias = Sequence[Any]
# How a model's losses on one batch are computed: (model, batch, device) -> named
# losses, whose sum is minimised.
LossFn: TypeAlias = Callable[[nn.Module, Batch, torch.device], Mapping[str, torch.Tensor]]


def detector_losses(
    model: nn.Module, batch: Batch, device: torch.device
) -> Mapping[str, torch.Tensor]:
    """A torchvision detector's losses on ``(images, targets, image_ids)``: in train
    mode the model itself returns them (``loss_classifier``, ``loss_box_reg``,
    ``loss_objectness``, ``loss_rpn_box_reg``)."""
    images, targets, _ = batch
    return model(_to_device(images, device), _targets_to_device(targets, device))


# ------------------------------------------------------------------- train one epoch
class LinearWarmup(torch.optim.lr_scheduler.LRScheduler):
    """Raise each rate linearly from ``warmup_factor * lr`` to ``lr`` over ``warmup_iters`` steps.

    ``LinearLR(optimizer, warmup_factor, total_iters=warmup_iters)`` (torchvision's
    warmup) in closed form, from the rates the optimizer has when it is built:
    LinearLR's step-by-step ratios end ~1e-16 off ``lr``, which changes the weights'
    last bits. Step it once per iteration, after ``optimizer.step()``.
    """

    def __init__(
        self, optimizer: torch.optim.Optimizer, warmup_iters: int, warmup_factor: float = 0.001
    ) -> None:
        self.warmup_iters = int(warmup_iters)
        self.warmup_factor = float(warmup_factor)
        self.start_lrs = [float(group["lr"]) for group in optimizer.param_groups]
        super().__init__(optimizer)

    def factor(self, step: int) -> float:
        """The multiplier of the full rate at iteration ``step`` (1 from ``warmup_iters`` on)."""
        if step >= self.warmup_iters:
            return 1.0
        alpha = step / self.warmup_iters
        return self.warmup_factor * (1 - alpha) + alpha

    def get_lr(self) -> list[float]:
        return [lr * self.factor(self.last_epoch) for lr in self.start_lrs]


def _stop_if_not_finite(
    loss_value: float,
    loss_dict: Mapping[str, torch.Tensor],
    where: str,
    image_ids: Sequence[str],
    device: torch.device,
) -> None:
    """Raise NonFiniteLossError on EVERY rank if the loss is NaN/inf on ANY rank (before
    backward: a rank raising alone would leave the others waiting in its all-reduce)."""
    bad = not math.isfinite(loss_value)
    if not any_rank(bad, device):
        return
    mine = None
    if bad:
        values = {k: float(v.detach()) for k, v in loss_dict.items()}
        mine = (dist_info().rank, loss_value, list(image_ids), values)
    reports = [r for r in gather_objects(mine) if r is not None]
    several = dist_info().enabled
    parts = [
        f"loss is {value}{f' on rank {rank}' if several else ''} at {where} (images {ids}): {values}"
        for rank, value, ids, values in reports
    ]
    raise NonFiniteLossError(
        "; ".join(parts)
        + ". Lower the learning rate, add warmup, or check the boxes of these images."
    )


def _backward_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    losses: torch.Tensor,
    scaler: torch.amp.GradScaler | None,
    max_grad_norm: float | None,
) -> None:
    """zero_grad, backward, optional gradient clipping, optimizer step (scaled under AMP).

    The only ``backward`` in cxrkit: every model trains through this step.
    """
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
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


def time_training_steps(
    model: nn.Module,
    loader: Iterable,
    device: torch.device,
    steps: int,
    *,
    batch_losses: LossFn = detector_losses,
    use_amp: bool = False,
) -> tuple[float, int]:
    """Seconds of one training step (forward, backward, SGD step) of ``model``, measured.

    The first batch is not timed (first-call allocations, worker start-up); the next
    ``steps`` are. ``model``'s weights change: pass a copy (:mod:`cxrkit.budget` does).
    Returns the mean seconds per step and the number of steps timed (0: an empty loader).
    """
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=1e-6, momentum=0.9, weight_decay=5e-4)
    scaler = torch.amp.GradScaler("cuda") if use_amp and device.type == "cuda" else None

    def step(batch: Batch) -> None:
        with torch.autocast(device_type="cuda", dtype=torch.float16, enabled=scaler is not None):
            losses = sum(batch_losses(model, batch, device).values())
        _backward_step(model, optimizer, losses, scaler, None)

    return _seconds_per_batch(loader, device, steps, step)


@torch.inference_mode()
def time_predicting_batches(
    model: nn.Module, loader: Iterable, device: torch.device, batches: int
) -> tuple[float, int]:
    """Seconds ``model`` takes to predict one batch of ``loader`` in eval mode, measured
    (the first batch untimed, then up to ``batches``): what one validation costs."""
    model.eval()

    def step(batch: Batch) -> None:
        images = batch[0]
        model(images.to(device) if isinstance(images, torch.Tensor) else _to_device(images, device))

    return _seconds_per_batch(loader, device, batches, step)


def _cycle(loader: Iterable) -> Iterator[Batch]:
    """The loader's batches, epoch after epoch (nothing if it has none): a short loader
    still gives a probe its batches, and each new pass pays its start-up as an epoch does."""
    while True:
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty:
            return


def _seconds_per_batch(
    loader: Iterable, device: torch.device, count: int, step: Callable[[Batch], None]
) -> tuple[float, int]:
    """Mean seconds of ``step`` over ``count`` batches of ``loader`` (passing over it
    again when it is shorter) after one untimed batch, and how many were timed (0: the
    loader has no batch)."""
    start, timed = 0.0, -1
    for batch in _cycle(loader):
        if timed == 0:
            _synchronize(device)
            start = time.perf_counter()
        step(batch)
        timed += 1
        if timed == count:
            break
    _synchronize(device)
    if timed <= 0:
        return 0.0, 0
    return (time.perf_counter() - start) / timed, timed


def _synchronize(device: torch.device) -> None:
    """Wait for the GPU's queued work, so that a clock reading covers it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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
    batch_losses: LossFn = detector_losses,
) -> dict[str, float]:
    """Train for one pass over ``data_loader``; return the mean of the total loss
    (``"loss"``) and, when there are several, of each of its parts.

    ``batch_losses`` turns a batch into named losses (:func:`detector_losses` by
    default); their sum is minimised. ``scaler`` (a ``torch.amp.GradScaler``, CUDA
    only) turns on mixed precision (float16 autocast, about twice the throughput).
    ``print_freq`` also prints the running losses every that many iterations.
    ``warmup_iters`` raises the rate linearly from ``warmup_factor * lr`` over the
    first iterations (:class:`LinearWarmup`): large updates on random initial
    weights make a detector's loss explode. ``max_grad_norm`` clips the gradient norm.

    Raises :class:`cxrkit.errors.NonFiniteLossError` (a ``FloatingPointError``)
    naming the epoch, the iteration, the images and every loss as soon as the total
    loss is NaN or infinite; under DDP every rank raises it, naming the rank.
    """
    model.train()
    use_amp = scaler is not None and device.type == "cuda"
    loss_hist = Averager()
    per_loss: dict[str, Averager] = {}
    total = len(data_loader) if hasattr(data_loader, "__len__") else None
    warmup_iters = min(warmup_iters, (total - 1) if total else warmup_iters)
    warmup = LinearWarmup(optimizer, warmup_iters, warmup_factor) if warmup_iters > 0 else None

    bar = tqdm(data_loader, total=total, desc=f"epoch {epoch}", leave=False, dynamic_ncols=True)
    for i, batch in enumerate(bar):
        with torch.autocast(device_type="cuda", dtype=torch.float16, enabled=use_amp):
            loss_dict = batch_losses(model, batch, device)
            losses = sum(loss_dict.values())
        loss_value = float(losses.detach())
        where = f"epoch {epoch}, iteration {i}"  # every rank stops if one loss is NaN/inf:
        _stop_if_not_finite(loss_value, loss_dict, where, batch[-1], device)
        _backward_step(model, optimizer, losses, scaler if use_amp else None, max_grad_norm)
        if warmup is not None:
            warmup.step()

        loss_hist.send(loss_value)
        for k, v in loss_dict.items():
            per_loss.setdefault(k, Averager()).send(float(v.detach()))
        bar.set_postfix(loss=f"{loss_hist.value:.4f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}")
        if print_freq and (i % print_freq == 0 or i + 1 == total) and dist_info().is_main:
            parts = " ".join(f"{k}={a.value:.4f}" for k, a in per_loss.items())
            print(f"epoch {epoch} [{i + 1}/{total}] loss={loss_hist.value:.4f} {parts}", flush=True)
    bar.close()
    while warmup is not None and warmup.last_epoch < warmup_iters:  # a loader without len()
        warmup.step()  # shorter than the warmup still ends at the full rate
    # the parts' means, when the loss has several (a single one is the total itself)
    part_means = {k: a.value for k, a in per_loss.items()} if len(per_loss) > 1 else {}
    return {"loss": loss_hist.value, **part_means}


# ------------------------------------------------------------------------ predicting
def _meta_sizes(
    meta: pd.DataFrame | Mapping | str | os.PathLike | None,
) -> dict[str, tuple[int, int]]:
    """image_id -> (dim0, dim1) of the original DICOM, from a meta table."""
    if meta is None:
        return {}
    if isinstance(meta, (str, os.PathLike)):
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
    sizes = _meta_sizes(meta)
    frames = []
    for out, image_id, hw in zip(outputs, image_ids, image_sizes, strict=True):
        boxes = torch.as_tensor(out["boxes"]).detach().cpu().double().numpy().reshape(-1, 4)
        if not len(boxes):
            continue
        if meta is not None:
            if image_id not in sizes:
                raise DatasetError(f"image {image_id!r} has no row in the meta table (dim0, dim1)")
            boxes = rescale_boxes(boxes, hw, sizes[image_id])
        labels = torch.as_tensor(out["labels"]).cpu().numpy().astype(np.int64)
        scores = torch.as_tensor(out["scores"]).cpu().double().numpy()
        columns = {"image_id": image_id, "class_id": from_model_labels(labels), "score": scores}
        frames.append(pd.DataFrame({**columns, **dict(zip(BOX_COLUMNS, boxes.T, strict=True))}))
    if not frames:
        return pd.DataFrame({c: pd.Series(dtype="float64") for c in PREDICTION_COLUMNS}).astype(
            {"image_id": object, "class_id": np.int64}
        )
    return pd.concat(frames, ignore_index=True)


def _postprocess(out: dict, score_thr: float, nms: float | None) -> dict:
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
    loader = DataLoader(dataset, batch_size, num_workers=num_workers, collate_fn=collate_fn)
    table, _ = _predict_loader(model, loader, device, meta, tta, score_thr, nms, "predict")
    return table


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

    Predictions in original pixels (``meta``) scored with :func:`cxrkit.metrics.vinbigdata_map`
    against ``truth_df`` (train.csv columns, raw or fused) on the loader's images,
    with a "No finding" score per image as in a submission. Returns
    ``{"map": float, "ap": {class_id: AP}, "result": MapResult, "predictions": table}``.
    """
    model = unwrap(model)
    with torch.inference_mode():
        preds, ids = _predict_loader(model, data_loader, device, meta, tta, 0.0, None, "evaluate")
    truth = truth_df[truth_df["image_id"].astype(str).isin(set(ids))]
    scored = add_no_finding(preds, ids)
    result = vinbigdata_map(scored, truth, iou_thr=iou_thr, image_ids=ids)
    return {"map": result.map, "ap": dict(result.ap), "result": result, "predictions": scored}
