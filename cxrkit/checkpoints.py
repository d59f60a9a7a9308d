"""Training checkpoints: save (atomic), load (``weights_only=True``), rebuild a model.

A checkpoint is a plain dict (model and optimizer states, how the model was built,
the run's ``config``, RNG states); notebook 04 (section 4) teaches why
``weights_only=True`` matters. Format 1 files (before the engine/fit/train split)
still load: their settings are gathered into ``config``.
"""

from __future__ import annotations

import os
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cxrkit._atomic import atomic_path
from cxrkit.anchors import AnchorSpec
from cxrkit.distributed import unwrap
from cxrkit.errors import CheckpointError
from cxrkit.models import (
    MODEL_NAMES,
    build_model,
    check_finite,
    check_state_matches,
    classes_in_state,
    read_weights_file,
    state_dict_from_file,
    to_pretrained_layout,
)

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "CheckpointError",
    "save_checkpoint",
    "load_checkpoint",
    "load_into_model",
    "model_from_checkpoint",
    "rng_state",
    "set_rng_state",
    "schedule_settings",
    "checkpoint_kind",
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


def _is_cxrkit_checkpoint(obj: Any, path: Path) -> bool:
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
    if _is_cxrkit_checkpoint(obj, path):
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


def _stored_anchors(config: Mapping[str, Any], path: Path) -> AnchorSpec | None:
    """The fitted anchors a checkpoint's model was built with (None: stock anchors,
    also for checkpoints written before anchors could be fitted)."""
    stored = config.get("anchors")
    if stored is None:
        return None
    try:
        return AnchorSpec.from_dict(stored)
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"checkpoint {path} stores unusable anchors: {exc}") from exc


def model_from_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> nn.Module:
    """Rebuild the model a cxrkit checkpoint was saved from and load its weights.

    Uses the stored name, class count and build options (input size, fitted
    anchors, ...), so ``predict`` needs nothing but the file. No download happens (``weights=None``
    for the architecture, then the checkpoint's weights).
    """
    path = Path(path)
    ckpt = read_weights_file(path, map_location)
    if not _is_cxrkit_checkpoint(ckpt, path):
        raise CheckpointError(
            f"{path} is not a cxrkit checkpoint (no model name stored); build the model with "
            "build_model(name, weights=path) instead"
        )
    require_kind(ckpt, "detector", path)
    config = dict(ckpt.get("model_config") or {})
    name = ckpt.get("model_name") or config.get("name")
    if name not in MODEL_NAMES:
        raise CheckpointError(f"checkpoint {path} names an unknown model {name!r}")
    model = build_model(
        name,
        num_classes=int(ckpt["num_classes"]),
        weights=None,
        min_size=config.get("min_size"),
        max_size=config.get("max_size"),
        anchors=_stored_anchors(config, path),
        **dict(config.get("kwargs") or {}),
    )
    state = ckpt["model"]
    if name != "cxr_small" and not any(k.endswith("num_batches_tracked") for k in state):
        model = to_pretrained_layout(model, name)  # trained from COCO: FrozenBatchNorm
    check_state_matches(model, state, path, repr(name))
    check_finite(state, path)
    model.load_state_dict(state)
    return model
