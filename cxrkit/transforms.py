"""Augmentation pipelines for chest radiographs (albumentations 2.x), boxes included.

:func:`train_transforms` keeps to changes a radiologist could plausibly see
(small affine jitter, a rare left-right flip, brightness/contrast/gamma, rare
CLAHE, mild noise or blur; never a vertical flip); :func:`valid_transforms` and
:func:`test_transforms` only resize and convert. Taught in notebook 03.
"""

from __future__ import annotations

import random

import albumentations as A
import cv2
import numpy as np
from albumentations.pytorch import ToTensorV2

MIN_VISIBILITY = 0.3  # drop a box when less than 30 % of its area stays in the image
MIN_SIDE = 1.0  # ... or when it becomes thinner than one pixel


def bbox_params() -> A.BboxParams:
    """Box handling shared by every pipeline: pascal_voc pixels, clipped, vanished boxes dropped."""
    return A.BboxParams(
        format="pascal_voc",
        label_fields=["labels"],
        clip=True,
        min_visibility=MIN_VISIBILITY,
        min_width=MIN_SIDE,
        min_height=MIN_SIDE,
    )


def reseed(pipeline: A.BaseCompose, seed: int | None) -> A.BaseCompose:
    """Give ``pipeline`` and all its transforms **one** shared random stream from ``seed``.

    ``seed=None`` draws fresh entropy (a different sequence every time).
    """
    pipeline.set_random_state(np.random.default_rng(seed), random.Random(seed))
    return pipeline


def train_transforms(
    size: int = 512, *, hflip_p: float = 0.25, seed: int | None = None
) -> A.Compose:
    """Augmentations for training (see the module docstring for each choice)."""
    pipeline = A.Compose(
        [
            A.Resize(size, size, interpolation=cv2.INTER_AREA),
            A.Affine(
                scale=(0.9, 1.1),
                translate_percent=(-0.05, 0.05),
                rotate=(-7, 7),
                rotate_method="ellipse",
                border_mode=cv2.BORDER_CONSTANT,
                fill=0,
                p=0.5,
            ),
            A.HorizontalFlip(p=hflip_p),
            A.RandomBrightnessContrast(brightness_limit=0.15, contrast_limit=0.15, p=0.5),
            A.RandomGamma(gamma_limit=(80, 120), p=0.3),
            A.CLAHE(clip_limit=(1, 2), tile_grid_size=(8, 8), p=0.1),
            A.OneOf(
                [
                    A.GaussNoise(std_range=(0.01, 0.03), p=1.0),  # std as a fraction of 255
                    A.GaussianBlur(blur_limit=(3, 5), sigma_limit=(0.3, 1.0), p=1.0),
                ],
                p=0.2,
            ),
            ToTensorV2(),
        ],
        bbox_params=bbox_params(),
        seed=seed,
    )
    return reseed(pipeline, seed)


def valid_transforms(size: int = 512, *, seed: int | None = None) -> A.Compose:
    """Validation: only resize (boxes follow) and convert to a tensor. Deterministic."""
    pipeline = A.Compose(
        [A.Resize(size, size, interpolation=cv2.INTER_AREA), ToTensorV2()],
        bbox_params=bbox_params(),
        seed=seed,
    )
    return reseed(pipeline, seed)


def test_transforms(size: int = 512) -> A.Compose:
    """Inference on unlabelled images: resize and convert to a tensor (no boxes)."""
    return A.Compose([A.Resize(size, size, interpolation=cv2.INTER_AREA), ToTensorV2()])


test_transforms.__test__ = False  # not a pytest test, despite the name
