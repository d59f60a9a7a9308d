"""Training profiles: one place that picks the model and schedule for the machine at hand.

Notebooks 04-06 and ``python -m cxrkit train --profile NAME`` start from a
:class:`Profile` instead of fixed constants:

- ``cpu``: the notebook model, ``cxr_small`` at 256 px for 10 epochs, batch 4,
  trained from scratch: minutes on a laptop CPU (the committed notebook outputs).
- ``gpu``: the seed notebook's ``fasterrcnn_resnet50_fpn`` at 512 px (the model is
  built for 512 px: no upsampling to torchvision's 800 inside it) with mixed
  precision (AMP), a batch size from the GPU's memory and COCO weights: a local
  ``.pth`` file (``CXRKIT_WEIGHTS``, torch's cache, or a Kaggle dataset) or a
  download when online; without either it trains from scratch and says so.

:func:`choose_profile` picks ``gpu`` when CUDA is available, else ``cpu``, and
prints its choice with the reason. :meth:`cxrkit.config.TrainConfig.from_profile`
turns a profile into a run's settings (explicit settings still win).
"""

from __future__ import annotations

import math
import os
import socket
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from cxrkit.errors import ConfigError
from cxrkit.registry import get_spec
from cxrkit.utils import cuda_problem

KAGGLE_INPUT = Path("/kaggle/input")  # where Kaggle mounts attached datasets
PROFILE_NAMES: tuple[str, ...] = ("cpu", "gpu")
GPU_MODEL = "fasterrcnn_resnet50_fpn"  # the seed notebook's detector
CPU_MODEL = "cxr_small"  # trains from scratch in minutes on a laptop CPU
WEIGHTS_ENV = "CXRKIT_WEIGHTS"  # path of a local COCO .pth file
PROFILE_ENV = "CXRKIT_PROFILE"  # "cpu" or "gpu": the profile a notebook's choose_profile() takes
SMOKE_ENV = "CXRKIT_SMOKE"  # "1": the profile at a tiny scale, so tests run GPU models on a CPU
# What the smoke scale shrinks: image size, epochs and batch of detector and classifier.
SMOKE_SIZE, SMOKE_EPOCHS, SMOKE_BATCH = 64, 1, 2
CPU_CLASSIFIER = ("cls_small", 128, 8)  # notebook 07's classifier on a CPU: name, px, epochs
GPU_CLASSIFIER = ("efficientnet_b0", 512, 10)  # and on a GPU, with ImageNet weights
# The settings a profile fixes, named as TrainConfig's fields.
PROFILE_FIELDS: tuple[str, ...] = (
    "model_name", "size", "epochs", "batch_size", "weights", "amp", "num_workers",
)  # fmt: skip
MAX_GPU_WORKERS = 4  # DataLoader processes that decode PNGs while the GPU computes
KAGGLE_DEPTH = 5  # /kaggle/input/<model>/<framework>/<variation>/<version>/<file>
# Batch sizes by GPU memory: fasterrcnn_resnet50_fpn under AMP needs about 1 GiB per
# image at 800 px with headroom (measured before the model was built for 512 px; at
# 512 px it needs less, so these batches are conservative).
GPU_BATCH_BY_GIB: tuple[tuple[float, int], ...] = ((30, 16), (14, 8), (7, 4))
GPU_MIN_BATCH = 2
NO_GPU_BATCH = 4  # the gpu profile asked for on a machine without CUDA
LARGE_FOR_CPU = 2000  # training images above which a CPU epoch takes long


@dataclass(frozen=True)
class Profile:
    """A profile's name, why it was chosen, and the training settings it sets."""

    name: str
    reason: str
    model_name: str
    size: int
    epochs: int
    batch_size: int
    weights: str | None
    amp: bool
    notes: tuple[str, ...] = ()
    num_workers: int = 0
    classifier_name: str = CPU_CLASSIFIER[0]
    classifier_size: int = CPU_CLASSIFIER[1]
    classifier_epochs: int = CPU_CLASSIFIER[2]
    classifier_weights: str | None = None
    smoke: bool = False

    def band(
        self, cpu: tuple[float, float], gpu: tuple[float, float] | None = None
    ) -> tuple[float, float]:
        """The band a notebook's :func:`cxrkit.utils.check_range` expects under this profile.

        ``cpu`` was measured for the cpu profile's model (several threads and seeds);
        ``gpu`` is what holds for the gpu profile's models whatever their weights and
        scale (an mAP between 0 and 1, a positive loss). Without one only finiteness
        is checked: ``(-inf, inf)`` fails a NaN and nothing else.
        """
        if self.name == "cpu" and not self.smoke:
            return cpu
        return gpu if gpu is not None else (-math.inf, math.inf)

    def settings(self, model_name: str | None = None) -> dict[str, Any]:
        """The TrainConfig fields this profile sets (:data:`PROFILE_FIELDS`).

        ``model_name``: another model than the profile's (``--profile gpu --model
        fcos_resnet50_fpn``): the profile's weights file is its own model's, so the new
        model's published weights are looked up the same way (:func:`find_coco_weights`;
        none for a model without them, e.g. ``fcos_small``), and the line says which.
        """
        values = {name: getattr(self, name) for name in PROFILE_FIELDS}
        if model_name is None or model_name == self.model_name:
            return values
        values["model_name"] = model_name
        if self.weights is not None:  # the profile asked for pretrained weights
            weights, source = find_coco_weights(model_name)
            values["weights"] = weights
            print(f"{model_name} instead of the profile's {self.model_name}: {source}")
        return values

    def summary(self) -> str:
        """What is printed when a profile is chosen: name, reason, settings, notes."""
        weights = "trained from scratch" if self.weights is None else f"weights {self.weights}"
        classifier = self.classifier_weights or "from scratch"
        lines = [
            f"profile {self.name}: {self.reason}",
            f"  {self.model_name}, {self.size} px, {self.epochs} epochs, batch {self.batch_size}, "
            f"AMP {'on' if self.amp else 'off'}, {weights}",
            f"  classifier (notebook 07): {self.classifier_name}, {self.classifier_size} px, "
            f"{self.classifier_epochs} epochs, {classifier}",
        ]
        return "\n".join(lines + [f"  {note}" for note in self.notes])


def _cuda_memory_gib(device: Any = None) -> tuple[str, float] | None:
    """(name, total GiB) of the CUDA device to train on, or None without a usable one
    (none, or one this torch has no kernels for: :func:`cxrkit.utils.cuda_problem`)."""
    import torch

    if device is not None and torch.device(device).type != "cuda":
        return None
    index = (torch.device(device).index if device is not None else None) or 0
    if cuda_problem(index) is not None:
        return None
    props = torch.cuda.get_device_properties(index)
    return str(props.name), props.total_memory / 2**30


def batch_size_for_memory(gib: float) -> int:
    """Batch size for ``fasterrcnn_resnet50_fpn`` at 512 px under AMP on a GPU of ``gib`` GiB."""
    for least, batch in GPU_BATCH_BY_GIB:
        if gib >= least:
            return batch
    return GPU_MIN_BATCH


def _online(host: str = "download.pytorch.org", timeout: float = 3.0) -> bool:
    """True when torchvision's weight server answers (a Kaggle notebook may have no internet)."""
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def coco_weights_filename(model_name: str) -> str:
    """The file name torchvision gives the COCO weights of ``model_name`` (e.g. in torch's cache)."""
    from torchvision.models import get_model_weights

    return Path(get_model_weights(model_name).DEFAULT.url).name


def _kaggle_files(filename: str, depth: int = KAGGLE_DEPTH) -> list[Path]:
    """Files named ``filename`` under ``/kaggle/input`` down to ``depth`` folders: where
    Kaggle mounts datasets (``<dataset>/...``) and models (``<model>/<framework>/...``)."""
    found: list[Path] = []
    if not KAGGLE_INPUT.is_dir():
        return found
    for folder, subfolders, files in os.walk(KAGGLE_INPUT):
        level = len(Path(folder).relative_to(KAGGLE_INPUT).parts)
        if filename in files:
            found.append(Path(folder) / filename)
        if level >= depth - 1:
            subfolders.clear()  # no deeper: a large dataset has thousands of folders
        subfolders.sort()
    return sorted(found)


def _local_weights_candidates(filename: str) -> list[Path]:
    """Where a COCO ``.pth`` file may already be: torch's cache, then Kaggle's inputs."""
    import torch

    return [Path(torch.hub.get_dir()) / "checkpoints" / filename, *_kaggle_files(filename)]


def find_pretrained_weights(
    model_name: str = GPU_MODEL, env_variable: str | None = WEIGHTS_ENV
) -> tuple[str | None, str]:
    """The published weights of ``model_name`` (COCO for a detector, ImageNet for a
    classifier: its spec's ``pretrained``) and where they come from; None, with the
    reason, for a model that has none.

    In order: the file named by ``env_variable``; torchvision's file in torch's cache
    or where Kaggle mounts datasets and models (``/kaggle/input``, 5 folders deep);
    ``"DEFAULT"`` (a download) when online; else ``None`` with a message that the
    model trains from scratch.
    """
    kind = get_spec(model_name).pretrained
    if not kind:
        return None, f"{model_name} has no published weights: it trains from scratch"
    notes = []
    env = os.environ.get(env_variable) if env_variable else None
    if env:
        path = Path(env).expanduser()
        if path.is_file():
            return str(path), f"{kind} weights from {env_variable}={path}"
        notes.append(f"{env_variable}={env} is not a file")
    filename = coco_weights_filename(model_name)
    for path in _local_weights_candidates(filename):
        if path.is_file():
            return str(path), f"{kind} weights from the local file {path}"
    if _online():
        return "DEFAULT", f"{kind} weights: downloaded by torchvision (weights='DEFAULT')"
    notes.append(
        f"no {kind} weights: offline and no {filename} in torch's cache or /kaggle/input. "
        f"{model_name} TRAINS FROM SCRATCH and will score far lower; attach the file as a "
        "dataset" + (f" or set {env_variable}=/path/to/{filename}" if env_variable else "")
    )
    return None, "; ".join(notes)


def find_coco_weights(model_name: str = GPU_MODEL) -> tuple[str | None, str]:
    """:func:`find_pretrained_weights` of a detector (``CXRKIT_WEIGHTS`` names its file)."""
    return find_pretrained_weights(model_name)


def _count_training_images(data_dir: str | os.PathLike) -> int:
    """Training images in a competition folder (``train/*.dicom``) or a preprocessed one."""
    train = Path(data_dir) / "train"
    if not train.is_dir():
        return 0
    with os.scandir(train) as entries:
        return sum(1 for e in entries if e.name.endswith((".dicom", ".dcm", ".png")))


def cpu_profile(reason: str) -> Profile:
    """The notebook model, ``cxr_small``, with its recipe's size, epochs and batch, from scratch."""
    spec = get_spec(CPU_MODEL)
    return Profile(
        "cpu", reason, spec.name, spec.size, spec.epochs, spec.batch_size, weights=None, amp=False
    )  # the classifier fields default to CPU_CLASSIFIER, from scratch


def gpu_profile(reason: str, device: Any = None) -> Profile:
    """The seed's model at 512 px with AMP, a batch for the GPU's memory and COCO weights."""
    gpu = _cuda_memory_gib(device)
    notes = []
    if gpu is None:
        batch = NO_GPU_BATCH
        notes.append(
            f"NO USABLE CUDA DEVICE: batch {batch}, and the ResNet-50 trains on the CPU in "
            "float32 (AMP needs CUDA), hours per epoch of the real data; --profile cpu is "
            "the model for a CPU"
        )
    else:
        name, gib = gpu
        batch = batch_size_for_memory(gib)
        notes.append(f"batch {batch} for the {gib:.0f} GiB of {name}")
    workers = min(MAX_GPU_WORKERS, max(0, (os.cpu_count() or 1) - 1))
    notes.append(f"{workers} DataLoader worker(s) of {os.cpu_count()} CPUs decode while it trains")
    weights, source = find_coco_weights(GPU_MODEL)
    notes.append(source)
    classifier, classifier_size, classifier_epochs = GPU_CLASSIFIER
    # the detector's file is named by CXRKIT_WEIGHTS: the classifier's is only looked up
    classifier_weights, classifier_source = find_pretrained_weights(classifier, None)
    notes.append(f"classifier: {classifier_source}")
    spec = get_spec(GPU_MODEL)
    return Profile(
        "gpu",
        reason,
        GPU_MODEL,
        size=spec.size,
        epochs=spec.epochs,
        batch_size=batch,
        weights=weights,
        amp=True,
        notes=tuple(notes),
        num_workers=workers,
        classifier_name=classifier,
        classifier_size=classifier_size,
        classifier_epochs=classifier_epochs,
        classifier_weights=classifier_weights,
    )


def smoke_scale(profile: Profile) -> Profile:
    """``profile``'s models at a tiny scale (:data:`SMOKE_SIZE` px, :data:`SMOKE_EPOCHS`
    epoch, batch :data:`SMOKE_BATCH`): what ``CXRKIT_SMOKE=1`` gives, so that a test
    runs the notebooks with the gpu profile's models on a CPU in minutes. Its numbers
    mean nothing; :meth:`Profile.band` checks only what holds at any scale."""
    note = (
        f"SMOKE SCALE ({SMOKE_ENV}=1): {SMOKE_SIZE} px, {SMOKE_EPOCHS} epoch, batch "
        f"{SMOKE_BATCH}: for tests that run the notebooks, not for results"
    )
    return replace(
        profile,
        size=SMOKE_SIZE,
        epochs=SMOKE_EPOCHS,
        batch_size=SMOKE_BATCH,
        classifier_size=SMOKE_SIZE,
        classifier_epochs=SMOKE_EPOCHS,
        smoke=True,
        notes=(*profile.notes, note),
    )


def choose_profile(
    name: str | None = None,
    device: Any = None,
    data_dir: str | os.PathLike | None = None,
    verbose: bool = True,
) -> Profile:
    """The training profile for this machine (or the one named), printed with the reason.

    ``name`` is ``"cpu"``, ``"gpu"`` or ``None``/``"auto"``: the one ``CXRKIT_PROFILE``
    names, else ``gpu`` when CUDA is available (on ``device``, if given), else ``cpu``.
    ``data_dir`` only adds the number of training images to the reason (and a warning
    for a large set on a CPU). ``CXRKIT_SMOKE=1`` shrinks the profile
    (:func:`smoke_scale`).
    """
    forced = os.environ.get(PROFILE_ENV, "").strip()
    if name in (None, "auto") and forced and forced != "auto":
        if forced not in PROFILE_NAMES:
            raise ConfigError(
                f"{PROFILE_ENV}={forced!r} is not a profile; choose one of {list(PROFILE_NAMES)}"
            )
        name, named_by = forced, f"{PROFILE_ENV}={forced}"
    else:
        named_by = "asked for by name"
    if name not in (None, "auto", *PROFILE_NAMES):
        raise ConfigError(f"unknown profile {name!r}; choose one of {['auto', *PROFILE_NAMES]}")
    if name in (None, "auto"):
        gpu = _cuda_memory_gib(device)
        if gpu is None and device is not None:
            name, reason = "cpu", f"device {device} asked for"
        elif gpu is None:
            name, reason = "cpu", cuda_problem() or "no usable CUDA device"
        else:
            name, reason = "gpu", f"CUDA device {gpu[0]}"
    else:
        reason = named_by
    n_images = _count_training_images(data_dir) if data_dir is not None else None
    if n_images is not None:
        reason += f"; {n_images} training images"
    profile = gpu_profile(reason, device) if name == "gpu" else cpu_profile(reason)
    if name == "cpu" and n_images is not None and n_images > LARGE_FOR_CPU:
        slow = "a CPU epoch over this many images takes hours: use a GPU or a subset (notebook 03)"
        profile = replace(profile, notes=(*profile.notes, slow))
    if os.environ.get(SMOKE_ENV, "") not in ("", "0"):
        profile = smoke_scale(profile)
    if verbose:
        print(profile.summary())
    return profile
