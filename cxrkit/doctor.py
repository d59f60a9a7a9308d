"""``python -m cxrkit doctor``: is this environment able to run the notebooks?

A Kaggle image or an old conda environment may carry other versions than
``pyproject.toml`` asks for, and the failure would then surface deep inside a
cell (``pydicom.pixels`` is new in pydicom 3; albumentations changed its API in
2.0; the real data needs JPEG 2000 and JPEG-LS decoders). :func:`check_environment`
checks Python, each required package (versions read with :mod:`importlib.metadata`,
nothing heavy imported), the DICOM decoders pydicom finds, torch's build and device,
the data folder and the cache; :func:`format_report` prints them with the one
``pip install`` line that fixes what is missing or too old. Each notebook's first
cell runs :func:`check` (``quiet=True``: one line, ``environment OK``).
"""

from __future__ import annotations

import os
import re
import shlex
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from cxrkit.errors import DataNotFoundError
from cxrkit.paths import KAGGLE_DIR, SAMPLE_SIZE_MB, cache_dir, check_layout, sample_dir

PYTHON_REQUIRES = (3, 10)
# What the code needs at run time: pyproject.toml's dependencies without jupyterlab
# (a notebook server may be another install; tests/test_doctor.py keeps them in sync).
REQUIREMENTS: dict[str, str] = {
    "torch": ">=2.2",
    "torchvision": ">=0.17",
    "pydicom": ">=3.0,<4",
    "pylibjpeg": ">=2.0",
    "pylibjpeg-openjpeg": ">=2.3",
    "python-gdcm": ">=3.0.24",
    "numpy": ">=1.24",
    "pandas": ">=2.0",
    "opencv-python-headless": ">=4.9",
    "scikit-image": ">=0.22",
    "matplotlib": ">=3.7",
    "albumentations": ">=2.0,<=2.0.8",
    "ensemble-boxes": ">=1.0.9",
    "tqdm": ">=4.66",
}
# Other distributions that install the same module (Kaggle ships opencv-python).
ALTERNATIVES: dict[str, tuple[str, ...]] = {
    "opencv-python-headless": (
        "opencv-python",
        "opencv-contrib-python",
        "opencv-contrib-python-headless",
    ),
}
# (what, pydicom transfer syntax UID name, distributions whose plugin decodes it);
# the same packages as cxrkit.dicom's install hints.
DECODERS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("JPEG 2000 decoder", "JPEG2000Lossless", ("pylibjpeg", "pylibjpeg-openjpeg")),
    ("JPEG-LS decoder", "JPEGLSLossless", ("python-gdcm",)),
    ("JPEG Lossless decoder", "JPEGLosslessSV1", ("python-gdcm",)),
)


@dataclass(frozen=True)
class Check:
    """One line of the report: what was checked, whether it is fine, and the fix."""

    what: str
    ok: bool
    detail: str
    fix: tuple[str, ...] = ()  # pip requirements that fix it (empty: nothing pip can do)


# ------------------------------------------------------------------------ versions
def _release(version: str) -> tuple[int, ...]:
    """The numeric release of a version string: ``"2.14.1+cu130"`` -> ``(2, 14, 1)``."""
    match = re.match(r"\d+(?:\.\d+)*", version.strip())
    return tuple(int(part) for part in match.group().split(".")) if match else (0,)


def satisfies(version: str, spec: str) -> bool:
    """True when ``version`` meets every clause of ``spec`` (``">=2.0,<=2.0.8"``).

    Compares numeric releases only (enough for the clauses of :data:`REQUIREMENTS`;
    ``packaging`` is not a dependency).
    """
    mine = _release(version)
    for clause in filter(None, (c.strip() for c in spec.split(","))):
        op, bound = re.fullmatch(r"(>=|<=|==|!=|<|>)\s*(\S+)", clause).groups()
        theirs = _release(bound)
        width = max(len(mine), len(theirs))
        a, b = mine + (0,) * (width - len(mine)), theirs + (0,) * (width - len(theirs))
        ok = {
            ">=": a >= b,
            "<=": a <= b,
            "<": a < b,
            ">": a > b,
            "==": a == b,
            "!=": a != b,
        }[op]
        if not ok:
            return False
    return True


def _installed_version(distribution: str) -> str | None:
    """The installed version of ``distribution``, or None when it is not installed."""
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def requirement(distribution: str) -> str:
    """``"pydicom>=3.0,<4"``: the pip requirement of a package of :data:`REQUIREMENTS`."""
    return distribution + REQUIREMENTS[distribution]


def package_check(distribution: str) -> Check:
    """Is ``distribution`` (or an alternative that provides its module) installed and recent?"""
    spec = REQUIREMENTS[distribution]
    for name in (distribution, *ALTERNATIVES.get(distribution, ())):
        version = _installed_version(name)
        if version is not None:
            if satisfies(version, spec):
                return Check(name, True, f"{version} (needs {spec})")
            lower = ",".join(c for c in spec.split(",") if c.strip().startswith(">"))
            why = "too new" if satisfies(version, lower) else "too old"
            return Check(
                name, False, f"{version} is {why}: needs {spec}", (requirement(distribution),)
            )
    return Check(distribution, False, f"not installed: needs {spec}", (requirement(distribution),))


def python_check() -> Check:
    """The running Python against ``requires-python``."""
    version = ".".join(map(str, sys.version_info[:3]))
    needs = ".".join(map(str, PYTHON_REQUIRES))
    if sys.version_info[:2] >= PYTHON_REQUIRES:
        return Check("python", True, f"{version} (needs >={needs})")
    return Check("python", False, f"{version} is too old: needs >={needs} (a new environment)")


# ------------------------------------------------------------------------ decoders
def _decoder_plugins(uid_name: str, distributions: tuple[str, ...]) -> tuple[str, ...]:
    """The pydicom plugins that can decode a transfer syntax (as ``cxrkit.dicom`` asks).

    Without a usable pydicom 3, whether the decoder's packages are installed.
    """
    try:
        from pydicom import uid
        from pydicom.pixels import get_decoder

        return tuple(get_decoder(getattr(uid, uid_name)).available_plugins)
    except (ImportError, AttributeError, NotImplementedError):
        installed = all(_installed_version(d) is not None for d in distributions)
        return tuple(distributions) if installed else ()


def decoder_check(what: str, uid_name: str, distributions: tuple[str, ...]) -> Check:
    """Can pydicom decode this compression? (The real data needs JPEG 2000 and JPEG-LS.)"""
    plugins = _decoder_plugins(uid_name, distributions)
    if plugins:
        return Check(what, True, f"via {', '.join(plugins)}")
    fix = tuple(requirement(d) for d in distributions)
    return Check(what, False, f"none installed: pip install {' '.join(distributions)}", fix)


def package_checks() -> list[Check]:
    """Python, every required package and the DICOM decoders: what the notebooks need."""
    checks = [python_check()]
    checks += [package_check(name) for name in REQUIREMENTS]
    checks += [decoder_check(*decoder) for decoder in DECODERS]
    return checks


# ------------------------------------------------------------------ machine, data, cache
def torch_check() -> Check:
    """torch's build (CPU-only or CUDA) and the device training will use."""
    try:
        import torch
    except (ImportError, OSError) as exc:  # OSError: a CUDA library of the wheel is broken
        return Check(
            "torch build", False, f"torch does not import ({exc})", (requirement("torch"),)
        )
    build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "CPU-only"
    if torch.cuda.is_available():
        device = f"cuda:0 ({torch.cuda.get_device_name(0)})"
    else:
        device = "cpu (no CUDA device)"
    return Check("torch build", True, f"{build} ({torch.__version__}); training device {device}")


def _count(folder: Path, suffix: str) -> int:
    if not folder.is_dir():
        return 0
    with os.scandir(folder) as entries:
        return sum(1 for e in entries if e.name.endswith(suffix))


def data_check() -> Check:
    """The data folder ``cxrkit.find_data()`` would use, without generating the sample."""
    try:
        if os.environ.get("CXRKIT_DATA"):
            path = check_layout(os.environ["CXRKIT_DATA"])
        elif KAGGLE_DIR.is_dir():
            path = check_layout(KAGGLE_DIR)
        else:
            path = sample_dir(generate=False)
    except DataNotFoundError as exc:
        if os.environ.get("CXRKIT_DATA") or KAGGLE_DIR.is_dir():
            return Check("data", False, str(exc))
        where = cache_dir()
        return Check(
            "data",
            True,
            f"none yet: the sample (about {SAMPLE_SIZE_MB} MB) is generated once, on first use, "
            f"in {where}",
        )
    files = [name for name in ("train.csv", "sample_submission.csv") if (path / name).is_file()] + [
        f"{split}/ {_count(path / split, '.dicom')} .dicom" for split in ("train", "test")
    ]
    return Check("data", True, f"{path}: {', '.join(files)}")


def _folder_bytes(folder: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(folder):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:  # removed while walking
                pass
    return total


def _human(n_bytes: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n_bytes < 1000 or unit == "GB":
            return f"{n_bytes:.0f} {unit}" if unit == "B" else f"{n_bytes:.1f} {unit}"
        n_bytes /= 1000
    raise AssertionError("unreachable")


def cache_check() -> Check:
    """The cache folder (sample, preprocessed PNGs, runs) and its size."""
    path = cache_dir()
    if not path.is_dir():
        return Check("cache", True, f"{path} (not created yet; CXRKIT_CACHE moves it)")
    return Check("cache", True, f"{path}: {_human(_folder_bytes(path))} (CXRKIT_CACHE moves it)")


def check_environment() -> list[Check]:
    """Every check of ``python -m cxrkit doctor``, in the order printed."""
    return [*package_checks(), torch_check(), data_check(), cache_check()]


# ------------------------------------------------------------------------ reporting
def pip_line(checks: list[Check]) -> str | None:
    """The one ``pip install`` command that fixes every failed check pip can fix."""
    fixes = list(dict.fromkeys(f for c in checks if not c.ok for f in c.fix))
    return "pip install " + " ".join(shlex.quote(f) for f in fixes) if fixes else None


def format_report(checks: list[Check]) -> str:
    """The checks one per line, then what is wrong and the pip line that fixes it."""
    width = max(len(c.what) for c in checks)
    lines = [f"{'ok' if c.ok else 'PROBLEM':7s}  {c.what:{width}s}  {c.detail}" for c in checks]
    failed = [c for c in checks if not c.ok]
    if not failed:
        lines.append("environment OK")
        return "\n".join(lines)
    lines.append(f"{len(failed)} problem(s): {', '.join(c.what for c in failed)}")
    fix = pip_line(failed)
    if fix:
        lines.append(f"fix with:\n  {fix}")
    return "\n".join(lines)


def check(quiet: bool = False) -> bool:
    """Print the environment report; ``quiet``: only packages and decoders, one line if OK.

    What each notebook's first cell runs: ``environment OK`` on a correct install
    (the same text on every machine), else each problem and the ``pip install`` line.
    """
    checks = package_checks() if quiet else check_environment()
    failed = [c for c in checks if not c.ok]
    if quiet and not failed:
        print("environment OK")
    elif quiet:
        print(format_report(failed))
    else:
        print(format_report(checks))
    return not failed
