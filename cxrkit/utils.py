"""Small helpers used across notebooks: seeds, device choice, notebook setup.

Taught in notebook 01 (``setup``) and notebook 04 (``try_gpu``). Only the standard
library loads with the module (NumPy, pandas and torch inside the functions), so
``python -m cxrkit doctor`` can use :func:`cuda_problem` in a broken environment.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import random
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def printed_to_file(path: str | os.PathLike, enabled: bool = True) -> Iterator[None]:
    """Send what the block prints to ``path`` (appended) instead of the screen.

    What ``verbose=False`` does in the training functions: a notebook that trains
    several folds prints one line per fold, and each run's full log (settings,
    epochs, resume) stays in its folder as ``train.log``. The text is kept in memory
    and written at the end, even when the block raises, because the block may
    delete and recreate the folder (``overwrite=True``). Warnings and progress
    bars (stderr) still show. Does nothing unless ``enabled``.

    Args:
        path: the log file; its folder is created if needed.
        enabled: False runs the block unchanged (printing to the screen).
    """
    if not enabled:
        yield
        return
    buffer = io.StringIO()
    try:
        with contextlib.redirect_stdout(buffer):
            yield
    finally:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as file:
            file.write(buffer.getvalue())


def seed_everything(seed: int = 42) -> None:
    """Seed Python, NumPy and PyTorch so notebooks and tests repeat exactly on CPU."""
    import numpy as np

    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002 - some libraries still draw from the global RNG
    os.environ["PYTHONHASHSEED"] = str(seed)
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency, but keep utils light
        return
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


def try_gpu(index: int = 0):
    """Return ``cuda:index`` if torch can compute on that GPU, else the CPU (as d2l does).

    Choose the device once with this and pass it around; never write ``"cuda"``. A GPU
    that this torch build has no kernels for (:func:`cuda_problem`) counts as none.
    """
    import torch

    if torch.cuda.is_available() and torch.cuda.device_count() > index:
        if cuda_problem(index) is None:
            return torch.device(f"cuda:{index}")
    return torch.device("cpu")


def _arch_runs_on(arch: str, major: int, minor: int) -> bool:
    """Can code built for ``arch`` (``"sm_86"``, ``"compute_90"``) run on capability major.minor?

    A cubin for ``sm_XY`` runs on capability X.Y and the later minor versions of the
    same major (X.Z, Z >= Y); PTX for ``compute_XY`` is compiled when loaded, for
    capability X.Y and anything newer. The ``a``/``f`` suffixes (``sm_90a``) are read
    as the plain number, as ``torch.cuda`` does.
    """
    kind, _, number = arch.partition("_")
    digits = number.removesuffix("a").removesuffix("f")
    if not digits.isdigit():
        return False
    code_major, code_minor = divmod(int(digits), 10)
    if kind == "sm":
        return major == code_major and minor >= code_minor
    if kind == "compute":
        return (major, minor) >= (code_major, code_minor)
    return False


def cuda_problem(device_index: int = 0) -> str | None:
    """Why this torch cannot compute on CUDA device ``device_index``, or None when it can.

    ``torch.cuda.is_available()`` is not enough: it is True on a GPU that the installed
    torch has no kernels for (Kaggle's P100, compute capability 6.0, under a torch
    built for sm_75 and newer), and the first kernel then fails. This compares the
    device's compute capability with ``torch.cuda.get_arch_list()`` as torch's own
    warning does (a build for ``sm_XY`` runs on capability X.Y and later minors of
    major X; PTX ``compute_XY`` on X.Y and newer). Used by ``python -m cxrkit doctor``
    and the training profiles.

    Args:
        device_index: the CUDA device to ask about (``cuda:0`` by default).

    Returns:
        None when CUDA is usable; otherwise one line saying why not (no device, a
        CPU-only build, or a capability that the build has no kernels for).
    """
    import torch

    if not torch.cuda.is_available():
        if torch.version.cuda is None:
            return f"torch {torch.__version__} is a CPU-only build (no CUDA)"
        return "no CUDA device: torch.cuda.is_available() is False"
    if torch.version.cuda is None:  # ROCm: torch has no such check for its GPUs either
        return None
    try:
        major, minor = torch.cuda.get_device_capability(device_index)
    except Exception as exc:  # no such device index, or a driver that fails
        return f"cannot query CUDA device {device_index}: {type(exc).__name__}: {exc}"
    arch_list = torch.cuda.get_arch_list()
    if not arch_list:  # the build does not say: assume it fits, as torch does
        return None
    if any(_arch_runs_on(arch, major, minor) for arch in arch_list):
        return None
    return (
        f"cuda:{device_index} has compute capability sm_{major}{minor}, which torch "
        f"{torch.__version__} has no kernels for (built for {' '.join(arch_list)})"
    )


def setup_notebook(seed: int = 42, threads: int | None = None) -> None:
    """One call at the top of every notebook: seeds, print widths, figure resolution.

    Keeps outputs short and identical between runs, so nbval can compare them.
    """
    import numpy as np
    import pandas as pd

    seed_everything(seed)
    np.set_printoptions(precision=3, suppress=True, linewidth=100)
    pd.set_option("display.width", 120)
    pd.set_option("display.max_columns", 12)
    pd.set_option("display.precision", 3)
    try:
        import matplotlib

        matplotlib.rcParams["figure.dpi"] = 80
        matplotlib.rcParams["savefig.dpi"] = 100
    except ImportError:  # pragma: no cover
        pass
    if threads is not None:
        import torch

        torch.set_num_threads(threads)


CHECK_LOG_VARIABLE = "CXRKIT_CHECK_LOG"


def check_range(what: str, value: float, low: float, high: float, digits: int = 3) -> None:
    """Print ``what: value`` rounded, and fail unless ``low <= value <= high``.

    The in-cell check of a number that comes from training (a loss, an mAP, a
    trained model's score). Its digits change with the CPU, the thread count and
    package versions, so notebooks do not compare them: the cell's output is
    ignored by nbval and this check states the property the text relies on, with
    a band measured across machines (``benchmarks/notebook_spread.py``).

    With ``CXRKIT_CHECK_LOG`` set to a file, the value is appended to it as one
    JSON line and nothing is raised: that is how the spread script collects every
    checked number of a notebook run to set the bands. A band of ``(-inf, inf)``
    (:meth:`cxrkit.profiles.Profile.band` for a profile without a measured one) fails
    only a NaN. Returns nothing, so a notebook cell that ends with it shows only the
    printed line.
    """
    value = float(value)
    inside = bool(low <= value <= high)  # False for NaN too
    unbounded = math.isinf(low) and math.isinf(high)
    expected = "any finite value: no band for this profile" if unbounded else f"{low:g} to {high:g}"
    print(f"{what}: {value:.{digits}f} (expected {expected})")
    log = os.environ.get(CHECK_LOG_VARIABLE)
    if log:
        record = {"what": what, "value": value, "low": low, "high": high, "inside": inside}
        with open(log, "a", encoding="utf-8") as file:
            file.write(json.dumps(record) + "\n")
        return
    if not inside:
        raise AssertionError(
            f"{what} = {value:.{digits + 2}g} is outside the expected range [{low:g}, {high:g}]: "
            "training or post-processing no longer behaves as this notebook says"
        )
