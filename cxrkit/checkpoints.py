"""Checkpoints and weight files: save (atomic), read (``weights_only=True``), check.

The one module that calls ``torch.load``. A checkpoint is a plain dict (model and
optimizer states, how the model was built, the run's ``config``, RNG states);
notebook 04 (section 4) teaches why ``weights_only=True`` matters. Format 1 files
(before the engine/fit/train split) still load: their settings are gathered into
``config``. Rebuilding a model from a checkpoint needs the model builders, so it
lives with them: :func:`cxrkit.models.model_from_checkpoint`.
"""

from __future__ import annotations

import os
import pickle
import random
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cxrkit._atomic import atomic_path
from cxrkit.distributed import unwrap
from cxrkit.errors import CheckpointError

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "CheckpointError",
    "save_checkpoint",
    "load_checkpoint",
    "load_into_model",
    "read_weights_file",
    "state_dict_from_file",
    "check_finite",
    "classes_in_state",
    "check_state_matches",
    "rng_state",
    "set_rng_state",
    "schedule_settings",
    "checkpoint_kind",
    "checkpoint_size",
    "require_kind",
]

CHECKPOINT_FORMAT = "cxrkit-checkpoint"
CHECKPOINT_VERSION = 2  # 2: the run's settings in one dict, ckpt["config"]
# What a checkpoint holds: ckpt["kind"]; files written before classifiers existed
# have no kind and hold detectors.
KINDS = ("detector", "classifier")
USE_OF_KIND = {
    "detector": "a detector (train; predict writes a submission with it)",
    "classifier": "a normal/abnormal classifier (train-classifier; classify uses it)",
}


# ------------------------------------------------------------------ weight files
def read_weights_file(path: Path, map_location: Any = "cpu") -> Any:
    """``torch.load(path, weights_only=True)``; a missing or unreadable file is a CheckpointError."""
    if path.is_dir():
        hint = (
            " (a run folder: give RUN/best.pt or RUN/last.pt)"
            if (path / "best.pt").is_file()
            else ""
        )
        raise CheckpointError(f"checkpoint {path} is a folder, not a file{hint}")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many types for a broken or foreign file
        reason = f"{type(exc).__name__}: {_first_sentences(exc)}"
        if isinstance(exc, pickle.UnpicklingError) and str(exc).startswith(_REFUSED):
            reason = _unpickling_reason(exc)
            if "global" in reason.lower():  # it asks to import and call Python code
                raise CheckpointError(
                    f"checkpoint {path} was refused: {reason} A weights file never needs "
                    "this, and loading it with weights_only=False could run code hidden in "
                    "it; use a checkpoint written by cxrkit or torch.save(model.state_dict())"
                ) from exc
        raise CheckpointError(
            f"checkpoint {path} could not be read ({reason}); the file is corrupt, "
            "truncated, or not a PyTorch state_dict/cxrkit checkpoint"
        ) from exc


_REFUSED = "Weights only load failed"  # how torch's weights_only refusals begin


def _first_sentences(exc: BaseException, limit: int = 300) -> str:
    """The first line of an error message, cut after a whole sentence if longer than ``limit``."""
    text = (str(exc).strip().splitlines() or [""])[0].strip()
    if len(text) <= limit:
        return text
    end = text.rfind(". ", 0, limit)
    return text[: end + 1] if end > 0 else text[:limit].rsplit(" ", 1)[0] + " ..."


def _unpickling_reason(exc: BaseException) -> str:
    """What torch's weights_only unpickler refused, without its advice to turn the check off.

    torch's message is the advice ("Re-running torch.load with weights_only set to
    False will likely succeed ... Do it only if you got the file from a trusted
    source."), the reason (after "WeightsUnpickler error:" in some versions) and a
    link. Only the reason's first sentence is kept, whole.
    """
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))  # torch bolds part of it for terminals
    text = text.split("WeightsUnpickler error:", 1)[-1]
    advice = (_REFUSED, "Check the documentation")
    paragraphs = [p for p in text.split("\n\n") if p.strip() and not p.strip().startswith(advice)]
    reason = " ".join(paragraphs[0].split()) if paragraphs else ""
    sentence = re.match(r"(.+?\.)(\s|$)", reason)
    if sentence:
        return sentence.group(1)
    return reason + "." if reason else "it holds Python objects other than tensors."


def state_dict_from_file(path: Path, expected_name: str | None = None) -> dict[str, torch.Tensor]:
    """The model state_dict inside a cxrkit checkpoint or a bare state_dict file."""
    obj = read_weights_file(path)
    if isinstance(obj, Mapping) and isinstance(obj.get("model"), Mapping):
        # a cxrkit checkpoint, or torchvision references' {"model": ..., "optimizer": ...}
        name = obj.get("model_name")
        if expected_name is not None and name is not None and name != expected_name:
            raise CheckpointError(
                f"checkpoint {path} holds a {name!r} model, not {expected_name!r}; build "
                f"{name!r} or use model_from_checkpoint({str(path)!r})"
            )
        obj = obj["model"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path} holds no model state_dict (got {type(obj).__name__})")
    check_finite(obj, path)
    return dict(obj)


def check_finite(state: Mapping[str, Any], path: Any) -> None:
    """Refuse weights with NaN or infinite values, naming the file and the first bad tensor.

    Such a model predicts nothing useful (every score NaN, so every image gets the
    same "No finding" row), yet would write a submission that looks whole.
    """
    for key, value in state.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            finite = torch.isfinite(value)
            if not bool(finite.all()):
                bad = int(finite.numel() - finite.sum())
                raise CheckpointError(
                    f"checkpoint {path} has non-finite weights: {key} holds {bad} NaN or "
                    f"infinite value(s) of {value.numel()} (the training diverged); use an "
                    "earlier checkpoint, or train again with a lower --lr"
                )


# Where a detector's state_dict keeps its class layer, by head: Faster R-CNN's box
# classifier has one row per class; a one-stage head's last convolution has
# classes x anchors output channels, beside a box convolution of 4 x anchors.
_ROI_CLASSES = "roi_heads.box_predictor.cls_score.weight"
_DENSE_CLASSES = "head.classification_head.cls_logits.weight"
_DENSE_BOXES = "head.regression_head.bbox_reg.weight"


def classes_in_state(state: Mapping[str, torch.Tensor], path: Any) -> int:
    """The class count of a detector's state_dict (background included).

    Faster R-CNN: the rows of its box classifier. RetinaNet and FCOS: the output
    channels of the classification head's last convolution per anchor, the anchors
    being the box convolution's outputs / 4.
    """
    if _ROI_CLASSES in state:
        return int(state[_ROI_CLASSES].shape[0])
    if _DENSE_CLASSES in state and _DENSE_BOXES in state:
        anchors = int(state[_DENSE_BOXES].shape[0]) // 4
        return int(state[_DENSE_CLASSES].shape[0]) // max(anchors, 1)
    raise CheckpointError(
        f"{path} is not a detector's state_dict (no {_ROI_CLASSES!r} nor {_DENSE_CLASSES!r}); "
        f"first keys: {list(state)[:3]}"
    )


def check_state_matches(
    model: nn.Module, state: Mapping[str, torch.Tensor], path: Any, what: str
) -> None:
    """Raise CheckpointError naming the first mismatches instead of PyTorch's wall of text."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in own.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or shapes:
        parts = []
        if shapes:
            parts.append(f"{len(shapes)} shape mismatch(es), e.g. {shapes[:2]}")
        if missing:
            parts.append(f"{len(missing)} missing key(s), e.g. {missing[:2]}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s), e.g. {unexpected[:2]}")
        raise CheckpointError(
            f"checkpoint {path} does not fit the {what} model: " + "; ".join(parts)
        )


def _numpy_rng_state() -> dict[str, Any]:
    """NumPy's global RNG state as tensors and numbers (loadable with weights_only=True)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()  # noqa: NPY002
    return {
        "kind": str(kind),
        "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "gauss": float(gauss),
    }


def rng_state() -> dict[str, Any]:
    """Python, NumPy and torch (CPU and CUDA) RNG states, for exact resume."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": _numpy_rng_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`rng_state` saved."""
    if "python" in state:
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
    if "numpy" in state:
        s = state["numpy"]
        keys = s["keys"].numpy().astype(np.uint32)
        np.random.set_state((s["kind"], keys, s["pos"], s["has_gauss"], s["gauss"]))  # noqa: NPY002
    if "torch" in state:
        torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    path: str | os.PathLike,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    epoch: int = 0,
    **extra: Any,
) -> Path:
    """Save a training checkpoint atomically (a crash never leaves half a file).

    The dict holds ``model`` (state_dict), ``optimizer``, ``scheduler``, ``epoch``
    (the number of epochs finished), ``model_name``, ``num_classes`` and the build
    options (``model_config``) so :func:`model_from_checkpoint` can rebuild the
    model, the RNG states (``rng``) and anything passed in ``extra`` (e.g. the best
    validation mAP, the training arguments). Keep ``extra`` to plain Python types,
    tensors and dicts of them: ``load_checkpoint`` reads with ``weights_only=True``.
    """
    bare = unwrap(model)
    config = dict(getattr(bare, "cxrkit_config", {}) or {})
    state = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "kind": config.get("kind", "detector"),
        "model_name": config.get("name"),
        "num_classes": config["num_classes"]
        if "num_classes" in config
        else classes_in_state(bare.state_dict(), path),
        "model_config": config,
        "model": bare.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "epoch": int(epoch),
        "rng": rng_state(),
        **extra,
    }
    with atomic_path(path) as tmp, open(tmp, "wb") as file:
        # through a Python file: a full disk is then an OSError (ENOSPC), not torch's
        # RuntimeError "unexpected pos ..."
        torch.save(state, file)
    return Path(path)


def schedule_settings(
    optimizer_state: Mapping[str, Any], scheduler_state: Mapping[str, Any] | None
) -> dict[str, Any]:
    """The rate, momentum, weight decay and schedule read from the two ``state_dict()``s."""
    group = (optimizer_state.get("param_groups") or [{}])[0]
    out: dict[str, Any] = {
        key: group[key] for key in ("momentum", "weight_decay") if group.get(key) is not None
    }
    lr = group.get("initial_lr", group.get("lr"))
    if lr is not None:
        out["lr"] = lr
    sched = scheduler_state or {}
    if "step_size" in sched:
        out.update(schedule="step", step_size=sched["step_size"], gamma=sched["gamma"])
    elif "T_max" in sched:
        out.update(schedule="cosine", T_max=sched["T_max"])
    return out


def checkpoint_size(ckpt: dict[str, Any]) -> int:
    """The image side a checkpoint's model was trained at (512 if it does not say)."""
    config = ckpt.get("config") or {}
    model_config = ckpt.get("model_config") or {}
    return int(config.get("size") or ckpt.get("size") or model_config.get("min_size") or 512)


def checkpoint_kind(ckpt: Mapping[str, Any]) -> str:
    """``"detector"`` or ``"classifier"``: ``ckpt["kind"]``, a detector when absent (older files)."""
    return str(ckpt.get("kind") or "detector")


def require_kind(ckpt: Mapping[str, Any], kind: str, path: str | os.PathLike) -> None:
    """Refuse a checkpoint of another kind with a :class:`CheckpointError` saying
    what the file holds and which command uses it (a classifier given to ``predict``,
    a detector given to ``classify``)."""
    found = checkpoint_kind(ckpt)
    if found != kind:
        raise CheckpointError(
            f"checkpoint {path} holds {USE_OF_KIND.get(found, repr(found))}, but "
            f"{USE_OF_KIND.get(kind, repr(kind))} is needed here"
        )


def _upgrade(ckpt: dict[str, Any]) -> dict[str, Any]:
    """A version 1 checkpoint in version 2's layout: its settings (``train_args``,
    ``seed``, the optimizer's and scheduler's) gathered into ``ckpt["config"]``."""
    if ckpt.get("config") is not None or ckpt.get("optimizer") is None:
        return ckpt
    config = schedule_settings(ckpt["optimizer"], ckpt.get("scheduler"))
    if ckpt.get("seed") is not None:
        config["seed"] = ckpt["seed"]
    return {**ckpt, "config": {**config, **dict(ckpt.get("train_args") or {})}}


def is_cxrkit_checkpoint(obj: Any, path: Path) -> bool:
    """Whether ``obj`` is a cxrkit checkpoint; CheckpointError if a newer cxrkit wrote it."""
    if not (isinstance(obj, Mapping) and obj.get("format") == CHECKPOINT_FORMAT):
        return False
    version = int(obj.get("version") or 1)
    if version > CHECKPOINT_VERSION:
        raise CheckpointError(
            f"checkpoint {path} has format version {version}, written by a newer cxrkit than "
            f"this one (which reads versions 1 to {CHECKPOINT_VERSION}); upgrade cxrkit"
        )
    return True


def load_checkpoint(
    path: str | os.PathLike, model: nn.Module | None = None, map_location: Any = "cpu"
) -> dict[str, Any]:
    """Read a checkpoint (``weights_only=True``) and optionally load it into ``model``.

    Returns the checkpoint dict; the caller restores the optimizer and scheduler
    from ``ckpt["optimizer"]`` / ``ckpt["scheduler"]`` (see :func:`cxrkit.fit.fit`).
    Before touching ``model`` it checks the model name, the class count and every
    tensor shape, and raises :class:`CheckpointError` with a readable reason.
    A bare state_dict file is accepted too (wrapped as ``{"model": state}``).
    """
    path = Path(path)
    obj = read_weights_file(path, map_location)
    if is_cxrkit_checkpoint(obj, path):
        ckpt = _upgrade(dict(obj))
        check_finite(ckpt.get("model") or {}, path)
    else:
        ckpt = {"model": state_dict_from_file(path), "model_name": None, "epoch": 0}
        ckpt["num_classes"] = classes_in_state(ckpt["model"], path)
    if model is not None:
        load_into_model(model, ckpt, path)
    return ckpt


def load_into_model(model: nn.Module, ckpt: Mapping[str, Any], path: str | os.PathLike) -> None:
    """Load a checkpoint dict (from :func:`load_checkpoint`) into ``model``, after checking
    the model name, the class count and every tensor shape (:class:`CheckpointError`)."""
    bare = unwrap(model)
    config = getattr(bare, "cxrkit_config", {}) or {}
    name, file_name = config.get("name"), ckpt.get("model_name")
    if name and file_name and name != file_name:
        raise CheckpointError(
            f"checkpoint {path} holds a {file_name!r} model but the model is {name!r}; "
            f"build {file_name!r} or use model_from_checkpoint"
        )
    own_classes = classes_in_state(bare.state_dict(), "the model")
    file_classes = int(ckpt.get("num_classes") or classes_in_state(ckpt["model"], path))
    if own_classes != file_classes:
        raise CheckpointError(
            f"checkpoint {path} was trained for {file_classes} classes but the model has "
            f"{own_classes}; build the model with num_classes={file_classes}"
        )
    check_state_matches(bare, ckpt["model"], path, repr(name or type(bare).__name__))
    bare.load_state_dict(ckpt["model"])
