"""Render one planned case: a chest radiograph with its findings, and their true boxes.

The anatomy is drawn at half size, findings are placed on it, then both images
(with and without findings) get the same noise and are upsampled to the size
stored in the DICOM.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from cxrkit.sample.anatomy import Anatomy, draw_anatomy
from cxrkit.sample.draw import smooth_noise
from cxrkit.sample.findings import Box, place_findings
from cxrkit.sample.plan import CaseSpec

__all__ = ["ASPECT_RANGE", "RENDER_SCALE", "ROWS_RANGE", "Rendered", "render_case"]

# Image size in pixels (real files are 2-3k a side; smaller keeps the sample light).
ROWS_RANGE = (512, 832)
ASPECT_RANGE = (0.82, 1.18)  # columns / rows
RENDER_SCALE = 0.5  # anatomy is drawn at half size and upsampled (fast, compresses well)


@dataclass
class Rendered:
    """One synthetic radiograph, with and without its findings.

    ``image`` and ``base`` are float32 display intensities in [0, 1] (0 black)
    of shape (rows, cols); ``base`` is the same chest, same noise, no findings,
    so that ``image - base`` shows exactly what each finding adds. ``boxes`` are
    the true extents in original pixels, one per drawn finding.
    """

    image: np.ndarray
    base: np.ndarray
    class_ids: list[int]
    boxes: list[Box]
    meta: dict


def _draw_image_id(rng: np.random.Generator) -> str:
    """The first draw of an image's generator: 32 lowercase hex characters, like the real ids."""
    return rng.bytes(16).hex()


def case_image_id(spec: CaseSpec) -> str:
    """The image id :func:`render_case` gives ``spec``, without drawing the image."""
    return _draw_image_id(spec.rng())


def render_case(spec: CaseSpec) -> Rendered:
    """Draw the image of one case (deterministic for its seed): the heart of the generator."""
    rng = spec.rng()
    image_id = _draw_image_id(rng)
    rows = int(rng.integers(ROWS_RANGE[0], ROWS_RANGE[1] + 1))
    cols = int(round(rows * rng.uniform(*ASPECT_RANGE)))
    h, w = int(round(rows * RENDER_SCALE)), int(round(cols * RENDER_SCALE))
    img, anatomy = draw_anatomy(rng, h, w)
    base = img.copy()
    class_ids, boxes = place_findings(
        img, anatomy, rng, spec.class_ids, rows, cols, variant=spec.finding_variant
    )
    image, base = _finish(img, base, anatomy, rng, rows, cols)
    meta = {
        "image_id": image_id,
        "rows": rows,
        "cols": cols,
        "sex": str(rng.choice(["M", "F", "O"], p=[0.52, 0.45, 0.03])),
        "age": int(rng.integers(18, 90)),
    }
    return Rendered(image, base, class_ids, boxes, meta)


def _finish(
    img: np.ndarray,
    base: np.ndarray,
    anatomy: Anatomy,
    rng: np.random.Generator,
    rows: int,
    cols: int,
) -> tuple[np.ndarray, np.ndarray]:
    """The same noise on both images (quantum mottle, a slow exposure gradient), upsampled."""
    h, w = img.shape
    noise = 0.009 * smooth_noise(rng, (h, w), 0.6) + 0.02 * smooth_noise(rng, (h, w), 0.15 * h)
    grad = 0.04 * (anatomy.Y - 0.5) * rng.uniform(-1, 1)
    out = []
    for im in (img, base):
        im = np.clip(im + noise + grad, 0.0, 1.0).astype(np.float32)
        out.append(cv2.resize(im, (cols, rows), interpolation=cv2.INTER_LINEAR))
    return out[0], out[1]
