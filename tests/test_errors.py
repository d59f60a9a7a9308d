"""One error hierarchy (cxrkit.errors) and one home for the competition's table formats."""

from __future__ import annotations

import ast
import importlib
import inspect
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

import cxrkit
from cxrkit import errors
from cxrkit.errors import CxrkitError

PACKAGE = Path(cxrkit.__file__).parent

# error -> (the builtin it resembles, the module that raised it before cxrkit.errors)
EXPECTED: dict[str, tuple[type[Exception], str]] = {
    "DataNotFoundError": (FileNotFoundError, "paths"),
    "DicomReadError": (RuntimeError, "dicom"),
    "PreprocessError": (RuntimeError, "preprocess"),
    "AnnotationError": (ValueError, "annotations"),
    "DatasetError": (ValueError, "data"),
    "SubmissionError": (ValueError, "submission"),
    "WeightsError": (RuntimeError, "models"),
    "CheckpointError": (RuntimeError, "models"),
    "ResumeError": (ValueError, "engine"),
}


def _error_classes() -> dict[str, type[Exception]]:
    return {
        name: obj
        for name, obj in vars(errors).items()
        if inspect.isclass(obj) and issubclass(obj, Exception) and obj.__module__ == errors.__name__
    }


def _sources() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


# ------------------------------------------------------------------------ hierarchy


def test_every_error_is_listed_here():
    assert set(_error_classes()) == set(EXPECTED) | {"CxrkitError"}
    assert set(errors.__all__) == set(_error_classes())


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_error_derives_from_base_and_builtin(name):
    cls = getattr(errors, name)
    builtin, _ = EXPECTED[name]
    assert issubclass(cls, CxrkitError)
    assert issubclass(cls, builtin)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_error_still_importable_from_its_old_module(name):
    _, module = EXPECTED[name]
    assert getattr(importlib.import_module(f"cxrkit.{module}"), name) is getattr(errors, name)


def test_base_is_public():
    assert cxrkit.CxrkitError is CxrkitError
    assert "CxrkitError" in cxrkit.__all__


def test_no_error_class_defined_outside_errors_module():
    """A new ``class XError(...)`` belongs in cxrkit/errors.py, under CxrkitError."""
    stray = []
    for path in _sources():
        if path.name == "errors.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and node.name.endswith("Error"):
                stray.append(f"{path.relative_to(PACKAGE)}: {node.name}")
    assert not stray, stray


def test_dicom_read_error_survives_pickling():
    err = pickle.loads(pickle.dumps(errors.DicomReadError("a.dicom", "truncated")))
    assert (err.path, err.reason, str(err)) == (
        "a.dicom",
        "truncated",
        "cannot read DICOM file a.dicom: truncated",
    )


# ---------------------------------------------------------------------- command line


def test_cli_reports_any_cxrkit_error_in_one_line(monkeypatch, capsys):
    """Not a list of known classes: any CxrkitError, even a new one, is bad input."""
    from cxrkit import cli

    class BrandNewError(CxrkitError):
        pass

    def boom(args):
        raise BrandNewError("the input is wrong")

    monkeypatch.setattr(cli, "_cmd_evaluate", boom)  # build_parser looks it up on each call
    assert cli.main(["evaluate", "s.csv", "t.csv"]) == 2
    err = capsys.readouterr().err
    assert err == "cxrkit evaluate: error: the input is wrong\n"


def test_cli_lets_a_bug_through(monkeypatch):
    from cxrkit import cli

    def bug(args):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(cli, "_cmd_evaluate", bug)  # build_parser looks it up on each call
    with pytest.raises(ZeroDivisionError):
        cli.main(["evaluate", "s.csv", "t.csv"])


def test_cli_bad_input_is_one_stderr_line(tmp_path):
    """A real bad input (a box on an image the meta table lacks): one line, exit 2."""
    train = tmp_path / "train.csv"
    train.write_text(
        "image_id,class_name,class_id,rad_id,x_min,y_min,x_max,y_max\n"
        "img_a,Cardiomegaly,3,R1,10,20,110,120\n"
        "img_b,Cardiomegaly,3,R1,10,20,110,120\n"
    )
    meta = tmp_path / "meta.csv"
    meta.write_text("image_id,dim0,dim1\nimg_a,200,200\n")
    out = tmp_path / "fused.csv"
    proc = subprocess.run(
        [sys.executable, "-m", "cxrkit", "fuse", str(train), str(out), "--meta", str(meta)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith("cxrkit fuse: error:") and "img_b" in proc.stderr
    assert not out.exists()
