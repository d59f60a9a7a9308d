"""Execute the notebooks in place, as they are committed (outputs included).

    .venv/bin/python scripts/run_notebooks.py            # all notebooks
    .venv/bin/python scripts/run_notebooks.py 03 05      # those whose name starts so

Run it in the same environment as the tests (the README's test command), so
that ``pytest --nbval`` compares like with like. Prints each notebook's time:
each should stay around 3 minutes or less on 2 CPU cores.

The notebooks run against a new, empty ``CXRKIT_CACHE`` (a temporary folder), as
a student's first run does: the sample is generated and the notebook model is
trained in the committed outputs, never merely reloaded. ``--cache DIR`` reuses
a folder instead (faster when only prose changed).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def run(path: Path, timeout: int = 900) -> float:
    """Execute one notebook in its own folder and write it back; returns seconds."""
    nb = nbformat.read(path, as_version=4)
    start = time.perf_counter()
    NotebookClient(
        nb,
        timeout=timeout,
        kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},
    ).execute()
    seconds = time.perf_counter() - start
    nbformat.write(nb, path)
    return seconds


def main(prefixes: list[str]) -> None:
    os.environ["TQDM_DISABLE"] = "1"  # as in conftest.py: what nbval will see
    os.environ.setdefault("PYTHONHASHSEED", "0")
    if prefixes[:1] == ["--cache"]:
        os.environ["CXRKIT_CACHE"] = prefixes[1]
        prefixes = prefixes[2:]
    else:
        os.environ["CXRKIT_CACHE"] = tempfile.mkdtemp(prefix="cxrkit-notebooks-")
    os.environ.pop("CXRKIT_WORK", None)
    print("CXRKIT_CACHE =", os.environ["CXRKIT_CACHE"], flush=True)
    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        if prefixes and not any(path.name.startswith(p) for p in prefixes):
            continue
        print(f"{path.name}: {run(path):.0f} s", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
