"""Augmentation pipelines for chest radiographs (albumentations 2.x), boxes included.

A chest X-ray is not a holiday photo: the anatomy has a fixed layout, and an
augmentation must produce an image a radiologist could plausibly see. Each
choice below, and why (notebook 03 shows them on real-looking images):

- **Resize to ``size x size``** first: the PNGs from :mod:`cxrkit.preprocess` are
  already square at 512, so this is a no-op then; it also makes keep-aspect PNGs
  (or another size) stack into batches. Boxes scale per axis exactly.
- **Small affine jitter** (``Affine``: scale 0.9-1.1, shift up to 5 %, rotation
  up to 7 degrees, p=0.5): patients are never positioned identically, but a
  radiograph is never upside down or rotated by 45 degrees. Rotated boxes use
  ``rotate_method="ellipse"`` (tighter than the box around the rotated box for
  round lesions). The border is filled with black, like a collimated edge.
- **Horizontal flip, low probability** (``hflip_p=0.25`` by default): a flipped
  chest shows the heart on the right (*situs inversus*, about 1 in 10,000
  people), and two findings are lateralised: *Aortic enlargement* (the aortic
  knob is on the patient's left = image right) and *Cardiomegaly* (the heart
  extends mostly to the image right). So flipping is debatable. We keep it, rarely:
  convolutional detectors recognise a lesion mostly by its local appearance,
  which a flip does not change; it doubles the variety of the 13 other findings;
  and :mod:`cxrkit.postprocess` offers flip test-time augmentation, which only
  helps if the model has seen flipped images. Pass ``hflip_p=0`` to switch it off
  (and compare in notebook 03!).
- **No vertical flip, no large rotation, no elastic warp**: they create anatomy
  that does not exist.
- **Brightness / contrast / gamma** (p=0.5, 0.3): scanners, exposure and the
  vendors' processing differ a lot between hospitals; the LUT-based contrast of a
  DICOM window is roughly a gamma curve.
- **CLAHE, rarely** (p=0.1): some sites deliver local-contrast-enhanced images;
  it is also a popular preprocessing for this competition.
- **Mild noise or blur** (p=0.2, one of them): quantum noise of low-dose
  exposures, and the softness of upsampled low-resolution detectors.

Boxes are ``pascal_voc`` (``x_min, y_min, x_max, y_max`` pixels), clipped to the
image; a box that (almost) leaves the image (less than 30 % of it visible, or
thinner than one pixel) is dropped **together with its label** (``label_fields``
keeps ``labels`` aligned with ``bboxes``).

The pipelines work on the 1-channel uint8 image (three times cheaper than RGB) and
end with ``ToTensorV2``; :class:`cxrkit.data.XrayDataset` then scales to [0, 1]
and repeats the gray channel three times for COCO-pretrained backbones.

Reproducibility: albumentations 2 gives every transform of a ``Compose`` its own
generator seeded with the *same* seed, so decisions of different transforms are
correlated (a flip would always come with an affine). :func:`reseed` shares one
generator instead; every builder here calls it. In a ``DataLoader`` with worker
processes, each worker must be reseeded differently: use
:func:`cxrkit.data.worker_init_fn`.
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
