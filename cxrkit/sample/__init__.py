"""A small synthetic dataset in the exact layout of the Kaggle VinBigData competition.

The real competition data is 200 GB of DICOMs that only Kaggle users can download,
so every notebook of cxrkit can also run on a *sample* written by this module::

    OUT/train/<image_id>.dicom      200 synthetic chest radiographs (default)
    OUT/test/<image_id>.dicom        50 more, without labels in train.csv
    OUT/train.csv                    image_id,class_name,class_id,rad_id,x_min,y_min,x_max,y_max
    OUT/sample_submission.csv        image_id,PredictionString ("14 1 0 0 1 1" everywhere)
    OUT/test_labels.csv              the test truth (train.csv columns) to score locally
    OUT/.cxrkit-sample               marker: version, seed and counts

What makes it a useful stand-in for the real thing:

* **Labels behave like the real ones.** Three radiologists per image (mostly R8,
  R9 and R10, as in the real train set); each one may miss a finding the others
  saw (and then writes a "No finding" row if he saw nothing at all), and their
  boxes disagree by a few percent. Class frequencies follow the real imbalance
  (Aortic enlargement and Cardiomegaly common, Pneumothorax rare), softened so
  that every finding appears a few times; about a third of the images are normal.
* **Images look like chest X-rays** (body, lungs, heart, spine, ribs, clavicles,
  diaphragm) and each of the 14 findings has its own consistent appearance at a
  plausible place, whose box is the true extent of what was drawn. A small
  Faster R-CNN can learn them from 200 images in minutes.
* **DICOMs vary as real ones do**: MONOCHROME1 and MONOCHROME2, BitsStored 10-16,
  window centre/width, VOI LUT sequences, rescale slope/intercept, RLE and JPEG
  2000 lossless compression, non-square sizes. Fake but realistic patient tags
  (``PatientName`` "ANONYMOUS", sex, age) are present so later modules can check
  they never copy them to their outputs.
* **Deterministic**: the same seed gives byte-identical files (UIDs derived from
  the seed, no timestamps). Each image has its own child random generator, so
  images can be drawn independently (in any order, or in parallel).

Radiograph convention: the patient faces you, so the patient's *left* (heart,
aortic knob) is on the image *right*.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
)

from cxrkit._atomic import atomic_path, write_csv_atomic
from cxrkit._progress import tqdm
from cxrkit.annotations import TRAIN_COLUMNS  # the competition's train.csv columns
from cxrkit.labels import CLASS_NAMES, NO_FINDING_ID, NUM_FINDINGS, REAL_ROW_COUNTS

__all__ = [
    "MARKER_NAME",
    "TEST_TRUTH_RAD_ID",
    "TRAIN_COLUMNS",
    "CaseSpec",
    "Rendered",
    "generate_sample",
    "plan_cases",
    "render_case",
]

MARKER_NAME = ".cxrkit-sample"
# test_labels.csv holds one exact box per finding (what was drawn), like a fused table.
TEST_TRUTH_RAD_ID = "wbf"
NO_FINDING_PREDICTION = "14 1 0 0 1 1"

DX_SOP_CLASS = UID("1.2.840.10008.5.1.4.1.1.1.1")  # Digital X-Ray Image Storage - For Presentation
CR_SOP_CLASS = UID("1.2.840.10008.5.1.4.1.1.1")  # Computed Radiography Image Storage
CONTENT_DATE = "20200101"  # fixed: no timestamps, so files are byte-identical per seed

# Radiologists R1..R17; in the real train set R8, R9 and R10 read most images.
RAD_IDS: tuple[str, ...] = tuple(f"R{i}" for i in range(1, 18))
_RAD_WEIGHTS = np.array([12.0 if r in ("R8", "R9", "R10") else 1.0 for r in RAD_IDS])
_RAD_WEIGHTS /= _RAD_WEIGHTS.sum()

NORMAL_FRACTION = 1 / 3  # real data: ~70% normal; a third leaves enough positives to learn
DETECTION_PROB = 0.85  # chance that one radiologist reports a finding that is there
BOX_JITTER = 0.03  # radiologists' box edges disagree by ~3% of the box size
# Image size in pixels (real files are 2-3k a side; smaller keeps the sample light).
ROWS_RANGE = (512, 832)
ASPECT_RANGE = (0.82, 1.18)  # columns / rows
RENDER_SCALE = 0.5  # anatomy is drawn at half size and upsampled (fast, compresses well)


# --------------------------------------------------------------------------- planning


@dataclass(frozen=True)
class DicomVariant:
    """How one image is stored: the knobs that make real DICOMs hard to read."""

    photometric: str  # "MONOCHROME1" (inverted: high = dark) or "MONOCHROME2"
    bits_stored: int  # 10..16, BitsAllocated is always 16
    voi: str  # "window", "window2" (two windows), "lut" (VOI LUT Sequence) or "none"
    rescale: bool  # RescaleSlope/Intercept present (and not the identity)
    transfer: str  # "raw", "rle" or "j2k"
    modality: str  # "DX" or "CR"


@dataclass(frozen=True)
class CaseSpec:
    """Everything needed to draw one image, independent of all other images."""

    split: str  # "train" or "test"
    index: int  # position within the split
    seed_key: tuple[int, ...]  # spawn key of this image's random generator
    class_ids: tuple[int, ...]  # findings to draw (empty: a normal image)
    variant: DicomVariant
    root_seed: int = 0

    def rng(self, stream: int = 0) -> np.random.Generator:
        """This image's own generator (independent of how many images there are).

        Stream 0 draws the image, stream 1 its storage and its labels, so that
        changing one never shifts the random numbers of the other.
        """
        key = (*self.seed_key, stream)
        return np.random.default_rng(np.random.SeedSequence(self.root_seed, spawn_key=key))


def _class_probabilities() -> np.ndarray:
    """Finding frequencies: the real shares, flattened by a square root.

    The real data has ~32x more Aortic enlargement than Pneumothorax boxes; the
    square root keeps the order (what students should notice) but leaves the
    rare classes a chance to be learned from 200 images.
    """
    counts = np.array([REAL_ROW_COUNTS[c] for c in range(NUM_FINDINGS)], dtype=float)
    p = np.sqrt(counts / counts.sum())
    return p / p.sum()


def _balanced(options: Sequence, weights: Sequence[float], n: int, rng: np.random.Generator):
    """``n`` choices with the given shares, shuffled, each option present when n allows.

    Used for DICOM variants, so that even a 24-image sample contains every kind.
    """
    w = np.asarray(weights, dtype=float)
    w = w / w.sum()
    counts = np.floor(w * n).astype(int)
    order = np.argsort(-(w * n - counts), kind="stable")
    for i in order[: n - counts.sum()]:
        counts[i] += 1
    for i in range(len(counts)):  # every option at least once when possible
        if counts[i] == 0 and n >= len(counts):
            counts[i] = 1
            counts[int(np.argmax(counts))] -= 1
    values = [options[i] for i in range(len(options)) for _ in range(counts[i])]
    return [values[i] for i in rng.permutation(len(values))]


def _plan_findings(n: int, rng: np.random.Generator, min_per_class: int) -> list[tuple[int, ...]]:
    """Class ids per image: a third normal, 1-3 findings otherwise, every class seen."""
    n_normal = int(round(n * NORMAL_FRACTION)) if n >= 3 else 0
    normal = set(rng.permutation(n)[:n_normal].tolist())
    p = _class_probabilities()
    plan: list[set[int]] = []
    for i in range(n):
        if i in normal:
            plan.append(set())
            continue
        k = int(rng.choice([1, 2, 3], p=[0.45, 0.35, 0.20]))
        chosen = set(rng.choice(NUM_FINDINGS, size=k, replace=False, p=p).tolist())
        # Co-occurrences of the real data: a big heart often comes with a big aorta.
        if 0 in chosen and 3 not in chosen and rng.random() < 0.4:
            chosen.add(3)
        elif 3 in chosen and 0 not in chosen and rng.random() < 0.5:
            chosen.add(0)
        if 13 in chosen and 11 not in chosen and rng.random() < 0.3:
            chosen.add(11)  # fibrosis with pleural thickening
        plan.append(chosen)
    abnormal = [i for i in range(n) if i not in normal]
    if abnormal:  # top up rare classes on the images with the fewest findings
        for c in range(NUM_FINDINGS):
            missing = min_per_class - sum(c in s for s in plan)
            candidates = [i for i in abnormal if c not in plan[i]]
            rng.shuffle(candidates)
            candidates.sort(key=lambda i: len(plan[i]))
            for i in candidates[: max(missing, 0)]:
                plan[i].add(c)
    return [tuple(sorted(s)) for s in plan]


def plan_cases(seed: int, n_train: int, n_test: int) -> list[CaseSpec]:
    """Decide, for every image, its findings and how its DICOM is stored."""
    plan_rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0,)))
    cases: list[CaseSpec] = []
    for split_no, (split, n) in enumerate((("train", n_train), ("test", n_test)), start=1):
        n_abnormal = n - int(round(n * NORMAL_FRACTION))
        min_per_class = min(4, max(1, 3 * n_abnormal // NUM_FINDINGS))
        findings = _plan_findings(n, plan_rng, min_per_class)
        photometric = _balanced(["MONOCHROME1", "MONOCHROME2"], [0.3, 0.7], n, plan_rng)
        bits = _balanced([10, 12, 14, 15, 16], [0.15, 0.35, 0.25, 0.1, 0.15], n, plan_rng)
        voi = _balanced(["window", "window2", "lut", "none"], [0.4, 0.15, 0.2, 0.25], n, plan_rng)
        rescale = _balanced([False, True], [0.7, 0.3], n, plan_rng)
        transfer = _balanced(["raw", "rle", "j2k"], [0.2, 0.35, 0.45], n, plan_rng)
        modality = _balanced(["DX", "CR"], [0.6, 0.4], n, plan_rng)
        for i in range(n):
            v_voi = voi[i]
            v_bits = bits[i]
            if v_voi == "lut":  # a LUT is indexed by stored value: keep its table short
                v_bits = min(v_bits, 14)
            variant = DicomVariant(
                photometric=photometric[i],
                bits_stored=v_bits,
                voi=v_voi,
                rescale=rescale[i] and v_voi != "lut",
                transfer=transfer[i],
                modality=modality[i],
            )
            cases.append(CaseSpec(split, i, (split_no, i), findings[i], variant, root_seed=seed))
    return cases


# --------------------------------------------------------------------------- anatomy

Box = tuple[float, float, float, float]


@dataclass
class _Anatomy:
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


def _soft(mask: np.ndarray, sigma_px: float) -> np.ndarray:
    """Blur a 0/1 mask into soft edges (the gentle borders of real anatomy)."""
    m = mask.astype(np.float32)
    if sigma_px <= 0:
        return m
    return cv2.GaussianBlur(m, (0, 0), sigmaX=sigma_px, borderType=cv2.BORDER_REPLICATE)


def _blend(img: np.ndarray, alpha: np.ndarray, value: np.ndarray | float) -> None:
    """In place: ``img = (1 - alpha) * img + alpha * value``."""
    img += alpha * (value - img)


def _segment_distance(X, Y, p0: tuple[float, float], p1: tuple[float, float]) -> np.ndarray:
    """Distance from every pixel to the segment p0-p1 (for bands, ribs, streaks)."""
    (x0, y0), (x1, y1) = p0, p1
    dx, dy = x1 - x0, y1 - y0
    length2 = dx * dx + dy * dy or 1e-12
    t = np.clip(((X - x0) * dx + (Y - y0) * dy) / length2, 0.0, 1.0)
    return np.hypot(X - (x0 + t * dx), Y - (y0 + t * dy))


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma_px: float) -> np.ndarray:
    """Gaussian noise blurred to a length scale, rescaled to unit standard deviation."""
    n = rng.standard_normal(shape).astype(np.float32)
    n = cv2.GaussianBlur(n, (0, 0), sigmaX=max(sigma_px, 0.3), borderType=cv2.BORDER_REFLECT)
    return n / (n.std() + 1e-6)


def _draw_anatomy(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, _Anatomy]:
    """Draw a normal chest radiograph (display intensities, 0 black .. 1 white)."""
    ys = (np.arange(h, dtype=np.float32) + 0.5) / h
    xs = (np.arange(w, dtype=np.float32) + 0.5 - w / 2) / h
    X, Y = np.meshgrid(xs, ys)
    k = rng.uniform(0.92, 1.05)
    apex = rng.uniform(0.10, 0.15)
    base_r = apex + k * rng.uniform(0.58, 0.65)
    base_l = base_r + rng.uniform(0.0, 0.03)  # left hemidiaphragm (image right) lower
    heart_b = k * rng.uniform(0.11, 0.13)
    a = _Anatomy(
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
    dx = np.abs(X - a.cx)

    # Body: air outside, soft tissue inside (thicker, so brighter, towards the middle).
    body_hw = np.where(Y < apex - 0.02, 0.10, k * 0.47)
    body_hw = _soft(body_hw, 0.02 * h)
    body = _soft(dx < body_hw, 0.006 * h)
    tissue = 0.40 + 0.16 * np.sqrt(np.clip(1 - (dx / np.maximum(body_hw, 1e-3)) ** 2, 0, 1))
    img = 0.04 + body * (tissue - 0.04)

    # Mediastinum and spine: a bright band down the middle.
    medi = _soft((dx < a.half_gap + 0.015) & (Y > apex - 0.05), 0.004 * h)
    _blend(img, medi, 0.66)
    spine = _soft(dx < 0.032 * k, 0.002 * h)
    vertebrae = 0.04 * (np.cos(2 * np.pi * Y / (0.045 * k)) > 0.85)
    img += spine * (0.08 + vertebrae)
    trachea = _soft((dx < 0.012 * k) & (Y < apex + 0.13), 0.002 * h)
    img -= 0.12 * trachea

    # Lungs: dark, with vessel markings that fade from the hilum to the periphery.
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
    lungs = _soft(masks[0] | masks[1], 0.004 * h)
    hilum_y = apex + 0.35 * (base_r - apex)
    hilum_d = np.hypot(dx - a.half_gap, Y - hilum_y)
    vessels = np.zeros((h, w), np.float32)
    for side in (0, 1):  # branching vessels fan out from the hilum and fade away
        s = a.side_sign(side)
        hilum = (a.cx + s * (a.half_gap + 0.02), hilum_y)
        for _ in range(9):
            ang = rng.uniform(-1.2, 1.4)  # from up-and-out to down-and-out
            length = k * rng.uniform(0.12, 0.24)
            end = (hilum[0] + s * length * np.cos(ang), hilum[1] + length * np.sin(ang))
            d = _segment_distance(X, Y, hilum, end)
            vessels = np.maximum(vessels, np.clip(1 - d / (0.005 * k), 0, 1))
    vessels *= np.exp(-hilum_d / (0.15 * k))
    lung_value = (
        0.17
        + 0.06 * np.exp(-hilum_d / (0.1 * k))
        + 0.10 * vessels
        + 0.012 * _smooth_noise(rng, (h, w), 0.01 * h)
    )
    _blend(img, lungs, lung_value)

    # Heart (bright, shifted to the image right) and a normal aortic knob above it.
    heart = _soft(heart_mask, 0.004 * h)
    _blend(img, heart, 0.70)
    knob = _soft(np.hypot(X - (a.cx + a.half_gap + 0.006), Y - (apex + 0.13)) < 0.022 * k, 2)
    _blend(img, knob, 0.66)

    # Ribs: curved bands, most visible over the lungs; kept separately so that a
    # pneumothorax (which darkens the lung) can leave them in place.
    ribs = np.zeros((h, w), np.float32)
    spacing = (base_r - apex) / 8.5
    thickness = 0.011 * k
    u = np.clip(dx - 0.02, 0, None)
    inside = _soft((dx < a.half_gap + a.width + 0.03) & (Y < base_l + 0.04), 0.01 * h)
    for r in range(10):
        y_r = apex - 0.01 + r * spacing + rng.normal(0, 0.003)
        centre = y_r - 0.25 * u + 0.9 * u * u
        ribs += np.clip(1 - ((Y - centre) / thickness) ** 2, 0, None)
    ribs = 0.085 * np.clip(ribs, 0, 1) * inside * (0.5 + 0.5 * lungs)
    img += ribs
    a.ribs = ribs

    # Clavicles: bright slanted bands at the top.
    for side in (0, 1):
        s = a.side_sign(side)
        p0 = (a.cx + s * 0.03, apex + 0.035)
        p1 = (a.cx + s * (a.half_gap + 0.95 * a.width), apex - 0.035)
        d = _segment_distance(X, Y, p0, p1)
        img += 0.14 * np.clip(1 - (d / (0.011 * k)) ** 2, 0, None)
    return img, a


# --------------------------------------------------------------------------- findings

# A finding renderer returns (masks, apply): one boolean mask per box (its true
# extent) and a function that draws it into an image in place.
Finding = tuple[list[np.ndarray], Callable[[np.ndarray], None]]


def _adder(delta: np.ndarray) -> Callable[[np.ndarray], None]:
    """A finding that only adds density (brighter on the display)."""

    def apply(img: np.ndarray) -> None:
        img += delta

    return apply


def _disk(a: _Anatomy, x: float, y: float, r: float) -> np.ndarray:
    return np.hypot(a.X - x, a.Y - y) < r


def _aortic_enlargement(a: _Anatomy, rng: np.random.Generator, h: int) -> Finding:
    """A large round bulge of the aortic knob, left of the upper mediastinum (image right)."""
    r = a.k * rng.uniform(0.045, 0.062)
    x = a.cx + a.half_gap + 0.55 * r
    y = a.apex + rng.uniform(0.11, 0.15)
    mask = _disk(a, x, y, r)
    alpha = _soft(mask, 1.0)
    return [mask], lambda img: _blend(img, alpha, 0.72)


def _atelectasis(a: _Anatomy, rng: np.random.Generator, h: int) -> Finding:
    """A plate-like band of collapsed lung, nearly horizontal, in a lower zone."""
    side = int(rng.integers(2))
    x, y = a.point_in_lung(rng, side, (0.45, 0.78), (0.35, 0.65))
    length = a.k * rng.uniform(0.10, 0.15)
    angle = np.deg2rad(rng.uniform(-25, 25))
    half = 0.5 * length * np.array([np.cos(angle), np.sin(angle)])
    d = _segment_distance(a.X, a.Y, (x - half[0], y - half[1]), (x + half[0], y + half[1]))
    thick = a.k * rng.uniform(0.016, 0.022)
    mask = d < thick
    alpha = 0.9 * np.clip(1 - (d / thick) ** 2, 0, 1)
    return [mask], lambda img: _blend(img, alpha, 0.62)


def _calcification(a: _Anatomy, rng: np.random.Generator, h: int) -> Finding:
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
    alpha = _soft(mask, 0.7)
    return [mask], lambda img: _blend(img, alpha, 0.97)


def _cardiomegaly(a: _Anatomy, rng: np.random.Generator, h: int) -> Finding:
    """An enlarged heart: the box spans the heart's full width, down to the diaphragm."""
    hx, hy, _, hb = a.heart
    ha = a.k * rng.uniform(0.19, 0.22)
    hb = hb * rng.uniform(1.1, 1.25)
    hx = hx + a.k * 0.02
    ellipse = ((a.X - hx) / ha) ** 2 + ((a.Y - hy) / hb) ** 2 < 1
    mask = ellipse & (a.Y <= max(a.base))
    alpha = _soft(ellipse, 0.004 * h)
    return [mask], lambda img: _blend(img, alpha, 0.71)


def _consolidation(a: _Anatomy, rng: np.random.Generator, h: int) -> Finding:
    """Dense homogeneous opacity limited by the pleura, with dark air bronchograms."""
    side = int(rng.integers(2))
    x, y = a.point_in_lung(rng, side, (0.4, 0.72), (0.35, 0.65))
    ra, rb = a.k * rng.uniform(0.07, 0.095), a.k * rng.uniform(0.06, 0.085)
    theta = np.arctan2(a.Y - y, a.X - x)
    wobble = 1 + sum(0.07 * np.cos(j * theta + rng.uniform(0, 6.3)) for j in (2, 3, 5))
    region = (((a.X - x) / ra) ** 2 + ((a.Y - y) / rb) ** 2 < wobble**2) & a.lung_masks[side]
    alpha = 0.92 * _soft(region, 1.5)
    s = a.side_sign(side)
    bronchi = np.zeros(a.X.shape, np.float32)
    start = (x - s * 0.6 * ra, y - 0.3 * rb)
    for _ in range(3):
        ang = rng.uniform(-0.7, 0.7) + (0.0 if s > 0 else np.pi) + 0.4
        end = (start[0] + 1.2 * ra * np.cos(ang), start[1] + 1.2 * rb * np.sin(ang))
        d = _segment_distance(a.X, a.Y, start, end)
        bronchi = np.maximum(bronchi, np.clip(1 - d / (0.005 * a.k), 0, 1))
    bronchi *= region

    def apply(img: np.ndarray) -> None:
        _blend(img, alpha, 0.64)
        _blend(img, 0.8 * bronchi, 0.30)

    return [region], apply


def _ild(a: _Anatomy, rng: np.random.Generator, h: int) -> Finding:
    """Interstitial lung disease: a fine reticular net in the lower zones, often both sides."""
    sides = [0, 1] if rng.random() < 0.7 else [int(rng.integers(2))]
    band = _smooth_noise(rng, a.X.shape, 0.004 * h) - 0.8 * _smooth_noise(rng, a.X.shape, 0.01 * h)
    net = np.exp(-((band / 0.35) ** 2)).astype(np.float32)  # zero crossings: a network
    masks, alphas = [], []
    for side in sides:
        x, y = a.point_in_lung(rng, side, (0.62, 0.78), (0.4, 0.6))
        ra, rb = a.k * rng.uniform(0.08, 0.1), a.k * rng.uniform(0.07, 0.09)
        region = (((a.X - x) / ra) ** 2 + ((a.Y - y) / rb) ** 2 < 1) & a.lung_masks[side]
        masks.append(region)
        alphas.append(_soft(region, 1.5))
    alpha = np.maximum.reduce(alphas)

    def apply(img: np.ndarray) -> None:
        img += alpha * (0.06 + 0.24 * net)

    return masks, apply


def _infiltration(a: _Anatomy, rng: np.random.Generator, h: int) -> Finding:
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
    field_ *= _soft(a.lung_masks[side], 2)
    mask = field_ > 0.3
    return [mask], _adder(0.2 * field_)


def _lung_opacity(a: _Anatomy, rng: np.random.Generator, h: int) -> Finding:
    """One hazy, round-ish opacity with soft borders."""
    side = int(rng.integers(2))
    x, y = a.point_in_lung(rng, side, (0.3, 0.72), (0.35, 0.65))
    r = a.k * rng.uniform(0.05, 0.075)
    d = np.hypot((a.X - x) / 1.15, a.Y - y)
    field_ = np.exp(-1.5 * (d / r) ** 2).astype(np.float32)
    mask = field_ > 0.3
    return [mask], _adder(0.24 * field_)


def _nodule(a: _Anatomy, rng: np.random.Generator, h: int) -> Finding:
    """A round, sharply marginated, bright nodule (or mass, when large)."""
    side = int(rng.integers(2))
    x, y = a.point_in_lung(rng, side, (0.2, 0.75), (0.3, 0.7))
    r = a.k * rng.uniform(0.025, 0.045)
    d = np.hypot(a.X - x, a.Y - y)
    mask = d < r
    alpha = _soft(mask, 0.8)
    shade = 0.30 + 0.06 * (1 - d / r)
    return [mask], _adder(alpha * shade)


def _other_lesion(a: _Anatomy, rng: np.random.Generator, h: int) -> Finding:
    """An irregular, spiculated (star-shaped), mottled lesion."""
    side = int(rng.integers(2))
    x, y = a.point_in_lung(rng, side, (0.25, 0.7), (0.3, 0.7))
    r0 = a.k * rng.uniform(0.03, 0.042)
    n_spikes = int(rng.integers(5, 9))
    theta = np.arctan2(a.Y - y, a.X - x)
    radius = r0 * (0.6 + 0.7 * np.abs(np.cos(0.5 * n_spikes * theta + rng.uniform(0, 6.3))) ** 4)
    mask = np.hypot(a.X - x, a.Y - y) < radius
    alpha = _soft(mask, 0.8)
    mottle = 0.22 + 0.08 * _smooth_noise(rng, a.X.shape, 0.003 * h)
    return [mask], _adder(alpha * mottle)


def _pleural_effusion(a: _Anatomy, rng: np.random.Generator, h: int) -> Finding:
    """Fluid at a lung base: blunted costophrenic angle, meniscus rising laterally."""
    side = int(rng.integers(2))
    s = a.side_sign(side)
    level = a.base[side] - a.k * rng.uniform(0.09, 0.14)
    rise = a.k * rng.uniform(0.03, 0.06)
    lateral = np.clip((s * (a.X - a.cx) - a.half_gap) / a.width, 0, 1)
    surface = level - rise * lateral**2
    region = a.lung_masks[side] & (a.Y > surface) & (lateral > 0.2)
    alpha = _soft(region, 1.5)

    def apply(img: np.ndarray) -> None:
        np.maximum(img, img + 0.95 * alpha * (0.60 - img), out=img)  # fluid only adds density

    return [region], apply


def _pleural_thickening(a: _Anatomy, rng: np.random.Generator, h: int) -> Finding:
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
    alpha = _soft(region, 1.0)
    return [region], _adder(0.32 * alpha)


def _pneumothorax(a: _Anatomy, rng: np.random.Generator, h: int) -> Finding:
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
    alpha = _soft(region, 0.7)
    line_alpha = _soft(line, 0.5)
    ribs = a.ribs

    def apply(img: np.ndarray) -> None:
        _blend(img, 0.92 * alpha, 0.06 + ribs)  # ribs stay: they are outside the lung
        _blend(img, np.clip(1.6 * line_alpha, 0, 1), 0.55)

    return [region | line], apply


def _pulmonary_fibrosis(a: _Anatomy, rng: np.random.Generator, h: int) -> Finding:
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
        d = _segment_distance(a.X, a.Y, (px, py), end)
        streaks = np.maximum(streaks, np.clip(1 - d / (a.k * rng.uniform(0.005, 0.008)), 0, 1))
    streaks *= a.lung_masks[side]
    mask = streaks > 0.2
    return [mask], _adder(0.3 * streaks)


_RENDERERS: dict[int, Callable[[_Anatomy, np.random.Generator, int], Finding]] = {
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


def render_case(spec: CaseSpec) -> Rendered:
    """Draw the image of one case (deterministic for its seed): the heart of the generator."""
    rng = spec.rng()
    image_id = rng.bytes(16).hex()  # 32 lowercase hex characters, like the real ids
    rows = int(rng.integers(ROWS_RANGE[0], ROWS_RANGE[1] + 1))
    cols = int(round(rows * rng.uniform(*ASPECT_RANGE)))
    h, w = int(round(rows * RENDER_SCALE)), int(round(cols * RENDER_SCALE))
    img, anatomy = _draw_anatomy(rng, h, w)
    base = img.copy()

    class_ids: list[int] = []
    boxes: list[Box] = []
    planned = sorted(spec.class_ids, key=_DRAW_ORDER.index)
    for c in planned:
        finding = None
        for _attempt in range(20):  # find a place that does not cover another finding
            masks, apply = _RENDERERS[c](anatomy, rng, h)
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

    # The same noise on both images: quantum mottle and a slow exposure gradient.
    noise = 0.009 * _smooth_noise(rng, (h, w), 0.6) + 0.02 * _smooth_noise(rng, (h, w), 0.15 * h)
    grad = 0.04 * (anatomy.Y - 0.5) * rng.uniform(-1, 1)
    out = []
    for im in (img, base):
        im = np.clip(im + noise + grad, 0.0, 1.0).astype(np.float32)
        out.append(cv2.resize(im, (cols, rows), interpolation=cv2.INTER_LINEAR))
    meta = {
        "image_id": image_id,
        "rows": rows,
        "cols": cols,
        "sex": str(rng.choice(["M", "F", "O"], p=[0.52, 0.45, 0.03])),
        "age": int(rng.integers(18, 90)),
    }
    return Rendered(out[0], out[1], class_ids, boxes, meta)


def _pix(boxes: list[Box], w: int, h: int, cols: int, rows: int) -> list[Box]:
    """Boxes from original back to render pixels (for overlap tests while placing)."""
    sx, sy = w / cols, h / rows
    return [(b[0] * sx, b[1] * sy, b[2] * sx, b[3] * sy) for b in boxes]


# --------------------------------------------------------------------------- DICOM


def _rle_plugin() -> str:
    """GDCM's RLE encoder is ~10x faster than pydicom's pure-Python one; same format."""
    try:
        import gdcm  # noqa: F401

        return "gdcm"
    except ImportError:
        return "pydicom"


def _uid(seed: int, image_id: str, what: str) -> UID:
    """A UID that depends only on the seed and the image: ``2.25.<UUID as an integer>``.

    A name-based UUID (version 5) is the DICOM-approved way to make a UID
    without a registered root; pydicom's ``generate_uid(prefix=None)`` would use
    a *random* UUID, so files would differ on every run.
    """
    name = f"cxrkit-sample/{seed}/{image_id}/{what}"
    return UID(f"2.25.{uuid.uuid5(uuid.NAMESPACE_URL, name).int}")


def _to_dicom(rendered: Rendered, spec: CaseSpec, rng: np.random.Generator) -> Dataset:
    """Store a display image as DICOM, with the variant's photometric, bits, VOI and codec.

    The stored integers are chosen so that the standard display pipeline
    (modality LUT -> VOI LUT or window -> MONOCHROME1 inversion) gives back the
    drawn anatomy.
    """
    v = spec.variant
    meta = rendered.meta
    display = rendered.image
    max_stored = (1 << v.bits_stored) - 1
    # Detectors rarely fill their whole bit depth: 14-16 bit files use ~12-13 bits of
    # range somewhere inside it (which also keeps the files small).
    span = min(max_stored, 2 ** rng.uniform(11.8, 13.0)) * rng.uniform(0.85, 1.0)
    lo = rng.uniform(0.0, max_stored - span)
    hi = lo + span
    level = display if v.photometric == "MONOCHROME2" else 1.0 - display  # MONOCHROME1: inverted
    stored = np.clip(np.rint(lo + level * (hi - lo)), 0, max_stored).astype(np.uint16)

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    sop_class = DX_SOP_CLASS if v.modality == "DX" else CR_SOP_CLASS
    sop_instance = _uid(spec.root_seed, meta["image_id"], "sop")
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = sop_instance
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_instance
    ds.StudyDate = CONTENT_DATE
    ds.ContentDate = CONTENT_DATE
    ds.Modality = v.modality
    ds.Manufacturer = "cxrkit synthetic"
    # Fake but realistic patient tags, as in the anonymised competition files.
    ds.PatientName = "ANONYMOUS"
    ds.PatientID = meta["image_id"]
    ds.PatientSex = meta["sex"]
    ds.PatientAge = f"{meta['age']:03d}Y"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = "PA"
    ds.StudyInstanceUID = _uid(spec.root_seed, meta["image_id"], "study")
    ds.SeriesInstanceUID = _uid(spec.root_seed, meta["image_id"], "series")
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = v.photometric
    ds.Rows, ds.Columns = stored.shape
    spacing = round(430.0 / meta["rows"], 4)  # a ~43 cm detector, as real ones
    ds.PixelSpacing = [spacing, spacing]
    ds.ImagerPixelSpacing = [spacing, spacing]
    ds.BitsAllocated = 16
    ds.BitsStored = v.bits_stored
    ds.HighBit = v.bits_stored - 1
    ds.PixelRepresentation = 0

    slope, intercept = 1.0, 0.0
    if v.rescale:
        slope = float(rng.choice([0.5, 1.0, 2.0]))
        intercept = float(rng.choice([-1024.0, -500.0, 100.0]))
        ds.RescaleSlope = f"{slope:g}"
        ds.RescaleIntercept = f"{intercept:g}"
        ds.RescaleType = "US"  # unspecified units, as for most radiographs
    modality = stored[::4, ::4].astype(np.float64) * slope + intercept
    q_lo, q_hi = np.quantile(modality, [0.002, 0.998])
    span = q_hi - q_lo
    w_lo = q_lo - rng.uniform(0.0, 0.08) * span
    w_hi = q_hi + rng.uniform(0.0, 0.08) * span
    if v.voi in ("window", "window2"):
        centre, width = (w_lo + w_hi) / 2, w_hi - w_lo
        if v.voi == "window":
            ds.WindowCenter = f"{centre:.1f}"
            ds.WindowWidth = f"{width:.1f}"
        else:  # two windows (the first is the default): a normal and a wider one
            ds.WindowCenter = [f"{centre:.1f}", f"{centre:.1f}"]
            ds.WindowWidth = [f"{width:.1f}", f"{1.3 * width:.1f}"]
            ds.WindowCenterWidthExplanation = ["NORMAL", "WIDE"]
        ds.VOILUTFunction = "LINEAR"
    elif v.voi == "lut":
        first = int(stored.min())
        n_entries = int(stored.max()) - first + 1
        out_bits = int(rng.choice([12, 16]))
        x = np.clip((np.arange(n_entries) + first - w_lo) / (w_hi - w_lo), 0, 1)
        gain = rng.uniform(1.5, 3.0)  # a gentle S-curve: more contrast in the mid-tones
        curve = 0.5 + 0.5 * np.tanh(gain * (x - 0.5)) / np.tanh(gain / 2)
        item = Dataset()
        item.LUTDescriptor = [n_entries if n_entries < 65536 else 0, first, out_bits]
        item.LUTExplanation = "CXRKIT S-CURVE"
        item.add_new(0x00283006, "US", np.rint(curve * ((1 << out_bits) - 1)).astype(int).tolist())
        ds.VOILUTSequence = [item]

    # compress() would give the file a new random SOP Instance UID by default.
    if v.transfer == "raw":
        ds.PixelData = stored.tobytes()
    elif v.transfer == "rle":
        ds.compress(RLELossless, stored, encoding_plugin=_rle_plugin(), generate_instance_uid=False)
    else:
        ds.compress(JPEG2000Lossless, stored, generate_instance_uid=False)
    return ds


# --------------------------------------------------------------------------- labels


def _radiologist_rows(
    image_id: str,
    class_ids: list[int],
    boxes: list[Box],
    rows: int,
    cols: int,
    rng: np.random.Generator,
) -> list[dict]:
    """What three radiologists wrote about one image: misses, jitter and No finding rows."""
    rads = rng.choice(len(RAD_IDS), size=3, replace=False, p=_RAD_WEIGHTS)
    rads = [RAD_IDS[i] for i in rads]
    seen = rng.random((len(boxes), 3)) < DETECTION_PROB
    for i in range(len(boxes)):
        if not seen[i].any():  # a finding nobody saw would be a silent wrong label
            seen[i, rng.integers(3)] = True
    out: list[dict] = []
    for j, rad in enumerate(rads):
        scale = rng.normal(1.0, 0.03)  # some radiologists draw bigger boxes than others
        any_box = False
        for i, (c, box) in enumerate(zip(class_ids, boxes, strict=True)):
            if not seen[i, j]:
                continue
            x0, y0, x1, y1 = box
            bw, bh = x1 - x0, y1 - y0
            mx, my = (x0 + x1) / 2, (y0 + y1) / 2
            e = rng.normal(0.0, BOX_JITTER, 4)
            jx0 = np.clip(mx - scale * bw / 2 + e[0] * bw, 0, cols - 2)
            jy0 = np.clip(my - scale * bh / 2 + e[1] * bh, 0, rows - 2)
            jx1 = np.clip(mx + scale * bw / 2 + e[2] * bw, jx0 + 2, cols)
            jy1 = np.clip(my + scale * bh / 2 + e[3] * bh, jy0 + 2, rows)
            out.append(_row(image_id, c, rad, (jx0, jy0, jx1, jy1)))
            any_box = True
        if not any_box:
            out.append(_row(image_id, NO_FINDING_ID, rad, None))
    return out


def _row(image_id: str, c: int, rad: str, box: Sequence[float] | None) -> dict:
    """One train.csv row; boxes in whole pixels written as floats (691.0), as the real csv."""
    if box is None:
        coords = [np.nan] * 4
    else:
        coords = [
            float(np.floor(box[0])),
            float(np.floor(box[1])),
            float(np.ceil(box[2])),
            float(np.ceil(box[3])),
        ]
    return dict(zip(TRAIN_COLUMNS, [image_id, CLASS_NAMES[c], c, rad, *coords], strict=True))


def _truth_rows(image_id: str, class_ids: list[int], boxes: list[Box]) -> list[dict]:
    """Exact boxes (what was drawn) for test_labels.csv; one No finding row if normal."""
    if not boxes:
        return [_row(image_id, NO_FINDING_ID, TEST_TRUTH_RAD_ID, None)]
    return [_row(image_id, c, TEST_TRUTH_RAD_ID, b) for c, b in zip(class_ids, boxes, strict=True)]


def _frame(rows: list[dict]) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=TRAIN_COLUMNS)
    df["class_id"] = df["class_id"].astype("int64")
    for col in ("x_min", "y_min", "x_max", "y_max"):
        df[col] = df[col].astype("float64")
    return df


# --------------------------------------------------------------------------- main


def _check_args(seed: int, n_train: int, n_test: int) -> None:
    for name, value, least in (("n_train", n_train, 1), ("n_test", n_test, 0)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise TypeError(f"{name} must be an integer, got {value!r}")
        if value < least:
            raise ValueError(f"{name} must be >= {least}, got {value}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")


def _prepare_out_dir(out: Path) -> None:
    """Make ``out`` ready: empty, or a previous sample (whose files are removed first)."""
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not (out / MARKER_NAME).is_file():
            found = sorted(p.name for p in out.iterdir())[:5]
            raise FileExistsError(
                f"{out} is not empty and is not a cxrkit sample (found {found}); "
                "choose an empty or new folder"
            )
        for name in ("train.csv", "test_labels.csv", "sample_submission.csv"):
            (out / name).unlink(missing_ok=True)
        for sub in ("train", "test"):
            shutil.rmtree(out / sub, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)


def generate_sample(
    out_dir: str | os.PathLike,
    seed: int = 0,
    n_train: int = 200,
    n_test: int = 50,
    progress: bool = True,
) -> Path:
    """Write a synthetic VinBigData-style dataset to ``out_dir`` and return its path.

    ``out_dir`` must be empty, new, or a previous sample (which is replaced).
    The same ``seed`` and counts give byte-identical files. The CSVs are written
    last, so a folder with ``train.csv`` is always complete.

    Example::

        >>> from cxrkit.sample import generate_sample
        >>> root = generate_sample("/tmp/vinbig-sample", seed=0)   # ~1 minute
        >>> sorted(p.name for p in root.iterdir())
        ['.cxrkit-sample', 'sample_submission.csv', 'test', 'test_labels.csv', 'train', 'train.csv']
    """
    _check_args(seed, n_train, n_test)
    seed, n_train, n_test = int(seed), int(n_train), int(n_test)
    from cxrkit.paths import SAMPLE_VERSION

    out = Path(out_dir).expanduser()
    _prepare_out_dir(out)
    # The marker first claims the folder (a rerun may then clean it); the CSVs
    # that make it usable come last.
    marker = (
        f"cxrkit synthetic VinBigData sample\nversion={SAMPLE_VERSION}\nseed={seed}\n"
        f"n_train={n_train}\nn_test={n_test}\n"
    )
    with atomic_path(out / MARKER_NAME) as tmp:
        tmp.write_text(marker)

    cases = plan_cases(seed, n_train, n_test)
    train_rows: list[dict] = []
    truth_rows: list[dict] = []
    test_ids: list[str] = []
    bar_options = {} if progress else {"disable": True}  # else TQDM_DISABLE decides
    for spec in tqdm(cases, desc="sample images", unit="img", **bar_options):
        rendered = render_case(spec)
        rng = spec.rng(stream=1)
        ds = _to_dicom(rendered, spec, rng)
        image_id = rendered.meta["image_id"]
        path = out / spec.split / f"{image_id}.dicom"
        with atomic_path(path) as tmp:
            ds.save_as(tmp, enforce_file_format=True)
        if spec.split == "train":
            train_rows += _radiologist_rows(
                image_id,
                rendered.class_ids,
                rendered.boxes,
                rendered.meta["rows"],
                rendered.meta["cols"],
                rng,
            )
        else:
            test_ids.append(image_id)
            truth_rows += _truth_rows(image_id, rendered.class_ids, rendered.boxes)

    submission = pd.DataFrame({"image_id": test_ids, "PredictionString": NO_FINDING_PREDICTION})
    write_csv_atomic(submission, out / "sample_submission.csv")
    write_csv_atomic(_frame(truth_rows), out / "test_labels.csv")
    write_csv_atomic(_frame(train_rows), out / "train.csv")
    return out


def read_dicom_display(path: str | os.PathLike) -> np.ndarray:
    """Float [0, 1] display image of a sample DICOM with pydicom's own pipeline.

    A reference for tests and for checking the sample by eye; the library's
    fast reader is :func:`cxrkit.dicom.read_xray`.
    """
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    ds = pydicom.dcmread(path)
    arr = apply_modality_lut(ds.pixel_array, ds)
    if "VOILUTSequence" in ds or "WindowCenter" in ds:
        arr = apply_voi_lut(arr, ds)
    arr = arr.astype(np.float64)
    lo, hi = arr.min(), arr.max()
    arr = (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)
    if ds.PhotometricInterpretation == "MONOCHROME1":
        arr = 1.0 - arr
    return arr.astype(np.float32)
