"""Draw the 14 VinBigData findings into a synthetic chest and box what was drawn.

Each finding has its own consistent appearance at a plausible place; its box is
the true extent of what was drawn. :func:`place_findings` puts the planned
findings of one image where they do not cover each other.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import cv2
import numpy as np

from cxrkit.errors import ConfigError
from cxrkit.sample.anatomy import Anatomy
from cxrkit.sample.draw import blend, segment_distance, smooth_noise, soft

__all__ = ["FINDING_VARIANTS", "Box", "Finding", "place_findings", "renderers"]

Box = tuple[float, float, float, float]  # x_min, y_min, x_max, y_max in pixels

# A finding renderer returns (masks, apply): one boolean mask per box (its true
# extent) and a function that draws it into an image in place.
Finding = tuple[list[np.ndarray], Callable[[np.ndarray], None]]


def _adder(delta: np.ndarray) -> Callable[[np.ndarray], None]:
    """A finding that only adds density (brighter on the display)."""

    def apply(img: np.ndarray) -> None:
        img += delta

    return apply


def _disk(a: Anatomy, x: float, y: float, r: float) -> np.ndarray:
    return np.hypot(a.X - x, a.Y - y) < r


def _aortic_enlargement(a: Anatomy, rng: np.random.Generator, h: int) -> Finding:
    """A large round bulge of the aortic knob, left of the upper mediastinum (image right)."""
    r = a.k * rng.uniform(0.045, 0.062)
    x = a.cx + a.half_gap + 0.55 * r
    y = a.apex + rng.uniform(0.11, 0.15)
    mask = _disk(a, x, y, r)
    alpha = soft(mask, 1.0)
    return [mask], lambda img: blend(img, alpha, 0.72)


def _atelectasis(a: Anatomy, rng: np.random.Generator, h: int) -> Finding:
    """A plate-like band of collapsed lung, nearly horizontal, in a lower zone."""
    side = int(rng.integers(2))
    x, y = a.point_in_lung(rng, side, (0.45, 0.78), (0.35, 0.65))
    length = a.k * rng.uniform(0.10, 0.15)
    angle = np.deg2rad(rng.uniform(-25, 25))
    half = 0.5 * length * np.array([np.cos(angle), np.sin(angle)])
    d = segment_distance(a.X, a.Y, (x - half[0], y - half[1]), (x + half[0], y + half[1]))
    thick = a.k * rng.uniform(0.016, 0.022)
    mask = d < thick
    alpha = 0.9 * np.clip(1 - (d / thick) ** 2, 0, 1)
    return [mask], lambda img: blend(img, alpha, 0.62)


def _calcification(a: Anatomy, rng: np.random.Generator, h: int) -> Finding:
    """A cluster of small, very bright dots (calcified granulomas)."""
    side = int(rng.integers(2))
    x, y = a.point_in_lung(rng, side, (0.2, 0.6), (0.3, 0.7))
    spread = a.k * rng.uniform(0.022, 0.032)
    n = int(rng.integers(5, 9))
    angles = rng.uniform(0, 2 * np.pi, n)
    radii = spread * np.sqrt(rng.uniform(0.1, 1.0, n))
    # Four dots on the rim, a quarter turn apart: the cluster has its full size both ways.
    radii[:4] = spread
    angles[:4] = angles[0] + np.arange(4) * np.pi / 2
    mask = np.zeros(a.X.shape, bool)
    for ang, rad in zip(angles, radii, strict=True):
        mask |= _disk(
            a, x + rad * np.cos(ang), y + rad * np.sin(ang), a.k * rng.uniform(0.006, 0.01)
        )
    alpha = soft(mask, 0.7)
    return [mask], lambda img: blend(img, alpha, 0.97)


def _cardiomegaly(a: Anatomy, rng: np.random.Generator, h: int) -> Finding:
    """An enlarged heart: the box spans the heart's full width, down to the diaphragm."""
    hx, hy, _, hb = a.heart
    ha = a.k * rng.uniform(0.19, 0.22)
    hb = hb * rng.uniform(1.1, 1.25)
    hx = hx + a.k * 0.02
    ellipse = ((a.X - hx) / ha) ** 2 + ((a.Y - hy) / hb) ** 2 < 1
    mask = ellipse & (a.Y <= max(a.base))
    alpha = soft(ellipse, 0.004 * h)
    return [mask], lambda img: blend(img, alpha, 0.71)


def _consolidation(a: Anatomy, rng: np.random.Generator, h: int) -> Finding:
    """Dense homogeneous opacity limited by the pleura, with dark air bronchograms."""
    side = int(rng.integers(2))
    x, y = a.point_in_lung(rng, side, (0.4, 0.72), (0.35, 0.65))
    ra, rb = a.k * rng.uniform(0.07, 0.095), a.k * rng.uniform(0.06, 0.085)
    theta = np.arctan2(a.Y - y, a.X - x)
    wobble = 1 + sum(0.07 * np.cos(j * theta + rng.uniform(0, 6.3)) for j in (2, 3, 5))
    region = (((a.X - x) / ra) ** 2 + ((a.Y - y) / rb) ** 2 < wobble**2) & a.lung_masks[side]
    alpha = 0.92 * soft(region, 1.5)
    s = a.side_sign(side)
    bronchi = np.zeros(a.X.shape, np.float32)
    start = (x - s * 0.6 * ra, y - 0.3 * rb)
    for _ in range(3):
        ang = rng.uniform(-0.7, 0.7) + (0.0 if s > 0 else np.pi) + 0.4
        end = (start[0] + 1.2 * ra * np.cos(ang), start[1] + 1.2 * rb * np.sin(ang))
        d = segment_distance(a.X, a.Y, start, end)
        bronchi = np.maximum(bronchi, np.clip(1 - d / (0.005 * a.k), 0, 1))
    bronchi *= region

    def apply(img: np.ndarray) -> None:
        blend(img, alpha, 0.64)
        blend(img, 0.8 * bronchi, 0.30)

    return [region], apply


def _ild(a: Anatomy, rng: np.random.Generator, h: int) -> Finding:
    """Interstitial lung disease: a fine reticular net in the lower zones, often both sides."""
    sides = [0, 1] if rng.random() < 0.7 else [int(rng.integers(2))]
    band = smooth_noise(rng, a.X.shape, 0.004 * h) - 0.8 * smooth_noise(rng, a.X.shape, 0.01 * h)
    net = np.exp(-((band / 0.35) ** 2)).astype(np.float32)  # zero crossings: a network
    masks, alphas = [], []
    for side in sides:
        x, y = a.point_in_lung(rng, side, (0.62, 0.78), (0.4, 0.6))
        ra, rb = a.k * rng.uniform(0.08, 0.1), a.k * rng.uniform(0.07, 0.09)
        region = (((a.X - x) / ra) ** 2 + ((a.Y - y) / rb) ** 2 < 1) & a.lung_masks[side]
        masks.append(region)
        alphas.append(soft(region, 1.5))
    alpha = np.maximum.reduce(alphas)

    def apply(img: np.ndarray) -> None:
        img += alpha * (0.06 + 0.24 * net)

    return masks, apply


def _infiltration(a: Anatomy, rng: np.random.Generator, h: int) -> Finding:
    """Patchy, hazy, ill-defined spots scattered over a region."""
    side = int(rng.integers(2))
    x, y = a.point_in_lung(rng, side, (0.3, 0.7), (0.35, 0.65))
    spread = a.k * rng.uniform(0.05, 0.07)
    field_ = np.zeros(a.X.shape, np.float32)
    for _ in range(int(rng.integers(5, 8))):
        r, ang = spread * np.sqrt(rng.uniform()), rng.uniform(0, 2 * np.pi)
        sigma = a.k * rng.uniform(0.014, 0.022)
        d2 = (a.X - x - r * np.cos(ang)) ** 2 + (a.Y - y - r * np.sin(ang)) ** 2
        field_ = np.maximum(field_, np.exp(-d2 / (2 * sigma * sigma)))
    field_ *= soft(a.lung_masks[side], 2)
    mask = field_ > 0.3
    return [mask], _adder(0.2 * field_)


def _lung_opacity(a: Anatomy, rng: np.random.Generator, h: int) -> Finding:
    """One hazy, round-ish opacity with soft borders."""
    side = int(rng.integers(2))
    x, y = a.point_in_lung(rng, side, (0.3, 0.72), (0.35, 0.65))
    r = a.k * rng.uniform(0.05, 0.075)
    d = np.hypot((a.X - x) / 1.15, a.Y - y)
    field_ = np.exp(-1.5 * (d / r) ** 2).astype(np.float32)
    mask = field_ > 0.3
    return [mask], _adder(0.24 * field_)


def _nodule(a: Anatomy, rng: np.random.Generator, h: int) -> Finding:
    """A round, sharply marginated, bright nodule (or mass, when large)."""
    return _round_lesion(a, rng, a.k * 0.025, a.k * 0.045, softness=0.8)


def _round_lesion(
    a: Anatomy, rng: np.random.Generator, r_min: float, r_max: float, softness: float
) -> Finding:
    """A bright disc in one lung, radius drawn from ``[r_min, r_max)`` (image-height units),
    brightest at its centre: the nodule of both sample variants."""
    side = int(rng.integers(2))
    x, y = a.point_in_lung(rng, side, (0.2, 0.75), (0.3, 0.7))
    r = rng.uniform(r_min, r_max)
    d = np.hypot(a.X - x, a.Y - y)
    mask = d < r
    alpha = soft(mask, softness)
    shade = 0.30 + 0.06 * (1 - d / r)
    return [mask], _adder(alpha * shade)


def _other_lesion(a: Anatomy, rng: np.random.Generator, h: int) -> Finding:
    """An irregular, spiculated (star-shaped), mottled lesion."""
    side = int(rng.integers(2))
    x, y = a.point_in_lung(rng, side, (0.25, 0.7), (0.3, 0.7))
    r0 = a.k * rng.uniform(0.03, 0.042)
    n_spikes = int(rng.integers(5, 9))
    theta = np.arctan2(a.Y - y, a.X - x)
    radius = r0 * (0.6 + 0.7 * np.abs(np.cos(0.5 * n_spikes * theta + rng.uniform(0, 6.3))) ** 4)
    mask = np.hypot(a.X - x, a.Y - y) < radius
    alpha = soft(mask, 0.8)
    mottle = 0.22 + 0.08 * smooth_noise(rng, a.X.shape, 0.003 * h)
    return [mask], _adder(alpha * mottle)


def _pleural_effusion(a: Anatomy, rng: np.random.Generator, h: int) -> Finding:
    """Fluid at a lung base: blunted costophrenic angle, meniscus rising laterally."""
    side = int(rng.integers(2))
    s = a.side_sign(side)
    level = a.base[side] - a.k * rng.uniform(0.09, 0.14)
    rise = a.k * rng.uniform(0.03, 0.06)
    lateral = np.clip((s * (a.X - a.cx) - a.half_gap) / a.width, 0, 1)
    surface = level - rise * lateral**2
    region = a.lung_masks[side] & (a.Y > surface) & (lateral > 0.2)
    alpha = soft(region, 1.5)

    def apply(img: np.ndarray) -> None:
        np.maximum(img, img + 0.95 * alpha * (0.60 - img), out=img)  # fluid only adds density

    return [region], apply


def _pleural_thickening(a: Anatomy, rng: np.random.Generator, h: int) -> Finding:
    """A bright band along the chest wall, or an apical cap."""
    side = int(rng.integers(2))
    s = a.side_sign(side)
    lung = a.lung_masks[side]
    thick = a.k * rng.uniform(0.027, 0.035)
    if rng.random() < 0.35:  # apical cap
        region = lung & (a.Y < a.apex + 1.8 * thick)
    else:  # lateral band
        t0 = rng.uniform(0.25, 0.55)
        y0 = a.apex + t0 * (a.base[side] - a.apex)
        y1 = y0 + a.k * rng.uniform(0.12, 0.2)
        edge = a.cx + s * (a.half_gap + a.lung_width(a.lung_t(side, a.Y)))
        region = lung & (s * (edge - a.X) < thick) & (a.Y >= y0) & (a.Y <= y1)
    alpha = soft(region, 1.0)
    return [region], _adder(0.32 * alpha)


def _pneumothorax(a: Anatomy, rng: np.random.Generator, h: int) -> Finding:
    """Air between lung and chest wall: very dark, no vessels, a thin pleural line."""
    side = int(rng.integers(2))
    s = a.side_sign(side)
    lung = a.lung_masks[side]
    dist = cv2.distanceTransform(lung.astype(np.uint8), cv2.DIST_L2, 5) / h
    y_end = a.apex + rng.uniform(0.45, 0.7) * (a.base[side] - a.apex)
    gap0 = a.k * rng.uniform(0.045, 0.07)
    gap = gap0 * np.sqrt(np.clip((y_end - a.Y) / (y_end - a.apex), 0, 1))
    t = a.lung_t(side, a.Y)
    mid = a.cx + s * (a.half_gap + 0.45 * a.lung_width(t))
    lateral = (s * (a.X - mid) > 0) | (a.Y < a.apex + gap0)
    region = lung & lateral & (dist < gap)
    line = lung & lateral & (np.abs(dist - gap) < 1.0 / h) & (gap > 1.5 / h)
    alpha = soft(region, 0.7)
    line_alpha = soft(line, 0.5)
    ribs = a.ribs

    def apply(img: np.ndarray) -> None:
        blend(img, 0.92 * alpha, 0.06 + ribs)  # ribs stay: they are outside the lung
        blend(img, np.clip(1.6 * line_alpha, 0, 1), 0.55)

    return [region | line], apply


def _pulmonary_fibrosis(a: Anatomy, rng: np.random.Generator, h: int) -> Finding:
    """Coarse linear streaks in an upper zone, pointing towards the hilum."""
    side = int(rng.integers(2))
    s = a.side_sign(side)
    x, y = a.point_in_lung(rng, side, (0.15, 0.35), (0.35, 0.65))
    hilum = (a.cx + s * (a.half_gap + 0.03), a.apex + 0.4 * (a.base[side] - a.apex))
    spread = a.k * rng.uniform(0.05, 0.065)
    streaks = np.zeros(a.X.shape, np.float32)
    for _ in range(int(rng.integers(6, 10))):
        r, ang = spread * np.sqrt(rng.uniform()), rng.uniform(0, 2 * np.pi)
        px, py = x + r * np.cos(ang), y + r * np.sin(ang)
        to_hilum = np.arctan2(hilum[1] - py, hilum[0] - px) + rng.uniform(-0.4, 0.4)
        length = a.k * rng.uniform(0.035, 0.07)
        end = (px + length * np.cos(to_hilum), py + length * np.sin(to_hilum))
        d = segment_distance(a.X, a.Y, (px, py), end)
        streaks = np.maximum(streaks, np.clip(1 - d / (a.k * rng.uniform(0.005, 0.008)), 0, 1))
    streaks *= a.lung_masks[side]
    mask = streaks > 0.2
    return [mask], _adder(0.3 * streaks)


def _small_nodule(a: Anatomy, rng: np.random.Generator, h: int) -> Finding:
    """A small round nodule, box side 3-6 % of the image (the ``small_thin`` variant)."""
    return _round_lesion(a, rng, 0.015, 0.03, softness=0.6)  # box side 2r


def _thin_pleural_band(a: Anatomy, rng: np.random.Generator, h: int) -> Finding:
    """A thin straight band inside the lateral chest wall: about 2 % of the image wide and
    8-12 times as long (the ``small_thin`` variant's pleural thickening)."""
    side = int(rng.integers(2))
    s = a.side_sign(side)
    thick = rng.uniform(0.016, 0.024)
    length = thick * rng.uniform(8.0, 12.0)
    y0 = a.apex + rng.uniform(0.3, 0.55) * (a.base[side] - a.apex)
    y1 = y0 + length
    centre = a.outer_x(side, 0.5 * (y0 + y1)) - s * 0.6 * thick  # just inside the wall
    region = (np.abs(a.X - centre) < 0.5 * thick) & (a.Y >= y0) & (a.Y <= y1)
    alpha = soft(region, 0.8)
    return [region], _adder(0.32 * alpha)


_RENDERERS: dict[int, Callable[[Anatomy, np.random.Generator, int], Finding]] = {
    0: _aortic_enlargement,
    1: _atelectasis,
    2: _calcification,
    3: _cardiomegaly,
    4: _consolidation,
    5: _ild,
    6: _infiltration,
    7: _lung_opacity,
    8: _nodule,
    9: _other_lesion,
    10: _pleural_effusion,
    11: _pleural_thickening,
    12: _pneumothorax,
    13: _pulmonary_fibrosis,
}
# Sample variants: "default" (the notebooks' sample), "small_thin" (small nodules and thin
# pleural bands, box statistics the stock cxr_small anchors were not chosen for).
FINDING_VARIANTS: tuple[str, ...] = ("default", "small_thin")
_VARIANT_RENDERERS = {
    "default": _RENDERERS,
    "small_thin": {**_RENDERERS, 8: _small_nodule, 11: _thin_pleural_band},
}


def renderers(
    variant: str = "default",
) -> dict[int, Callable[[Anatomy, np.random.Generator, int], Finding]]:
    """The finding renderer of each class id in a sample variant (ConfigError if unknown)."""
    if variant not in _VARIANT_RENDERERS:
        raise ConfigError(f"unknown sample variant {variant!r}; choose one of {FINDING_VARIANTS}")
    return _VARIANT_RENDERERS[variant]


# Large or fixed findings first, so that small ones find room around them.
_DRAW_ORDER = (3, 0, 10, 12, 5, 4, 11, 13, 7, 6, 1, 9, 8, 2)


def _mask_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """Pixel bounding box (x0, y0, x1, y1), exclusive end, of a mask; None if empty."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def _overlap(b1: Sequence[float], b2: Sequence[float]) -> float:
    """Intersection over the smaller box: 1 when one box is inside the other."""
    iw = min(b1[2], b2[2]) - max(b1[0], b2[0])
    ih = min(b1[3], b2[3]) - max(b1[1], b2[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    smaller = min((b1[2] - b1[0]) * (b1[3] - b1[1]), (b2[2] - b2[0]) * (b2[3] - b2[1]))
    return iw * ih / max(smaller, 1e-9)


def _pix(boxes: list[Box], w: int, h: int, cols: int, rows: int) -> list[Box]:
    """Boxes from original back to render pixels (for overlap tests while placing)."""
    sx, sy = w / cols, h / rows
    return [(b[0] * sx, b[1] * sy, b[2] * sx, b[3] * sy) for b in boxes]


def place_findings(
    img: np.ndarray,
    anatomy: Anatomy,
    rng: np.random.Generator,
    planned: Sequence[int],
    rows: int,
    cols: int,
    variant: str = "default",
) -> tuple[list[int], list[Box]]:
    """In place: draw the planned findings into ``img`` (render size), largest first.

    Each one is tried at up to 20 places until it covers no other finding (the
    aorta and the heart stay where they are). Returns one class id and one box
    per drawn region, in original pixels (``rows`` x ``cols``). ``variant`` picks the
    renderers (:data:`FINDING_VARIANTS`).
    """
    draw = renderers(variant)
    h, w = img.shape
    class_ids: list[int] = []
    boxes: list[Box] = []
    for c in sorted(planned, key=_DRAW_ORDER.index):
        finding = None
        for _attempt in range(20):  # find a place that does not cover another finding
            masks, apply = draw[c](anatomy, rng, h)
            pix = [_mask_box(m) for m in masks]
            pix = [b for b in pix if b is not None]
            finding = (pix, apply)
            if c in (0, 3) or all(
                _overlap(b, o) < 0.25 for b in pix for o in _pix(boxes, w, h, cols, rows)
            ):
                break
        assert finding is not None
        pix, apply = finding
        apply(img)
        for x0, y0, x1, y1 in pix:
            class_ids.append(c)
            boxes.append((x0 * cols / w, y0 * rows / h, x1 * cols / w, y1 * rows / h))
    return class_ids, boxes
