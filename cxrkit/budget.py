"""A run's time budget: how many epochs fit into the minutes a user gives a run.

A user judges ``python -m cxrkit train`` by what it gives in the time they give
it, not by its epoch count. So when no ``epochs`` are set, a run measures what an
epoch costs on this machine (:func:`measure_epoch`: a few training steps and a
few validation batches, timed on a copy of the model before training starts) and
plans as many epochs as fit the budget (:func:`plan_epochs`). The schedule is then
built for exactly those epochs: a cosine schedule reaches 0 at the last epoch
instead of being cut off by a time limit. The budget's default depends on the
device (:data:`cxrkit.config.DEFAULT_MINUTES`); the planned epochs are saved with the run, so a
resume finishes the same plan.

>>> plan_epochs(10, 30.0, EpochCost(2.0, 40, 1.0, 8, 0.5), max_epochs=60)[0]
6
"""

from __future__ import annotations

import copy
import io
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from cxrkit.config import DEFAULT_MINUTES
from cxrkit.distributed import broadcast_int
from cxrkit.engine import LossFn, detector_losses, time_predicting_batches, time_training_steps
from cxrkit.models import build_model
from cxrkit.utils import try_gpu

PLAN_SHARE = 0.95  # plan within this share of the time left: measurements are noisy
PROBE_STEPS = 6  # training steps timed (after one untimed step; a short loader is re-read)
COST_STEPS = 3  # training steps timed for a cost estimate (after one untimed step)
PROBE_VALID_BATCHES = 2  # validation batches timed (after one untimed batch)


def budget_minutes(minutes: float | None, device: torch.device) -> tuple[float, str]:
    """The run's budget: ``minutes`` if given, else the device's default; and why."""
    if minutes is not None:
        return float(minutes), f"the {minutes:g}-minute budget asked for"
    kind = "cuda" if device.type == "cuda" else "cpu"
    default = DEFAULT_MINUTES[kind]
    return default, f"the default budget on a {kind.upper()} of {default:g} minutes (--minutes)"


@dataclass(frozen=True)
class EpochCost:
    """What one epoch costs, measured on the first steps of a run.

    Args:
        step_s: seconds per training step (forward, backward, optimizer step).
        steps: training steps per epoch.
        valid_batch_s: seconds per validation batch (prediction).
        valid_batches: validation batches per epoch.
        save_s: seconds to write an epoch's checkpoints.
    """

    step_s: float
    steps: int
    valid_batch_s: float
    valid_batches: int
    save_s: float

    @property
    def seconds(self) -> float:
        """Seconds of one epoch: training, validation and checkpoints."""
        return self.step_s * self.steps + self.valid_batch_s * self.valid_batches + self.save_s

    def describe(self) -> str:
        """One phrase: the epoch's seconds and what they are made of."""
        return (
            f"an epoch takes about {self.seconds:.1f} s here ({self.steps} steps of "
            f"{self.step_s:.2f} s, {self.valid_batches} validation batches of "
            f"{self.valid_batch_s:.2f} s, measured on the first steps)"
        )


def measure_epoch(
    model: nn.Module,
    train_loader: Iterable,
    valid_loader: Iterable | None,
    device: torch.device,
    *,
    batch_losses: LossFn = detector_losses,
    use_amp: bool = False,
) -> EpochCost:
    """Time a few training steps and validation batches of a copy of ``model``.

    The copy leaves the run's initial weights untouched, and each epoch of
    :func:`cxrkit.fit.fit` reseeds every random number generator, so measuring
    first changes nothing in the run that follows.
    """
    probe = copy.deepcopy(model).to(device)
    steps = len(train_loader) if hasattr(train_loader, "__len__") else PROBE_STEPS + 1
    step_s, _ = time_training_steps(
        probe, train_loader, device, PROBE_STEPS, batch_losses=batch_losses, use_amp=use_amp
    )
    valid_s, valid_batches = 0.0, 0
    if valid_loader is not None:
        valid_batches = len(valid_loader) if hasattr(valid_loader, "__len__") else 1
        valid_s, _ = time_predicting_batches(probe, valid_loader, device, PROBE_VALID_BATCHES)
    save_s = _time_saving(probe)
    del probe
    return EpochCost(step_s, int(steps), valid_s, int(valid_batches), save_s)


def _time_saving(model: nn.Module) -> float:
    """Seconds to serialize the weights twice with momentum (``last.pt`` and ``best.pt``)."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    start = time.perf_counter()
    torch.save({"model": state, "momentum": state}, io.BytesIO())
    return 2 * (time.perf_counter() - start)


def plan_epochs(
    minutes: float, elapsed_s: float, cost: EpochCost, max_epochs: int
) -> tuple[int, str]:
    """The epochs that fit into ``minutes`` when ``elapsed_s`` are spent already; and why.

    At least one epoch (a run that ends without a checkpoint helps nobody) and at
    most ``max_epochs`` (the model's ceiling, :class:`cxrkit.registry.ModelSpec`).
    """
    left = minutes * 60 - elapsed_s
    fit = math.floor(PLAN_SHARE * left / cost.seconds) if cost.seconds > 0 else max_epochs
    epochs = min(max(fit, 1), max_epochs)
    if fit < 1:
        why = (
            f"one epoch needs about {cost.seconds / 60:.1f} min, more than the "
            f"{max(left, 0) / 60:.1f} min left of the budget: training one epoch anyway"
        )
    elif fit > max_epochs:
        why = f"{fit} would fit; capped at the model's max_epochs {max_epochs} (cxrkit.registry)"
    else:
        why = f"{epochs} fit into {PLAN_SHARE:.0%} of the {left / 60:.1f} min left"
    return epochs, f"epochs {epochs}: {cost.describe()}; {why}"


def plan_from_budget(
    model: nn.Module,
    train_loader: Iterable,
    valid_loader: Iterable | None,
    device: torch.device,
    minutes: float | None,
    started: float,
    max_epochs: int,
    *,
    batch_losses: LossFn = detector_losses,
    use_amp: bool = False,
) -> tuple[float, int, str]:
    """A run's budget (``minutes`` or the device's default) and the epochs that fit it.

    Args:
        started: ``time.monotonic()`` when the run started (reading the data counts).
        max_epochs: the model's ceiling.
        batch_losses, use_amp: how a training step runs (:func:`measure_epoch`).

    Returns the budget's minutes, the epochs (rank 0's under torchrun) and the
    line to print.
    """
    budget, why_budget = budget_minutes(minutes, device)
    cost = measure_epoch(
        model, train_loader, valid_loader, device, batch_losses=batch_losses, use_amp=use_amp
    )
    epochs, reason = plan_epochs(budget, time.monotonic() - started, cost, max_epochs)
    return budget, broadcast_int(epochs, device), f"{reason} ({why_budget})"


def _device_name(device: torch.device) -> str:
    """The card's name, or ``"this CPU (N threads)"``."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"this CPU ({torch.get_num_threads()} threads)"


def training_cost(
    model_name: str,
    size: int,
    batch_size: int,
    image_passes: int,
    device: torch.device | str | None = None,
    *,
    what: str = "training",
) -> str:
    """One line: what ``image_passes`` (epochs x training images) of ``model_name`` cost
    here, from :data:`COST_STEPS` training steps measured now on random images.

    Notebooks print it before they train, so a learner on a Kaggle card (or a laptop)
    reads the cost of the run before paying it. The model is built and stepped inside
    :func:`torch.random.fork_rng`: the notebook's random numbers are left as they were.
    Validation, reading the PNGs and the first steps' warm-up add to the estimate.
    """
    device = torch.device(device) if device is not None else try_gpu()
    use_amp = device.type == "cuda"
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(0)
        model = build_model(model_name, weights=None, size=size).to(device)
        images = [torch.rand(3, size, size) for _ in range(batch_size)]
        box = torch.tensor([[size * 0.25, size * 0.25, size * 0.6, size * 0.7]])
        targets = [{"boxes": box, "labels": torch.tensor([1])} for _ in range(batch_size)]
        batches = [(images, targets, list(range(batch_size)))] * (COST_STEPS + 1)
        step_s, _ = time_training_steps(model, batches, device, COST_STEPS, use_amp=use_amp)
    steps = math.ceil(image_passes / batch_size)
    minutes = steps * step_s / 60
    return (
        f"{what}: {image_passes} image passes = {steps} steps of {batch_size} images at "
        f"{size} px, about {minutes:.0f} min on {_device_name(device)} "
        f"({step_s:.2f} s a step of {model_name}{', AMP' if use_amp else ''}, measured now; "
        "validation and reading the images add to it)"
    )
