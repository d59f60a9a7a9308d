"""Epochs, checkpoints and an exact resume around the loops (notebook 04, sections 3-5).

:func:`fit` trains any model the same way; a :class:`Task` says what differs:

* how a batch becomes losses (``batch_losses``, summed and minimised by
  :func:`cxrkit.engine.train_one_epoch`, the one training step);
* how the model is scored on the validation images (``validate``, higher is better),
  and that score's name (``metric``: the ``val_<metric>`` column of ``history.csv``,
  the ``best_<metric>`` of the checkpoints).

The detector's task (:func:`detection_task`, the default) scores mAP@0.4; the
classifier's (:func:`cxrkit.classifier.classification_task`) the AUC. ``fit`` takes
an optimizer and scheduler built by the caller (:func:`make_optimizer`,
:func:`make_scheduler`: the seed's SGD recipe) and writes ``last.pt``, ``best.pt``
and ``history.csv``. A resume must be the same run: its saved ``config`` is
compared field by field.
"""

from __future__ import annotations

import math
import os
import random
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import torch
from torch import nn

from cxrkit._atomic import write_csv_atomic
from cxrkit.checkpoints import load_checkpoint, require_kind, save_checkpoint, schedule_settings
from cxrkit.distributed import any_rank, barrier, broadcast_flag, dist_info, unwrap
from cxrkit.engine import LossFn, detector_losses, evaluate, train_one_epoch
from cxrkit.errors import ConfigError, NonFiniteLossError, ResumeError
from cxrkit.models import check_state_matches
from cxrkit.paths import display_path
from cxrkit.transforms import reseed

# Settings a resumed run may change: paths (folders get moved), the number of
# epochs (StepLR continues; a cosine schedule is checked through T_max instead), the
# initial weights (last.pt replaces them) and the loader's worker count.
FREE_SETTINGS = frozenset(
    {"epochs", "minutes", "data_dir", "annotations_csv", "weights", "num_workers", "world_size"}
)


# --------------------------------------------------------------------------- task
@dataclass(frozen=True)
class Task:
    """What :func:`fit` needs to know about the kind of model it trains.

    Attributes:
        batch_losses: ``(model, batch, device) -> {name: loss}`` for one batch
            ``(inputs, targets, image_ids)``; the sum of the losses is minimised.
        validate: ``(model, valid_loader, device) -> score`` on the validation
            images; the epoch with the highest score is ``best.pt``.
        metric: the score's short name: ``"map"``, ``"auc"``. The history column
            is ``val_<metric>``, the checkpoints' key ``best_<metric>``.
        metric_label: how the score is printed: ``"mAP@0.4"``, ``"AUC"``.
    """

    batch_losses: LossFn
    validate: Callable[[nn.Module, Iterable, torch.device], float]
    metric: str
    metric_label: str

    @property
    def history_column(self) -> str:
        """The column of ``history.csv`` with each epoch's validation score."""
        return f"val_{self.metric}"

    @property
    def best_key(self) -> str:
        """The checkpoints' key of the best validation score so far."""
        return f"best_{self.metric}"


def detection_task(
    valid_truth: pd.DataFrame | None = None,
    valid_meta: pd.DataFrame | Mapping | None = None,
    iou_thr: float = 0.4,
) -> Task:
    """The detector's task: torchvision's loss dict, validated by mAP@``iou_thr``.

    Args:
        valid_truth: the validation images' boxes (train.csv columns, original pixels).
        valid_meta: their meta table (``dim0``, ``dim1``: boxes go back to original pixels).
        iou_thr: the IoU at which a box counts as found (0.4: the competition's).
    """

    def validate(model: nn.Module, loader: Iterable, device: torch.device) -> float:
        truth, meta = _truth_and_meta(loader, valid_truth, valid_meta)
        return float(evaluate(model, loader, device, truth, meta, iou_thr=iou_thr)["map"])

    label = "mAP@0.4" if iou_thr == 0.4 else f"mAP@{iou_thr:g}"
    return Task(detector_losses, validate, metric="map", metric_label=label)


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
        raise ConfigError(
            "fit needs the validation truth (train.csv columns, original pixels) and the meta "
            "table: pass valid_truth= and valid_meta=, or use a cxrkit.data.XrayDataset"
        )
    return truth, meta


# ------------------------------------------------------------------------- result
@dataclass
class FitResult:
    """What :func:`fit` did: where the files are and the best validation score.

    ``best_score`` is the task's metric (``metric``), also readable by its name:
    ``best_map`` for a detector, ``best_auc`` for a classifier.
    """

    out_dir: Path
    epochs_done: int
    best_score: float | None
    best_epoch: int | None
    history: pd.DataFrame = field(repr=False)
    stopped_early: bool = False
    metric: str = "map"
    metric_label: str = "mAP@0.4"

    @property
    def last(self) -> Path:
        return self.out_dir / "last.pt"

    @property
    def best(self) -> Path:
        return self.out_dir / "best.pt"

    @property
    def best_map(self) -> float | None:
        """The best validation mAP of a detector run."""
        return self._best("map")

    @property
    def best_auc(self) -> float | None:
        """The best validation AUC of a classifier run."""
        return self._best("auc")

    def _best(self, metric: str) -> float | None:
        if self.metric != metric:
            raise AttributeError(
                f"this run was validated by {self.metric!r}, not {metric!r}: use best_score"
            )
        return self.best_score

    def __str__(self) -> str:
        best = (
            "n/a" if self.best_score is None else f"{self.best_score:.4f} (epoch {self.best_epoch})"
        )
        stop = " (stopped by the time limit)" if self.stopped_early else ""
        return (
            f"trained {self.epochs_done} epoch(s){stop}; best validation {self.metric_label} "
            f"{best}; files in {display_path(self.out_dir)}"
        )


# ------------------------------------------------------------------------ seeding
def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """The seed of one epoch: a pure function of (seed, epoch, rank)."""
    return (seed * 1_000_003 + epoch * 7919 + rank * 104_729) % 2**31


def seed_epoch(loader: Any, seed: int, epoch: int) -> None:
    """Make everything random in epoch ``epoch`` depend on ``(seed, epoch)`` only.

    This makes ``resume`` exact without replaying random numbers: the Python, NumPy
    and torch global RNGs (RPN/ROI sampling), the loader's shuffling (its
    ``generator``; ``DistributedSampler.set_epoch`` under DDP) and the dataset's
    albumentations pipeline (workers reseed via :func:`cxrkit.data.worker_init_fn`).
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
        reseed(transforms, s)


# ------------------------------------------------------------ optimizer and schedule
def make_optimizer(
    model: nn.Module, lr: float = 0.005, momentum: float = 0.9, weight_decay: float = 0.0005
) -> torch.optim.SGD:
    """The seed notebook's optimizer: SGD with momentum over the trainable parameters."""
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)


def make_scheduler(
    optimizer: torch.optim.Optimizer,
    schedule: str = "step",
    epochs: int = 1,
    step_size: int = 3,
    gamma: float = 0.1,
) -> torch.optim.lr_scheduler.LRScheduler:
    """The per-epoch schedule: ``"step"`` (StepLR, the seed's) or ``"cosine"`` (to 0 at ``epochs``).

    The warmup is per iteration and lives in the loop
    (``fit(..., warmup_iters=N)``, :class:`cxrkit.engine.LinearWarmup`).
    """
    if schedule == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=step_size, gamma=gamma)
    if schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, epochs))
    raise ConfigError(f"schedule must be 'step' or 'cosine', got {schedule!r}")


# ------------------------------------------------------------------------- resume
def _same(a: Any, b: Any) -> bool:
    numbers = (int, float)
    if isinstance(a, numbers) and isinstance(b, numbers) and not isinstance(a, bool):
        return math.isclose(float(a), float(b), rel_tol=1e-9)
    return a == b


def _cosine_problem(planned: int, epochs: int) -> str:
    change = "rise again" if epochs > planned else "stop before reaching 0"
    return (
        f"epochs: the cosine schedule was planned for {planned} epochs and brings the rate to "
        f"0 there; with epochs={epochs} it would {change} (resume with epochs={planned})"
    )


def resume_problems(saved: Mapping[str, Any], now: Mapping[str, Any], epochs: int) -> list[str]:
    """Every setting in which this call differs from the saved run (one line each).

    Compares the keys both dicts have, except :data:`FREE_SETTINGS`. The optimizer and
    scheduler states a resume loads would otherwise silently put back the old rate
    and schedule, so the run would not be the one asked for.
    """
    problems = []
    for key, new in now.items():
        if key in FREE_SETTINGS or key not in saved or _same(saved[key], new):
            continue
        if key == "T_max":
            if saved.get("schedule") == now.get("schedule") == "cosine":
                problems.append(_cosine_problem(int(saved[key]), epochs))
            continue
        why = SPLIT_SETTINGS.get(key, "")
        problems.append(f"{key}: the run used {saved[key]!r}, this call asks for {new!r}{why}")
    return problems


# Why a different seed or validation fraction cannot resume: they choose the split.
SPLIT_SETTINGS = {
    "seed": " (the seed chooses the train/valid split and every random draw)",
    "valid_fraction": " (the validation fraction sets the train/valid split)",
    "folds": " (the number of folds sets the train/valid split)",
    "fold": " (the fold chooses the validation images)",
    "annotations_digest": " (the annotation table's boxes or images changed: the run would "
    "go on training on other boxes)",
}


def refuse_other_settings(
    path: Path, saved: Mapping[str, Any], now: Mapping[str, Any], epochs: int
) -> None:
    """Raise one :class:`ResumeError` listing every setting (:func:`resume_problems`)
    in which this call differs from the run saved in ``path``."""
    problems = resume_problems(saved, now, epochs)
    if problems:
        raise ResumeError(
            f"cannot resume {path} with other settings: "
            + "; ".join(problems)
            + ". Use the run's settings, or another output folder for a new run."
        )


@dataclass
class _RunState:
    """Where a run stands: epochs done, best validation score so far, history rows."""

    epochs_done: int = 0
    best_score: float | None = None
    best_epoch: int | None = None
    history: list[dict[str, Any]] = field(default_factory=list)


class _Parts(NamedTuple):
    """What a checkpoint saves and a resume restores, besides the epoch."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler | None


def _load_weights(model: nn.Module, ckpt: Mapping[str, Any], path: Path) -> None:
    """Put a checkpoint's weights into ``model``: the same kind of model (detector or
    classifier, :class:`cxrkit.errors.CheckpointError`) and every tensor shape checked first."""
    bare = unwrap(model)
    config = getattr(bare, "cxrkit_config", None) or {}
    require_kind(ckpt, config.get("kind", "detector"), path)
    check_state_matches(bare, ckpt["model"], path, repr(config.get("name", type(bare).__name__)))
    bare.load_state_dict(ckpt["model"])


def _resume(
    out: Path,
    parts: _Parts,
    settings: Mapping[str, Any],
    task: Task,
    device: torch.device,
) -> _RunState:
    """Load ``out/last.pt`` into the model, optimizer, scheduler and scaler, after
    checking that this call's settings are the run's (:class:`ResumeError`)."""
    last_path = out / "last.pt"
    info = dist_info()
    if not last_path.is_file():
        if info.is_main:
            print(f"resume: no last.pt in {out.name} yet, starting from epoch 1")
        return _RunState()
    ckpt = load_checkpoint(last_path, map_location=device)
    refuse_other_settings(last_path, ckpt.get("config") or {}, settings, settings["epochs"])
    model, optimizer, scheduler, scaler = parts
    _load_weights(model, ckpt, last_path)
    if ckpt.get("optimizer") is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
    if ckpt.get("scheduler") is not None:
        scheduler.load_state_dict(ckpt["scheduler"])
    if scaler is not None and ckpt.get("scaler") is not None:
        scaler.load_state_dict(ckpt["scaler"])
    done = int(ckpt.get("epoch", 0))
    state = _RunState(done, ckpt.get(task.best_key), ckpt.get("best_epoch"))
    if (out / "history.csv").is_file():
        old = pd.read_csv(out / "history.csv")
        state.history = old[old["epoch"] <= state.epochs_done].to_dict("records")
    if info.is_main:
        print(f"resuming from last.pt in {out.name} after epoch {state.epochs_done}")
    return state


def _improves(score: float, best: float | None) -> bool:
    """Whether a validation score beats the best so far (a NaN score, e.g. the AUC of
    a validation set with one class, only beats no score at all)."""
    return best is None or (math.isfinite(score) and score > best)


def _save_epoch(
    out: Path,
    parts: _Parts,
    state: _RunState,
    settings: Mapping[str, Any],
    task: Task,
    validated: bool,
) -> None:
    """Update the best score; write ``last.pt``, ``best.pt`` (if it improved, or always
    without validation) and ``history.csv`` (atomically); print the epoch's line."""
    row = state.history[-1]
    score = row[task.history_column]
    improved = not validated or _improves(score, state.best_score)
    if improved and validated:
        state.best_score = score if math.isfinite(score) else None
        state.best_epoch = row["epoch"]
    extra: dict[str, Any] = {
        task.best_key: state.best_score,
        "best_epoch": state.best_epoch,
        "history_rows": len(state.history),
        "config": dict(settings),
    }
    model, optimizer, scheduler, scaler = parts
    if scaler is not None:
        extra["scaler"] = scaler.state_dict()
    epoch = state.epochs_done
    save_checkpoint(out / "last.pt", model, optimizer, scheduler, epoch, **extra)
    if improved:
        save_checkpoint(out / "best.pt", model, optimizer, scheduler, epoch, **extra)
    write_csv_atomic(pd.DataFrame(state.history), out / "history.csv")
    val = f" val {task.metric_label} {score:.4f}" if validated else ""
    epochs, seconds = settings["epochs"], row["seconds"]
    print(f"epoch {epoch}/{epochs} loss {row['loss']:.4f}{val} ({seconds:.0f} s)", flush=True)


def _stop_if_weights_not_finite(model: nn.Module, epoch: int, device: torch.device) -> None:
    """Raise :class:`NonFiniteLossError` if the epoch's last update left a weight NaN or
    infinite (its loss was still finite, the next one would not be): nothing of this
    epoch is saved, so ``last.pt`` and ``best.pt`` keep finite weights. Under DDP every
    rank raises if any rank's weights (or BatchNorm statistics) are not finite."""
    state = unwrap(model).state_dict()
    tensors = [t for t in state.values() if t.is_floating_point()]
    finite = bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all())
    if not any_rank(not finite, device):
        return
    bad = [name for name, t in state.items() if t.is_floating_point() and not t.isfinite().all()]
    where = f"{len(bad)} tensor(s), e.g. {bad[:3]}" if bad else "on another rank"
    raise NonFiniteLossError(
        f"the weights are not finite after epoch {epoch} ({where}): the training diverged, "
        "and this epoch is not saved. Lower the learning rate, add warmup or clip the "
        "gradients (max_grad_norm)"
    )


def _out_of_time(
    start: float,
    epoch_times: list[float],
    max_minutes: float | None,
    device: torch.device,
    epoch: int,
) -> bool:
    """Rank 0's guess: would epoch ``epoch + 1`` end after ``max_minutes``? Shared with all."""
    if max_minutes is None:
        return False
    guess = float(np.mean(epoch_times)) if epoch_times else 0.0
    stop = broadcast_flag(time.monotonic() - start + guess > max_minutes * 60, device)
    if stop and dist_info().is_main:
        print(
            f"time limit: stopping before epoch {epoch + 1}, which would not end within the "
            f"training's limit of {max_minutes:.2f} min"
        )
    return stop


def _default_task(
    valid_loader: Iterable | None,
    valid_truth: pd.DataFrame | None,
    valid_meta: pd.DataFrame | Mapping | None,
) -> Task:
    """The detection task, its truth and meta read (before any training) from the
    validation loader's XrayDataset unless given (:class:`ConfigError` if neither)."""
    if valid_loader is not None:
        valid_truth, valid_meta = _truth_and_meta(valid_loader, valid_truth, valid_meta)
    return detection_task(valid_truth, valid_meta)


def _run_settings(
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    loop: Mapping[str, Any],
    config: Mapping[str, Any] | None,
    epochs: int,
) -> dict[str, Any]:
    """The run's settings, saved in each checkpoint and compared by a resume: the
    optimizer's and scheduler's (rate, momentum, schedule), the loop's (seed, warmup,
    clipping) and the caller's ``config``."""
    return {
        **schedule_settings(optimizer.state_dict(), scheduler.state_dict()),
        **loop,
        **dict(config or {}),
        "epochs": epochs,
    }


# ---------------------------------------------------------------------------- fit
def fit(
    model: nn.Module,
    train_loader: Iterable,
    valid_loader: Iterable | None,
    out_dir: str | os.PathLike,
    epochs: int,
    device: torch.device,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    *,
    task: Task | None = None,
    resume: bool = False,
    seed: int = 42,
    warmup_iters: int = 0,
    max_grad_norm: float | None = None,
    valid_truth: pd.DataFrame | None = None,
    valid_meta: pd.DataFrame | Mapping | None = None,
    max_minutes: float | None = None,
    amp: bool | None = None,
    print_freq: int = 0,
    config: Mapping[str, Any] | None = None,
) -> FitResult:
    """Train for ``epochs`` epochs with checkpoints, validation and exact resume.

    ``task`` says how a batch becomes losses and how the model is validated
    (:class:`Task`; default: a detector validated by mAP@0.4, whose truth and meta
    are ``valid_truth`` and ``valid_meta`` or read from an XrayDataset).
    ``optimizer`` and ``scheduler`` (stepped once per epoch) come from the caller
    (:func:`make_optimizer`, :func:`make_scheduler`: the seed's recipe);
    ``warmup_iters`` warms up epoch 1, ``max_grad_norm`` clips gradients. Each epoch
    writes ``last.pt``, a row of ``history.csv`` and, when the validation score
    improves (always without ``valid_loader``), ``best.pt``, atomically.

    ``resume=True`` continues from ``last.pt``. The run's settings (rate, momentum,
    schedule, seed, warmup, clipping, plus ``config``, e.g. ``asdict(TrainConfig)``)
    are saved as one dict; a resume that differs raises :class:`ResumeError` naming
    each difference. With each epoch seeded from ``(seed, epoch)``, an interrupted
    and resumed run ends with the same weights as an uninterrupted one on CPU.
    ``max_minutes`` stops before an epoch that would overrun it; ``amp`` (default: on
    for CUDA) uses mixed precision. A NaN or infinite loss stops the run with
    :class:`cxrkit.errors.NonFiniteLossError` before it is saved. Under DDP rank 0
    alone validates and writes.
    """
    start_time, info, out = time.monotonic(), dist_info(), Path(out_dir)
    if task is not None and (valid_truth is not None or valid_meta is not None):
        raise ConfigError("valid_truth= and valid_meta= are the detection task's: pass one task=")
    task = task or _default_task(valid_loader, valid_truth, valid_meta)
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
    loop = {"seed": seed, "warmup_iters": warmup_iters, "max_grad_norm": max_grad_norm}
    settings = _run_settings(optimizer, scheduler, loop, config, epochs)
    use_amp = device.type == "cuda" and (amp is None or amp)
    parts = _Parts(model, optimizer, scheduler, torch.amp.GradScaler("cuda") if use_amp else None)
    state = _resume(out, parts, settings, task, device) if resume else _RunState()
    stopped_early, epoch_times = False, []
    for epoch in range(state.epochs_done, epochs):
        if _out_of_time(start_time, epoch_times, max_minutes, device, epoch):
            stopped_early = True
            break
        t0 = time.monotonic()
        seed_epoch(train_loader, seed, epoch)
        lr_now = optimizer.param_groups[0]["lr"]
        losses = train_one_epoch(
            model, optimizer, train_loader, device, epoch + 1, scaler=parts.scaler,
            print_freq=print_freq, warmup_iters=warmup_iters if epoch == 0 else 0,
            max_grad_norm=max_grad_norm, batch_losses=task.batch_losses,
        )  # fmt: skip
        _stop_if_weights_not_finite(model, epoch + 1, device)
        scheduler.step()
        score = float("nan")
        if valid_loader is not None and info.is_main:
            score = task.validate(model, valid_loader, device)
        seconds = time.monotonic() - t0
        epoch_times.append(seconds)
        row = {"epoch": epoch + 1, **losses, "lr": lr_now, task.history_column: score}
        state.history.append({**row, "seconds": seconds})
        state.epochs_done = epoch + 1
        if info.is_main:
            _save_epoch(out, parts, state, settings, task, validated=valid_loader is not None)
        barrier()
    done = state.history[-1]["epoch"] if state.history else state.epochs_done
    history = pd.DataFrame(state.history)
    return FitResult(
        out, int(done), state.best_score, state.best_epoch, history, stopped_early,
        task.metric, task.metric_label,
    )  # fmt: skip


def fit_run(
    model: nn.Module,
    train_loader: Iterable,
    valid_loader: Iterable | None,
    out_dir: str | os.PathLike,
    device: torch.device,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    config: Mapping[str, Any],
    *,
    task: Task | None = None,
    resume: bool = False,
    max_minutes: float | None = None,
) -> FitResult:
    """:func:`fit` with a run's resolved config passed whole: ``epochs``, ``seed``,
    ``warmup_iters``, ``max_grad_norm`` and ``amp`` are read from it, and it is saved
    whole in every checkpoint (what ``train`` and ``train-classifier`` run).

    Args:
        config: ``asdict`` of a resolved :class:`cxrkit.config.TrainConfig` or
            :class:`~cxrkit.config.ClassifierConfig`, plus what the run adds (paths,
            the table's digest).
        task, resume, max_minutes: as in :func:`fit`.
    """
    return fit(
        model, train_loader, valid_loader, out_dir, int(config["epochs"]), device, optimizer,
        scheduler, task=task, resume=resume, seed=int(config["seed"]),
        warmup_iters=int(config.get("warmup_iters") or 0),
        max_grad_norm=config.get("max_grad_norm"), amp=config.get("amp"),
        max_minutes=max_minutes, config=config,
    )  # fmt: skip
