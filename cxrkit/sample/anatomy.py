"""Draw a normal synthetic chest radiograph: body, lungs, heart, spine, ribs, clavicles.

The geometry (:class:`Anatomy`) is kept so that findings can be placed at plausible
places (:mod:`cxrkit.sample.findings`). Radiograph convention: the patient faces
you, so the patient's *left* (heart, aortic knob) is on the image *right*.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from cxrkit.sample.draw import blend, segment_distance, smooth_noise, soft

__all__ = ["Anatomy", "draw_anatomy"]


@dataclass
class Anatomy:
    """Geometry of one synthetic chest in units of the image height.

    ``X`` runs left to right with 0 at the image centre, ``Y`` top to bottom with
    0 at the top; both are divided by the image height so shapes keep their
    proportions whatever the aspect ratio.
    """

    X: np.ndarray
    Y: np.ndarray
    cx: float  # body midline
    k: float  # thorax size factor
    apex: float  # top of the lungs
    base: tuple[float, float]  # lowest point of each lung (image left, image right)
    half_gap: float  # half the mediastinum width between the lungs
    width: float  # largest lateral extent of a lung
    dome: float  # height of the diaphragm domes
    heart: tuple[float, float, float, float]  # centre x, centre y, half-width, half-height
    lung_masks: tuple[np.ndarray, np.ndarray] = field(default=None)  # type: ignore[assignment]
    ribs: np.ndarray = field(default=None)  # type: ignore[assignment]

    def side_sign(self, side: int) -> int:
        """Side 0 is the image left (patient's right), side 1 the image right."""
        return -1 if side == 0 else 1

    def lung_t(self, side: int, Y: np.ndarray | float) -> np.ndarray | float:
        """Relative height in a lung: 0 at the apex, 1 at its base."""
        return (Y - self.apex) / (self.base[side] - self.apex)

    def lung_width(self, t: np.ndarray | float) -> np.ndarray | float:
        """Lateral extent of a lung at relative height t (rounded apex, wide base)."""
        return self.width * np.clip(0.3 + 0.9 * np.sqrt(np.clip(t, 0.0, 1.0)), 0.0, 1.0)

    def outer_x(self, side: int, Y: float) -> float:
        """X of the lung's lateral edge (the chest wall) at height Y."""
        s = self.side_sign(side)
        return self.cx + s * (self.half_gap + float(self.lung_width(self.lung_t(side, Y))))

    def point_in_lung(
        self,
        rng: np.random.Generator,
        side: int,
        t_range: tuple[float, float],
        f_range: tuple[float, float] = (0.25, 0.75),
    ) -> tuple[float, float]:
        """A random point inside a lung: relative height t, fraction f from medial to lateral."""
        s = self.side_sign(side)
        t = rng.uniform(*t_range)
        Y = self.apex + t * (self.base[side] - self.apex)
        f = rng.uniform(*f_range)
        X = self.cx + s * (self.half_gap + f * float(self.lung_width(t)))
        return X, Y


def draw_anatomy(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, Anatomy]:
    """Draw a normal chest radiograph (display intensities, 0 black .. 1 white)."""
    a = _thorax(rng, h, w)
    dx = np.abs(a.X - a.cx)
    img = _body(a, dx, h)
    _mediastinum(img, a, dx, h)
    masks, heart_mask = _lung_masks(a)
    lungs = _lungs(img, a, dx, masks, rng, h)
    _heart_and_knob(img, a, heart_mask, h)
    a.ribs = _ribs(a, dx, lungs, rng, h)
    img += a.ribs
    _clavicles(img, a)
    return img, a


def _thorax(rng: np.random.Generator, h: int, w: int) -> Anatomy:
    """Random proportions of one chest, on a pixel grid in units of the image height."""
    ys = (np.arange(h, dtype=np.float32) + 0.5) / h
    xs = (np.arange(w, dtype=np.float32) + 0.5 - w / 2) / h
    X, Y = np.meshgrid(xs, ys)
    k = rng.uniform(0.92, 1.05)
    apex = rng.uniform(0.10, 0.15)
    base_r = apex + k * rng.uniform(0.58, 0.65)
    base_l = base_r + rng.uniform(0.0, 0.03)  # left hemidiaphragm (image right) lower
    heart_b = k * rng.uniform(0.11, 0.13)
    a = Anatomy(
        X=X,
        Y=Y,
        cx=rng.normal(0.0, 0.015),
        k=k,
        apex=apex,
        base=(base_r, base_l),
        half_gap=k * rng.uniform(0.05, 0.06),
        width=k * rng.uniform(0.27, 0.31),
        dome=k * rng.uniform(0.06, 0.09),
        heart=(0.0, base_l - heart_b * 1.05, k * rng.uniform(0.12, 0.14), heart_b),
    )
    a.heart = (a.cx + k * 0.04, *a.heart[1:])  # the heart sits left of the midline (image right)
    return a


def _body(a: Anatomy, dx: np.ndarray, h: int) -> np.ndarray:
    """Body: air outside, soft tissue inside (thicker, so brighter, towards the middle)."""
    body_hw = np.where(a.Y < a.apex - 0.02, 0.10, a.k * 0.47)
    body_hw = soft(body_hw, 0.02 * h)
    body = soft(dx < body_hw, 0.006 * h)
    tissue = 0.40 + 0.16 * np.sqrt(np.clip(1 - (dx / np.maximum(body_hw, 1e-3)) ** 2, 0, 1))
    return 0.04 + body * (tissue - 0.04)


def _mediastinum(img: np.ndarray, a: Anatomy, dx: np.ndarray, h: int) -> None:
    """In place: mediastinum and spine, a bright band down the middle, and the trachea."""
    medi = soft((dx < a.half_gap + 0.015) & (a.Y > a.apex - 0.05), 0.004 * h)
    blend(img, medi, 0.66)
    spine = soft(dx < 0.032 * a.k, 0.002 * h)
    vertebrae = 0.04 * (np.cos(2 * np.pi * a.Y / (0.045 * a.k)) > 0.85)
    img += spine * (0.08 + vertebrae)
    trachea = soft((dx < 0.012 * a.k) & (a.Y < a.apex + 0.13), 0.002 * h)
    img -= 0.12 * trachea


def _lung_masks(a: Anatomy) -> tuple[list[np.ndarray], np.ndarray]:
    """Both lung fields (above the diaphragm domes) and the heart; sets ``a.lung_masks``."""
    X, Y = a.X, a.Y
    masks = []
    for side in (0, 1):
        s = a.side_sign(side)
        t = a.lung_t(side, Y)
        lateral = s * (X - a.cx)
        dome_c = a.half_gap + 0.45 * a.width
        dome_y = a.base[side] - a.dome * (1 - ((lateral - dome_c) / (0.6 * a.width)) ** 2)
        m = (
            (t >= 0)
            & (Y <= dome_y)
            & (lateral >= a.half_gap)
            & (lateral <= a.half_gap + a.lung_width(t))
        )
        masks.append(m)
    hx, hy, ha, hb = a.heart
    heart_mask = ((X - hx) / ha) ** 2 + ((Y - hy) / hb) ** 2 < 1
    # Findings are drawn only where lung is visible, never over the heart.
    a.lung_masks = (masks[0] & ~heart_mask, masks[1] & ~heart_mask)
    return masks, heart_mask


def _lungs(
    img: np.ndarray,
    a: Anatomy,
    dx: np.ndarray,
    masks: list[np.ndarray],
    rng: np.random.Generator,
    h: int,
) -> np.ndarray:
    """In place: dark lungs, with vessel markings that fade from the hilum to the periphery.

    Returns the soft mask of both lungs.
    """
    lungs = soft(masks[0] | masks[1], 0.004 * h)
    hilum_y = a.apex + 0.35 * (a.base[0] - a.apex)
    hilum_d = np.hypot(dx - a.half_gap, a.Y - hilum_y)
    vessels = _vessels(a, hilum_y, rng)
    vessels *= np.exp(-hilum_d / (0.15 * a.k))
    lung_value = (
        0.17
        + 0.06 * np.exp(-hilum_d / (0.1 * a.k))
        + 0.10 * vessels
        + 0.012 * smooth_noise(rng, a.X.shape, 0.01 * h)
    )
    blend(img, lungs, lung_value)
    return lungs


def _vessels(a: Anatomy, hilum_y: float, rng: np.random.Generator) -> np.ndarray:
    """Branching vessels that fan out from each hilum (before they fade away)."""
    vessels = np.zeros(a.X.shape, np.float32)
    for side in (0, 1):
        s = a.side_sign(side)
        hilum = (a.cx + s * (a.half_gap + 0.02), hilum_y)
        for _ in range(9):
            ang = rng.uniform(-1.2, 1.4)  # from up-and-out to down-and-out
            length = a.k * rng.uniform(0.12, 0.24)
            end = (hilum[0] + s * length * np.cos(ang), hilum[1] + length * np.sin(ang))
            d = segment_distance(a.X, a.Y, hilum, end)
            vessels = np.maximum(vessels, np.clip(1 - d / (0.005 * a.k), 0, 1))
    return vessels


def _heart_and_knob(img: np.ndarray, a: Anatomy, heart_mask: np.ndarray, h: int) -> None:
    """In place: the heart (bright, shifted to the image right) and a normal aortic knob."""
    heart = soft(heart_mask, 0.004 * h)
    blend(img, heart, 0.70)
    knob_d = np.hypot(a.X - (a.cx + a.half_gap + 0.006), a.Y - (a.apex + 0.13))
    knob = soft(knob_d < 0.022 * a.k, 2)
    blend(img, knob, 0.66)


def _ribs(
    a: Anatomy, dx: np.ndarray, lungs: np.ndarray, rng: np.random.Generator, h: int
) -> np.ndarray:
    """Ribs: curved bands, most visible over the lungs.

    Kept apart from the image so that a pneumothorax (which darkens the lung)
    can leave them in place.
    """
    ribs = np.zeros(a.X.shape, np.float32)
    spacing = (a.base[0] - a.apex) / 8.5
    thickness = 0.011 * a.k
    u = np.clip(dx - 0.02, 0, None)
    inside = soft((dx < a.half_gap + a.width + 0.03) & (a.Y < a.base[1] + 0.04), 0.01 * h)
    for r in range(10):
        y_r = a.apex - 0.01 + r * spacing + rng.normal(0, 0.003)
        centre = y_r - 0.25 * u + 0.9 * u * u
        ribs += np.clip(1 - ((a.Y - centre) / thickness) ** 2, 0, None)
    return 0.085 * np.clip(ribs, 0, 1) * inside * (0.5 + 0.5 * lungs)


def _clavicles(img: np.ndarray, a: Anatomy) -> None:
    """In place: the clavicles, bright slanted bands at the top."""
    for side in (0, 1):
        s = a.side_sign(side)
        p0 = (a.cx + s * 0.03, a.apex + 0.035)
        p1 = (a.cx + s * (a.half_gap + 0.95 * a.width), a.apex - 0.035)
        d = segment_distance(a.X, a.Y, p0, p1)
        img += 0.14 * np.clip(1 - (d / (0.011 * a.k)) ** 2, 0, None)
