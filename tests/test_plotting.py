"""Tests for cxrkit.plotting: every function draws the expected artists, headless (Agg)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.colors import to_hex  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from cxrkit.labels import class_color  # noqa: E402
from cxrkit.plotting import (  # noqa: E402
    draw_boxes,
    find_figures_dir,
    plot_ap_vs_agreement,
    plot_box_stats,
    plot_class_counts,
    plot_history,
    plot_pr_curves,
    save_figure,
    show_image,
    show_truth_vs_prediction,
)

IMAGE = (np.arange(64 * 48) % 256).astype(np.uint8).reshape(64, 48)
BOXES = np.array([[2, 3, 20, 30], [10, 10, 40, 60], [5, 5, 9, 9]], dtype=float)
IDS = np.array([3, 0, 8])
ANN = pd.DataFrame(
    {
        "image_id": ["a", "a", "a", "b", "c"],
        "class_name": ["Cardiomegaly", "Cardiomegaly", "No finding", "No finding", "Nodule/Mass"],
        "class_id": [3, 3, 14, 14, 8],
        "rad_id": ["R1", "R2", "R3", "R1", "R2"],
        "x_min": [10, 12, np.nan, np.nan, 5],
        "y_min": [20, 22, np.nan, np.nan, 5],
        "x_max": [110, 108, np.nan, np.nan, 15],
        "y_max": [120, 118, np.nan, np.nan, 15],
    }
)
META = pd.DataFrame({"image_id": ["a", "b", "c"], "dim0": [200, 300, 100], "dim1": [150, 300, 120]})


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def rectangles(ax: Axes) -> list[Rectangle]:
    return [p for p in ax.patches if isinstance(p, Rectangle)]


def test_show_image_draws_one_rectangle_per_box():
    ax = show_image(IMAGE, BOXES, IDS, scores=[0.9, 0.5, 0.25], title="demo")
    assert isinstance(ax, Axes) and ax.get_title() == "demo"
    rects = rectangles(ax)
    assert len(rects) == 3
    assert [to_hex(r.get_edgecolor()) for r in rects] == [class_color(i) for i in IDS]
    assert (
        rects[0].get_xy() == (2, 3) and rects[0].get_width() == 18 and rects[0].get_height() == 27
    )
    texts = [t.get_text() for t in ax.texts]
    assert texts == ["Cardiomegaly 0.90", "Aortic enlargement 0.50", "Nodule/Mass 0.25"]
    assert ax.images[0].get_cmap().name == "gray"


def test_show_image_uses_given_axes_and_accepts_tensors():
    torch = pytest.importorskip("torch")
    fig, ax = plt.subplots()
    image = torch.from_numpy(np.stack([IMAGE] * 3) / 255.0).float()  # (3, H, W) like XrayDataset
    out = show_image(image, torch.tensor(BOXES[:2]), torch.tensor(IDS[:2]), ax=ax)
    assert out is ax and len(rectangles(ax)) == 2
    assert ax.images[0].get_array().shape == (64, 48)


def test_show_image_skips_no_finding_and_no_boxes():
    ax = show_image(IMAGE, [[np.nan] * 4, [1, 1, 5, 5]], [14, 2])
    assert len(rectangles(ax)) == 1 and [t.get_text() for t in ax.texts] == ["Calcification"]
    assert len(rectangles(show_image(IMAGE))) == 0


def test_show_image_length_mismatch():
    with pytest.raises(ValueError, match="3 boxes but 2 class_ids"):
        show_image(IMAGE, BOXES, IDS[:2])


def test_crowded_labels_do_not_cover_each_other():
    """Six boxes in one spot: the best-scoring label stays, overlapping ones move or go."""
    big = np.zeros((512, 512), dtype=np.uint8)
    boxes = np.array([[100, 100, 300, 300]] * 6, dtype=float) + np.arange(6)[:, None] * 4
    scores = np.array([0.2, 0.9, 0.3, 0.4, 0.5, 0.6])
    ax = show_image(big, boxes, [3] * 6, scores)
    ax.figure.canvas.draw()
    texts = [t.get_text() for t in ax.texts]
    assert len(rectangles(ax)) == 6 and 2 <= len(texts) < 6, texts
    assert texts[0] == "Cardiomegaly 0.90"  # highest score first, in its preferred slot
    extents = [t.get_window_extent() for t in ax.texts]
    for i, a in enumerate(extents):
        for b in extents[i + 1 :]:
            assert not a.overlaps(b)
    # Without avoidance every box is labelled (and the labels pile up).
    _, ax2 = plt.subplots()
    draw_boxes(ax2, boxes, [3] * 6, scores, avoid_overlap=False)
    assert len(ax2.texts) == 6
    plt.close("all")


def test_truth_vs_prediction_two_panels():
    fig = show_truth_vs_prediction(
        IMAGE, BOXES[:2], IDS[:2], BOXES, IDS, np.array([0.9, 0.2, 0.6]), score_thr=0.5
    )
    assert isinstance(fig, Figure)
    left, right = fig.axes[:2]
    assert len(rectangles(left)) == 2 and len(rectangles(right)) == 2  # 0.2 dropped
    assert "2 boxes" in right.get_title()


def test_truth_vs_prediction_overlay_dashed():
    fig = show_truth_vs_prediction(IMAGE, BOXES[:1], IDS[:1], BOXES, IDS, np.ones(3), overlay=True)
    (ax,) = fig.axes
    styles = [r.get_linestyle() for r in rectangles(ax)]
    assert styles.count("-") == 1 and styles.count("--") == 3
    truth_label = ax.texts[0]  # drawn first, under its box so predictions keep the top
    assert truth_label.get_position() == (BOXES[0, 0], BOXES[0, 3])
    assert truth_label.get_verticalalignment() == "top"


def test_plot_class_counts():
    ax = plot_class_counts(ANN)
    assert len(rectangles(ax)) == 30  # 15 classes x (rows, images)
    widths = [r.get_width() for r in ax.containers[0]]
    assert widths[3] == 2 and widths[14] == 2 and widths[8] == 1 and widths[0] == 0
    assert ax.get_xscale() == "log"


def test_plot_box_stats():
    fig = plot_box_stats(ANN, META)
    ax_sc, ax_hist, ax_heat = fig.axes[:3]
    points = sum(len(c.get_offsets()) for c in ax_sc.collections)
    assert points == 3  # finding boxes only
    heat = ax_heat.images[0].get_array()
    assert heat.sum() == 3 and heat.shape == (32, 32)
    np.testing.assert_allclose(
        sorted(ax_sc.collections[0].get_offsets()[:, 0]), [96 / 150, 100 / 150]
    )


def test_plot_box_stats_missing_meta():
    with pytest.raises(ValueError, match=r"missing from the meta table.*\['c'\]"):
        plot_box_stats(ANN, META.iloc[:2])


def test_plot_pr_curves():
    curves = {3: (np.array([0, 0.5, 1.0]), np.array([1.0, 0.8, 0.5])), 0: ([0, 1], [1, 1])}
    ax = plot_pr_curves(curves, {3: 0.7, 0: 1.0})
    assert len(ax.lines) == 2
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["0 Aortic enlargement (AP 1.000)", "3 Cardiomegaly (AP 0.700)"]
    assert "mAP 0.850" in ax.get_title()


def test_plot_history():
    history = pd.DataFrame(
        {
            "epoch": [1, 2, 3],
            "train_loss": [1.0, 0.7, 0.5],
            "valid_loss": [1.1, 0.9, 0.8],
            "map": [0.1, 0.2, 0.25],
        }
    )
    fig = plot_history(history)
    ax_loss, ax_map = fig.axes
    assert len(ax_loss.lines) == 2 and len(ax_map.lines) == 1
    np.testing.assert_array_equal(ax_map.lines[0].get_xdata(), [1, 2, 3])
    with pytest.raises(ValueError, match="no loss or mAP column"):
        plot_history(pd.DataFrame({"epoch": [1]}))


def test_save_figure_writes_png(tmp_path):
    fig, ax = plt.subplots(figsize=(2, 2))
    ax.plot([0, 1], [0, 1])
    path = save_figure(fig, "demo", folder=tmp_path / "figs")
    assert path == tmp_path / "figs" / "demo.png"
    image = plt.imread(path)
    assert image.ndim == 3 and image.shape[0] > 50
    assert list((tmp_path / "figs").iterdir()) == [path]  # no temporary left behind
    assert save_figure(ax, "demo.png", folder=tmp_path / "figs") == path


def test_save_figure_default_folder(tmp_path, monkeypatch):
    (tmp_path / "pyproject.toml").write_text("")
    (tmp_path / "notebooks").mkdir()
    monkeypatch.chdir(tmp_path / "notebooks")
    assert find_figures_dir() == tmp_path.resolve() / "figures"
    fig, _ = plt.subplots(figsize=(1, 1))
    assert save_figure(fig, "x").resolve() == tmp_path.resolve() / "figures" / "x.png"


def test_a_copy_of_the_notebooks_saves_its_own_figures(tmp_path, monkeypatch):
    """README: `cp -r notebooks my-notebooks`; running the copy leaves figures/ alone."""
    (tmp_path / "pyproject.toml").write_text("")
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "my-notebooks").mkdir()
    monkeypatch.chdir(tmp_path / "my-notebooks")
    fig, _ = plt.subplots(figsize=(1, 1))
    assert (
        save_figure(fig, "x").resolve() == tmp_path.resolve() / "my-notebooks" / "figures" / "x.png"
    )
    assert not (tmp_path / "figures").exists()


def test_save_figure_rejects_paths(tmp_path):
    fig, _ = plt.subplots()
    with pytest.raises(ValueError, match="plain file name"):
        save_figure(fig, "../evil", folder=tmp_path)


# Machado, Oliveira & Fernandes (2009), severity 1: linear-RGB matrices simulating
# protanopia, deuteranopia and tritanopia.
_CVD = {
    "protanopia": [
        [0.152286, 1.052583, -0.204868],
        [0.114503, 0.786281, 0.099216],
        [-0.003882, -0.048116, 1.051998],
    ],
    "deuteranopia": [
        [0.367322, 0.860646, -0.227968],
        [0.280085, 0.672501, 0.047413],
        [-0.011820, 0.042940, 0.968881],
    ],
    "tritanopia": [
        [1.255528, -0.076749, -0.178779],
        [-0.078411, 0.930809, 0.147602],
        [0.004733, 0.691367, 0.303900],
    ],
}


def _closest_pair(rgb: np.ndarray) -> float:
    from skimage.color import deltaE_ciede2000, rgb2lab

    lab = rgb2lab(rgb[None])[0]
    dist = deltaE_ciede2000(lab[:, None, :], lab[None, :, :])
    np.fill_diagonal(dist, np.inf)
    return float(dist.min())


def _seen(rgb: np.ndarray, vision: str) -> np.ndarray:
    """sRGB colours as a reader with ``vision`` ("normal" or a key of _CVD) sees them."""
    if vision == "normal":
        return rgb
    linear = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    seen = np.clip(linear @ np.array(_CVD[vision]).T, 0, 1)
    return np.where(seen <= 0.0031308, 12.92 * seen, 1.055 * seen ** (1 / 2.4) - 0.055)


@pytest.mark.parametrize("vision", ["normal", *_CVD])
def test_the_14_finding_colours_stay_apart(vision):
    from matplotlib.colors import to_rgb

    from cxrkit.labels import CLASS_COLORS, NUM_FINDINGS

    rgb = _seen(np.array([to_rgb(c) for c in CLASS_COLORS[:NUM_FINDINGS]]), vision)
    # 9 CIEDE2000 units: clearly different side by side (the old palette had 0.9)
    assert _closest_pair(rgb) >= 9.0


def _line_styles(ax: Axes) -> dict[str, tuple[str, str, str]]:
    """Legend label -> (colour, line style, marker) of each curve on ``ax``."""
    return {
        line.get_label(): (to_hex(line.get_color()), line.get_linestyle(), line.get_marker())
        for line in ax.lines
    }


def test_plot_pr_curves_tells_every_class_apart_without_colour():
    """Each class's curve differs from every other in line style or marker, and two
    classes whose colours look alike (for any vision) never share a line style."""
    from matplotlib.colors import to_rgb
    from skimage.color import deltaE_ciede2000, rgb2lab

    from cxrkit.labels import NUM_CLASSES

    curves = {c: (np.linspace(0, 1, 50), np.linspace(1, 0.1 * (c % 5), 50)) for c in range(15)}
    ax = plot_pr_curves(curves, {c: 0.05 * c for c in range(15)})
    styles = {int(label.split()[0]): style for label, style in _line_styles(ax).items()}
    assert sorted(styles) == list(range(NUM_CLASSES))
    assert all(marker not in ("None", "", None) for _, _, marker in styles.values())
    assert len({(color, ls) for color, ls, _ in styles.values()}) == NUM_CLASSES
    assert len({(ls, marker) for _, ls, marker in styles.values()}) == NUM_CLASSES
    rgb = np.array([to_rgb(styles[c][0]) for c in range(NUM_CLASSES)])
    for vision in ["normal", *_CVD]:
        lab = rgb2lab(_seen(rgb, vision)[None])[0]
        dist = deltaE_ciede2000(lab[:, None, :], lab[None, :, :])
        for i, j in zip(*np.nonzero(dist < 16), strict=True):
            if i < j:
                assert styles[i][1] != styles[j][1], (vision, i, j)


def test_plot_pr_curves_orders_by_ap_and_skips_classes_without_truth():
    curve = (np.array([0.1, 0.5, 0.9]), np.array([1.0, 0.6, 0.3]))
    ap = {0: 0.2, 3: 0.9, 8: float("nan"), 13: 0.5}  # 5 has no AP at all: drawn last
    ax = plot_pr_curves({c: curve for c in (0, 3, 5, 8, 13)}, ap)
    expected = [
        "3 Cardiomegaly (AP 0.900)",
        "13 Pulmonary fibrosis (AP 0.500)",
        "0 Aortic enlargement (AP 0.200)",
        "5 ILD",
    ]
    legend = ax.get_legend()
    assert [t.get_text() for t in legend.get_texts()] == expected
    assert [line.get_label() for line in ax.lines] == expected  # drawn in that order too
    assert min(t.get_fontsize() for t in legend.get_texts()) >= 8
    ax.figure.canvas.draw()
    assert legend.get_window_extent().x0 >= ax.get_window_extent().x1  # right of the axes


def _hist_outlines(ax: Axes) -> list:
    from matplotlib.patches import Polygon

    return [p for p in ax.patches if isinstance(p, Polygon)]


def _dashed(patch) -> bool:
    """Whether a patch's edge is dashed (a Patch reports "--" as an (offset, dashes) pair)."""
    ls = patch.get_linestyle()
    return not (ls in ("-", "solid") or (isinstance(ls, tuple) and ls[1] is None))


def test_plot_band_histogram_draws_step_outlines_and_names_the_thresholds():
    from cxrkit.plotting import plot_band_histogram

    y = np.array([0, 0, 1, 1, 0, 1])
    p = np.array([0.1, 0.4, 0.35, 0.8, 0.2, 0.9])
    ax = plot_band_histogram(p, y, 0.2, 0.7)
    outlines = _hist_outlines(ax)
    assert len(outlines) == 2 and not any(o.get_fill() for o in outlines)
    assert sorted(_dashed(o) for o in outlines) == [False, True]  # one solid, one dashed
    assert min(o.get_linewidth() for o in outlines) >= 1.5
    bars = [r for r in rectangles(ax) if r.get_width() < 0.2]  # the bands are wider
    assert not bars  # no filled bars left
    legend = ax.get_legend()
    labels = [t.get_text() for t in legend.get_texts()]
    assert labels == ["normal (3)", "abnormal (3)", "low 0.2", "high 0.7"]
    assert min(t.get_fontsize() for t in legend.get_texts()) >= 8
    assert len({line.get_linestyle() for line in ax.lines}) == 2  # low and high differ


def test_plot_box_stats_histograms_are_step_outlines():
    fig = plot_box_stats(ANN, META)
    ax_hist = fig.axes[1]
    outlines = _hist_outlines(ax_hist)
    assert len(outlines) == 2 and not any(o.get_fill() for o in outlines)
    assert sorted(_dashed(o) for o in outlines) == [False, True]  # one solid, one dashed
    legend = ax_hist.get_legend()
    assert [t.get_text() for t in legend.get_texts()] == ["width", "height"]
    assert min(t.get_fontsize() for t in legend.get_texts()) >= 8
    fig.canvas.draw()
    box = legend.get_window_extent()
    for outline in outlines:  # "best": the legend covers no corner of either outline
        corners = outline.get_transform().transform(outline.get_path().vertices)
        assert not box.count_contains(corners)


def test_label_text_reads_on_its_colour():
    from cxrkit.plotting import text_color_on

    assert text_color_on("#F0E442") == "black"  # yellow
    assert text_color_on("#882255") == "white"  # wine
    assert text_color_on("#000000") == "white" and text_color_on("#ffffff") == "black"


def test_labels_stay_inside_the_axes():
    fig, ax = plt.subplots(figsize=(3, 3))
    ax.imshow(IMAGE, cmap="gray")
    draw_boxes(ax, [[40, 20, 47, 30]], [0])  # near the right border: a long name
    fig.canvas.draw()
    (text,) = ax.texts
    assert text.get_window_extent().x1 <= ax.get_window_extent().x1 + 1
    plt.close(fig)


def test_class_legend_names_each_class_once():
    from cxrkit.plotting import add_class_legend

    fig, ax = plt.subplots()
    legend = add_class_legend(fig, [3, 0, 3, 8])
    assert [t.get_text() for t in legend.get_texts()] == [
        "Aortic enlargement",
        "Cardiomegaly",
        "Nodule/Mass",
    ]
    plt.close(fig)


def test_plot_ap_vs_agreement_one_labelled_point_per_shared_class():
    ap = {0: 0.5, 5: 0.1, 8: float("nan"), 14: 0.9}
    agreement = {0: 0.7, 5: 1.0, 8: 0.6, 12: 0.0, 14: 1.0}
    ax = plot_ap_vs_agreement(ap, agreement, n_truth={0: 12, 5: 2})
    points = np.concatenate([c.get_offsets() for c in ax.collections])
    assert points.tolist() == [[0.7, 0.5], [1.0, 0.1]]  # NaN, No finding, unshared: out
    assert [t.get_text() for t in ax.texts if t.get_text() in ("Aortic enlargement", "ILD")] == [
        "Aortic enlargement",
        "ILD",
    ]
    sizes = [c.get_sizes()[0] for c in ax.collections]
    assert sizes[0] > sizes[1]  # more truth boxes, bigger point
    assert to_hex(ax.collections[0].get_facecolor()[0]) == to_hex(class_color(0))
    with pytest.raises(ValueError, match="no finding class"):
        plot_ap_vs_agreement({14: 1.0}, {14: 1.0})


def test_classifier_plots_draw_what_they_claim():
    from cxrkit.plotting import (
        plot_band_histogram,
        plot_calibration,
        plot_map_intervals,
        plot_roc,
    )

    y = np.array([0, 0, 1, 1, 0, 1])
    p = np.array([0.1, 0.4, 0.35, 0.8, 0.2, 0.9])
    ax = plot_roc(y, {"a": p, "b": 1 - p})
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels[:2] == ["a (AUC 0.89)", "b (AUC 0.11)"]
    ax = plot_calibration(y, p, bins=2)
    points = ax.lines[1].get_xydata()
    assert points.ravel().tolist() == pytest.approx([0.2625, 0.25, 0.85, 1.0])
    ax = plot_band_histogram(p, y, 0.2, 0.7)
    assert sorted(line.get_xdata()[0] for line in ax.lines) == [0.2, 0.7]
    assert {t.get_text() for t in ax.texts} == {
        "drop boxes,\n14 1",
        "keep boxes,\n+ 14 (1-p)",
        "keep boxes",
    }
    boot = pd.DataFrame({"x": [0.1, 0.2, 0.3], "y": [0.5, 0.5, 0.5]})
    ax = plot_map_intervals(boot, {"x": 0.2, "y": 0.5})
    rows = {t.get_text(): y for t, y in zip(ax.get_yticklabels(), ax.get_yticks(), strict=True)}
    assert rows["x"] > rows["y"]  # the first setting on top
    bars = ax.collections[0].get_segments()  # the 90 % interval of each row
    assert [tuple(np.round(seg[:, 0], 3)) for seg in bars] == [(0.11, 0.29), (0.5, 0.5)]
