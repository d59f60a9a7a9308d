"""What ``python -m cxrkit train`` runs (notebooks 04-07): a detector's run folder.

:func:`train_from_folder` goes from a preprocessed folder and ``train.csv`` to a run
folder (``last.pt``, ``best.pt``, ``history.csv``, ``split.csv``; :mod:`cxrkit.runs`),
under ``torchrun`` with DistributedDataParallel too. Every setting of a run is one
:class:`cxrkit.config.TrainConfig`, resolved against the model's spec and saved whole
in the checkpoints (``ckpt["config"]``), so that a resume can check it is the same
run. Predicting with the run is :mod:`cxrkit.predict`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, Sampler

from cxrkit.anchors import (
    AnchorSpec,
    choose_input_size,
    compare_coverage,
    fit_anchors,
    resized_boxes,
    stock_anchors,
)
from cxrkit.budget import plan_from_budget
from cxrkit.checkpoints import checkpoint_size, load_checkpoint
from cxrkit.config import AUTO_REPEAT_THRESHOLD, TrainConfig, resolve
from cxrkit.data import (
    TestDataset,
    XrayDataset,
    check_images_exist,
    collate_fn,
    worker_init_fn,
)
from cxrkit.distributed import DistInfo, cleanup_distributed, setup_distributed
from cxrkit.engine import predict
from cxrkit.errors import AnnotationError, ConfigError
from cxrkit.fit import FitResult, fit_run, make_optimizer, make_scheduler
from cxrkit.models import (
    build_model,
    model_from_checkpoint,
    saved_in_pretrained_layout,
    to_pretrained_layout,
)
from cxrkit.registry import get_spec
from cxrkit.runs import (  # the run-folder helpers; still importable from cxrkit.train
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
from cxrkit.sampling import RepeatFactorSampler, choose_repeat_threshold, repeat_factors
from cxrkit.submission import add_no_finding
from cxrkit.transforms import test_transforms, train_transforms, valid_transforms
from cxrkit.utils import printed_to_file, seed_everything, try_gpu


def predict_images(
    checkpoint: str | os.PathLike,
    image_dir: Path,
    meta: pd.DataFrame,
    image_ids: Sequence[str],
    device: torch.device | None = None,
    batch_size: int = 4,
    ckpt: dict[str, Any] | None = None,
) -> pd.DataFrame:
    """A detector checkpoint's predictions table (original pixels, no No finding rows)
    of ``image_ids`` in ``image_dir``, at the side it was trained at: a run's validation
    images (:func:`write_out_of_fold`, ``tune-fusion``). ``ckpt``: the file, if read."""
    ckpt = load_checkpoint(checkpoint) if ckpt is None else ckpt
    device = device or torch.device("cpu")
    model = model_from_checkpoint(checkpoint, ckpt=ckpt).to(device)
    ids = [str(i) for i in image_ids]
    dataset = TestDataset(image_dir, ids=ids, transforms=test_transforms(checkpoint_size(ckpt)))
    return predict(model, dataset, device, meta, batch_size=batch_size)


def write_out_of_fold(
    checkpoint: str | os.PathLike,
    image_dir: Path,
    meta: pd.DataFrame,
    valid_ids: Sequence[str],
    out_csv: str | os.PathLike,
    device: torch.device | None = None,
    batch_size: int = 4,
) -> pd.DataFrame:
    """Predict a fold run's validation images with its ``best.pt`` and write them
    (``oof.csv``: the predictions table in original pixels, plus one No finding row
    per image, so that every out-of-fold image appears even without a box).

    :func:`cxrkit.data.join_out_of_fold` joins the tables of the K fold runs.
    """
    ids = [str(i) for i in valid_ids]
    preds = predict_images(checkpoint, image_dir, meta, ids, device, batch_size=batch_size)
    table = add_no_finding(preds, ids)
    write_out_of_fold_table(table, out_csv, ids)
    return table


def make_loaders(
    table: pd.DataFrame,
    meta: pd.DataFrame,
    image_dir: Path,
    split: tuple[Sequence[str], Sequence[str]],
    cfg: TrainConfig,
    info: DistInfo,
) -> tuple[DataLoader, DataLoader]:
    """The train and valid loaders of a run; under DDP each rank trains on its own shard.

    ``DistributedSampler(drop_last=True)``: no image is repeated to even out the
    shards; at most ``world_size - 1`` images sit out an epoch.
    """
    ids = table["image_id"].astype(str)
    train_ds = XrayDataset(
        table[ids.isin(set(split[0]))],
        image_dir,
        train_transforms(cfg.size, seed=cfg.seed),
        meta=meta,
    )
    valid_ds = XrayDataset(
        table[ids.isin(set(split[1]))], image_dir, valid_transforms(cfg.size), meta=meta
    )
    sampler: Sampler[int] | None = None
    if cfg.repeat_threshold == "auto":  # decided here for a caller that did not decide it
        cfg = _choose_sampling(cfg, train_ds.truth_table(), info, show=False)
    if cfg.repeat_threshold is not None:
        if info.enabled:
            raise ConfigError(
                "repeat_threshold= (repeat factor sampling) runs in one process; under torchrun "
                "each rank would need its own shard of the repeated images"
            )
        factors = repeat_factors(train_ds.truth_table(), cfg.repeat_threshold)
        sampler = RepeatFactorSampler([factors[i] for i in train_ds.image_ids], seed=cfg.seed)
    elif info.enabled:
        sampler = DistributedSampler(
            train_ds, info.world_size, info.rank, shuffle=True, seed=cfg.seed, drop_last=True
        )
    generator = torch.Generator()
    generator.manual_seed(cfg.seed)
    train_loader = DataLoader(
        train_ds,
        batch_size=cfg.batch_size,
        shuffle=sampler is None,
        sampler=sampler,
        num_workers=cfg.num_workers,
        collate_fn=collate_fn,
        worker_init_fn=worker_init_fn,
        generator=generator,
        drop_last=len(train_ds) > cfg.batch_size,  # no batch of one at the end
    )
    valid_loader = DataLoader(
        valid_ds, cfg.batch_size, num_workers=cfg.num_workers, collate_fn=collate_fn
    )
    return train_loader, valid_loader


def _build_for_training(
    cfg: TrainConfig,
    device: torch.device,
    anchors: AnchorSpec | None = None,
    resume_from: Path | None = None,
) -> nn.Module:
    """The model of ``cfg``, built for ``cfg.size`` px, on ``device``.

    A resume (``resume_from``: the run's ``last.pt``) builds the model in the layout
    the run was saved in (frozen BatchNorm when it started from COCO weights) and never
    reads the initial weights again: ``last.pt`` replaces them, so a weights file that
    is found now and was not then (or the reverse) changes nothing.
    """
    if resume_from is None:
        model = build_model(cfg.model_name, weights=cfg.weights, size=cfg.size, anchors=anchors)
    else:
        model = build_model(cfg.model_name, weights=None, size=cfg.size, anchors=anchors)
        if saved_in_pretrained_layout(cfg.model_name, load_checkpoint(resume_from)["model"]):
            model = to_pretrained_layout(model, cfg.model_name)
    return model.to(device)


def _wrap_for_processes(model: nn.Module, device: torch.device, info: DistInfo) -> nn.Module:
    """``model`` in DistributedDataParallel under torchrun, else itself."""
    if not info.enabled:
        return model
    return nn.parallel.DistributedDataParallel(
        model, device_ids=[info.local_rank] if device.type == "cuda" else None
    )


def _fit_to_boxes(
    cfg: TrainConfig, train_table: pd.DataFrame, meta: pd.DataFrame, auto_size: bool, show: bool
) -> tuple[TrainConfig, AnchorSpec | None]:
    """Choose the input size and fit the anchors to the training boxes, as ``cfg`` asks.

    Deterministic (a resume refits the same anchors). Prints the choices and, for
    fitted anchors, the coverage per class of the stock and the fitted anchors.
    """
    if auto_size:
        size, reason = choose_input_size(train_table, meta)
        cfg = replace(cfg, size=size)
        if show:
            print(reason)
    if cfg.anchors != "auto":
        return cfg, None
    wh = resized_boxes(train_table, meta, cfg.size)[["w", "h"]].to_numpy()
    try:
        spec = fit_anchors(wh, cfg.size)
    except ValueError as exc:  # e.g. fewer distinct boxes than anchor sizes
        raise AnnotationError(
            f"cannot fit anchors to the {len(wh)} training boxes ({exc}); train with the "
            "stock anchors (anchors='stock', --anchors stock) or on more annotated images"
        ) from exc
    if show:
        print(f"{spec.describe()} (from {len(wh)} training boxes)")
        sets = {"stock": stock_anchors(cfg.size), "fitted": spec}
        coverage = compare_coverage(train_table, meta, sets, cfg.size)
        print("share of training boxes whose best anchor reaches IoU 0.5 / 0.7, centred:")
        print(coverage.round(2).to_string())
        on_grid = compare_coverage(train_table, meta, sets, cfg.size, on_grid=True)
        print("and on the anchor grid (strides 8-64 px), what the RPN matches:")
        print(on_grid.round(2).to_string())
    return cfg, spec


def _choose_sampling(
    cfg: TrainConfig, train_table: pd.DataFrame, info: DistInfo, show: bool
) -> TrainConfig:
    """``cfg`` with its repeat threshold decided from the training images (``"auto"``);
    off under torchrun, where each rank samples its own shard."""
    if cfg.repeat_threshold == "auto" and info.enabled:
        threshold = None
        reason = "repeat factor sampling off: it runs in one process, not under torchrun"
    else:
        threshold, reason = choose_repeat_threshold(
            train_table, cfg.repeat_threshold, AUTO_REPEAT_THRESHOLD
        )
    if show and cfg.repeat_threshold == "auto":
        print(reason)
    return replace(cfg, repeat_threshold=threshold)


def _describe_run(
    cfg: TrainConfig, train: DataLoader, valid: DataLoader, device: torch.device, info: DistInfo
) -> str:
    """The line a training run starts with: model, images, size, batch, lr, device."""
    processes = f", {info.world_size} processes" if info.enabled else ""
    return (
        f"training {cfg.model_name} on {len(train.dataset)} images, validating on "
        f"{len(valid.dataset)} ({cfg.size} px, batch {cfg.batch_size}, lr {cfg.lr}, "
        f"device {device}{processes}){_repeats(cfg, train)}"
    )


def _repeats(cfg: TrainConfig, train: DataLoader) -> str:
    """What repeat factor sampling adds to an epoch (empty without it)."""
    if cfg.repeat_threshold is None:
        return ""
    return (
        f"; repeat factor sampling (threshold {cfg.repeat_threshold:g}) shows about "
        f"{len(train.sampler)} images an epoch"
    )


def train_from_folder(
    data_dir: str | os.PathLike,
    annotations_csv: str | os.PathLike,
    out_dir: str | os.PathLike,
    config: TrainConfig | None = None,
    *,
    resume: bool = False,
    overwrite: bool = False,
    max_minutes: float | None = None,
    verbose: bool = True,
    **settings: Any,
) -> FitResult:
    """Train a detector on a preprocessed folder: what ``python -m cxrkit train`` runs.

    ``data_dir`` is the output of :func:`cxrkit.preprocess.preprocess_dicoms`
    (``train/*.png`` and ``train_meta.csv``); ``annotations_csv`` is the raw
    ``train.csv`` (fused here with :func:`cxrkit.annotations.fuse_boxes` when an
    image has several radiologists) or a fused table, in original pixels. The
    images are split into train/valid (stratified, ``valid_fraction``), and
    :func:`cxrkit.fit.fit` writes ``last.pt``, ``best.pt`` and ``history.csv`` into
    ``out_dir``, beside ``split.csv`` (which images validate). With ``folds=K,
    fold=F`` fold F of a stratified k-fold split (:func:`cxrkit.data.fold_split`)
    validates instead, and the run also writes ``oof.csv``, its out-of-fold
    predictions from ``best.pt`` (:func:`write_out_of_fold`).

    The settings are a :class:`TrainConfig` (``config``), changed by keyword
    (``settings``: ``model_name=``, ``epochs=``, ``lr=``, ``size=``...). ``resume=True``
    continues ``out_dir/last.pt`` and raises :class:`ResumeError` if the settings or
    the split differ from the run's. A folder that already holds a run is refused
    (:class:`OverwriteError`) unless ``resume=True`` or ``overwrite=True`` (which
    replaces it), and so is a folder another training is writing (its lock file names
    the pid).

    Without ``epochs`` the run plans them from its time budget (``minutes``, default
    by device: :data:`cxrkit.config.DEFAULT_MINUTES`): it times its first steps on a
    copy of the model and sizes the schedule to the epochs that fit
    (:mod:`cxrkit.budget`); a resume finishes the saved plan. With ``epochs``,
    ``minutes`` (or ``max_minutes``, its older name) stops the run before an epoch
    that would end later. ``size="auto"`` (cxr_small's default) and
    ``repeat_threshold="auto"`` (the default) are decided from the training boxes;
    each choice is printed with its reason.

    Under ``torchrun`` (RANK/WORLD_SIZE set) it trains with DistributedDataParallel:
    each process sees a different shard of the images (``DistributedSampler``),
    rank 0 alone validates and writes files.
    ``verbose=False`` prints nothing but warnings and progress bars: the run's log
    goes to ``out_dir/train.log`` (a notebook training several folds prints its own
    line per fold).
    """
    with printed_to_file(Path(out_dir) / "train.log", enabled=not verbose):
        t_start = time.monotonic()
        cfg = replace(config or TrainConfig(), **settings)
        if cfg.minutes is None and max_minutes is not None:  # the older name of minutes=
            cfg = replace(cfg, minutes=max_minutes)
        out = Path(out_dir)
        info = setup_distributed()
        try:
            cfg = resolve(cfg, show=info.is_main)
            auto_size = cfg.size == "auto"
            device = try_gpu(info.local_rank)
            with run_folder_lock(out, info, device):
                prepare_run_folder(out, resume, overwrite, info)
                seed_everything(cfg.seed)
                data = Path(data_dir)
                image_dir, meta = read_folder(data)
                table = read_training_table(annotations_csv, meta)
                split = run_split(table, cfg)
                check_images_exist(image_dir, [*split[0], *split[1]])  # before the first step
                train_table = table[table["image_id"].astype(str).isin(set(map(str, split[0])))]
                cfg, anchors = _fit_to_boxes(cfg, train_table, meta, auto_size, info.is_main)
                cfg = _choose_sampling(cfg, train_table, info, info.is_main)
                last = out / "last.pt"
                resume_from = last if resume and last.is_file() else None
                cfg = replace(cfg, epochs=planned_epochs(cfg.epochs, resume_from, info.is_main))
                settings = {**asdict(cfg), "annotations_digest": table_digest(table)}
                if resume:  # the settings first: a new seed is named, not the split it changes
                    check_resume_settings(out, "detector", settings, cfg.epochs)
                keep_split(out / "split.csv", *split, resume, info.is_main)
                train_loader, valid_loader = make_loaders(table, meta, image_dir, split, cfg, info)
                model = _build_for_training(cfg, device, anchors, resume_from)
                minutes = cfg.minutes
                if cfg.epochs is None:  # plan the epochs that fit the budget, measured here
                    minutes, epochs, reason = plan_from_budget(
                        model, train_loader, valid_loader, device, cfg.minutes, t_start,
                        get_spec(cfg.model_name).max_epochs, use_amp=cfg.amp is not False,
                    )  # fmt: skip
                    if info.is_main:
                        print(reason)
                    cfg = replace(cfg, epochs=epochs)
                    settings["epochs"] = epochs
                model = _wrap_for_processes(model, device, info)
                if info.is_main:
                    print(_describe_run(cfg, train_loader, valid_loader, device, info))
                optimizer = make_optimizer(model, cfg.lr, cfg.momentum, cfg.weight_decay)
                scheduler = make_scheduler(
                    optimizer, cfg.schedule, cfg.epochs, cfg.step_size, cfg.gamma
                )
                run = {
                    "data_dir": str(data.resolve()),
                    "annotations_csv": str(Path(annotations_csv).resolve()),
                }
                elapsed = (time.monotonic() - t_start) / 60
                budget = None if minutes is None else max(0.0, minutes - elapsed)
                config = {**settings, **run, "world_size": info.world_size}  # saved whole
                result = fit_run(
                    model, train_loader, valid_loader, out, device, optimizer, scheduler, config,
                    resume=resume, max_minutes=budget,
                )  # fmt: skip
                if cfg.folds is not None and info.is_main and result.best.is_file():
                    write_out_of_fold(
                        result.best, image_dir, meta, split[1], out / "oof.csv", device
                    )
                return result
        finally:
            cleanup_distributed(info)
