"""Datasets over the preprocessed PNGs and the stratified split (taught in notebook 03).

:class:`XrayDataset` is the seed's ``VinBigDataset`` made strict: ``(image, target,
image_id)`` with a (3, H, W) float image, torchvision's target dict (boxes in the
returned image's pixels, labels ``class_id + 1``) and empty targets for normal
images. :class:`TestDataset` serves unlabelled images; :func:`split` stratifies, and
:func:`kfold_assign` / :func:`fold_split` do the same for k folds (out-of-fold
validation, notebook 07); :func:`join_out_of_fold` checks that each image has
exactly one out-of-fold prediction.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from cxrkit.annotations import image_class_sets, load_annotations, load_meta, rescale_boxes
from cxrkit.errors import ConfigError, DatasetError, FoldError
from cxrkit.formats import BOX_COLUMNS, TRUTH_COLUMNS, image_sizes
from cxrkit.labels import NO_FINDING_ID, to_model_labels


def _as_annotations(annotations: pd.DataFrame | str | os.PathLike) -> pd.DataFrame:
    return load_annotations(annotations)


def _as_meta(meta: pd.DataFrame | str | os.PathLike | None, image_dir: Path) -> pd.DataFrame:
    if meta is None:
        meta = image_dir.parent / f"{image_dir.name}_meta.csv"
        if not meta.is_file():
            raise DatasetError(
                f"no meta table {meta} beside {image_dir}: pass meta=... or preprocess "
                f"the DICOMs with cxrkit.preprocess (it writes image_id,dim0,dim1)"
            )
    return load_meta(meta)  # validates columns and sizes, names the file on error


def read_png(path: Path) -> np.ndarray:
    """Read an 8-bit gray PNG, or raise :class:`DatasetError` naming the file."""
    if not path.is_file():
        raise DatasetError(f"image {path} does not exist (was the split preprocessed?)")
    image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if image is None:
        raise DatasetError(f"image {path} cannot be decoded (corrupt or not an image)")
    return image


def check_images_exist(image_dir: str | os.PathLike, image_ids: Iterable[str]) -> None:
    """Refuse to start when a PNG is missing, instead of failing an epoch later.

    Raises :class:`DatasetError` with the count of missing images and the first
    five names.
    """
    image_dir = Path(image_dir)
    present = {e.name for e in os.scandir(image_dir)} if image_dir.is_dir() else set()
    missing = sorted(f"{i}.png" for i in image_ids if f"{i}.png" not in present)
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise DatasetError(
            f"{len(missing)} image(s) are missing from {image_dir}: {', '.join(missing[:5])}"
            f"{more}; preprocess the DICOMs again (python -m cxrkit preprocess RAW_DIR "
            "DATA_DIR) or leave these images out of the tables"
        )


def to_image_tensor(image: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 gray ``(H, W)`` array, or a tensor from ``ToTensorV2`` -> float ``(3, H, W)`` in [0, 1]."""
    if isinstance(image, np.ndarray):
        image = torch.from_numpy(np.ascontiguousarray(image))
        if image.ndim == 3:  # H, W, C -> C, H, W
            image = image.permute(2, 0, 1)
    if image.ndim == 2:
        image = image.unsqueeze(0)
    image = image.float().div_(255.0) if image.dtype == torch.uint8 else image.float()
    if image.shape[0] == 1:
        image = image.repeat(3, 1, 1)
    return image


def clip_boxes(boxes: np.ndarray, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Clip ``(N, 4)`` boxes to a ``height x width`` image.

    Returns the clipped boxes and a boolean mask of those that still have an area
    (torchvision refuses boxes with zero width or height).
    """
    boxes = np.array(boxes, dtype=np.float64).reshape(-1, 4)
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, width)
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, height)
    return boxes, (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])


class XrayDataset(Dataset):
    """Training/validation images with their boxes (see the module docstring).

    Args:
        annotations: DataFrame or CSV path in ``train.csv`` columns, in ORIGINAL pixels.
        image_dir: folder of ``<image_id>.png`` (e.g. ``preprocessed/train``).
        transforms: an albumentations pipeline from :mod:`cxrkit.transforms` (called
            with ``image``, ``bboxes``, ``labels``), or ``None``.
        meta: table ``image_id, dim0, dim1`` (original rows, columns), a CSV path, or
            ``None`` for ``image_dir.parent / f"{image_dir.name}_meta.csv"``.
        keep_negatives: keep the "No finding"-only images with empty targets.

    Boxes that stick out of the image (a few do in the real data) are clipped to
    it, and boxes left without area are dropped with their label.
    """

    def __init__(
        self,
        annotations: pd.DataFrame | str | os.PathLike,
        image_dir: str | os.PathLike,
        transforms: Callable[..., dict[str, Any]] | None = None,
        *,
        meta: pd.DataFrame | str | os.PathLike | None = None,
        keep_negatives: bool = True,
    ) -> None:
        self.image_dir = Path(image_dir)
        self.transforms = transforms
        df = _as_annotations(annotations)
        meta_df = _as_meta(meta, self.image_dir)
        self.meta = meta_df.set_index(meta_df["image_id"].astype(str))[["dim0", "dim1"]]

        ids = pd.unique(df["image_id"].astype(str))
        self._sizes = image_sizes(meta_df)  # image_id -> (dim0, dim1)
        missing = [i for i in ids if i not in self._sizes]
        if missing:
            raise DatasetError(
                f"{len(missing)} image id(s) of the annotations are not in the meta table "
                f"(first: {missing[:5]}); was the image preprocessed? see errors.csv there"
            )
        findings = df[df["class_id"] != NO_FINDING_ID]
        self._boxes: dict[str, np.ndarray] = {}
        self._class_ids: dict[str, np.ndarray] = {}
        for image_id, group in findings.groupby(findings["image_id"].astype(str), sort=False):
            self._boxes[image_id] = group[BOX_COLUMNS].to_numpy(dtype=np.float64)
            self._class_ids[image_id] = group["class_id"].to_numpy(dtype=np.int64)
        self.image_ids: list[str] = [
            i for i in ids if keep_negatives or i in self._boxes
        ]  # order of first appearance, as the seed did

    def __len__(self) -> int:
        return len(self.image_ids)

    def truth_table(self) -> pd.DataFrame:
        """The boxes of every image, in original pixels, as the metric's truth table.

        One row per finding box; an image without boxes gets one "No finding" row
        with NaN coordinates. Columns: ``image_id, class_id, x_min, y_min, x_max, y_max``.
        """
        rows = []
        for image_id in self.image_ids:
            boxes = self._boxes.get(image_id)
            if boxes is None or not len(boxes):
                rows.append((image_id, NO_FINDING_ID, np.nan, np.nan, np.nan, np.nan))
            else:
                for b, c in zip(boxes, self._class_ids[image_id], strict=True):
                    rows.append((image_id, int(c), *map(float, b)))
        return pd.DataFrame(rows, columns=TRUTH_COLUMNS)

    def boxes_resized(
        self, image_id: str, height: int, width: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Boxes of ``image_id`` in the pixels of a ``height x width`` image, and their class ids."""
        boxes = self._boxes.get(image_id, np.zeros((0, 4)))
        class_ids = self._class_ids.get(image_id, np.zeros(0, dtype=np.int64))
        if len(boxes):
            boxes = rescale_boxes(boxes, self._sizes[image_id], (height, width))
            boxes, keep = clip_boxes(boxes, height, width)
            boxes, class_ids = boxes[keep], class_ids[keep]
        return boxes.astype(np.float32).reshape(-1, 4), class_ids

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor], str]:
        image_id = self.image_ids[index]
        image = read_png(self.image_dir / f"{image_id}.png")
        boxes, class_ids = self.boxes_resized(image_id, *image.shape[:2])
        labels = to_model_labels(class_ids)  # class_id + 1: 0 is background
        if self.transforms is not None:
            out = self.transforms(image=image, bboxes=boxes, labels=labels)
            image = out["image"]
            boxes = np.asarray(out["bboxes"], dtype=np.float32).reshape(-1, 4)
            labels = np.asarray(out["labels"], dtype=np.int64).reshape(-1)
        boxes_t = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4)
        target = {
            "boxes": boxes_t,
            "labels": torch.as_tensor(labels, dtype=torch.int64).reshape(-1),
            "image_id": torch.tensor([index], dtype=torch.int64),
            "area": (boxes_t[:, 2] - boxes_t[:, 0]) * (boxes_t[:, 3] - boxes_t[:, 1]),
            "iscrowd": torch.zeros(len(boxes_t), dtype=torch.int64),
        }
        return to_image_tensor(image), target, image_id


class TestDataset(Dataset):
    """Unlabelled images for prediction: ``(image, image_id, (h, w) of the PNG)``.

    ``ids=None`` takes every ``*.png`` of ``image_dir`` (sorted). The PNG size lets
    predictions be mapped back: PNG pixels -> original pixels with the meta table.
    """

    __test__ = False  # not a pytest test class, despite the name

    def __init__(
        self,
        image_dir: str | os.PathLike,
        ids: Sequence[str] | None = None,
        transforms: Callable[..., dict[str, Any]] | None = None,
    ) -> None:
        self.image_dir = Path(image_dir)
        if ids is None:
            if not self.image_dir.is_dir():
                raise DatasetError(f"image folder {self.image_dir} does not exist")
            ids = sorted(p.stem for p in self.image_dir.glob("*.png") if not p.name.startswith("."))
            if not ids:
                raise DatasetError(f"no .png images in {self.image_dir}")
        self.image_ids: list[str] = [str(i) for i in ids]
        self.transforms = transforms

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str, tuple[int, int]]:
        image_id = self.image_ids[index]
        image = read_png(self.image_dir / f"{image_id}.png")
        height, width = image.shape[:2]
        if self.transforms is not None:
            image = self.transforms(image=image)["image"]
        return to_image_tensor(image), image_id, (height, width)


def collate_fn(batch: Sequence[tuple]) -> tuple:
    """Keep a batch as tuples (images may differ in size, targets are dicts)."""
    return tuple(zip(*batch, strict=True))


def worker_init_fn(worker_id: int) -> None:
    """``DataLoader(worker_init_fn=...)``: give each worker its own augmentation stream.

    Without it every worker process starts with a copy of the same albumentations
    random state and produces the *same* augmentations. torch gives each worker a
    different seed, derived from ``torch.manual_seed``, so runs stay reproducible.
    """
    # transforms imports albumentations (heavy, and it may check for updates): on first use
    from cxrkit.transforms import reseed

    info = torch.utils.data.get_worker_info()
    if info is None:
        return
    transforms = getattr(info.dataset, "transforms", None)
    if hasattr(transforms, "set_random_state"):
        reseed(transforms, info.seed % 2**32)


# --------------------------------------------------------------------------- split


def _image_labels(annotations: pd.DataFrame) -> dict[str, frozenset[int]]:
    sets = image_class_sets(annotations)
    return {str(k): frozenset(int(c) for c in v) for k, v in sets.items()}


def split(
    annotations: pd.DataFrame | str | os.PathLike,
    valid_fraction: float = 0.2,
    seed: int = 42,
) -> tuple[list[str], list[str]]:
    """Split image ids into ``(train_ids, valid_ids)``, stratified over the findings.

    A random split of 15,000 images could put all 2 images of a rare finding on
    one side; then it is either never learned or never measured. This is the
    *iterative stratification* of Sechidis et al. (2011) for multi-label data, with
    the image as the unit (no image on both sides, all its boxes travel with it):

    1. every class wants ``valid_fraction`` of its images in valid; a class found
       on at least 2 images wants at least 1 on each side;
    2. take the class with the fewest images still unassigned (rarest first),
       and give each of its images, in a seeded random order, to the side that
       still wants that class most (ties: the side that wants more images);
       the image then counts against the wishes of all its classes;
    3. a final pass moves one image across for any class found on >= 2 images
       that is still absent from a side, when that does not empty another class.

    No finding (class 14) is stratified like a class, so negatives split evenly.
    Deterministic for a given ``seed``.
    """
    if not 0.0 < valid_fraction < 1.0:
        raise ConfigError(f"valid_fraction must be between 0 and 1, got {valid_fraction}")
    labels = _image_labels(_as_annotations(annotations))
    if len(labels) < 2:
        raise DatasetError(f"need at least 2 images to split, got {len(labels)}")
    rng = np.random.default_rng(seed)
    order = list(labels)  # image ids in table order
    images = [order[i] for i in rng.permutation(len(order))]

    counts = Counter(c for classes in labels.values() for c in classes)
    # wishes[side][class]: how many more images of the class each side wants
    want_valid = {
        c: max(1.0, valid_fraction * n) if n >= 2 else valid_fraction * n for c, n in counts.items()
    }
    wishes = [{c: counts[c] - want_valid[c] for c in counts}, want_valid]  # 0 train, 1 valid
    capacity = [(1 - valid_fraction) * len(images), valid_fraction * len(images)]
    side_of: dict[str, int] = {}

    def assign(image_id: str, side: int) -> None:
        side_of[image_id] = side
        capacity[side] -= 1
        for c in labels[image_id]:
            wishes[side][c] -= 1

    def best_side(scores: list[float]) -> int:
        best = max(scores)
        sides = [s for s in (0, 1) if scores[s] == best]
        return sides[0] if len(sides) == 1 else int(rng.integers(2))

    remaining = {c: [i for i in images if c in labels[i]] for c in counts}
    while True:
        left = {c: [i for i in ids if i not in side_of] for c, ids in remaining.items()}
        left = {c: ids for c, ids in left.items() if ids}
        if not left:
            break
        rarest = min(left, key=lambda c: (len(left[c]), c))
        for image_id in left[rarest]:
            by_class = [wishes[0][rarest], wishes[1][rarest]]
            side = best_side(by_class) if by_class[0] != by_class[1] else best_side(capacity)
            assign(image_id, side)
    for image_id in images:  # images without any label
        if image_id not in side_of:
            assign(image_id, best_side(capacity))

    _repair(labels, side_of, counts)
    train_ids = [i for i in order if side_of[i] == 0]
    valid_ids = [i for i in order if side_of[i] == 1]
    return train_ids, valid_ids


def _repair(
    labels: dict[str, frozenset[int]], side_of: dict[str, int], counts: dict[int, int]
) -> None:
    """Move single images so that every class on >= 2 images is on both sides, if possible."""

    def present(side: int) -> dict[int, int]:
        n: dict[int, int] = {}
        for image_id, s in side_of.items():
            if s == side:
                for c in labels[image_id]:
                    n[c] = n.get(c, 0) + 1
        return n

    for c in sorted(counts, key=lambda c: (counts[c], c)):
        if counts[c] < 2:
            continue
        for empty in (1, 0):
            here = present(empty)
            if here.get(c, 0):
                continue
            there = present(1 - empty)
            # a donor image whose other classes keep at least one image on the donor side
            donors = [
                i
                for i, s in side_of.items()
                if s == 1 - empty and c in labels[i] and all(there[k] >= 2 for k in labels[i])
            ]
            if donors:
                side_of[min(donors, key=lambda i: (len(labels[i]), i))] = empty


# --------------------------------------------------------------------------- k folds


def check_fold(folds: int | None, fold: int | None) -> None:
    """Refuse an impossible fold setting with a :class:`FoldError`: ``folds`` and
    ``fold`` go together, ``folds >= 2`` and ``0 <= fold < folds``."""
    if folds is None and fold is None:
        return
    if folds is None or fold is None:
        given, absent = ("folds", "fold") if fold is None else ("fold", "folds")
        raise FoldError(f"{given} is set but {absent} is not: give both --folds K and --fold F")
    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
        raise FoldError(f"folds must be a whole number >= 2, got {folds!r}")
    if isinstance(fold, bool) or not isinstance(fold, int) or not 0 <= fold < folds:
        raise FoldError(f"fold must be one of 0..{folds - 1} (folds={folds}), got {fold!r}")


def kfold_assign(
    annotations: pd.DataFrame | str | os.PathLike, folds: int = 5, seed: int = 42
) -> pd.Series:
    """The fold (0..folds-1) of every image, stratified over the 15 classes; a Series
    indexed by image_id in table order.

    :func:`split`'s iterative stratification (Sechidis et al. 2011) with ``folds``
    sides instead of two: each fold wants ``1/folds`` of every class; the rarest
    class still unassigned goes first, each of its images (in a seeded random
    order) to the fold that still wants that class most (ties: the fold that wants
    more images, then a seeded draw). No finding (class 14) is a class like the
    others, so normal images spread evenly. Deterministic for a given ``seed``.
    """
    check_fold(folds, 0)
    labels = _image_labels(_as_annotations(annotations))
    if len(labels) < folds:
        raise FoldError(f"need at least {folds} images for {folds} folds, got {len(labels)}")
    rng = np.random.default_rng(seed)
    order = list(labels)
    images = [order[i] for i in rng.permutation(len(order))]
    counts = Counter(c for classes in labels.values() for c in classes)
    wishes = [{c: n / folds for c, n in counts.items()} for _ in range(folds)]
    capacity = [len(images) / folds] * folds
    fold_of: dict[str, int] = {}

    def best(scores: Sequence[float], among: Sequence[int]) -> list[int]:
        top = max(scores[f] for f in among)
        return [f for f in among if scores[f] == top]

    def assign(image_id: str, fold: int) -> None:
        fold_of[image_id] = fold
        capacity[fold] -= 1
        for c in labels[image_id]:
            wishes[fold][c] -= 1

    def choose(cls: int | None) -> int:
        candidates = list(range(folds))
        if cls is not None:
            candidates = best([w[cls] for w in wishes], candidates)
        candidates = best(capacity, candidates)
        return candidates[0] if len(candidates) == 1 else int(rng.choice(candidates))

    by_class = {c: [i for i in images if c in labels[i]] for c in counts}
    while True:
        left = {c: [i for i in ids if i not in fold_of] for c, ids in by_class.items()}
        left = {c: ids for c, ids in left.items() if ids}
        if not left:
            break
        rarest = min(left, key=lambda c: (len(left[c]), c))
        for image_id in left[rarest]:
            assign(image_id, choose(rarest))
    for image_id in images:  # images without any label
        if image_id not in fold_of:
            assign(image_id, choose(None))
    return pd.Series(
        [fold_of[i] for i in order], index=pd.Index(order, name="image_id"), name="fold"
    )


def fold_split(
    annotations: pd.DataFrame | str | os.PathLike, folds: int, fold: int, seed: int = 42
) -> tuple[list[str], list[str]]:
    """``(train_ids, valid_ids)`` of one fold: fold ``fold`` of :func:`kfold_assign` validates."""
    check_fold(folds, fold)
    assigned = kfold_assign(annotations, folds, seed)
    ids = assigned.index.astype(str)
    return list(ids[assigned.to_numpy() != fold]), list(ids[assigned.to_numpy() == fold])


def join_out_of_fold(
    tables: Sequence[pd.DataFrame], image_ids: Iterable[str] | None = None
) -> pd.DataFrame:
    """Concatenate the out-of-fold tables of the fold runs (one per fold), after
    checking that each image is in exactly one of them.

    Each table has an ``image_id`` column (a detector's ``oof.csv`` has several rows
    per image and one No finding row, a classifier's one row). An image found in two
    tables, or (with ``image_ids``, e.g. every training image) one found in none, is
    a :class:`FoldError` naming the first few; so is an image listed twice in a
    table of one row per image (``p_abnormal``). The result gains a ``fold`` column
    (the table's position) unless the tables have one.
    """
    if not tables:
        raise FoldError("no out-of-fold tables to join")
    owner: dict[str, int] = {}
    twice: list[str] = []
    frames = []
    for k, table in enumerate(tables):
        if "image_id" not in table.columns:
            raise FoldError(f"out-of-fold table {k} has no image_id column")
        ids = table["image_id"].astype(str)
        if "p_abnormal" in table.columns and ids.duplicated().any():
            dup = sorted(set(ids[ids.duplicated()]))
            raise FoldError(f"out-of-fold table {k} lists image(s) {dup[:5]} more than once")
        for image_id in pd.unique(ids):
            if image_id in owner:
                twice.append(f"{image_id} (tables {owner[image_id]} and {k})")
            owner[image_id] = k
        frame = table.copy()
        frame["image_id"] = ids
        if "fold" not in frame.columns:
            frame["fold"] = k
        frames.append(frame)
    if twice:
        raise FoldError(
            f"{len(twice)} image(s) have more than one out-of-fold prediction: "
            f"{', '.join(twice[:5])}; were the runs made with the same folds and seed?"
        )
    if image_ids is not None:
        expected = list(dict.fromkeys(str(i) for i in image_ids))
        missing = [i for i in expected if i not in owner]
        extra = sorted(set(owner) - set(expected))
        if missing or extra:
            parts = []
            if missing:
                parts.append(
                    f"{len(missing)} image(s) have no out-of-fold prediction: {missing[:5]}"
                )
            if extra:
                parts.append(f"{len(extra)} are not training images: {extra[:5]}")
            raise FoldError("; ".join(parts) + " (is a fold run missing or unfinished?)")
    return pd.concat(frames, ignore_index=True)
