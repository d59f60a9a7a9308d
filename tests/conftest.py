"""Shared fixtures: a small generated sample and its preprocessed PNGs, a few DICOMs.

The sample is made once per test session in a temporary folder, so tests never
depend on the user's cache, on ``../shared`` or on the network.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TQDM_DISABLE", "1")  # keep test logs short

SMALL_TRAIN = 24
SMALL_TEST = 8


@pytest.fixture(scope="session")
def sample_data(tmp_path_factory):
    """A small sample in the exact VinBigData layout (24 train, 8 test DICOMs)."""
    from cxrkit.sample import generate_sample

    out = tmp_path_factory.mktemp("sample")
    generate_sample(out, seed=123, n_train=SMALL_TRAIN, n_test=SMALL_TEST, progress=False)
    return out


@pytest.fixture(scope="session")
def preprocessed(sample_data, tmp_path_factory):
    """The small sample converted to 256x256 PNGs with train/test meta tables."""
    from cxrkit.preprocess import preprocess_dicoms

    out = tmp_path_factory.mktemp("preprocessed")
    report = preprocess_dicoms(sample_data, out, size=256, workers=1)
    assert not report.failed, report.failed
    return out


@pytest.fixture()
def src(tmp_path) -> Path:
    """5 train + 2 test DICOMs of different shapes (one MONOCHROME1, one 14-bit)."""
    from helpers import write_dicom

    root = tmp_path / "src"
    shapes = [(200, 160), (160, 200), (300, 256), (128, 128), (257, 199)]
    for i, (r, c) in enumerate(shapes):
        write_dicom(
            root / "train" / f"tr{i}.dicom", r, c, seed=i, mono1=i == 1, bits=14 if i == 2 else 12
        )
    for i in range(2):
        write_dicom(root / "test" / f"te{i}.dicom", 180 + i, 150, seed=10 + i)
    return root


@pytest.fixture(scope="module")
def fused(sample_data, preprocessed):
    """The small sample's train.csv fused per image (one truth set), original pixels."""
    from cxrkit.annotations import fuse_boxes, load_annotations, load_meta

    meta = load_meta(preprocessed / "train_meta.csv")
    return fuse_boxes(load_annotations(sample_data / "train.csv"), meta)
