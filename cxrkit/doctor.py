"""``python -m cxrkit doctor``: is this environment able to run the notebooks?

A Kaggle image or an old conda environment may carry other versions than
``pyproject.toml`` asks for, and the failure would then surface deep inside a
cell (``pydicom.pixels`` is new in pydicom 3; albumentations changed its API in
2.0; the real data needs JPEG 2000 and JPEG-LS decoders). :func:`check_environment`
checks Python, each required package (its installed version, read with
:mod:`importlib.metadata`, then an import of its module, so a broken or shadowed
install shows too), the DICOM decoders pydicom finds, torch's build and device,
the data folder, the cache and the work folder; :func:`format_report` prints them
with the one ``pip install`` line that fixes what is missing or too old. Each
notebook's first cell runs :func:`check` (``quiet=True``: one line, ``environment OK``).

The doctor is made for broken environments, so it never fails itself: it imports
only the standard library and light cxrkit modules at the top, every check turns
any exception into a ``PROBLEM`` line, and ``python -m cxrkit doctor`` runs
:func:`main` before the rest of the command line is imported.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import re
import shlex
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from cxrkit.errors import DataNotFoundError
from cxrkit.paths import (
    KAGGLE_DIR,
    SAMPLE_SIZE_MB,
    cache_dir,
    check_layout,
    sample_dir,
    work_root,
)
from cxrkit.utils import cuda_problem

PYTHON_REQUIRES = (3, 10)
# What the code needs at run time: pyproject.toml's dependencies without jupyterlab
# (a notebook server may be another install; tests/test_doctor.py keeps them in sync).
REQUIREMENTS: dict[str, str] = {
    "torch": ">=2.3",  # torch.amp.GradScaler("cuda")
    "torchvision": ">=0.18",
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
# The module each distribution installs: what the code imports.
MODULES: dict[str, str] = {
    "torch": "torch",
    "torchvision": "torchvision",
    "pydicom": "pydicom",
    "pylibjpeg": "pylibjpeg",
    "pylibjpeg-openjpeg": "openjpeg",
    "python-gdcm": "gdcm",
    "numpy": "numpy",
    "pandas": "pandas",
    "opencv-python-headless": "cv2",
    "scikit-image": "skimage",
    "matplotlib": "matplotlib",
    "albumentations": "albumentations",
    "ensemble-boxes": "ensemble_boxes",
    "tqdm": "tqdm",
}
# A submodule the code needs that older releases lack: (module, why it matters).
FEATURES: dict[str, tuple[str, str]] = {
    "pydicom": ("pydicom.pixels", "new in pydicom 3; cxrkit.dicom decodes with it"),
}
# README's install of the CPU-only torch (0.7 GB installed, a CUDA build about 5 GB).
CPU_TORCH = "pip install torch torchvision --index-url https://download.pytorch.org/whl/cpu"
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
    reinstall: bool = False  # installed in the right version but broken: pip --force-reinstall


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


def _why(exc: BaseException) -> str:
    """An exception as one short line: ``RuntimeError: boom``."""
    lines = str(exc).strip().splitlines()
    text = lines[0] if lines else ""
    if len(text) > 200:
        text = text[:197] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _origin(module: str) -> Path | None:
    """The file ``import module`` finds, without running it (None when none is found)."""
    loaded = sys.modules.get(module)
    if loaded is not None and getattr(loaded, "__file__", None):
        return Path(loaded.__file__)
    try:
        spec = importlib.util.find_spec(module)
    except Exception:  # a broken parent package, or a module without a spec
        return None
    return Path(spec.origin) if spec is not None and spec.has_location and spec.origin else None


def _shadow_note(distribution: str, version: str, module: str, origin: Path | None) -> str:
    """Where the module comes from, and whether another file hides the installed package.

    A folder or file named like the package, earlier on ``sys.path`` (a ``pydicom/``
    next to the notebook, an old copy in the user site), is imported instead of the
    installed distribution; pip cannot fix that.
    """
    if origin is None:
        return ""
    try:
        site = Path(metadata.distribution(distribution).locate_file("")).resolve()
        shadowed = not origin.resolve().is_relative_to(site)
    except Exception:  # no metadata to compare with: just say where it came from
        return f" (from {origin})"
    if not shadowed:
        return f" (from {origin})"
    return (
        f"; `import {module}` finds {origin}, not the installed {distribution} {version} "
        f"in {site}: rename or remove it, or fix PYTHONPATH"
    )


def _package_root(module: str) -> Path | None:
    """The folder of a package (or the file of a module) ``import module`` would load."""
    origin = _origin(module)
    if origin is None:
        return None
    return origin.parent if origin.name == "__init__.py" else origin


def _raised_in(exc: BaseException, module: str) -> str | None:
    """The other required module whose own code raised ``exc`` (torch for torchvision).

    A package that imports a broken one fails too; its line then points at the
    culprit instead of asking to reinstall a package that is fine.
    """
    tb = exc.__traceback__
    if tb is None:
        return None
    while tb.tb_next is not None:
        tb = tb.tb_next
    where = Path(tb.tb_frame.f_code.co_filename)
    for other in MODULES.values():
        root = _package_root(other) if other != module else None
        if root is not None and where.is_relative_to(root):
            return other
    return None


def import_check(found: str, distribution: str, version: str) -> Check:
    """Does the module of an installed ``distribution`` import, in the version pip reports?

    Any exception on import is a problem (a broken wheel raises OSError or RuntimeError,
    not only ImportError), and so is an imported module older than the requirement or
    without the feature the code needs (pydicom 2 has no ``pydicom.pixels``).

    Args:
        found: the distribution that is installed (``opencv-python`` for ``cv2`` on Kaggle).
        distribution: its name in :data:`REQUIREMENTS`.
        version: the version pip's metadata reports for ``found``.
    """
    spec = REQUIREMENTS[distribution]
    module = MODULES[distribution]
    try:
        loaded = importlib.import_module(module)
    except Exception as exc:  # anything: the doctor is for environments that fail
        problem = f"{version} is installed, but `import {module}` fails: {_why(exc)}"
        culprit = _raised_in(exc, module)
        if culprit is not None:  # not this package's fault: no fix of its own
            return Check(found, False, f"{problem} (raised by {culprit}: see its line)")
    else:
        imported = getattr(loaded, "__version__", None)
        feature, why = FEATURES.get(distribution, (None, ""))
        problem = None
        if isinstance(imported, str) and not satisfies(imported, spec):
            problem = f"`import {module}` gives {imported}, which does not satisfy {spec}"
        elif feature is not None:
            try:
                importlib.import_module(feature)
            except Exception as exc:
                shown = imported if isinstance(imported, str) else version
                problem = f"{shown} has no {feature} ({why}; {_why(exc)}): needs {spec}"
        if problem is None:
            return Check(found, True, f"{version} (needs {spec})")
    note = _shadow_note(found, version, module, _origin(module))
    if note.startswith(";"):  # another file shadows the package: pip would not help
        return Check(found, False, problem + note)
    return Check(found, False, problem + note, (requirement(distribution),), reinstall=True)


def package_check(distribution: str) -> Check:
    """Is ``distribution`` (or an alternative that provides its module) installed, recent,
    and does its module import?"""
    spec = REQUIREMENTS[distribution]
    for name in (distribution, *ALTERNATIVES.get(distribution, ())):
        version = _installed_version(name)
        if version is not None:
            if satisfies(version, spec):
                return import_check(name, distribution, version)
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
    except Exception:  # no (usable) pydicom 3: its own check reports why
        installed = all(_installed_version(d) is not None for d in distributions)
        return tuple(distributions) if installed else ()


def decoder_check(what: str, uid_name: str, distributions: tuple[str, ...]) -> Check:
    """Can pydicom decode this compression? (The real data needs JPEG 2000 and JPEG-LS.)"""
    plugins = _decoder_plugins(uid_name, distributions)
    if plugins:
        return Check(what, True, f"via {', '.join(plugins)}")
    fix = tuple(requirement(d) for d in distributions)
    return Check(what, False, f"none installed: pip install {' '.join(distributions)}", fix)


def guarded(what: str, run: Callable[[], Check]) -> Check:
    """``run()``, or a PROBLEM line if the check itself fails: the doctor never crashes."""
    try:
        return run()
    except Exception as exc:
        return Check(what, False, f"the check failed: {_why(exc)}")


def package_checks() -> list[Check]:
    """Python, every required package and the DICOM decoders: what the notebooks need."""
    checks = [guarded("python", python_check)]
    checks += [guarded(name, lambda name=name: package_check(name)) for name in REQUIREMENTS]
    checks += [guarded(d[0], lambda d=d: decoder_check(*d)) for d in DECODERS]
    return checks


# ------------------------------------------------------------------ machine, data, cache
def torch_check() -> Check:
    """torch's build (CPU-only or CUDA) and the device training will use.

    A problem when torch does not import, or when CUDA reports a device that this
    build has no kernels for (:func:`cxrkit.utils.cuda_problem`); a hint when a CUDA
    build (several GB) runs on a machine without a CUDA device.
    """
    try:
        import torch
    except Exception as exc:  # OSError: a CUDA library of the wheel is broken; or anything
        # the torch line above says why and how to fix it
        return Check("torch build", False, f"torch does not import ({_why(exc)}): see torch")
    build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "CPU-only"
    build = f"{build} ({torch.__version__})"
    problem = cuda_problem(0)
    if torch.cuda.is_available():
        try:
            name = torch.cuda.get_device_name(0)
        except Exception as exc:
            name = f"name unknown: {_why(exc)}"
        if problem is None:
            return Check("torch build", True, f"{build}; training device cuda:0 ({name})")
        return Check(
            "torch build",
            False,
            f"{build}: {problem} ({name}); install a torch build for this card "
            "(https://pytorch.org/get-started/locally/), use another GPU, or train on "
            "the CPU (--profile cpu)",
        )
    detail = f"{build}; training device cpu (no CUDA device)"
    if torch.version.cuda:
        detail += (
            "; this CUDA build's libraries (about 4.5 GB) go unused without a CUDA device, "
            f"a CPU-only torch would do (see README): {CPU_TORCH}"
        )
    return Check("torch build", True, detail)


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


def _human(n_bytes: float) -> str:
    """``1234567`` -> ``"1.2 MB"``."""
    if n_bytes < 1000:
        return f"{n_bytes:.0f} B"
    for unit in ("kB", "MB"):
        n_bytes /= 1000
        if n_bytes < 1000:
            return f"{n_bytes:.1f} {unit}"
    return f"{n_bytes / 1000:.1f} GB"


def folder_problem(path: Path) -> str | None:
    """Why ``path`` cannot be a folder cxrkit writes into, or None when it can.

    It must be a folder, or be creatable: its nearest existing parent a folder that
    this user can write to.
    """
    if path.exists():
        if not path.is_dir():
            return f"{path} is a file, not a folder"
        if not os.access(path, os.W_OK | os.X_OK):
            return f"{path} is not writable"
        return None
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        return f"{path} cannot be created: {parent} is a file, not a folder"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"{path} cannot be created: {parent} is not writable"
    return None


def _moved_by(variable: str, default: str) -> str:
    """How to fix a folder problem: the environment variable that chose it, or moves it."""
    if os.environ.get(variable):
        return f"{variable}={os.environ[variable]} is set: point it at a folder you can write to"
    return f"{default}; set {variable} to a folder you can write to"


def cache_check() -> Check:
    """The cache folder (sample, preprocessed PNGs, runs) and its size."""
    path = cache_dir()
    problem = folder_problem(path)
    if problem:
        return Check("cache", False, f"{problem} ({_moved_by('CXRKIT_CACHE', 'the default')})")
    if not path.is_dir():
        return Check("cache", True, f"{path} (not created yet; CXRKIT_CACHE moves it)")
    return Check("cache", True, f"{path}: {_human(_folder_bytes(path))} (CXRKIT_CACHE moves it)")


def outputs_check() -> Check:
    """Where outputs go: :func:`cxrkit.paths.work_dir` (``/kaggle/working/cxrkit`` on Kaggle).

    Nothing is created: the doctor only reports.
    """
    path = work_root()
    problem = folder_problem(path)
    if problem:
        return Check("outputs", False, f"{problem} ({_moved_by('CXRKIT_WORK', 'the default')})")
    state = "" if path.is_dir() else ", not created yet"
    return Check(
        "outputs",
        True,
        f"{path} (preprocessed PNGs, runs, submissions{state}; CXRKIT_WORK moves it)",
    )


def check_environment() -> list[Check]:
    """Every check of ``python -m cxrkit doctor``, in the order printed."""
    return [
        *package_checks(),
        guarded("torch build", torch_check),
        guarded("data", data_check),
        guarded("cache", cache_check),
        guarded("outputs", outputs_check),
    ]


# ------------------------------------------------------------------------ reporting
def pip_line(checks: list[Check]) -> str | None:
    """The one ``pip install`` command that fixes every failed check pip can fix.

    Packages installed in the right version but broken (``reinstall``) are left to
    :func:`reinstall_line`: a plain ``pip install`` would call them satisfied.
    """
    fixes = list(dict.fromkeys(f for c in checks if not c.ok and not c.reinstall for f in c.fix))
    return "pip install " + " ".join(shlex.quote(f) for f in fixes) if fixes else None


def reinstall_line(checks: list[Check]) -> str | None:
    """``pip install --force-reinstall ...`` for the installed packages that do not work."""
    fixes = list(dict.fromkeys(f for c in checks if not c.ok and c.reinstall for f in c.fix))
    if not fixes:
        return None
    return "pip install --force-reinstall " + " ".join(shlex.quote(f) for f in fixes)


def format_report(checks: list[Check]) -> str:
    """The checks one per line, then what is wrong and the pip line(s) that fix it."""
    width = max(len(c.what) for c in checks)
    lines = [f"{'ok' if c.ok else 'PROBLEM':7s}  {c.what:{width}s}  {c.detail}" for c in checks]
    failed = [c for c in checks if not c.ok]
    if not failed:
        lines.append("environment OK")
        return "\n".join(lines)
    lines.append(f"{len(failed)} problem(s): {', '.join(c.what for c in failed)}")
    fixes = [line for line in (pip_line(failed), reinstall_line(failed)) if line]
    if fixes:
        lines.append("fix with:")
        lines += [f"  {line}" for line in fixes]
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


# ------------------------------------------------------------------ the command
HELP = "check Python, packages, DICOM decoders, torch, data, cache and outputs"
DESCRIPTION = """\
Can this environment run the notebooks? Checks Python, each package, the DICOM
decoders, torch's build and device, the data, the cache and the output folders.

Prints one line per check ("ok" or "PROBLEM"), then the pip command that fixes
what is missing, too old or broken. Exit status 0 when everything is fine, 1 when
something is not. It imports each package to check it, but nothing else of
cxrkit, so it runs where the other commands fail (an old pydicom, a broken torch)."""


def build_parser(prog: str = "python -m cxrkit doctor") -> argparse.ArgumentParser:
    """The doctor's own parser: no options, only ``--help``."""
    return argparse.ArgumentParser(
        prog=prog, description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m cxrkit doctor``: print the report; 0 when all is well, else 1.

    Called by ``cxrkit/__main__.py`` and :func:`cxrkit.cli.main` before anything
    else of the command line loads. ``argv``: the arguments after ``doctor``.
    """
    build_parser().parse_args(argv)
    checks = check_environment()
    print(format_report(checks), flush=True)
    return 0 if all(c.ok for c in checks) else 1
