"""Small helpers used across notebooks: seeds, device choice, notebook setup.

Taught in notebook 01 (``setup``) and notebook 04 (``try_gpu``).
"""

from __future__ import annotations

import os
import random

import numpy as np


def seed_everything(seed: int = 42) -> None:
    """Seed Python, NumPy and PyTorch so notebooks and tests repeat exactly on CPU."""
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
    """Return ``cuda:index`` if a GPU is available, else the CPU (as d2l does).

    Choose the device once with this and pass it around; never write ``"cuda"``.
    """
    import torch

    if torch.cuda.is_available() and torch.cuda.device_count() > index:
        return torch.device(f"cuda:{index}")
    return torch.device("cpu")


def setup_notebook(seed: int = 42, threads: int | None = None) -> None:
    """One call at the top of every notebook: seeds, print widths, figure resolution.

    Keeps outputs short and identical between runs, so nbval can compare them.
    """
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


def check_range(what: str, value: float, low: float, high: float, digits: int = 3) -> float:
    """Print ``what: value`` rounded, and fail unless ``low <= value <= high``.

    The in-cell check of a number that comes from training (a loss, an mAP, a
    trained model's score). Its digits change with the CPU, the thread count and
    package versions, so notebooks do not compare them: the cell's output is
    ignored by nbval and this check states the property the text relies on, with
    a band measured across machines (``benchmarks/notebook_spread.py``).

    With ``CXRKIT_CHECK_LOG`` set to a file, the value is appended to it as one
    JSON line and nothing is raised: that is how the spread script collects every
    checked number of a notebook run to set the bands. Returns ``value``.
    """
    import json

    value = float(value)
    inside = bool(low <= value <= high)  # False for NaN too
    print(f"{what}: {value:.{digits}f} (expected {low:g} to {high:g})")
    log = os.environ.get(CHECK_LOG_VARIABLE)
    if log:
        record = {"what": what, "value": value, "low": low, "high": high, "inside": inside}
        with open(log, "a", encoding="utf-8") as file:
            file.write(json.dumps(record) + "\n")
        return value
    if not inside:
        raise AssertionError(
            f"{what} = {value:.{digits + 2}g} is outside the expected range [{low:g}, {high:g}]: "
            "training or post-processing no longer behaves as this notebook says"
        )
    return value
