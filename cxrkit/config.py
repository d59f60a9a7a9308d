"""Every setting of a training run in one dataclass, and the one step that resolves it.

:class:`TrainConfig` is the single source of the settings: each field carries its
default, its help text and how the command line parses it, and ``python -m cxrkit
train`` generates its options from these fields (:func:`add_config_options`).
:func:`resolve` turns a config into the run's: the model's recipe from the
registry fills what was left at ``None`` (``lr``, schedule, size...), a model that
would train from scratch gets warmup and clipping, and each choice is returned
with its reason, so a run prints what it chose and why. The resolved config is
saved whole in every checkpoint (``ckpt["config"]``); a resume compares it.

No torch here: the command line's help stays instant.

>>> cfg = resolve(TrainConfig())
>>> cfg.size, cfg.lr, cfg.schedule
('auto', 0.02, 'cosine')
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from dataclasses import MISSING, dataclass, field, fields, replace
from typing import Any

from cxrkit.errors import ConfigError
from cxrkit.registry import CLASSIFIER_NAMES, MODEL_NAMES, ModelSpec, get_spec, model_names


# ------------------------------------------------------------ values a setting takes
# Each is an argparse ``type=``: a bad value is refused in one line before any work.
def _number(text: str, kind: type, what: str) -> Any:
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None


def positive_int(text: str) -> int:
    """A whole number > 0 (sizes, counts, epochs)."""
    value = _number(text, int, "a whole number")
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a whole number > 0, got {text}")
    return value


def non_negative_int(text: str) -> int:
    """A whole number >= 0 (worker processes, image counts)."""
    value = _number(text, int, "a whole number")
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 0, got {text}")
    return value


def positive_float(text: str) -> float:
    """A finite number > 0 (a learning rate, minutes)."""
    value = _number(text, float, "a number")
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text}")
    return value


def fraction_open(text: str) -> float:
    """A fraction strictly between 0 and 1 (the share of images that validate)."""
    value = _number(text, float, "a number")
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1 (both excluded), got {text}")
    return value


def fold_count(text: str) -> int:
    """A number of folds: a whole number >= 2."""
    value = _number(text, int, "a whole number")
    if value < 2:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 2, got {text}")
    return value


def iou_threshold(text: str) -> float:
    """An IoU threshold in (0, 1]."""
    value = _number(text, float, "a number")
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be > 0 and <= 1, got {text}")
    return value


def probability(text: str) -> float:
    """A number in [0, 1] (a probability or score threshold)."""
    value = _number(text, float, "a number")
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def class_id_list(text: str) -> tuple[int, ...]:
    """Finding class ids separated by commas, e.g. ``0,3,7`` (each 0-13)."""
    try:
        ids = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be class ids separated by commas, got {text!r}"
        ) from None
    if any(not 0 <= c <= 13 for c in ids):
        raise argparse.ArgumentTypeError(f"class ids must be 0-13 (14 is No finding), got {text}")
    return ids


def threshold_or_auto(text: str) -> float | str | None:
    """``--repeat-threshold``: a share in (0, 1), "auto" (chosen from the data) or "off"."""
    if text in ("auto", "off"):
        return None if text == "off" else text
    return fraction_open(text)


def size_or_auto(text: str) -> int | str:
    """``--size``: a number of pixels, or "auto" (chosen from the training boxes)."""
    return text if text == "auto" else positive_int(text)


# ------------------------------------------------------------------------ settings
PER_MODEL = "the model's recipe"
EPOCHS_HELP = "epochs to train in all (default: as many as fit the time budget, --minutes)"
# The time budget when none is given, by device type. On a CPU, 10 minutes: a coffee
# break, in which cxr_small learns the small-box findings of a 160-image dataset
# (benchmarks/bench_defaults.py). On a GPU, 60 minutes: the most a learner plans for
# one notebook of a session (a Kaggle session allows 9-12 hours).
DEFAULT_MINUTES: dict[str, float] = {"cpu": 10.0, "cuda": 60.0}
MINUTES_HELP = (
    "time budget of the run in minutes: without --epochs the run measures its first steps and "
    "plans the epochs that fit; with --epochs it stops before an epoch that would overrun "
    f"(default: {DEFAULT_MINUTES['cpu']:g} on a CPU, {DEFAULT_MINUTES['cuda']:g} on a GPU)"
)
# The IoU of the class-wise NMS that ``predict`` applies to its final table. The
# model's own NMS (torchvision's 0.5) lets duplicates of thin or small findings
# through: two boxes on one pleural band 2 % of the image wide, a few pixels apart,
# overlap by 0.3-0.5, and the second is a false positive at the metric's IoU 0.4.
# Notebook 05's sweep on the sample chose 0.3, and so did the tuning draw of
# benchmarks/bench_defaults.py (heldout-100: Pleural thickening AP 0.62 at 0.5, 0.81 at
# 0.3; the benchmark scores every run at both).
PREDICT_NMS_IOU = 0.3
# Repeat factor sampling turns itself on when a class is on fewer than this share of the
# training images (LVIS used 0.001 for 1,203 classes; with 15 classes, a class on 1 of 10
# images is rare; sampling.py has the measurements).
AUTO_REPEAT_THRESHOLD = 0.1
FOLDS_HELP = (
    "k-fold validation: split the images into K stratified folds, K >= 2 "
    "(default: none, a --valid-fraction split)"
)
FOLD_HELP = (
    "the fold that validates, 0..K-1, with --folds; the run writes its out-of-fold "
    "predictions (default: none)"
)  # the help's default for a field the model's spec fills


def setting(
    default: Any,
    help: str,
    *,
    parse: Callable[[str], Any] | None = None,
    flag: str | None = None,
    choices: tuple[str, ...] | None = None,
    metavar: str | None = None,
    cli: bool = True,
) -> Any:
    """A :class:`TrainConfig` field with what the command line needs to offer it.

    Args:
        default: the value when nothing sets it; None for a per-model field means
            "the model's recipe" (:func:`resolve` fills it from the registry).
        help: one line for ``--help`` (the default is appended by the parser).
        parse: the argparse ``type=`` (one of the functions above).
        flag: the option, default ``--`` + the field name with dashes.
        choices, metavar: as in argparse.
        cli: False for settings only the library sets (e.g. ``amp``, by profiles).
    """
    meta = {"help": help, "parse": parse, "flag": flag, "choices": choices, "metavar": metavar}
    return field(default=default, metadata={**meta, "cli": cli})


@dataclass(frozen=True)
class TrainConfig:
    """Every setting of a training run, with its default (what ``cxrkit train`` uses).

    Fields left at ``None`` where the help says "the model's recipe" take the
    value of the model's :class:`~cxrkit.registry.ModelSpec`; ``size="auto"``
    (or no size with ``anchors="auto"``) is chosen from the training boxes when the
    run starts (:func:`cxrkit.anchors.choose_input_size`). :func:`resolve` (or
    :meth:`resolved`) fills them in.
    """

    model_name: str = setting(
        "cxr_small",
        "detector: " + ", ".join(MODEL_NAMES),
        flag="--model",
        choices=MODEL_NAMES,
        metavar="NAME",
    )
    epochs: int | None = setting(None, EPOCHS_HELP, parse=positive_int)
    minutes: float | None = setting(None, MINUTES_HELP, parse=positive_float, metavar="M")
    batch_size: int | None = setting(None, "images per step", parse=positive_int)
    weights: str | None = setting(
        None,
        "initial weights: DEFAULT (the model's published weights, downloaded), a local .pth "
        "file or checkpoint (default: none, random initial weights)",
    )
    lr: float | None = setting(None, "learning rate", parse=positive_float)
    momentum: float = setting(0.9, "SGD momentum", cli=False)
    weight_decay: float | None = setting(None, "weight decay", cli=False)
    schedule: str | None = setting(
        None, "learning-rate schedule: cosine or step", choices=("cosine", "step")
    )
    step_size: int = setting(3, "step schedule: epochs between two decays", cli=False)
    gamma: float = setting(0.1, "step schedule: factor of each decay", cli=False)
    warmup_iters: int | None = setting(
        None, "steps of linear warmup at the start", parse=non_negative_int
    )
    max_grad_norm: float | None = setting(None, "clip gradients to this norm", cli=False)
    size: int | str | None = setting(
        None,
        "training image side in pixels, or auto: chosen from the training boxes and printed "
        "(auto with --anchors auto)",
        parse=size_or_auto,
    )
    valid_fraction: float = setting(
        0.2, "share of the images that validate, between 0 and 1", parse=fraction_open
    )
    seed: int = setting(42, "random seed of the split, augmentation and model", parse=int)
    num_workers: int = setting(
        0,
        "DataLoader worker processes (0: load in the main process)",
        flag="--workers",
        metavar="N",
        parse=non_negative_int,
    )
    anchors: str = setting(
        "stock",
        "anchors of models that fit them (cxr_small): stock, or auto = fitted to the training "
        "boxes (then --size defaults to auto)",
        choices=("stock", "auto"),
    )
    folds: int | None = setting(None, FOLDS_HELP, parse=fold_count, metavar="K")
    fold: int | None = setting(None, FOLD_HELP, parse=non_negative_int, metavar="F")
    amp: bool | None = setting(None, "mixed precision; None: on for CUDA", cli=False)
    repeat_threshold: float | str | None = setting(
        "auto",
        "repeat factor sampling: show the images of classes found on fewer than this share of "
        f"the training images more often; auto: {AUTO_REPEAT_THRESHOLD:g} when some class is "
        "below it, else off; off: each image once an epoch",
        parse=threshold_or_auto,
        metavar="T",
    )

    @classmethod
    def from_profile(cls, profile: Any, **overrides: Any) -> TrainConfig:
        """The settings of ``profile`` (:mod:`cxrkit.profiles`), changed by ``overrides``;
        another ``model_name`` gets its own weights, not the profile model's file."""
        return cls(**{**profile.settings(overrides.get("model_name")), **overrides})

    def resolved(self) -> TrainConfig:
        """This config with every per-model default in place (:func:`resolve`, silent)."""
        return resolve(self)


def config_fields(cli_only: bool = False, config_class: type = TrainConfig) -> list[Any]:
    """The dataclass fields of a config class (only those the command line offers)."""
    return [f for f in fields(config_class) if f.metadata.get("cli") or not cli_only]


def default_of(name: str, config_class: type = TrainConfig) -> Any:
    """The dataclass default of the field ``name``."""
    found = {f.name: f for f in fields(config_class)}[name]
    return None if found.default is MISSING else found.default


# ------------------------------------------------------------------------ resolve
# A torchvision model without its published weights learns from scratch: it gets
# cxr_small's warmup and clipping, which keep the first steps of a random network stable.
FROM_SCRATCH = {"warmup_iters": 50, "max_grad_norm": 10.0}


def _check(cfg: TrainConfig, spec: ModelSpec) -> None:
    """ConfigError for settings that cannot go together, before anything is read."""
    if cfg.anchors not in ("stock", "auto"):
        raise ConfigError(f'anchors must be "stock" or "auto", got {cfg.anchors!r}')
    if cfg.anchors == "auto" and not spec.fits_anchors:
        raise ConfigError(
            f"--anchors auto fits anchors to the training boxes, which {spec.name} does not take "
            f"(its anchors are its pretrained ones); models that do: "
            + ", ".join(n for n in MODEL_NAMES if get_spec(n).fits_anchors)
        )
    if isinstance(cfg.repeat_threshold, str) and cfg.repeat_threshold != "auto":
        raise ConfigError(
            f'repeat_threshold must be a share in (0, 1), "auto" or None (off), got '
            f"{cfg.repeat_threshold!r}"
        )
    if isinstance(cfg.size, str) and cfg.size != "auto":
        raise ConfigError(f'size must be a number of pixels or "auto", got {cfg.size!r}')
    if cfg.schedule not in (None, "cosine", "step"):
        raise ConfigError(f"schedule must be 'step' or 'cosine', got {cfg.schedule!r}")
    if cfg.folds is not None and cfg.valid_fraction != default_of("valid_fraction"):
        raise ConfigError(
            f"valid_fraction {cfg.valid_fraction} is not used with folds: fold {cfg.fold} of "
            f"{cfg.folds} validates; give one of --valid-fraction or --folds/--fold"
        )
    from cxrkit.data import check_fold  # here: cxrkit.data imports torch

    check_fold(cfg.folds, cfg.fold)


def resolve_with_reasons(cfg: TrainConfig) -> tuple[TrainConfig, list[str]]:
    """``cfg`` with the model's recipe in every field left at None, and why, per choice.

    ``size`` stays ``"auto"`` (the data decides it when the run starts: size="auto", or
    no size with ``anchors="auto"``); ``--size 0`` meant the model's default and still does.
    """
    spec = get_spec(cfg.model_name, "detector")
    _check(cfg, spec)
    filled: dict[str, Any] = {}
    auto_size = cfg.size == "auto" or (not cfg.size and cfg.anchors == "auto")
    if auto_size:
        filled["size"] = "auto"
    recipe = spec.training_defaults()
    scratch = spec.pretrained is not None and cfg.weights is None
    if scratch:
        recipe.update(FROM_SCRATCH)
    for key, value in recipe.items():
        unset = not getattr(cfg, key) if key == "size" else getattr(cfg, key) is None
        if key not in filled and unset:  # --size 0 meant the model's size and still does
            filled[key] = value
    reasons = []
    taken = {
        k: v
        for k, v in filled.items()
        if (k != "size" or v != "auto") and not (scratch and k in FROM_SCRATCH)
    }
    if taken:
        listed = ", ".join(f"{k} {v}" for k, v in taken.items())
        reasons.append(f"{listed}: {spec.name}'s recipe (cxrkit.registry)")
    if scratch:
        reasons.append(
            f"{spec.name} trains from scratch (no {spec.pretrained} weights): warmup "
            f"{FROM_SCRATCH['warmup_iters']} steps and clipping at {FROM_SCRATCH['max_grad_norm']}"
        )
    weights = None if cfg.weights is None else str(cfg.weights)
    size = filled.pop("size", cfg.size)
    size = size if size == "auto" else int(size)
    lr = float(filled.pop("lr", cfg.lr))
    return replace(cfg, **filled, size=size, lr=lr, weights=weights), reasons


def resolve(cfg: TrainConfig, show: bool = False) -> TrainConfig:
    """:func:`resolve_with_reasons`; with ``show`` it prints one line per choice."""
    resolved, reasons = resolve_with_reasons(cfg)
    if show:
        for reason in reasons:
            print(reason)
    return resolved


# --------------------------------------------------------------- command line
def _task_of(config_class: type) -> str:
    return "classifier" if config_class is ClassifierConfig else "detector"


def _default_text(f: Any, config_class: type) -> str:
    """What ``--help`` says a field defaults to."""
    names = model_names(_task_of(config_class))
    if f.default is None and f.name in get_spec(names[0]).training_defaults():
        values = [get_spec(n).training_defaults()[f.name] for n in names]
        if len(set(values)) == 1:
            return f" (default: {values[0]}, the recipe of every {_task_of(config_class)})"
        listed = ", ".join(f"{n} {v}" for n, v in zip(names, values, strict=True))
        return f" (default: {PER_MODEL}: {listed})"
    if "(default" in f.metadata["help"] or f.default is None:
        return ""
    return f" (default: {f.default})"


def add_config_options(parser: argparse.ArgumentParser, config_class: type = TrainConfig) -> None:
    """Add one option per command-line field of ``config_class`` to ``parser``.

    Every option defaults to ``argparse.SUPPRESS``: the parsed namespace holds only
    what was typed, so a profile's settings and the dataclass defaults apply to the
    rest without looking into argparse (:func:`typed_settings`).
    """
    for f in config_fields(cli_only=True, config_class=config_class):
        meta = f.metadata
        flag = meta["flag"] or "--" + f.name.replace("_", "-")
        kwargs: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS}
        for key, arg in (("parse", "type"), ("choices", "choices"), ("metavar", "metavar")):
            if meta[key] is not None:
                kwargs[arg] = meta[key]
        parser.add_argument(flag, help=meta["help"] + _default_text(f, config_class), **kwargs)


def typed_settings(args: argparse.Namespace, config_class: type = TrainConfig) -> dict[str, Any]:
    """The fields of ``config_class`` set on the command line (see :func:`add_config_options`)."""
    names = {f.name for f in config_fields(cli_only=True, config_class=config_class)}
    return {k: v for k, v in vars(args).items() if k in names}


# ------------------------------------------------------------------ classifier
@dataclass(frozen=True)
class ClassifierConfig:
    """Every setting of a classifier run (``train-classifier``), with its default.

    Fields left at ``None`` take the classifier's recipe from its
    :class:`~cxrkit.registry.ModelSpec` (:func:`resolve_classifier`).
    """

    model_name: str = setting(
        "cls_small",
        "classifier: "
        + ", ".join(CLASSIFIER_NAMES)
        + " (cls_small: small, from scratch, for a CPU)",
        flag="--model",
        choices=CLASSIFIER_NAMES,
        metavar="NAME",
    )
    epochs: int | None = setting(None, EPOCHS_HELP, parse=positive_int)
    minutes: float | None = setting(None, MINUTES_HELP, parse=positive_float, metavar="M")
    batch_size: int | None = setting(None, "images per step", parse=positive_int)
    size: int | None = setting(None, "image side in pixels", parse=positive_int)
    lr: float | None = setting(None, "AdamW learning rate", parse=positive_float)
    weight_decay: float | None = setting(None, "AdamW weight decay", cli=False)
    weights: str | None = setting(
        None,
        "initial weights: DEFAULT (ImageNet, downloaded; not for cls_small), a local .pth file "
        "or classifier checkpoint (default: none, random initial weights)",
    )
    valid_fraction: float = setting(
        0.2, "share of the images that validate, between 0 and 1 (without --folds)",
        parse=fraction_open,
    )  # fmt: skip
    seed: int = setting(42, "random seed of the split and training", parse=int)
    num_workers: int = setting(
        0, "DataLoader worker processes (0: load in the main process)", flag="--workers",
        metavar="N", parse=non_negative_int,
    )  # fmt: skip
    folds: int | None = setting(None, FOLDS_HELP, parse=fold_count, metavar="K")
    fold: int | None = setting(None, FOLD_HELP, parse=non_negative_int, metavar="F")
    warmup_iters: int | None = setting(None, "steps of linear warmup at the start", cli=False)
    max_grad_norm: float | None = setting(None, "clip gradients to this norm", cli=False)

    def checked(self) -> ClassifierConfig:
        """This config resolved (:func:`resolve_classifier`)."""
        return resolve_classifier(self)


def resolve_classifier(cfg: ClassifierConfig) -> ClassifierConfig:
    """``cfg`` with the classifier's recipe in every field left at None; ConfigError
    for an unknown classifier or settings that cannot go together."""
    spec = get_spec(cfg.model_name, "classifier")
    if cfg.folds is not None and cfg.valid_fraction != default_of(
        "valid_fraction", ClassifierConfig
    ):
        raise ConfigError(
            f"valid_fraction {cfg.valid_fraction} is not used with folds: fold {cfg.fold} of "
            f"{cfg.folds} validates; give one of --valid-fraction or --folds/--fold"
        )
    from cxrkit.data import check_fold  # here: cxrkit.data imports torch

    check_fold(cfg.folds, cfg.fold)
    recipe = spec.training_defaults()
    filled = {k: recipe[k] for k in CLASSIFIER_RECIPE_FIELDS if getattr(cfg, k) is None}
    weights = None if cfg.weights is None else str(cfg.weights)
    return replace(cfg, **filled, weights=weights)


# The ClassifierConfig fields a classifier's spec fills (the rest are the run's own).
CLASSIFIER_RECIPE_FIELDS = (
    "batch_size", "size", "lr", "weight_decay", "warmup_iters", "max_grad_norm",
)  # fmt: skip
