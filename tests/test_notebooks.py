"""Checks on the committed notebooks that nbval alone does not make.

nbval compares each cell's new output with the committed one after the
sanitizer (``notebooks/sanitize.cfg``) has rewritten both. Anything that
depends on the machine (the path of the Python environment, a warning that
only some installs print) must therefore never reach a compared output, or CI
on another machine fails although the code is right.
"""

from __future__ import annotations

import configparser
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOK_FILES = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
IGNORE_MARKERS = ("NBVAL_IGNORE_OUTPUT", "NBVAL_SKIP")
# An absolute path: a slash not after a word character, then two or more path parts.
PRINTED_WARNING = re.compile(r"\.py:\d+: \w*Warning\b")  # how warnings.formatwarning starts
ABSOLUTE_PATH = re.compile(r"(?<![\w.:/])/(?:[\w.-]+/)+[\w.-]*")


def sanitize(text: str) -> str:
    """Apply the sanitizer's rules in order, as nbval does."""
    config = configparser.ConfigParser(interpolation=None)
    config.read(NOTEBOOKS / "sanitize.cfg")
    for section in config.sections():
        text = re.sub(config[section]["regex"], config[section]["replace"], text)
    return text


def compared_outputs(path: Path) -> list[tuple[int, dict]]:
    """(cell number, output) for every output nbval compares in one notebook."""
    found = []
    cells = json.loads(path.read_text())["cells"]
    for number, cell in enumerate(cells, start=1):
        source = "".join(cell["source"])
        if cell["cell_type"] != "code" or any(m in source for m in IGNORE_MARKERS):
            continue
        found += [(number, output) for output in cell.get("outputs", [])]
    return found


def output_text(output: dict) -> str:
    if "text" in output:
        return "".join(output["text"])
    plain = output.get("data", {}).get("text/plain", "")
    return "".join(plain) if isinstance(plain, list) else plain


def test_there_are_notebooks():
    """Numbered 01..NN without gaps, and every .ipynb in notebooks/ is one of them."""
    assert len(NOTEBOOK_FILES) >= 6, NOTEBOOK_FILES
    numbers = [int(p.name[:2]) for p in NOTEBOOK_FILES]
    assert numbers == list(range(1, len(NOTEBOOK_FILES) + 1)), [p.name for p in NOTEBOOK_FILES]
    assert sorted(NOTEBOOKS.glob("*.ipynb")) == NOTEBOOK_FILES


@pytest.mark.parametrize("path", NOTEBOOK_FILES, ids=lambda p: p.name)
def test_notebook_is_committed_executed(path: Path):
    """Every non-empty code cell ran, in order, from a fresh kernel (1, 2, 3...), with outputs."""
    cells = [c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]
    counts = [c.get("execution_count") for c in cells if "".join(c["source"]).strip()]
    assert counts == list(range(1, len(counts) + 1)), f"{path.name}: execution counts {counts}"
    assert any(c.get("outputs") for c in cells), f"{path.name} has no outputs"


def test_readme_lists_exactly_the_notebooks():
    """The README's notebook table names every notebook once, in order, and nothing else."""
    readme = (NOTEBOOKS.parent / "README.md").read_text()
    listed = re.findall(r"^\| `(\w+\.ipynb)` \|", readme, re.MULTILINE)
    assert listed == [p.name for p in NOTEBOOK_FILES]


@pytest.mark.parametrize("path", NOTEBOOK_FILES, ids=lambda p: p.name)
def test_compared_outputs_have_no_warnings(path: Path):
    """A printed Python warning (``file.py:LINE: SomeWarning``) depends on the install.

    Whether it appears, and the path it names, differ between machines, so it
    breaks nbval elsewhere. (A notebook may still print a warning's message on
    purpose, as notebook 02 does to teach what a bad window looks like.)
    """
    bad = [
        (number, output_text(output)[:200])
        for number, output in compared_outputs(path)
        if PRINTED_WARNING.search(output_text(output))
    ]
    assert not bad, f"{path.name}: warnings in compared cells {bad}"


@pytest.mark.parametrize("path", NOTEBOOK_FILES, ids=lambda p: p.name)
def test_compared_outputs_have_no_machine_paths(path: Path):
    """After sanitizing, no absolute path may be left: it would differ on another machine."""
    bad = []
    for number, output in compared_outputs(path):
        leftover = ABSOLUTE_PATH.findall(sanitize(output_text(output)))
        if leftover:
            bad.append((number, leftover[:3]))
    assert not bad, f"{path.name}: absolute paths in compared cells {bad}"


def test_path_check_catches_paths():
    """The two checks above can fail: the patterns find what they are meant to."""
    text = "/check/work/main/.venv/lib/python3.11/site-packages/tqdm/auto.py:21: TqdmWarning: x"
    assert ABSOLUTE_PATH.findall("saved to /srv/runs/a/best.pt, ratio 1/2, see https://x.org/a/b")
    assert ABSOLUTE_PATH.findall("saved to /srv/runs/a/best.pt")[0] == "/srv/runs/a/best.pt"
    assert not ABSOLUTE_PATH.findall("ratio 1/2 and runs/notebook-x/last.pt")
    assert PRINTED_WARNING.search(text)
    assert not PRINTED_WARNING.search("DicomWarning: bad_window.dcm: the window is blind")
    assert "site-packages" not in sanitize(text)
    assert sanitize("/tmp/tmpab12/last.pt") == "TMPPATH"


IMPORT_IN_FAKE_KERNEL = r"""
import importlib, pkgutil, sys, types, warnings
# As if ipywidgets were not installed (whether it is or not): tqdm.auto then warns.
sys.modules["ipywidgets"] = None
# tqdm.auto decides it runs in Jupyter when ipykernel's shell module is loaded.
sys.modules["ipykernel.zmqshell"] = types.ModuleType("ipykernel.zmqshell")
import IPython  # noqa: F401 - tqdm.notebook needs the real IPython.display
names = sys.argv[1:]
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    for name in names:
        module = importlib.import_module(name)
        if name == "cxrkit":
            names += [
                f"cxrkit.{m.name}" for m in pkgutil.iter_modules(module.__path__) if m.name != "__main__"
            ]
print(sum("IProgress" in str(w.message) for w in caught))
"""


def warnings_in_fake_kernel(*modules: str) -> int:
    result = subprocess.run(
        [sys.executable, "-c", IMPORT_IN_FAKE_KERNEL, *modules],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(result.stdout.strip().splitlines()[-1])


@pytest.mark.slow  # a subprocess that imports torch: ~4 s (CI's slow step runs it)
def test_importing_cxrkit_in_jupyter_prints_no_tqdm_warning():
    """Importing any cxrkit module in a kernel without ipywidgets stays silent.

    The subprocess hides ipywidgets, so this runs whether it is installed or not.
    """
    assert warnings_in_fake_kernel("tqdm.auto") == 1  # the fake kernel does trigger it
    assert warnings_in_fake_kernel("cxrkit") == 0


def code_cells(path: Path) -> list[tuple[int, str]]:
    cells = json.loads(path.read_text())["cells"]
    return [(n, "".join(c["source"])) for n, c in enumerate(cells) if c["cell_type"] == "code"]


@pytest.mark.parametrize("path", NOTEBOOK_FILES, ids=lambda p: p.name)
def test_training_digits_are_never_compared(path: Path):
    """A cell that trains or prints a check_range value must not have its text compared.

    Those digits differ between machines (CPU, threads, versions); such a cell
    checks itself with ``check_range`` and is marked ``# NBVAL_IGNORE_OUTPUT``.
    """
    bad = [
        n
        for n, source in code_cells(path)
        if ("check_range(" in source or "train_from_folder(" in source)
        and not source.startswith("# NBVAL_IGNORE_OUTPUT")
    ]
    assert not bad, f"{path.name}: cells {bad} print training digits but nbval compares them"


@pytest.mark.parametrize(
    "path",
    [p for p in NOTEBOOK_FILES if "train_from_folder(" in p.read_text()],
    ids=lambda p: p.name,
)
def test_training_cells_check_themselves(path: Path):
    """Every notebook that trains states the model's validation mAP band in the cell."""
    call = re.compile(r'check_range\(\s*"best validation mAP@0.4"')
    checks = [s for _, s in code_cells(path) if call.search(s)]
    assert checks, f"{path.name} trains the notebook model but never checks its validation mAP"


@pytest.mark.slow
def test_broken_training_fails_the_notebook(tmp_path, monkeypatch):
    """The in-cell checks can fail: notebook 04 trained with lr 0 stops at its check.

    Runs the cells notebook 04 needs to train (imports, constants, preprocessing,
    training), with ``lr=0.0`` added to the call, in an empty work folder.
    """
    nbformat = pytest.importorskip("nbformat")
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    notebook = nbformat.read(NOTEBOOKS / "04_training.ipynb", as_version=4)
    wanted = (
        "import cxrkit",
        "cxrkit.setup_notebook",
        "RUN_DIR =",
        "ensure_preprocessed(",
        "train_from_folder(",
    )
    cells = [
        c for c in notebook.cells if c.cell_type == "code" and any(w in c.source for w in wanted)
    ]
    training = cells[-1]
    assert "train_from_folder(" in training.source and "weights=WEIGHTS," in training.source
    training.source = training.source.replace("weights=WEIGHTS,", "weights=WEIGHTS,\n    lr=0.0,")
    notebook.cells = cells
    monkeypatch.setenv("CXRKIT_WORK", str(tmp_path))
    monkeypatch.delenv("CXRKIT_CHECK_LOG", raising=False)
    client = NotebookClient(
        notebook,
        timeout=1800,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOKS)}},
    )
    with pytest.raises(
        CellExecutionError, match="best validation mAP@0.4 = .* outside the expected range"
    ):
        client.execute()


@pytest.mark.slow
def test_a_training_notebook_run_as_a_users_kernel_shows_clean_short_outputs(tmp_path):
    """Notebook 07 as JupyterLab shows it: progress bars on, stderr kept, consecutive
    stream writes merged (nbclient's ``coalesce_streams``, what the frontend does).

    The committed notebooks are made with ``TQDM_DISABLE=1`` and stderr stripped, which
    hides what a learner sees; this run trains its six models from an empty cache. It
    runs from a copy in ``my-notebooks/``, as the README advises, and the repository's
    ``git status`` must not change (figures, runs and caches stay out of tracked files).
    """
    import os
    import shutil

    import nbformat
    from nbclient import NotebookClient

    env = {k: v for k, v in os.environ.items() if k != "TQDM_DISABLE"}
    env.update(CXRKIT_CACHE=str(tmp_path / "cache"), OMP_NUM_THREADS="1")
    root = NOTEBOOKS.parent
    copy = root / "my-notebooks" / f"test-{tmp_path.name}"  # git-ignored, as the README says
    copy.mkdir(parents=True)
    shutil.copy(NOTEBOOKS / "07_no_finding.ipynb", copy)
    status = ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=all"]
    before = subprocess.run(status, capture_output=True, text=True).stdout
    notebook = nbformat.read(copy / "07_no_finding.ipynb", as_version=4)
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)  # the kernel process inherits this environment
    try:
        client = NotebookClient(
            notebook, timeout=1200, kernel_name="python3", coalesce_streams=True,
            resources={"metadata": {"path": str(copy)}},
        )  # fmt: skip
        client.execute()
        after = subprocess.run(status, capture_output=True, text=True).stdout
    finally:
        os.environ.clear()
        os.environ.update(saved)
        shutil.rmtree(copy, ignore_errors=True)
    assert after == before  # running the copy changed no tracked or unignored file
    for number, cell in enumerate(notebook.cells, start=1):
        outputs = cell.get("outputs", [])
        assert len(outputs) <= 30, (number, len(outputs))
        for output in outputs:
            if output.get("output_type") == "stream":
                assert output["text"].strip(), (number, output["name"], "blank stream output")
    streams = [o for c in notebook.cells for o in c.get("outputs", []) if "name" in o]
    assert any("epoch" in o["text"] for o in streams)  # the bars and epoch lines were there
