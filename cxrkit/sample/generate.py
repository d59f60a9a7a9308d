"""Write a whole synthetic sample folder: plan, draw, store as DICOM, then the CSVs.

This is :func:`cxrkit.sample.generate_sample`, run by ``python -m cxrkit sample``
and, on first use, by :func:`cxrkit.paths.sample_dir` for the notebooks.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from cxrkit._atomic import atomic_path, write_csv_atomic
from cxrkit._progress import tqdm
from cxrkit.errors import ConfigError, ConfigTypeError, OverwriteError
from cxrkit.sample.dicom_writer import to_dicom
from cxrkit.sample.findings import renderers
from cxrkit.sample.layout import MARKER_NAME, NO_FINDING_PREDICTION, SAMPLE_VERSION
from cxrkit.sample.plan import CaseSpec, check_findings, plan_cases
from cxrkit.sample.render import case_image_id, render_case
from cxrkit.sample.reports import frame, radiologist_rows, truth_rows

__all__ = ["generate_sample"]


def _check_args(seed: int, n_train: int, n_test: int) -> None:
    for name, value, least in (("n_train", n_train, 1), ("n_test", n_test, 0)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise ConfigTypeError(f"{name} must be an integer, got {value!r}")
        if value < least:
            raise ConfigError(f"{name} must be >= {least}, got {value}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {seed!r}")


def _marker_counts(marker: Path) -> tuple[int, int, int] | None:
    """``(seed, n_train, n_test)`` of an earlier sample's marker, if it is of this version."""
    fields = {}
    for line in marker.read_text(encoding="utf-8", errors="replace").splitlines():
        key, _, value = line.partition("=")
        fields[key.strip()] = value.strip()
    try:
        if int(fields["version"]) != SAMPLE_VERSION:
            return None
        return int(fields["seed"]), int(fields["n_train"]), int(fields["n_test"])
    except (KeyError, ValueError):
        return None


def _csv_ids(path: Path) -> set[str]:
    """The ``image_id`` column of a CSV an earlier sample wrote (empty if unreadable)."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            return {row.get("image_id") or "" for row in csv.DictReader(f)} - {""}
    except (OSError, UnicodeDecodeError, csv.Error):
        return set()


def _earlier_images(out: Path) -> dict[str, set[str]]:
    """Image ids per split that the earlier sample in ``out`` wrote.

    From its CSVs (a complete sample) and from the counts in its marker (a run
    cut short before the CSVs); anything else in ``train/`` or ``test/`` is the
    user's and is left alone.
    """
    ids: dict[str, set[str]] = {
        "train": _csv_ids(out / "train.csv"),
        "test": _csv_ids(out / "test_labels.csv") | _csv_ids(out / "sample_submission.csv"),
    }
    counts = _marker_counts(out / MARKER_NAME)
    if counts is not None:
        for spec in plan_cases(*counts):
            ids[spec.split].add(case_image_id(spec))
    return ids


def _prepare_out_dir(out: Path) -> None:
    """Make ``out`` ready: empty, or an earlier sample (whose own files are removed first).

    Only what the earlier sample wrote goes (its CSVs, its DICOMs and their
    temporary files); files the user added there stay.
    """
    if out.exists() and not out.is_dir():
        raise OverwriteError(f"{out} exists and is not a folder; choose a new or empty folder")
    if out.is_dir() and any(out.iterdir()):
        if not (out / MARKER_NAME).is_file():
            found = sorted(p.name for p in out.iterdir())[:5]
            raise OverwriteError(
                f"{out} is not empty and is not a cxrkit sample (found {found}); "
                "choose an empty or new folder"
            )
        for split, image_ids in _earlier_images(out).items():
            folder = out / split
            names = {f"{image_id}.dicom" for image_id in image_ids}
            for name in names:
                (folder / name).unlink(missing_ok=True)
            if folder.is_dir():  # temporary files of a killed run: .<name>.<random>.tmp.dicom
                for tmp in folder.glob(".*.tmp.dicom"):
                    if tmp.name[1:].split(".dicom.", 1)[0] + ".dicom" in names:
                        tmp.unlink(missing_ok=True)
        for name in ("train.csv", "test_labels.csv", "sample_submission.csv"):
            (out / name).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)


def generate_sample(
    out_dir: str | os.PathLike,
    seed: int = 0,
    n_train: int = 200,
    n_test: int = 50,
    progress: bool = True,
    variant: str = "default",
    findings: Sequence[int] | None = None,
) -> Path:
    """Write a synthetic VinBigData-style dataset to ``out_dir`` and return its path.

    ``out_dir`` must be empty, new, or a previous sample: its files are replaced,
    files you added there are kept. Any other non-empty folder raises
    :class:`~cxrkit.errors.OverwriteError` (a ``FileExistsError``).
    The same ``seed`` and counts give byte-identical files. The CSVs are written
    last, so a folder with ``train.csv`` is always complete.

    ``variant="small_thin"`` draws Nodule/Mass as small nodules (box side 3-6 % of the
    image) and Pleural thickening as thin bands (about 2 % wide, 8-12 times as long):
    box statistics that differ from the default sample's, to check that anchors and
    input size fitted to the data (:mod:`cxrkit.anchors`) generalize. Same image
    ids, classes and DICOM storage as the default; the default's bytes are unchanged.
    ``findings`` (class ids 0-13, e.g. ``(0, 3, 7, 8, 10, 11)``) draws only those
    findings: with another ``seed``, a dataset none of cxrkit's defaults were tuned on.

    Example::

        >>> from cxrkit.sample import generate_sample
        >>> root = generate_sample("/tmp/vinbig-sample", seed=0)   # ~1 minute
        >>> sorted(p.name for p in root.iterdir())
        ['.cxrkit-sample', 'sample_submission.csv', 'test', 'test_labels.csv', 'train', 'train.csv']
    """
    _check_args(seed, n_train, n_test)
    renderers(variant)  # ConfigError naming the variants, before touching out_dir
    if findings is not None:
        findings = check_findings(findings)
    seed, n_train, n_test = int(seed), int(n_train), int(n_test)

    out = Path(out_dir).expanduser()
    _prepare_out_dir(out)
    # The marker first claims the folder (a rerun may then clean it); the CSVs
    # that make it usable come last.
    marker = (
        f"cxrkit synthetic VinBigData sample\nversion={SAMPLE_VERSION}\nseed={seed}\n"
        f"n_train={n_train}\nn_test={n_test}\n"
    )
    if variant != "default":  # the default marker stays byte-identical
        marker += f"variant={variant}\n"
    if findings is not None:
        marker += "findings=" + ",".join(map(str, findings)) + "\n"
    with atomic_path(out / MARKER_NAME) as tmp:
        tmp.write_text(marker)

    train_rows: list[dict] = []
    truth: list[dict] = []
    test_ids: list[str] = []
    bar_options = {} if progress else {"disable": True}  # else TQDM_DISABLE decides
    cases = plan_cases(seed, n_train, n_test, finding_variant=variant, findings=findings)
    for spec in tqdm(cases, desc="sample images", unit="img", **bar_options):
        image_id, rows = _write_case(spec, out)
        if spec.split == "train":
            train_rows += rows
        else:
            test_ids.append(image_id)
            truth += rows

    submission = pd.DataFrame({"image_id": test_ids, "PredictionString": NO_FINDING_PREDICTION})
    write_csv_atomic(submission, out / "sample_submission.csv")
    write_csv_atomic(frame(truth), out / "test_labels.csv")
    write_csv_atomic(frame(train_rows), out / "train.csv")
    return out


def _write_case(spec: CaseSpec, out: Path) -> tuple[str, list[dict]]:
    """Draw one case, write its DICOM; return its image id and its label rows.

    Train images get what the radiologists wrote, test images their exact truth.
    """
    rendered = render_case(spec)
    rng = spec.rng(stream=1)
    ds = to_dicom(rendered, spec, rng)
    image_id = rendered.meta["image_id"]
    path = out / spec.split / f"{image_id}.dicom"
    with atomic_path(path) as tmp:
        ds.save_as(tmp, enforce_file_format=True)
    if spec.split == "train":
        rows = radiologist_rows(
            image_id,
            rendered.class_ids,
            rendered.boxes,
            rendered.meta["rows"],
            rendered.meta["cols"],
            rng,
        )
    else:
        rows = truth_rows(image_id, rendered.class_ids, rendered.boxes)
    return image_id, rows
