"""Drawing primitives on float images (0 black .. 1 white) for the synthetic radiographs.

Soft masks, blending, distances to segments and smooth noise: what both the
anatomy (:mod:`cxrkit.sample.anatomy`) and the findings are drawn with.
"""

from __future__ import annotations

import cv2
import numpy as np

__all__ = ["blend", "segment_distance", "smooth_noise", "soft"]


def soft(mask: np.ndarray, sigma_px: float) -> np.ndarray:
    """Blur a 0/1 mask into soft edges (the gentle borders of real anatomy)."""
    m = mask.astype(np.float32)
    if sigma_px <= 0:
        return m
    return cv2.GaussianBlur(m, (0, 0), sigmaX=sigma_px, borderType=cv2.BORDER_REPLICATE)


def blend(img: np.ndarray, alpha: np.ndarray, value: np.ndarray | float) -> None:
    """In place: ``img = (1 - alpha) * img + alpha * value``."""
    img += alpha * (value - img)


def segment_distance(X, Y, p0: tuple[float, float], p1: tuple[float, float]) -> np.ndarray:
    """Distance from every pixel to the segment p0-p1 (for bands, ribs, streaks)."""
    (x0, y0), (x1, y1) = p0, p1
    dx, dy = x1 - x0, y1 - y0
    length2 = dx * dx + dy * dy or 1e-12
    t = np.clip(((X - x0) * dx + (Y - y0) * dy) / length2, 0.0, 1.0)
    return np.hypot(X - (x0 + t * dx), Y - (y0 + t * dy))


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma_px: float) -> np.ndarray:
    """Gaussian noise blurred to a length scale, rescaled to unit standard deviation."""
    n = rng.standard_normal(shape).astype(np.float32)
    n = cv2.GaussianBlur(n, (0, 0), sigmaX=max(sigma_px, 0.3), borderType=cv2.BORDER_REFLECT)
    return n / (n.std() + 1e-6)
