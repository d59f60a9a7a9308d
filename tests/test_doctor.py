"""``python -m cxrkit doctor`` and the notebooks' environment check."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from cxrkit import doctor
from cxrkit.cli import main

ROOT = Path(__file__).resolve().parents[1]
real_version = doctor._installed_version
real_plugins = doctor._decoder_plugins


@pytest.fixture()
def old_pydicom_no_jpeg2000(monkeypatch):
    """pydicom 2.4.4 installed, and no plugin decodes JPEG 2000."""
    monkeypatch.setattr(
        doctor, "_installed_version", lambda d: "2.4.4" if d == "pydicom" else real_version(d)
    )
    monkeypatch.setattr(
        doctor,
        "_decoder_plugins",
        lambda uid, dists: () if uid.startswith("JPEG2000") else real_plugins(uid, dists),
    )


def test_doctor_exits_0_on_this_machine(tmp_path):
    env = {**os.environ, "CXRKIT_CACHE": str(tmp_path / "cache")}
    env.pop("CXRKIT_DATA", None)
    out = subprocess.run(
        [sys.executable, "-m", "cxrkit", "doctor"], capture_output=True, text=True, env=env
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.rstrip().endswith("environment OK")
    for name in ("python", "pydicom", "albumentations", "JPEG 2000 decoder", "torch build"):
        assert re.search(rf"^ok\s+{name}\s", out.stdout, re.MULTILINE), name
    assert "none yet: the sample" in out.stdout  # found nothing, generated nothing
    assert not (tmp_path / "cache").exists()


def test_doctor_names_old_pydicom_missing_decoder_and_the_pip_line(
    old_pydicom_no_jpeg2000, capsys, tmp_path, monkeypatch
):
    monkeypatch.setenv("CXRKIT_CACHE", str(tmp_path))
    assert main(["doctor"]) == 1
    out = capsys.readouterr().out
    assert re.search(r"^PROBLEM\s+pydicom\s+2\.4\.4 is too old: needs >=3\.0,<4$", out, re.M)
    assert re.search(r"^PROBLEM\s+JPEG 2000 decoder\s+none installed", out, re.M)
    assert "2 problem(s): pydicom, JPEG 2000 decoder" in out
    fixes = ["pydicom>=3.0,<4", "pylibjpeg>=2.0", "pylibjpeg-openjpeg>=2.3"]
    pip = [line.strip() for line in out.splitlines() if line.strip().startswith("pip install")]
    assert pip == ["pip install " + " ".join(map(shlex.quote, fixes))]
    assert shlex.split(pip[0])[2:] == fixes  # pastes into a shell as it reads


def test_quiet_check_is_one_line_when_ok_and_lists_problems_otherwise(capsys, monkeypatch):
    assert doctor.check(quiet=True) is True
    assert capsys.readouterr().out == "environment OK\n"
    monkeypatch.setattr(
        doctor, "_installed_version", lambda d: None if d == "ensemble-boxes" else real_version(d)
    )
    assert doctor.check(quiet=True) is False
    out = capsys.readouterr().out
    assert "ensemble-boxes" in out and "pip install 'ensemble-boxes>=1.0.9'" in out
    assert "albumentations" not in out  # only the problems


def test_an_alternative_opencv_distribution_counts(monkeypatch):
    installed = {"opencv-python": "4.10.0.84"}
    monkeypatch.setattr(doctor, "_installed_version", installed.get)
    check = doctor.package_check("opencv-python-headless")
    assert check.ok and check.what == "opencv-python"
    installed.clear()
    assert not doctor.package_check("opencv-python-headless").ok


def test_albumentations_too_new():
    check = doctor.package_check("albumentations")
    assert check.ok
    assert not doctor.satisfies("2.0.9", doctor.REQUIREMENTS["albumentations"])


@pytest.mark.parametrize(
    ("version", "spec", "ok"),
    [
        ("3.0.2", ">=3.0,<4", True),
        ("2.4.4", ">=3.0,<4", False),
        ("4.0", ">=3.0,<4", False),
        ("2.0.8", ">=2.0,<=2.0.8", True),
        ("2.0.10", ">=2.0,<=2.0.8", False),
        ("2.14.1+cu130", ">=2.2", True),
        ("1.0.9", ">=1.0.9", True),
        ("0.26.0rc1", ">=0.22", True),
    ],
)
def test_satisfies(version, spec, ok):
    assert doctor.satisfies(version, spec) is ok


def test_requirements_are_pyprojects_minus_jupyterlab():
    tomllib = pytest.importorskip("tomllib")
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pyproject = {d.replace(" ", "") for d in deps if not d.startswith("jupyterlab")}
    assert {doctor.requirement(d) for d in doctor.REQUIREMENTS} == pyproject


def test_bad_cxrkit_data_is_a_problem(tmp_path, monkeypatch):
    monkeypatch.setenv("CXRKIT_DATA", str(tmp_path / "missing"))
    check = doctor.data_check()
    assert not check.ok and "does not exist" in check.detail and check.fix == ()
