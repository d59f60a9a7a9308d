"""Plots for the notebooks: boxes on X-rays, label statistics, PR curves, training curves.

Every function draws on the ``ax`` it is given (or a new figure) and returns it;
none calls ``plt.show()``. Each class keeps one colour everywhere
(:func:`cxrkit.labels.class_color`); :func:`save_figure` writes ``figures/NAME.png``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib import patches
from matplotlib.axes import Axes
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure

from cxrkit._atomic import atomic_path
from cxrkit.annotations import sizes_of, validate_meta
from cxrkit.eda import summarize
from cxrkit.errors import ConfigError
from cxrkit.formats import BOX_COLUMNS
from cxrkit.labels import CLASS_NAMES, NO_FINDING_ID, class_color, class_name
from cxrkit.metrics import calibration_table, roc_auc, roc_curve

__all__ = [
    "show_image",
    "show_truth_vs_prediction",
    "plot_class_counts",
    "plot_box_stats",
    "plot_pr_curves",
    "plot_history",
    "add_class_legend",
    "text_color_on",
    "plot_ap_vs_agreement",
    "plot_roc",
    "plot_calibration",
    "plot_band_histogram",
    "plot_map_intervals",
    "save_figure",
    "find_figures_dir",
]

_NEUTRAL = "#ffd700"  # boxes drawn without a class
_LINE_STYLES = ("-", "--", "-.", ":")

# Okabe & Ito's colour-blind-safe palette, for plots whose series are not classes.
_OKABE_ITO = {
    "blue": "#0072b2",
    "vermilion": "#d55e00",
    "bluish green": "#009e73",
    "yellow": "#f0e442",
    "reddish purple": "#cc79a7",
    "sky blue": "#56b4e9",
    "orange": "#e69f00",
    "black": "#000000",
}

# A (line style, marker) per class id for curves, which keep their class colour too.
# No two classes share both, so a curve reads even in gray; and any two classes whose
# colours come within 16 CIEDE2000 units of each other for normal vision or simulated
# protanopia, deuteranopia or tritanopia (red/rose/olive/mustard, blue/purple...) get
# different line styles (tests/test_plotting.py checks both).
_CLASS_CURVE_STYLES: tuple[tuple[str, str], ...] = (
    ("-", "o"),  # 0 Aortic enlargement
    ("--", "o"),  # 1 Atelectasis
    ("-", "s"),  # 2 Calcification
    ("--", "s"),  # 3 Cardiomegaly
    (":", "o"),  # 4 Consolidation
    (":", "s"),  # 5 ILD
    (":", "^"),  # 6 Infiltration
    ("-.", "o"),  # 7 Lung Opacity
    ("-", "^"),  # 8 Nodule/Mass
    ("--", "^"),  # 9 Other lesion
    ("-", "D"),  # 10 Pleural effusion
    ("-.", "s"),  # 11 Pleural thickening
    ("-.", "^"),  # 12 Pneumothorax
    ("-.", "D"),  # 13 Pulmonary fibrosis
    ("--", "D"),  # 14 No finding
)
_LEGEND_FONT = 9  # points: about 11 px in a notebook's 8-inch figure shown 700 px wide


def _new_axes(ax: Axes | None, figsize: tuple[float, float] = (6, 6)) -> Axes:
    if ax is not None:
        return ax
    import matplotlib.pyplot as plt

    _, ax = plt.subplots(figsize=figsize)
    return ax


def _new_axes_row(
    axes: Sequence[Axes] | None, n: int, size: float = 5
) -> tuple[Figure, list[Axes]]:
    if axes is not None:
        axes = list(np.ravel(axes))
        if len(axes) != n:
            raise ConfigError(f"expected {n} axes, got {len(axes)}")
        return axes[0].figure, axes
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, n, figsize=(size * n, size), squeeze=False)
    return fig, list(axes[0])


def _to_numpy(x: Any) -> np.ndarray:
    """numpy view of a numpy array, list or (CPU/GPU) torch tensor."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _image_2d(image: Any) -> tuple[np.ndarray, str | None]:
    """(H, W) gray or (H, W, 3) colour image for imshow, from HW, HWC or CHW input."""
    img = _to_numpy(image)
    if img.ndim == 3 and img.shape[0] in (1, 3) and img.shape[-1] not in (1, 3):
        img = np.moveaxis(img, 0, -1)  # CHW tensor -> HWC
    if img.ndim == 3 and img.shape[-1] == 1:
        img = img[..., 0]
    if img.ndim == 3 and img.shape[-1] == 3 and np.allclose(img[..., 0], img[..., 1]):
        img = img[..., 0]  # a gray X-ray repeated in three channels for the model
    if img.ndim not in (2, 3):
        raise ConfigError(
            f"expected an (H, W), (H, W, C) or (C, H, W) image, got shape {img.shape}"
        )
    return img, ("gray" if img.ndim == 2 else None)


def _boxes(boxes: Any) -> np.ndarray:
    if boxes is None:
        return np.zeros((0, 4))
    arr = _to_numpy(boxes).astype(np.float64).reshape(-1, 4)
    return arr


def draw_boxes(
    ax: Axes,
    boxes: Any,
    class_ids: Any = None,
    scores: Any = None,
    line_width: float = 2,
    linestyle: str = "-",
    label: bool = True,
    avoid_overlap: bool = True,
    label_below: bool = False,
) -> list[patches.Rectangle]:
    """Draw ``[x_min, y_min, x_max, y_max]`` boxes on ``ax``; returns the rectangles.

    Boxes with NaN coordinates (the "No finding" rows of ``train.csv``) are
    skipped. Labels read "Class name" or "Class name 0.87" when scores are given.
    With ``avoid_overlap`` (default) a label that would cover one already on the
    axes (from this call or an earlier one, e.g. the truth under the predictions)
    moves to the other side of or inside its box, or is left out: a crowd of
    unreadable labels helps nobody, and the box keeps its class colour. Higher
    scores are labelled first. Labels go above their box, or below it with
    ``label_below`` (for the truth under predictions, so they do not compete).
    """
    boxes = _boxes(boxes)
    ids = None if class_ids is None else _to_numpy(class_ids).astype(np.int64).ravel()
    sc = None if scores is None else _to_numpy(scores).astype(np.float64).ravel()
    for name, values in (("class_ids", ids), ("scores", sc)):
        if values is not None and len(values) != len(boxes):
            raise ConfigError(f"{len(boxes)} boxes but {len(values)} {name}")
    drawn = []
    labels = []
    for i, (x0, y0, x1, y1) in enumerate(boxes):
        if not np.isfinite([x0, y0, x1, y1]).all():
            continue
        color = class_color(ids[i]) if ids is not None else _NEUTRAL
        rect = patches.Rectangle(
            (x0, y0),
            x1 - x0,
            y1 - y0,
            fill=False,
            edgecolor=color,
            linewidth=line_width,
            linestyle=linestyle,
        )
        ax.add_patch(rect)
        drawn.append(rect)
        text = class_name(ids[i]) if ids is not None else ""
        if sc is not None:
            text = f"{text} {sc[i]:.2f}".strip()
        if label and text:
            labels.append((-sc[i] if sc is not None else 0.0, i, text, color))
    if labels and avoid_overlap:
        ax.apply_aspect()  # an image's axes shrink to its aspect ratio when drawn
    slots = _SLOTS_BELOW if label_below else _SLOTS_ABOVE
    for _, i, text, color in sorted(labels, key=lambda item: item[:2]):
        _place_label(ax, boxes[i], text, color, slots if avoid_overlap else slots[:1])
    return drawn


# Where a box's label may go, in order of preference: (x, y, vertical alignment)
# with x and y as indices into the box [x0, y0, x1, y1]. Above the top edge, else
# below the bottom edge, else just inside the top edge; or the other way round.
_Slot = tuple[int, int, str]
_SLOTS_ABOVE: tuple[_Slot, ...] = ((0, 1, "bottom"), (0, 3, "top"), (0, 1, "top"))
_SLOTS_BELOW: tuple[_Slot, ...] = ((0, 3, "top"), (0, 1, "bottom"), (0, 3, "bottom"))


def _place_label(ax: Axes, box: np.ndarray, text: str, color: Any, slots: Sequence[_Slot]) -> None:
    """Put ``text`` at the first slot where it covers no earlier label of ``ax``.

    With one slot it is placed there unconditionally.
    """
    placed = ax.__dict__.setdefault("_cxrkit_label_extents", [])
    for xi, yi, va in slots:
        artist = ax.text(
            box[xi],
            box[yi],
            text,
            color=text_color_on(color),
            fontsize=8,
            va=va,
            ha="left",
            bbox={"facecolor": color, "alpha": 0.85, "pad": 1, "edgecolor": "none"},
            clip_on=True,
        )
        _keep_inside(ax, artist, box)
        if len(slots) == 1:
            return
        extent = artist.get_window_extent().expanded(1.05, 1.15)  # the bbox pad, roughly
        if not any(extent.overlaps(other) for other in placed):
            placed.append(extent)
            return
        artist.remove()


def _keep_inside(ax: Axes, artist: Any, box: np.ndarray) -> None:
    """Right-align a label at its box's right edge when it would run out of the axes.

    A label starting near the right border ("Aortic enlargement" on the patient's
    left) would otherwise be cut by the axes' clip box.
    """
    axes_right = ax.get_window_extent().x1
    if artist.get_window_extent().x1 > axes_right:
        artist.set_x(box[2])
        artist.set_horizontalalignment("right")


def text_color_on(color: Any) -> str:
    """Black or white, whichever reads better on ``color`` (WCAG relative luminance)."""
    rgb = np.asarray(to_rgb(color))
    linear = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    luminance = float(linear @ [0.2126, 0.7152, 0.0722])
    # contrast ratio with black (L + 0.05) / 0.05 against white 1.05 / (L + 0.05)
    return "black" if (luminance + 0.05) ** 2 > 0.05 * 1.05 else "white"


def add_class_legend(
    target: Axes | Figure, class_ids: Iterable[int], title: str | None = "class", **kwargs: Any
) -> Any:
    """A legend of class colours for the classes in ``class_ids`` (each once, in id order).

    Box labels that would overlap are left out by :func:`draw_boxes`; this legend
    names every colour drawn, so each box still says its class. ``kwargs`` go to
    ``legend`` (on a Figure the default is below the panels).
    """
    ids = sorted({int(c) for c in class_ids})
    handles = [
        patches.Patch(facecolor="none", edgecolor=class_color(c), linewidth=2, label=class_name(c))
        for c in ids
    ]
    if isinstance(target, Figure):
        kwargs = {"loc": "lower center", "ncol": min(len(ids), 5), **kwargs}
    return target.legend(handles=handles, title=title, fontsize=9, **kwargs)


def show_image(
    image: Any,
    boxes: Any = None,
    class_ids: Any = None,
    scores: Any = None,
    ax: Axes | None = None,
    title: str | None = None,
    line_width: float = 2,
    linestyle: str = "-",
) -> Axes:
    """Show a gray X-ray with its boxes, coloured and labelled by class.

    ``image`` may be a uint8/float array (H, W), (H, W, 3) or a (C, H, W) tensor as
    returned by :class:`cxrkit.data.XrayDataset`. ``boxes`` are in the pixels of
    *this* image (resized boxes on a PNG, original boxes on a DICOM array); drawing
    original boxes on a resized image is the classic bug this makes visible.
    Returns the Axes.
    """
    ax = _new_axes(ax)
    img, cmap = _image_2d(image)
    ax.imshow(img, cmap=cmap)
    draw_boxes(ax, boxes, class_ids, scores, line_width=line_width, linestyle=linestyle)
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    return ax


def show_truth_vs_prediction(
    image: Any,
    truth_boxes: Any,
    truth_ids: Any,
    pred_boxes: Any,
    pred_ids: Any,
    pred_scores: Any,
    *,
    score_thr: float = 0.0,
    overlay: bool = False,
    axes: Sequence[Axes] | Axes | None = None,
    title: str | None = None,
    line_width: float = 2,
) -> Figure:
    """Compare ground truth with predictions on one image.

    Two panels (truth left, prediction right) by default; with ``overlay=True``
    one panel with truth solid (labels below the box) and predictions dashed
    (labels above, best scores first, overlapping ones left out). Predictions
    scoring below ``score_thr`` are not drawn. Returns the Figure.
    """
    pb, pi, ps = _boxes(pred_boxes), _to_numpy(pred_ids).ravel(), _to_numpy(pred_scores).ravel()
    keep = ps >= score_thr
    pb, pi, ps = pb[keep], pi[keep], ps[keep]
    n_truth = int(np.isfinite(_boxes(truth_boxes)).all(axis=1).sum())
    if overlay:
        if isinstance(axes, Axes):
            ax = axes
        else:
            fig, (ax,) = _new_axes_row(axes, 1, size=7)
        show_image(image, ax=ax)
        draw_boxes(ax, truth_boxes, truth_ids, line_width=line_width, label_below=True)
        draw_boxes(ax, pb, pi, ps, line_width=line_width, linestyle="--")
        ax.set_title(title or f"truth (solid, {n_truth}) vs prediction (dashed, {len(pb)})")
        return ax.figure
    fig, (left, right) = _new_axes_row(axes, 2, size=6)
    show_image(
        image,
        truth_boxes,
        truth_ids,
        ax=left,
        title=f"truth ({n_truth} boxes)",
        line_width=line_width,
    )
    show_image(
        image,
        pb,
        pi,
        ps,
        ax=right,
        title=f"prediction ({len(pb)} boxes, score >= {score_thr:g})",
        line_width=line_width,
    )
    if title:
        fig.suptitle(title)
    return fig


def plot_class_counts(df: pd.DataFrame, ax: Axes | None = None) -> Axes:
    """Horizontal bars of rows (boxes) and images per class, on a log scale.

    The log scale matters: "No finding" and "Aortic enlargement" outnumber
    "Pneumothorax" by more than 30 to 1, which a linear axis would hide.
    """
    table = summarize(df)
    ax = _new_axes(ax, figsize=(8, 6))
    y = np.arange(len(table))
    colors = [class_color(i) for i in table.index]
    ax.barh(y - 0.2, table["rows"], height=0.4, color=colors, label="rows (boxes)")
    ax.barh(
        y + 0.2,
        table["images"],
        height=0.4,
        color=colors,
        alpha=0.45,
        hatch="//",
        label="images",
    )
    ax.set_yticks(
        y, [f"{i} {name}" for i, name in zip(table.index, table["class_name"], strict=True)]
    )
    ax.invert_yaxis()
    if (table[["rows", "images"]].to_numpy() > 0).any():
        ax.set_xscale("log")
        ax.set_xlim(left=0.8)  # bars start below 1, so a class seen once is still visible
    ax.set_xlabel("count (log scale)")
    ax.set_title("annotations per class")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))  # outside: never hides a bar
    return ax


def plot_box_stats(
    df: pd.DataFrame,
    meta: pd.DataFrame,
    axes: Sequence[Axes] | None = None,
    bins: int = 32,
) -> Figure:
    """Box sizes and positions relative to their image, in three panels.

    1. relative width vs height, one colour per class (big "Cardiomegaly" boxes,
       tiny "Nodule/Mass" ones: anchor sizes must cover both);
    2. histograms of relative width and height;
    3. a heatmap of box centres (image coordinates, y down): findings sit in the
       lungs and the mediastinum, so a flip left-right is a plausible augmentation
       while a flip up-down is not.

    ``meta`` gives the original ``dim0`` (height) and ``dim1`` (width) of each image.
    """
    meta = validate_meta(meta)
    boxes = df[df["class_id"].astype(np.int64) != NO_FINDING_ID].dropna(subset=BOX_COLUMNS)
    hw = sizes_of(boxes["image_id"].astype(str), meta, "to plot relative box sizes")
    xy = boxes[BOX_COLUMNS].to_numpy(dtype=np.float64)
    rel_w = (xy[:, 2] - xy[:, 0]) / hw[:, 1]
    rel_h = (xy[:, 3] - xy[:, 1]) / hw[:, 0]
    cx = (xy[:, 0] + xy[:, 2]) / 2 / hw[:, 1]
    cy = (xy[:, 1] + xy[:, 3]) / 2 / hw[:, 0]
    cls = boxes["class_id"].to_numpy(dtype=np.int64)

    fig, (ax_sc, ax_hist, ax_heat) = _new_axes_row(axes, 3, size=4.5)
    for c in np.unique(cls):
        sel = cls == c
        ax_sc.scatter(
            rel_w[sel], rel_h[sel], s=6, alpha=0.6, color=class_color(c), label=CLASS_NAMES[c]
        )
    ax_sc.set(
        xlim=(0, 1), ylim=(0, 1), xlabel="width / image width", ylabel="height / image height"
    )
    ax_sc.set_title("box size")
    if len(cls):  # to the left of the panels: the scatter keeps its whole area
        legend = ax_sc.legend(
            fontsize=8,
            markerscale=3,
            loc="upper right",
            bbox_to_anchor=(-0.2, 1.0),
            borderaxespad=0,
        )
        for handle in legend.legend_handles:
            handle.set_alpha(1.0)  # the points are translucent, the key need not be
    edges = np.linspace(0, 1, bins + 1)
    # step outlines, solid and dashed: where the two overlap both stay readable
    for values, name, color, ls in (
        (rel_w, "width", _OKABE_ITO["blue"], "-"),
        (rel_h, "height", _OKABE_ITO["vermilion"], "--"),
    ):
        ax_hist.hist(values, bins=edges, histtype="step", lw=2, ls=ls, color=color, label=name)
    ax_hist.set(xlabel="fraction of the image side", ylabel="boxes", title="box width and height")
    ax_hist.legend(fontsize=_LEGEND_FONT, loc="best", handlelength=3)  # where no step is
    heat, _, _ = np.histogram2d(cy, cx, bins=[edges, edges])
    im = ax_heat.imshow(heat, extent=(0, 1, 1, 0), cmap="magma", interpolation="nearest")
    ax_heat.set(xlabel="x / width", ylabel="y / height", title=f"box centres ({len(cls)} boxes)")
    fig.colorbar(im, ax=ax_heat, fraction=0.046, pad=0.04)
    return fig


def plot_pr_curves(
    curves: Mapping[int, tuple[Any, Any]],
    ap: Mapping[int, float] | None = None,
    ax: Axes | None = None,
    title: str | None = None,
) -> Axes:
    """Precision-recall curve per class, labelled with its average precision.

    ``curves`` maps class id -> ``(recall, precision)`` arrays (as returned by
    :func:`cxrkit.metrics.pr_curves`); ``ap`` maps class id -> AP. The title shows
    the mean of the given APs (the competition's mAP when all 15 are there).

    Curves are drawn, and listed in the legend, from the best AP down (classes
    without an AP in ``ap`` last, by id); a class whose AP is NaN (no truth) is
    left out. Each class keeps its colour and gets its own line style and marker
    (``_CLASS_CURVE_STYLES``), so the low curves that pile up stay apart for a
    colour-blind reader too. The legend sits outside the axes, on the right.
    """
    ax = _new_axes(ax, figsize=(9, 6))
    ap = dict(ap or {})

    def _has_ap(cid: int) -> bool:
        return cid in ap and ap[cid] is not None and bool(np.isfinite(ap[cid]))

    drawn = [cid for cid in curves if _has_ap(cid) or cid not in ap]  # NaN AP: no truth
    drawn.sort(key=lambda cid: (0, -ap[cid], cid) if _has_ap(cid) else (1, 0.0, cid))
    for k, cid in enumerate(drawn):
        recall, precision = curves[cid]
        label = f"{cid} {class_name(cid)}"
        if _has_ap(cid):
            label += f" (AP {ap[cid]:.3f})"
        ls, marker = _CLASS_CURVE_STYLES[int(cid)]
        ax.plot(
            _to_numpy(recall),
            _to_numpy(precision),
            color=class_color(cid),
            lw=2,
            ls=ls,
            marker=marker,
            ms=6,
            mec="black",  # pale colours (ILD's yellow) still show on white
            mew=0.6,
            markevery=_marks_along(_to_numpy(recall), start=0.05 + 0.015 * (k % 5)),
            label=label,
            drawstyle="steps-post",
        )
    ax.set(xlim=(0, 1), ylim=(-0.02, 1.02), xlabel="recall", ylabel="precision")
    values = [v for v in ap.values() if v is not None and np.isfinite(v)]
    ax.set_title(
        title or (f"precision-recall, mAP {np.mean(values):.3f}" if values else "precision-recall")
    )
    if drawn:  # outside the axes: it never hides the low curves
        ax.legend(
            fontsize=_LEGEND_FONT,
            loc="upper left",
            bbox_to_anchor=(1.01, 1.0),
            borderaxespad=0,
            handlelength=4,  # long enough to show each dash pattern
        )
    ax.grid(alpha=0.3)
    return ax


def _marks_along(recall: np.ndarray, start: float, step: float = 0.1) -> list[int]:
    """Indices of the first points at recall ``start``, ``start + step``, ...: markers
    spread along the x axis, not bunched where the first detections make precision jump.
    Curves get different ``start`` values so that their markers do not stack."""
    targets = np.arange(start, 1.0, step)
    idx = np.unique(np.searchsorted(np.asarray(recall, dtype=float), targets))
    return [int(i) for i in idx if i < len(recall)]


def plot_history(
    history: pd.DataFrame | Sequence[Mapping[str, Any]], axes: Sequence[Axes] | None = None
) -> Figure:
    """Training curves: every ``*loss*`` column on the left, every ``*map*``/``*ap*`` on the right.

    ``history`` is one row per epoch (a DataFrame or a list of dicts, as written
    by :func:`cxrkit.fit.fit`); the x axis is its ``epoch`` column if present.
    Comparing train and validation loss shows over-fitting; the mAP panel shows
    whether lower loss still buys better detections.
    """
    df = pd.DataFrame(history)
    if df.empty:
        raise ConfigError("history is empty: nothing to plot")
    x = df["epoch"].to_numpy() if "epoch" in df.columns else np.arange(1, len(df) + 1)
    loss_cols = [c for c in df.columns if "loss" in str(c).lower()]
    map_cols = [c for c in df.columns if re.search(r"(^|_)m?ap($|_|@|\d)", str(c).lower())]
    if not loss_cols and not map_cols:
        raise ConfigError(f"history has no loss or mAP column; columns are {list(df.columns)}")
    fig, (ax_loss, ax_map) = _new_axes_row(axes, 2, size=5)
    for col in loss_cols:
        ax_loss.plot(x, df[col].to_numpy(dtype=float), marker="o", ms=3, label=str(col))
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss")
    for col in map_cols:
        ax_map.plot(x, df[col].to_numpy(dtype=float), marker="o", ms=3, label=str(col))
    ax_map.set(xlabel="epoch", ylabel="mAP", title="validation mAP")
    for ax, cols in ((ax_loss, loss_cols), (ax_map, map_cols)):
        ax.grid(alpha=0.3)
        if cols:
            ax.legend()
    return fig


def find_figures_dir(start: str | os.PathLike | None = None) -> Path:
    """Where a notebook running in ``start`` (default: the current folder) saves figures.

    The repository's own ``notebooks/`` (or its root) saves to the top-level
    ``figures/`` that the README shows; any other folder, such as a copy of the
    notebooks to play with, saves to its own ``figures/``, so running a copy never
    rewrites the repository's committed figures.
    """
    here = Path(start or Path.cwd()).resolve()
    for root in (here, here.parent):
        is_repository = (root / "pyproject.toml").is_file() and (root / "notebooks").is_dir()
        if is_repository and here in (root, root / "notebooks"):
            return root / "figures"
    return here / "figures"


def save_figure(fig: Figure | Axes, name: str, folder: str | os.PathLike | None = None) -> Path:
    """Save ``fig`` as ``FOLDER/NAME.png`` (dpi 100, tight bounding box) and return the path.

    ``folder`` defaults to :func:`find_figures_dir`. The PNG is written to a
    temporary file and renamed, so an interrupted run never leaves a broken image
    that looks finished.
    """
    if isinstance(fig, Axes):
        fig = fig.figure
    stem = name[:-4] if name.lower().endswith(".png") else name
    if not stem or Path(stem).name != stem or stem in (".", ".."):
        raise ConfigError(f"figure name must be a plain file name, got {name!r}")
    path = Path(folder) if folder is not None else find_figures_dir()
    path = path / f"{stem}.png"
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, bbox_inches="tight", format="png")
    return path


def plot_ap_vs_agreement(
    ap: Mapping[int, float],
    agreement: Mapping[int, float],
    n_truth: Mapping[int, int] | None = None,
    ax: Axes | None = None,
    xlabel: str = "radiologists' agreement",
) -> Axes:
    """One labelled point per finding class: its AP against how much the readers agree.

    ``ap`` and ``agreement`` map class id -> value (e.g. ``MapResult.ap`` and a
    column of :func:`cxrkit.eda.radiologist_agreement`); classes missing from either,
    and No finding, are left out. ``n_truth`` (class id -> truth boxes) sizes the
    points, so a class scored on one box does not look as solid as one scored on
    twenty. A model rarely beats its labels: low agreement caps what AP can mean.
    Each name goes to the first of a few places around its point that overlaps no
    name placed before it.
    """
    classes = sorted(
        (
            c
            for c in set(ap) & set(agreement)
            if c != NO_FINDING_ID and np.isfinite(ap[c]) and np.isfinite(agreement[c])
        ),
        key=lambda c: (-ap[c], c),
    )
    if not classes:
        raise ConfigError("no finding class has both an AP and an agreement value")
    ax = _new_axes(ax, figsize=(7, 5.5))
    ax.set(xlim=(-0.05, 1.12), ylim=(-0.05, 1.08), xlabel=xlabel, ylabel="AP")
    ax.set_title("AP per class vs reader agreement")
    renderer = ax.figure.canvas.get_renderer()
    placed = []
    for c in classes:
        size = 25 + 25 * (n_truth or {}).get(c, 1)  # points squared
        ax.scatter(agreement[c], ap[c], s=size, color=class_color(c), edgecolor="black", lw=0.5)
        r = 0.5 * np.sqrt(size) + 1  # marker radius in points, plus a gap
        places = [(r, 1, "left"), (r, -9, "left"), (-r, 1, "right"), (-r, -9, "right")]
        for k, (dx, dy, ha) in enumerate(places):
            text = ax.annotate(
                class_name(c),
                (agreement[c], ap[c]),
                xytext=(dx, dy),
                textcoords="offset points",
                ha=ha,
                fontsize=8,
            )
            box = text.get_window_extent(renderer)
            if k == len(places) - 1 or not any(box.overlaps(b) for b in placed):
                break
            text.remove()
        placed.append(box)
    if n_truth:
        ax.text(
            0.01, 0.99, "point area ~ truth boxes", transform=ax.transAxes, va="top", fontsize=8
        )
    ax.grid(alpha=0.3)
    return ax


# ------------------------------------------------ the image-level classifier (notebook 07)
def plot_roc(
    labels: Any, scores: Mapping[str, Any] | Any, ax: Axes | None = None, title: str = "ROC"
) -> Axes:
    """ROC curve(s) of abnormal-vs-normal scores, each labelled with its AUC.

    ``scores``: one array (same order as ``labels``) or a mapping name -> array.
    The dashed diagonal is a coin toss (AUC 0.5).
    """
    ax = _new_axes(ax, figsize=(5, 5))
    named = scores if isinstance(scores, Mapping) else {"classifier": scores}
    for k, (name, values) in enumerate(named.items()):
        fpr, tpr, _ = roc_curve(labels, values)
        auc = roc_auc(labels, values)
        ax.plot(
            fpr, tpr, lw=2, ls=_LINE_STYLES[k % len(_LINE_STYLES)], label=f"{name} (AUC {auc:.2f})"
        )
    ax.plot([0, 1], [0, 1], color="grey", ls="--", lw=1, label="chance (AUC 0.50)")
    ax.set(
        xlim=(0, 1), ylim=(0, 1.01), aspect="equal", title=title,
        xlabel="false positive rate (normal images flagged)",
        ylabel="true positive rate (abnormal images found)",
    )  # fmt: skip
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    return ax


def plot_calibration(labels: Any, probs: Any, bins: int = 5, ax: Axes | None = None) -> Axes:
    """Reliability diagram: per probability bin, the share of images that are
    abnormal against the mean predicted ``p_abnormal`` (points on the diagonal are
    calibrated); each point is labelled with its image count."""
    ax = _new_axes(ax, figsize=(5, 5))
    table = calibration_table(labels, probs, bins)
    ax.plot([0, 1], [0, 1], color="grey", ls="--", lw=1, label="calibrated")
    ax.plot(table["mean_p_abnormal"], table["share_abnormal"], marker="o", lw=2, label="classifier")
    for row in table.itertuples():
        ax.annotate(
            f"{row.images}", (row.mean_p_abnormal, row.share_abnormal),
            textcoords="offset points", xytext=(6, -12), fontsize=8,
        )  # fmt: skip
    ax.set(
        xlim=(0, 1), ylim=(-0.02, 1.02), aspect="equal", title="calibration (images per bin)",
        xlabel="mean predicted p_abnormal", ylabel="share of images that are abnormal",
    )  # fmt: skip
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(alpha=0.3)
    return ax


def plot_band_histogram(
    probs: Any, labels: Any, low: float, high: float, ax: Axes | None = None, bins: int = 20
) -> Axes:
    """Histogram of ``p_abnormal`` for normal and abnormal images, with the three
    bands of :func:`cxrkit.postprocess.apply_classifier` shaded and named.

    The two histograms are step outlines (normal solid, abnormal dashed) so that
    where they overlap both stay readable; the ``low`` and ``high`` thresholds are
    named in the legend, which sits outside the axes on the right.
    """
    ax = _new_axes(ax, figsize=(8, 4))
    p = _to_numpy(probs).astype(float)
    y = _to_numpy(labels).astype(float) > 0.5
    edges = np.linspace(0, 1, bins + 1)
    for sel, name, color, ls in (
        (~y, "normal", _OKABE_ITO["blue"], "-"),
        (y, "abnormal", _OKABE_ITO["vermilion"], "--"),
    ):
        ax.hist(
            p[sel], bins=edges, histtype="step", lw=2, ls=ls, color=color,
            label=f"{name} ({sel.sum()})",
        )  # fmt: skip
    bands = (
        (0.0, low, _OKABE_ITO["bluish green"], "drop boxes,\n14 1"),
        (low, high, _OKABE_ITO["yellow"], "keep boxes,\n+ 14 (1-p)"),
        (high, 1.0, _OKABE_ITO["reddish purple"], "keep boxes"),
    )
    top = ax.get_ylim()[1]
    for x0, x1, color, text in bands:
        if x1 > x0:
            ax.axvspan(x0, x1, color=color, alpha=0.12, lw=0)
            ax.text((x0 + x1) / 2, top * 0.97, text, ha="center", va="top", fontsize=8)
    ax.axvline(low, color="black", ls=":", lw=1.5, label=f"low {low:g}")
    ax.axvline(high, color="black", ls="-.", lw=1.5, label=f"high {high:g}")
    ax.set(
        xlim=(0, 1), xlabel="p_abnormal", ylabel="images",
        title=f"out-of-fold p_abnormal and the bands (low {low:g}, high {high:g})",
    )  # fmt: skip
    # outside the axes: the bands' names and the bars stay clear
    ax.legend(
        fontsize=_LEGEND_FONT, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0,
        handlelength=3,
    )  # fmt: skip
    return ax


def plot_map_intervals(
    boot: pd.DataFrame, maps: Mapping[str, float], ax: Axes | None = None, level: float = 0.9
) -> Axes:
    """mAP of several settings with the central ``level`` interval of their
    bootstrap draws (:func:`cxrkit.metrics.bootstrap_map`), one row each."""
    ax = _new_axes(ax, figsize=(8, 0.5 * len(maps) + 1.5))
    names = list(maps)
    tail = (1 - level) / 2
    lo = np.array([boot[n].quantile(tail) for n in names])
    hi = np.array([boot[n].quantile(1 - tail) for n in names])
    value = np.array([maps[n] for n in names])
    y = np.arange(len(names))[::-1]
    ax.errorbar(value, y, xerr=[value - lo, hi - value], fmt="o", capsize=4, color="black")
    ax.set_yticks(y, names)
    ax.set(xlabel=f"mAP@0.4 ({level:.0%} bootstrap interval)", title="test mAP@0.4 by setting")
    ax.grid(axis="x", alpha=0.3)
    return ax


def plot_class_ap(
    results: Mapping[str, Any], ax: Axes | None = None, title: str = "AP@0.4 per class"
) -> Axes:
    """Grouped horizontal bars: the AP of each class (those with truth) for each predictor.

    ``results``: name -> :class:`cxrkit.metrics.MapResult` (or a mapping class id -> AP).
    Where one bar is long and the other short, the two predictors make different
    errors: what a fusion of them can use (notebook 08).
    """
    aps = {name: dict(getattr(r, "ap", r)) for name, r in results.items()}
    classes = sorted({c for ap in aps.values() for c in ap})
    ax = _new_axes(ax, figsize=(8, 0.45 * len(classes) * max(1, len(aps) / 2) + 1.5))
    height = 0.8 / max(len(aps), 1)
    y = np.arange(len(classes))[::-1]
    for k, (name, ap) in enumerate(aps.items()):
        values = [ap.get(c, np.nan) for c in classes]
        ax.barh(y + (len(aps) / 2 - k - 0.5) * height, values, height, label=name)
    ax.set_yticks(y, [CLASS_NAMES[c] for c in classes])
    ax.set(xlim=(0, 1), xlabel="AP at IoU 0.4", title=title)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))  # outside: never over a bar
    ax.grid(axis="x", alpha=0.3)
    return ax
