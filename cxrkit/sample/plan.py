"""Plan the sample before drawing it: which images, which findings, which DICOM encodings.

Also the priors of the labels (radiologists, their misses and box jitter) and the
real class frequencies they follow. Every image gets its own random generator,
so images can then be drawn independently, in any order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from cxrkit.errors import ConfigError
from cxrkit.labels import NUM_FINDINGS

__all__ = [
    "BOX_JITTER",
    "DETECTION_PROB",
    "NORMAL_FRACTION",
    "RAD_IDS",
    "RAD_WEIGHTS",
    "REAL_ROW_COUNTS",
    "CaseSpec",
    "DicomVariant",
    "plan_cases",
]

# Share of each class among the boxes of the real train.csv (67,914 rows), used by
# the sample generator so that the synthetic data is as imbalanced as the real one.
REAL_ROW_COUNTS: dict[int, int] = {
    0: 7162,
    1: 279,
    2: 960,
    3: 5427,
    4: 556,
    5: 1000,
    6: 1247,
    7: 2483,
    8: 2580,
    9: 2203,
    10: 2476,
    11: 4842,
    12: 226,
    13: 4655,
    14: 31818,
}

# Radiologists R1..R17; in the real train set R8, R9 and R10 read most images.
RAD_IDS: tuple[str, ...] = tuple(f"R{i}" for i in range(1, 18))
RAD_WEIGHTS = np.array([12.0 if r in ("R8", "R9", "R10") else 1.0 for r in RAD_IDS])
RAD_WEIGHTS /= RAD_WEIGHTS.sum()

NORMAL_FRACTION = 1 / 3  # real data: ~70% normal; a third leaves enough positives to learn
DETECTION_PROB = 0.85  # chance that one radiologist reports a finding that is there
BOX_JITTER = 0.03  # radiologists' box edges disagree by ~3% of the box size


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
    finding_variant: str = "default"  # how findings look (cxrkit.sample.findings.FINDING_VARIANTS)

    def rng(self, stream: int = 0) -> np.random.Generator:
        """This image's own generator (independent of how many images there are).

        Stream 0 draws the image, stream 1 its storage and its labels, so that
        changing one never shifts the random numbers of the other.
        """
        key = (*self.seed_key, stream)
        return np.random.default_rng(np.random.SeedSequence(self.root_seed, spawn_key=key))


def check_findings(findings: Sequence[int]) -> tuple[int, ...]:
    """``findings`` as sorted unique class ids; ConfigError unless they are findings 0-13."""
    try:
        ids = tuple(sorted({int(c) for c in findings}))
    except (TypeError, ValueError):
        raise ConfigError(
            f"findings must be class ids 0-{NUM_FINDINGS - 1}, got {findings!r}"
        ) from None
    if not ids or ids[0] < 0 or ids[-1] >= NUM_FINDINGS:
        raise ConfigError(
            f"findings must be one or more class ids 0-{NUM_FINDINGS - 1} (14 is No finding), "
            f"got {list(findings)}"
        )
    return ids


def _class_probabilities(findings: Sequence[int] | None = None) -> np.ndarray:
    """Finding frequencies: the real shares, flattened by a square root.

    The real data has ~32x more Aortic enlargement than Pneumothorax boxes; the
    square root keeps the order (what students should notice) but leaves the
    rare classes a chance to be learned from 200 images. Classes not in
    ``findings`` (when given) get 0.
    """
    counts = np.array([REAL_ROW_COUNTS[c] for c in range(NUM_FINDINGS)], dtype=float)
    p = np.sqrt(counts / counts.sum())
    if findings is not None:
        p[[c for c in range(NUM_FINDINGS) if c not in set(findings)]] = 0.0
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


def _abnormal_findings(rng: np.random.Generator, p: np.ndarray) -> set[int]:
    """1-3 findings for one abnormal image, with the real data's co-occurrences
    (only between classes that ``p`` allows)."""
    k = int(rng.choice([1, 2, 3], p=[0.45, 0.35, 0.20]))
    k = min(k, int(np.count_nonzero(p)))
    chosen = set(rng.choice(NUM_FINDINGS, size=k, replace=False, p=p).tolist())
    # Co-occurrences of the real data: a big heart often comes with a big aorta.
    if 0 in chosen and 3 not in chosen and rng.random() < 0.4:
        chosen.add(3)
    elif 3 in chosen and 0 not in chosen and rng.random() < 0.5:
        chosen.add(0)
    if 13 in chosen and 11 not in chosen and rng.random() < 0.3:
        chosen.add(11)  # fibrosis with pleural thickening
    return {c for c in chosen if p[c] > 0}


def _top_up_rare(
    plan: list[set[int]],
    abnormal: list[int],
    rng: np.random.Generator,
    min_per_class: int,
    classes: Sequence[int],
) -> None:
    """In place: add rare classes to the abnormal images with the fewest findings."""
    for c in classes:
        missing = min_per_class - sum(c in s for s in plan)
        candidates = [i for i in abnormal if c not in plan[i]]
        rng.shuffle(candidates)
        candidates.sort(key=lambda i: len(plan[i]))
        for i in candidates[: max(missing, 0)]:
            plan[i].add(c)


def _plan_findings(
    n: int, rng: np.random.Generator, min_per_class: int, findings: Sequence[int] | None = None
) -> list[tuple[int, ...]]:
    """Class ids per image: a third normal, 1-3 findings otherwise, every class seen
    (every class of ``findings`` only, when given)."""
    n_normal = int(round(n * NORMAL_FRACTION)) if n >= 3 else 0
    normal = set(rng.permutation(n)[:n_normal].tolist())
    p = _class_probabilities(findings)
    plan = [set() if i in normal else _abnormal_findings(rng, p) for i in range(n)]
    abnormal = [i for i in range(n) if i not in normal]
    classes = range(NUM_FINDINGS) if findings is None else sorted(set(findings))
    if abnormal:  # top up rare classes on the images with the fewest findings
        _top_up_rare(plan, abnormal, rng, min_per_class, classes)
    return [tuple(sorted(s)) for s in plan]


def _plan_variants(n: int, rng: np.random.Generator) -> list[DicomVariant]:
    """How each of ``n`` images is stored, every kind of file present when n allows."""
    photometric = _balanced(["MONOCHROME1", "MONOCHROME2"], [0.3, 0.7], n, rng)
    bits = _balanced([10, 12, 14, 15, 16], [0.15, 0.35, 0.25, 0.1, 0.15], n, rng)
    voi = _balanced(["window", "window2", "lut", "none"], [0.4, 0.15, 0.2, 0.25], n, rng)
    rescale = _balanced([False, True], [0.7, 0.3], n, rng)
    transfer = _balanced(["raw", "rle", "j2k"], [0.2, 0.35, 0.45], n, rng)
    modality = _balanced(["DX", "CR"], [0.6, 0.4], n, rng)
    variants = []
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
        variants.append(variant)
    return variants


def plan_cases(
    seed: int,
    n_train: int,
    n_test: int,
    finding_variant: str = "default",
    findings: Sequence[int] | None = None,
) -> list[CaseSpec]:
    """Decide, for every image, its findings and how its DICOM is stored.

    ``finding_variant`` changes how some findings are drawn, not which ones: the
    plan (classes, storage, image ids) is the same for every variant. ``findings``
    (class ids 0-13) keeps only those classes: a dataset with fewer, other classes
    than the default sample, e.g. to check that defaults chosen from the data generalize.
    """
    if findings is not None:
        findings = check_findings(findings)
    plan_rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0,)))
    cases: list[CaseSpec] = []
    for split_no, (split, n) in enumerate((("train", n_train), ("test", n_test)), start=1):
        n_abnormal = n - int(round(n * NORMAL_FRACTION))
        min_per_class = min(4, max(1, 3 * n_abnormal // NUM_FINDINGS))
        classes = _plan_findings(n, plan_rng, min_per_class, findings)
        variants = _plan_variants(n, plan_rng)
        for i in range(n):
            cases.append(
                CaseSpec(
                    split,
                    i,
                    (split_no, i),
                    classes[i],
                    variants[i],
                    root_seed=seed,
                    finding_variant=finding_variant,
                )
            )
    return cases
