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
