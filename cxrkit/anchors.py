"""Anchors and input size fitted to the training boxes (notebook 04, section 2).

``cxr_small``'s stock anchors (4-52 % of the image side, aspect ratios 0.4-2.5)
were chosen from the same size priors the generated sample draws its findings
from, so they fit the sample by construction. Data with other box statistics
(small nodules, thin pleural bands) needs anchors fitted to *its* boxes:

* :func:`fit_anchors`: k-means over box widths and heights with the distance
  ``1 - IoU`` (boxes compared centred on one point, as YOLO's auto-anchor does),
  run once for the sizes and once for the aspect ratios, because torchvision's
  ``AnchorGenerator`` places every size of a level with every ratio;
* :func:`anchor_coverage`: per class, the share of boxes whose best anchor reaches
  IoU 0.5 and 0.7 (the RPN's positive threshold), box and anchor centred on one
  point: the best case;
* :func:`grid_coverage`: the same against the anchors where the RPN has them, on
  grids of stride 8-64 px. On the small-and-thin sample variant fitted anchors
  reached IoU 0.7 for 97 % of the boxes centred but far fewer on the grid, and lost
  to the stock set in training (notebook 04);
* :func:`choose_input_size`: the smallest input side at which the small boxes keep
  enough pixels, within a CPU budget.

Plain NumPy and pandas, so the command line can print these before it imports the
model; only :func:`grid_anchors` and :func:`grid_coverage` import torch (torchvision
places the anchors). :class:`AnchorSpec` is what :func:`cxrkit.models.build_model`
takes and what a checkpoint stores (plain lists, loadable with ``weights_only=True``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from cxrkit.errors import AnnotationError, ConfigError
from cxrkit.formats import image_sizes
from cxrkit.labels import CLASS_NAMES, NO_FINDING_ID

__all__ = [
    "CXR_SMALL_ANCHOR_FRACTIONS",
    "CXR_SMALL_ASPECT_RATIOS",
    "CXR_SMALL_LEVELS",
    "CXR_SMALL_STRIDES",
    "AnchorSpec",
    "anchor_coverage",
    "choose_input_size",
    "compare_coverage",
    "fit_anchors",
    "grid_anchors",
    "grid_coverage",
    "kmeans_iou",
    "resized_boxes",
    "shape_iou",
    "stock_anchors",
]

# cxr_small's stock anchors: box sizes as fractions of the image side, one pair per
# feature level (strides 8, 16, 32 and 64); see cxrkit.models.build_model for why.
CXR_SMALL_ANCHOR_FRACTIONS: tuple[tuple[float, float], ...] = (
    (0.04, 0.06),
    (0.09, 0.13),
    (0.18, 0.26),
    (0.36, 0.52),
)
# torchvision's aspect ratio is height / width: < 1 is wide, > 1 is tall.
CXR_SMALL_ASPECT_RATIOS: tuple[float, ...] = (0.4, 0.7, 1.0, 1.5, 2.5)
CXR_SMALL_LEVELS = len(CXR_SMALL_ANCHOR_FRACTIONS)  # feature maps "0", "1", "2", "pool"
CXR_SMALL_STRIDES: tuple[int, ...] = (8, 16, 32, 64)  # pixels between anchor centres, per level
MIN_ANCHOR_PX = 4  # no anchor smaller than this, whatever the boxes say


@dataclass(frozen=True)
class AnchorSpec:
    """Anchor sizes (pixels at ``image_size``) and aspect ratios, per feature level.

    The form torchvision's ``AnchorGenerator(sizes, aspect_ratios)`` takes: one tuple
    of sizes and one of ratios (height / width) per level, every level with the same
    number of shapes (the RPN head predicts that many per cell). ``image_size`` is the
    input side the sizes refer to; :meth:`scaled` moves them to another side.
    """

    sizes: tuple[tuple[float, ...], ...]
    aspect_ratios: tuple[tuple[float, ...], ...]
    image_size: int
    source: str = "fitted"  # "stock" or "fitted": for printing only

    def __post_init__(self) -> None:
        sizes = tuple(tuple(float(s) for s in level) for level in self.sizes)
        ratios = tuple(tuple(float(r) for r in level) for level in self.aspect_ratios)
        object.__setattr__(self, "sizes", sizes)
        object.__setattr__(self, "aspect_ratios", ratios)
        object.__setattr__(self, "image_size", int(self.image_size))
        if not sizes or len(sizes) != len(ratios):
            raise ConfigError(
                f"anchors need one tuple of sizes and one of ratios per level, got "
                f"{len(sizes)} size and {len(ratios)} ratio tuple(s)"
            )
        per_cell = {len(s) * len(r) for s, r in zip(sizes, ratios, strict=True)}
        if len(per_cell) != 1 or 0 in per_cell:
            raise ConfigError(
                "every level needs the same, non-zero number of anchor shapes (sizes x ratios), "
                f"got {[len(s) * len(r) for s, r in zip(sizes, ratios, strict=True)]}"
            )
        values = [v for level in (*sizes, *ratios) for v in level]
        if not all(math.isfinite(v) and v > 0 for v in values) or self.image_size <= 0:
            raise ConfigError(f"anchor sizes, ratios and image_size must be positive: {self}")

    @property
    def shapes_per_cell(self) -> int:
        return len(self.sizes[0]) * len(self.aspect_ratios[0])

    def scaled(self, image_size: int) -> AnchorSpec:
        """The same anchors for another input side (sizes scale with the image)."""
        f = int(image_size) / self.image_size
        sizes = tuple(tuple(round(s * f, 1) for s in level) for level in self.sizes)
        return AnchorSpec(sizes, self.aspect_ratios, int(image_size), self.source)

    def pixel_sizes(self) -> tuple[tuple[int, ...], ...]:
        """The sizes rounded to whole pixels, as ``AnchorGenerator`` gets them."""
        return tuple(tuple(int(round(s)) for s in level) for level in self.sizes)

    def shapes(self) -> np.ndarray:
        """Every anchor shape as (width, height) rows, as torchvision makes them."""
        rows = []
        for sizes, ratios in zip(self.sizes, self.aspect_ratios, strict=True):
            for r in ratios:  # torchvision: w = size / sqrt(r), h = size * sqrt(r)
                for s in sizes:
                    rows.append((s / math.sqrt(r), s * math.sqrt(r)))
        return np.asarray(rows, dtype=float)

    def to_dict(self) -> dict[str, Any]:
        """Plain lists and numbers, for a checkpoint (``torch.load(weights_only=True)``)."""
        return {
            "sizes": [list(level) for level in self.sizes],
            "aspect_ratios": [list(level) for level in self.aspect_ratios],
            "image_size": self.image_size,
            "source": self.source,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AnchorSpec:
        """The inverse of :meth:`to_dict`; ``ValueError`` naming what is missing or wrong."""
        missing = [k for k in ("sizes", "aspect_ratios", "image_size") if k not in data]
        if missing:
            raise ConfigError(f"anchor settings lack {missing}; got keys {sorted(data)}")
        return cls(
            tuple(tuple(level) for level in data["sizes"]),
            tuple(tuple(level) for level in data["aspect_ratios"]),
            int(data["image_size"]),
            str(data.get("source", "fitted")),
        )

    def describe(self) -> str:
        """One line: sizes per level and the ratios."""
        sizes = ", ".join("/".join(f"{s:g}" for s in level) for level in self.sizes)
        ratios = ", ".join(f"{r:g}" for r in self.aspect_ratios[0])
        return f"{self.source} anchors at {self.image_size} px: sizes {sizes} px; h/w {ratios}"


def stock_anchors(image_size: int) -> AnchorSpec:
    """``cxr_small``'s default anchors at ``image_size`` (what ``build_model`` uses)."""
    sizes = tuple(
        tuple(float(max(MIN_ANCHOR_PX, round(f * image_size))) for f in pair)
        for pair in CXR_SMALL_ANCHOR_FRACTIONS
    )
    ratios = (CXR_SMALL_ASPECT_RATIOS,) * len(sizes)
    return AnchorSpec(sizes, ratios, image_size, source="stock")


# ------------------------------------------------------------------------ k-means
def shape_iou(boxes_wh: np.ndarray, anchors_wh: np.ndarray) -> np.ndarray:
    """IoU of every box with every anchor, both centred on one point: (N, M).

    The best case an anchor grid can offer a box (real anchors sit on a grid of
    stride 8-64, so the RPN meets lower IoUs); the distance of YOLO's auto-anchor.
    """
    b = np.asarray(boxes_wh, dtype=float).reshape(-1, 1, 2)
    a = np.asarray(anchors_wh, dtype=float).reshape(1, -1, 2)
    inter = np.minimum(b[..., 0], a[..., 0]) * np.minimum(b[..., 1], a[..., 1])
    union = b[..., 0] * b[..., 1] + a[..., 0] * a[..., 1] - inter
    return inter / np.maximum(union, 1e-12)


def kmeans_iou(
    boxes_wh: np.ndarray, k: int, *, seed: int = 0, iterations: int = 300
) -> tuple[np.ndarray, np.ndarray]:
    """k-means of box shapes with the distance ``1 - IoU`` (centred boxes).

    k-means++ seeding from ``np.random.default_rng(seed)`` (deterministic), then
    assign each box to the centroid of highest IoU and move each centroid to the
    median width and height of its boxes (the median, as in the common YOLO
    auto-anchor scripts: one huge box does not drag a cluster). Returns the
    centroids sorted by area, (k, 2), and each box's cluster index, (N,).
    """
    wh = np.asarray(boxes_wh, dtype=float).reshape(-1, 2)
    if not np.isfinite(wh).all() or (wh <= 0).any():
        raise ConfigError("box widths and heights must be finite and positive")
    unique = np.unique(wh, axis=0)
    if k < 1 or len(unique) < k:
        raise ConfigError(f"need at least k={k} distinct box shapes, got {len(unique)}")
    rng = np.random.default_rng(seed)
    centroids = [unique[rng.integers(len(unique))]]
    for _ in range(1, k):  # k-means++: far (low IoU) shapes are likelier next centroids
        d = 1.0 - shape_iou(unique, np.asarray(centroids)).max(axis=1)
        p = d**2 / (d**2).sum() if (d > 0).any() else None
        centroids.append(unique[rng.choice(len(unique), p=p)])
    c = np.asarray(centroids, dtype=float)
    assign = np.full(len(wh), -1)
    for _ in range(iterations):
        new = shape_iou(wh, c).argmax(axis=1)
        if np.array_equal(new, assign):
            break
        assign = new
        for j in range(k):
            if (assign == j).any():
                c[j] = np.median(wh[assign == j], axis=0)
    c = c[np.argsort(c[:, 0] * c[:, 1], kind="stable")]
    return c, shape_iou(wh, c).argmax(axis=1)


def fit_anchors(
    boxes_wh: np.ndarray,
    image_size: int,
    *,
    n_levels: int = CXR_SMALL_LEVELS,
    sizes_per_level: int = 2,
    n_ratios: int = len(CXR_SMALL_ASPECT_RATIOS),
    seed: int = 0,
) -> AnchorSpec:
    """Anchors fitted to box shapes in input pixels ((N, 2) widths and heights).

    torchvision tiles every size of a level with every ratio, so sizes and ratios
    are fitted apart, each with :func:`kmeans_iou`:

    * sizes: k-means over squares of the boxes' areas (``sqrt(w * h)``), into
      ``n_levels * sizes_per_level`` sizes, smallest to the finest level (stride 8);
    * ratios: k-means over the boxes' shapes scaled to one area, into ``n_ratios``
      height/width ratios shared by all levels.

    The defaults keep ``cxr_small``'s layout (4 levels, 2 sizes x 5 ratios = 10
    shapes per cell), so fitted and stock anchors cost the same.
    """
    wh = np.asarray(boxes_wh, dtype=float).reshape(-1, 2)
    wh = wh[(wh > 0).all(axis=1) & np.isfinite(wh).all(axis=1)]
    side = np.sqrt(wh[:, 0] * wh[:, 1])
    n_sizes = n_levels * sizes_per_level
    size_centres, _ = kmeans_iou(np.stack([side, side], axis=1), n_sizes, seed=seed)
    sizes = np.maximum(MIN_ANCHOR_PX, size_centres[:, 0])
    unit = np.stack([wh[:, 0] / side, wh[:, 1] / side], axis=1)  # same shape, area 1
    ratio_centres, _ = kmeans_iou(unit, n_ratios, seed=seed)
    ratios = sorted(round(float(h / w), 2) for w, h in ratio_centres)
    levels = tuple(
        tuple(round(float(s), 1) for s in sizes[i * sizes_per_level : (i + 1) * sizes_per_level])
        for i in range(n_levels)
    )
    return AnchorSpec(levels, (tuple(ratios),) * n_levels, image_size, source="fitted")


# ------------------------------------------------------------- boxes, coverage, size
def resized_boxes(table: pd.DataFrame, meta: pd.DataFrame, size: int) -> pd.DataFrame:
    """Widths and heights of the finding boxes in the ``size`` x ``size`` input images.

    ``table`` is in original pixels (``train.csv`` columns); images are resized to a
    square, so x scales by ``size / columns`` and y by ``size / rows`` (``meta``).
    "No finding" rows and boxes without area are left out. Columns: class_id,
    class_name, w, h, and x, y (the top-left corner).
    """
    sizes = image_sizes(meta)
    boxes = table[table["class_id"].astype(int) != NO_FINDING_ID].dropna(subset=["x_min"])
    ids = boxes["image_id"].astype(str)
    unknown = sorted(set(ids) - set(sizes))
    if unknown:
        raise AnnotationError(
            f"{len(unknown)} image(s) of the box table are not in meta: {unknown[:3]}"
        )
    rows = ids.map(lambda i: sizes[i][0]).to_numpy(float)
    cols = ids.map(lambda i: sizes[i][1]).to_numpy(float)
    out = pd.DataFrame(
        {
            "class_id": boxes["class_id"].astype(int).to_numpy(),
            "w": (boxes["x_max"] - boxes["x_min"]).to_numpy(float) * size / cols,
            "h": (boxes["y_max"] - boxes["y_min"]).to_numpy(float) * size / rows,
            "x": boxes["x_min"].to_numpy(float) * size / cols,
            "y": boxes["y_min"].to_numpy(float) * size / rows,
        }
    )
    out.insert(1, "class_name", out["class_id"].map(lambda c: CLASS_NAMES[c]))
    return out[(out["w"] > 0) & (out["h"] > 0)].reset_index(drop=True)


def anchor_coverage(
    table: pd.DataFrame, meta: pd.DataFrame, anchors: AnchorSpec, size: int | None = None
) -> pd.DataFrame:
    """Per class: boxes, share with a best (centred) anchor IoU >= 0.5 and >= 0.7.

    ``size`` is the input side (default: the one ``anchors`` were made for). The last
    row, "all", pools every box. The IoU is the centred best case (:func:`shape_iou`);
    :func:`grid_coverage` measures where the anchors really sit.
    """
    size = int(size or anchors.image_size)
    boxes = resized_boxes(table, meta, size)
    best = shape_iou(boxes[["w", "h"]].to_numpy(), anchors.scaled(size).shapes()).max(axis=1)
    return _coverage_table(boxes.assign(best_iou=best))


def grid_anchors(
    anchors: AnchorSpec, size: int, strides: Sequence[int] = CXR_SMALL_STRIDES
) -> np.ndarray:
    """Every anchor ``(x1, y1, x2, y2)`` that torchvision places on a ``size`` x ``size`` input.

    torchvision's own ``AnchorGenerator`` builds them, on feature maps of the model's
    strides (``cxr_small``: 8, 16, 32, 64 pixels) over the input padded to a multiple of
    32, as ``FasterRCNN`` does: one anchor of each shape per cell, centred on the
    cell's top-left pixel. Imports torch (the rest of this module does not).
    """
    import torch
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.image_list import ImageList

    spec = anchors.scaled(size)
    if len(strides) != len(spec.sizes):
        raise ConfigError(f"{len(spec.sizes)} anchor levels but {len(strides)} strides: {strides}")
    padded = int(math.ceil(size / 32) * 32)
    maps = [torch.zeros(1, 1, math.ceil(padded / s), math.ceil(padded / s)) for s in strides]
    image = ImageList(torch.zeros(1, 1, padded, padded), [(int(size), int(size))])
    generator = AnchorGenerator(spec.pixel_sizes(), spec.aspect_ratios)
    return generator(image, maps)[0].numpy().astype(float)


def grid_coverage(
    table: pd.DataFrame,
    meta: pd.DataFrame,
    anchors: AnchorSpec,
    size: int | None = None,
    strides: Sequence[int] = CXR_SMALL_STRIDES,
) -> pd.DataFrame:
    """:func:`anchor_coverage` against the anchors where the RPN really has them.

    Each box, at its place in the input image, against every anchor of
    :func:`grid_anchors`: what the RPN's matcher sees (an anchor is a positive at
    IoU >= 0.7). A thin box suffers most: a band 8 px wide can sit 4 px off the
    nearest anchor centre of a stride-8 grid, which alone caps the IoU near 1/3.
    """
    import torch
    from torchvision.ops import box_iou

    size = int(size or anchors.image_size)
    boxes = resized_boxes(table, meta, size)
    xyxy = boxes[["x", "y"]].to_numpy()
    xyxy = np.concatenate([xyxy, xyxy + boxes[["w", "h"]].to_numpy()], axis=1)
    grid = torch.as_tensor(grid_anchors(anchors, size, strides))
    best = np.zeros(len(boxes))
    for start in range(0, len(boxes), 256):  # 256 x 30,000 IoUs at a time
        chunk = torch.as_tensor(xyxy[start : start + 256])
        best[start : start + 256] = box_iou(chunk, grid).max(dim=1).values.numpy()
    return _coverage_table(boxes.assign(best_iou=best))


def _coverage_table(boxes: pd.DataFrame) -> pd.DataFrame:
    """Per class and "all": boxes, share of ``best_iou`` >= 0.5 and >= 0.7, median."""
    groups = [(name, g) for name, g in boxes.groupby("class_name", sort=False)]
    groups.sort(key=lambda item: CLASS_NAMES.index(item[0]))
    rows = []
    for name, g in [*groups, ("all", boxes)]:
        rows.append(
            {
                "class": name,
                "boxes": len(g),
                "iou>=0.5": float((g["best_iou"] >= 0.5).mean()),
                "iou>=0.7": float((g["best_iou"] >= 0.7).mean()),
                "median IoU": float(g["best_iou"].median()),
            }
        )
    return pd.DataFrame(rows).set_index("class")


def choose_input_size(
    table: pd.DataFrame,
    meta: pd.DataFrame,
    *,
    min_pixels: float = 12.0,
    percentile: float = 10.0,
    budget: tuple[int, int] = (256, 512),
    multiple: int = 32,
) -> tuple[int, str]:
    """The input side (pixels) at which the small boxes keep ``min_pixels``.

    The ``percentile``-th percentile of the boxes' shorter side (as a fraction of
    the image side) must span ``min_pixels`` pixels (default 12: one and a half
    cells of ``cxr_small``'s finest feature map, stride 8, so such a box covers a
    whole cell wherever the grid falls. With 8 px the sample's small-and-thin
    variant stayed at 256 px, where ``cxr_small`` scored 0.43 mAP@0.4 against 0.61
    at the 384 px that 12 px chooses; notebook 04); the side is rounded up to a
    multiple of ``multiple`` (the model pads to 32) and kept within ``budget``
    (training time grows with the square of the side). Returns the side and a
    sentence saying why.
    """
    low, high = int(budget[0]), int(budget[1])
    if not 0 < low <= high:
        raise ConfigError(f"budget must be (low, high) with 0 < low <= high, got {budget}")
    unit = resized_boxes(table, meta, 1)  # fractions of the image side
    if unit.empty:
        return low, f"input size {low} px: no finding boxes to size it from (budget minimum)"
    short = float(np.percentile(np.minimum(unit["w"], unit["h"]), percentile))
    need = min_pixels / short
    size = int(math.ceil(need / multiple) * multiple)
    chosen = min(max(size, low), high)
    what = (
        f"the {percentile:g}th percentile of the boxes' shorter side is {100 * short:.1f} % of "
        f"the image, {short * chosen:.1f} px at {chosen} px"
    )
    if size > high:
        why = f"{min_pixels:g} px would need {size} px, above the CPU budget of {high} px"
    elif size < low:
        why = f"{min_pixels:g} px would already hold at {size} px; the budget's minimum is {low}"
    else:
        why = f"the smallest multiple of {multiple} that keeps {min_pixels:g} px"
    return chosen, f"input size {chosen} px: {what} ({why})"


def compare_coverage(
    table: pd.DataFrame,
    meta: pd.DataFrame,
    anchor_sets: Mapping[str, AnchorSpec],
    size: int,
    *,
    on_grid: bool = False,
) -> pd.DataFrame:
    """:func:`anchor_coverage` of several anchor sets side by side, at input side ``size``.

    ``on_grid=True``: :func:`grid_coverage` instead (the anchors where the RPN has them).
    Columns: ``boxes``, then ``<name> >=0.5`` and ``<name> >=0.7`` for each set; one
    row per class and a last row "all".
    """
    coverage = grid_coverage if on_grid else anchor_coverage
    parts = []
    for name, spec in anchor_sets.items():
        cov = coverage(table, meta, spec, size)
        if not parts:
            parts.append(cov[["boxes"]])
        parts.append(
            cov[["iou>=0.5", "iou>=0.7"]].rename(
                columns={"iou>=0.5": f"{name} >=0.5", "iou>=0.7": f"{name} >=0.7"}
            )
        )
    return pd.concat(parts, axis=1)
