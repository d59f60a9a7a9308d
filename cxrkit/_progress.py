"""The progress bar every long loop in cxrkit uses: ``tqdm.auto``, imported quietly.

``tqdm.auto`` picks a widget bar inside Jupyter and a text bar elsewhere. Without
ipywidgets it falls back to the text bar, which is fine, but it also prints a
``TqdmWarning: IProgress not found`` with the path of the Python environment.
That line would land in a notebook cell's output and differ from machine to
machine, so it is silenced here, once, at import time, and nowhere else.
"""

from __future__ import annotations

import warnings

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="IProgress not found")
    from tqdm.auto import tqdm

__all__ = ["tqdm"]
