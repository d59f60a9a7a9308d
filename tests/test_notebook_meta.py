"""The committed notebooks' metadata and first cells (what JupyterLab and new users meet)."""

from __future__ import annotations

import json

import pytest
from test_notebooks import NOTEBOOK_FILES, sanitize

from cxrkit.paths import SAMPLE_MESSAGE_START

# The kernelspec JupyterLab's own ipykernel install writes: any other makes it rewrite
# the metadata on open, so the checkout shows the notebook as modified.
KERNELSPEC = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}


def _code_cells(path):
    return [c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]


@pytest.mark.parametrize("path", NOTEBOOK_FILES, ids=lambda p: p.name)
def test_kernelspec_is_ipykernels(path):
    assert json.loads(path.read_text())["metadata"]["kernelspec"] == KERNELSPEC


@pytest.mark.parametrize("path", NOTEBOOK_FILES, ids=lambda p: p.name)
def test_first_cell_checks_the_environment(path):
    assert "cxrkit.doctor.check(quiet=True)" in "".join(_code_cells(path)[0]["source"])


def test_training_notebooks_take_their_model_from_the_profile():
    training = [p for p in NOTEBOOK_FILES if p.name[:2] in ("04", "05", "06")]
    assert len(training) == 3
    for path in training:
        sources = ["".join(c["source"]) for c in _code_cells(path)]
        assert sum("cxrkit.choose_profile(" in s for s in sources) == 1, path.name
        assert not any('MODEL_NAME = "' in s for s in sources), path.name


def test_sanitizer_drops_the_first_use_message():
    text = f"{SAMPLE_MESSAGE_START} (once): ... into /x/y; reused\ndata: generated sample\n"
    assert sanitize(text) == "data: generated sample\n"
