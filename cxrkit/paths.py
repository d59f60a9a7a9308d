"""Find the data a notebook works on, the same way on a laptop, a server and Kaggle.

Order of precedence (first match wins):

1. an explicit ``data_dir`` argument,
2. the ``CXRKIT_DATA`` environment variable,
3. the competition inputs on Kaggle (:data:`KAGGLE_DIR`),
4. the generated **sample** in the VinBigData layout, written on first use into
   the cache folder (``CXRKIT_CACHE``, default ``~/.cache/cxrkit``) and reused after.

Every candidate must look like the competition folder (``train.csv`` and a
``train/`` or ``test/`` folder of ``.dicom`` files); a folder that does not gets a
clear error instead of a crash three cells later.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from cxrkit.errors import DataNotFoundError

# Light: only the sample's constants load here; the generator loads in sample_dir.
from cxrkit.sample import MARKER_NAME, SAMPLE_VERSION

KAGGLE_DIR = Path("/kaggle/input/vinbigdata-chest-xray-abnormalities-detection")
KAGGLE_WORKING = Path("/kaggle/working")
DEFAULT_SAMPLE_SEED = 0
SAMPLE_SIZE_MB = 118  # the default sample (200 train + 50 test DICOMs) on disk, measured with du
SAMPLE_MESSAGE_START = "cxrkit: generating the sample"  # notebooks/sanitize.cfg drops the line


def cache_dir() -> Path:
    """Where cxrkit keeps the sample and derived files (``CXRKIT_CACHE`` or ``~/.cache/cxrkit``)."""
    return Path(os.environ.get("CXRKIT_CACHE", Path.home() / ".cache" / "cxrkit")).expanduser()


def display_path(path: str | os.PathLike) -> str:
    """``path`` as printed: under the cache or work folder, relative to it.

    ``$CXRKIT_CACHE/sample-v1-seed0`` (or ``~/.cache/cxrkit/...`` by default) reads
    the same on every machine, so a committed notebook output shows no one's
    temporary folder and a learner sees where the file is in their own setup.
    """
    path = Path(path).expanduser()
    roots = []
    if "CXRKIT_WORK" in os.environ:
        roots.append((work_root(), "$CXRKIT_WORK"))
    cache_name = "$CXRKIT_CACHE" if "CXRKIT_CACHE" in os.environ else "~/.cache/cxrkit"
    roots += [(cache_dir(), cache_name), (KAGGLE_WORKING, str(KAGGLE_WORKING))]
    for root, name in roots:
        try:
            relative = path.resolve().relative_to(root.expanduser().resolve())
        except ValueError:
            continue
        return f"{name}/{relative.as_posix()}" if relative.parts else name
    return str(path)


def work_root() -> Path:
    """Where :func:`work_dir` puts outputs, without creating it (``python -m cxrkit doctor``).

    ``CXRKIT_WORK`` if set; on Kaggle ``/kaggle/working/cxrkit`` (the inputs are
    read-only); elsewhere ``work/`` in the cache folder.
    """
    if "CXRKIT_WORK" in os.environ:
        return Path(os.environ["CXRKIT_WORK"]).expanduser()
    if KAGGLE_WORKING.is_dir():
        return KAGGLE_WORKING / "cxrkit"
    return cache_dir() / "work"


def work_dir(name: str = "") -> Path:
    """A writable folder for outputs (preprocessed PNGs, runs, submissions), created.

    On Kaggle the inputs are read-only, so outputs go to ``/kaggle/working/cxrkit``;
    elsewhere to ``CXRKIT_WORK`` or the cache folder (see :func:`work_root`).
    """
    root = work_root()
    path = root / name if name else root
    path.mkdir(parents=True, exist_ok=True)
    return path


def check_layout(data_dir: str | os.PathLike) -> Path:
    """Return ``data_dir`` as a Path if it has the competition layout, else raise."""
    path = Path(data_dir).expanduser()
    if not path.is_dir():
        raise DataNotFoundError(f"data folder {path} does not exist")
    has_csv = (path / "train.csv").is_file()
    has_images = (path / "train").is_dir() or (path / "test").is_dir()
    if not (has_csv and has_images):
        found = sorted(p.name for p in path.iterdir())[:10]
        raise DataNotFoundError(
            f"{path} is not a VinBigData folder: expected train.csv and train/ or test/ "
            f"with .dicom files, found {found}"
        )
    return path


def sample_dir(seed: int = DEFAULT_SAMPLE_SEED, generate: bool = True) -> Path:
    """The generated sample's folder, created on first use (about a minute, 118 MB).

    It is written to a temporary folder and renamed into place, so an interrupted
    generation never leaves a half sample that a later call would trust.
    """
    path = cache_dir() / f"sample-v{SAMPLE_VERSION}-seed{seed}"
    if (path / "train.csv").is_file():
        return path
    if not generate:
        raise DataNotFoundError(f"no sample at {path}; call cxrkit.paths.sample_dir() to make one")
    from cxrkit.sample import generate_sample

    # Said before the progress bar (stderr, pink in Jupyter), which alone looks like an error.
    print(
        f"{SAMPLE_MESSAGE_START} (once): 250 synthetic chest X-ray DICOMs in the competition "
        f"layout, about {SAMPLE_SIZE_MB} MB, into {display_path(path)}; it takes about a minute and is "
        "reused afterwards (CXRKIT_CACHE moves it)",
        flush=True,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        generate_sample(tmp, seed=seed)
        try:
            os.replace(tmp, path)
        except OSError:  # another process finished first: keep theirs
            if not (path / "train.csv").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def find_data(data_dir: str | os.PathLike | None = None) -> Path:
    """Locate the VinBigData folder: argument, ``CXRKIT_DATA``, Kaggle, then the sample."""
    if data_dir is not None:
        return check_layout(data_dir)
    if os.environ.get("CXRKIT_DATA"):
        return check_layout(os.environ["CXRKIT_DATA"])
    if KAGGLE_DIR.is_dir():
        return check_layout(KAGGLE_DIR)
    return sample_dir()


def is_sample(data_dir: str | os.PathLike) -> bool:
    """True when ``data_dir`` is a generated sample (it carries ``test_labels.csv``)."""
    return (Path(data_dir) / "test_labels.csv").is_file() and (
        Path(data_dir) / MARKER_NAME
    ).is_file()


def write_sample(out: str | os.PathLike, **options: Any) -> Path:
    """Write a sample in the VinBigData layout into ``out`` (what ``python -m cxrkit sample`` runs).

    ``options`` are those of :func:`cxrkit.sample.generate_sample` (``seed``,
    ``n_train``, ``n_test``). Unlike :func:`sample_dir` it writes where it is
    told, not into the cache; only files the generator made are ever replaced.
    """
    from cxrkit.sample import generate_sample

    return generate_sample(out, **options)
