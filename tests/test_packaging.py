"""The project's promises about packaging: one dependency list, a working API and CLI."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _normalise(requirement: str) -> str:
    """'Foo_Bar >= 1.0' -> 'foo-bar>=1.0' so both files compare by meaning, not spelling."""
    requirement = requirement.strip().strip('"').strip("'")
    name, _, spec = re.match(r"([A-Za-z0-9_.\-]+)(\[[^\]]*\])?(.*)", requirement).groups()
    return re.sub(r"[-_.]+", "-", name).lower() + spec.replace(" ", "")


def _pyproject_requirements() -> set[str]:
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        requirements += extra
    return {_normalise(r) for r in requirements}


def _environment_requirements() -> set[str]:
    """The pip list of environment.yml (read by hand: no YAML library needed)."""
    lines = (ROOT / "environment.yml").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == "- pip:")
    requirements = set()
    for line in lines[start + 1 :]:
        item = line.strip()
        if not item.startswith("- "):
            break
        item = item[2:].strip()
        if item.startswith("-e"):
            continue
        requirements.add(_normalise(item))
    return requirements


def test_environment_yml_matches_pyproject():
    pyproject, environment = _pyproject_requirements(), _environment_requirements()
    assert pyproject == environment, (
        f"only in pyproject.toml: {sorted(pyproject - environment)}; "
        f"only in environment.yml: {sorted(environment - pyproject)}"
    )


def test_normalise_catches_differences():
    assert _normalise("Albumentations >=2.0, <=2.0.8") == "albumentations>=2.0,<=2.0.8"
    assert _normalise("ensemble_boxes>=1") != _normalise("ensemble-boxes>=2")


def test_every_public_name_resolves():
    import cxrkit

    missing = [name for name in cxrkit.__all__ if not hasattr(cxrkit, name)]
    assert not missing, f"cxrkit.__all__ lists names that do not exist: {missing}"


def test_readme_lists_the_public_api():
    import cxrkit

    readme = (ROOT / "README.md").read_text()
    undocumented = [name for name in cxrkit.__all__ if f"`{name}`" not in readme]
    assert not undocumented, f"README does not mention: {undocumented}"


def test_import_is_light():
    """`import cxrkit` must not pull in torch (the CLI's sample command starts fast)."""
    code = "import sys, cxrkit; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    test_command = next(
        line.strip() for line in readme.splitlines() if line.strip().endswith(".venv/bin/pytest")
    )
    assert test_command in ci


def test_from_import_gives_the_submodule():
    """`from cxrkit import annotations` must be the module, not a `__future__` feature."""
    code = "from cxrkit import annotations; print(annotations.__name__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "cxrkit.annotations"
