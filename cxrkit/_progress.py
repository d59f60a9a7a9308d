"""The progress bar every long loop in cxrkit uses: ``tqdm.auto``, imported quietly.

``tqdm.auto`` picks a widget bar inside Jupyter and a text bar elsewhere. Without
ipywidgets it falls back to the text bar, which is fine, but it also prints a
``TqdmWarning: IProgress not found`` with the path of the Python environment.
That line would land in a notebook cell's output and differ from machine to
machine, so it is silenced here, once, at import time, and nowhere else.

In a Jupyter kernel without widgets the text bar is written to **stdout**, not
stderr. A notebook merges consecutive stdout writes into one output and honours
``\\r``, so a bar redraws in place, a bar that is cleared (``leave=False``, the
per-epoch bar) leaves nothing behind, and the lines a training run prints stay in
that same output: one clean output per cell. On stderr, every cleared bar became
its own empty (pink) output between two log lines, and a long run passed
JupyterLab's limit of 50 outputs. Terminals and scripts keep stderr.
"""

from __future__ import annotations

import sys
import warnings
from typing import Any

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="IProgress not found")
    from tqdm.auto import tqdm as _auto_tqdm

__all__ = ["in_notebook_kernel", "tqdm"]


def in_notebook_kernel() -> bool:
    """True inside a Jupyter kernel (JupyterLab, Kaggle), False in a terminal or script."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    return type(shell).__name__ == "ZMQInteractiveShell"


def tqdm(*args: Any, **kwargs: Any) -> Any:
    """``tqdm.auto.tqdm``; in a notebook kernel without widgets, a text bar on stdout."""
    widget = _auto_tqdm.__module__ == "tqdm.notebook"
    if "file" not in kwargs and not widget and in_notebook_kernel():
        kwargs["file"] = sys.stdout
    return _auto_tqdm(*args, **kwargs)
