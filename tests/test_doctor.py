"""``python -m cxrkit doctor`` and the notebooks' environment check."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from cxrkit import doctor, paths, utils
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
    env.pop("CXRKIT_WORK", None)
    out = subprocess.run(
        [sys.executable, "-m", "cxrkit", "doctor"], capture_output=True, text=True, env=env
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.rstrip().endswith("environment OK")
    names = ("python", "pydicom", "albumentations", "JPEG 2000 decoder", "torch build", "outputs")
    for name in names:
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


# ------------------------------------------------------- broken environments
# Each case runs ``python -m cxrkit doctor`` with fake packages first on PYTHONPATH.
# A fake with a ``.dist-info`` folder is what pip sees as installed (a broken or old
# install); one without is a file that shadows the real package (pip cannot help).

HEAVY = ("numpy", "pandas", "pydicom", "cv2", "torch", "torchvision", "albumentations")


def _fake_package(root: Path, module: str, body: str, version: str | None = None) -> None:
    """Write ``root/module/__init__.py``; with ``version``, pip metadata that claims it."""
    (root / module).mkdir(parents=True)
    (root / module / "__init__.py").write_text(body)
    if version is not None:
        dist = {"cv2": "opencv-python-headless", "ensemble_boxes": "ensemble-boxes"}
        name = dist.get(module, module)
        info = root / f"{name.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")


def _run_doctor(tmp_path: Path, fakes: Path | None = None, *args: str, **env: str):
    """``python -m cxrkit doctor`` from an empty folder: fakes, then this checkout, on the path."""
    environ = {**os.environ, "CXRKIT_CACHE": str(tmp_path / "cache"), **env}
    for name in ("CXRKIT_DATA", "CXRKIT_WORK"):
        environ.pop(name, None)
    path = [str(fakes)] if fakes else []
    environ["PYTHONPATH"] = os.pathsep.join([*path, str(ROOT)])
    return subprocess.run(
        [sys.executable, "-m", "cxrkit", "doctor", *args],
        capture_output=True,
        text=True,
        env=environ,
        cwd=tmp_path,
        timeout=300,
    )


RAISE_IMPORT = "raise ImportError('libfoo.so: cannot open shared object file')\n"
RAISE_RUNTIME = "raise RuntimeError('broken build')\n"

BROKEN = {
    # case: ({module: (body, pip version or None)}, packages named, text expected on the line)
    "pydicom ImportError, shadowing": (
        {"pydicom": (RAISE_IMPORT, None)},
        ["pydicom"],
        "`import pydicom` fails: ImportError: libfoo.so",
    ),
    "pydicom RuntimeError, installed": (
        {"pydicom": (RAISE_RUNTIME, "3.0.1")},
        ["pydicom"],
        "3.0.1 is installed, but `import pydicom` fails: RuntimeError: broken build",
    ),
    "pydicom 2.4, installed": (
        {"pydicom": ("__version__ = '2.4.0'\n", "2.4.0")},
        ["pydicom"],
        "2.4.0 is too old: needs >=3.0,<4",
    ),
    "pydicom 2.4, shadowing": (
        {"pydicom": ("__version__ = '2.4.0'\n", None)},
        ["pydicom"],
        "`import pydicom` gives 2.4.0, which does not satisfy >=3.0,<4",
    ),
    "cv2 OSError, installed": (
        {"cv2": ("raise OSError('libGL.so.1: cannot open shared object file')\n", "4.10.0.84")},
        ["opencv-python-headless"],
        "`import cv2` fails: OSError: libGL.so.1",
    ),
    "torch RuntimeError, shadowing": (
        {"torch": (RAISE_RUNTIME, None)},
        ["torch", "torchvision", "torch build"],
        "`import torchvision` fails: RuntimeError: broken build (raised by torch: see its line)",
    ),
    "ensemble_boxes and albumentations, installed": (
        {
            "ensemble_boxes": (RAISE_IMPORT, "1.0.9"),
            "albumentations": ("raise AttributeError('pydantic')\n", "2.0.8"),
        },
        ["ensemble-boxes", "albumentations"],
        "is installed, but `import",
    ),
}


@pytest.mark.slow  # a subprocess that imports torch: ~4 s (CI's slow step runs it)
@pytest.mark.parametrize("case", BROKEN)
def test_doctor_reports_a_broken_package_without_a_traceback(case, tmp_path):
    modules, names, text = BROKEN[case]
    fakes = tmp_path / "fakes"
    for module, (body, version) in modules.items():
        _fake_package(fakes, module, body, version)
    out = _run_doctor(tmp_path, fakes)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "Traceback" not in out.stderr, out.stderr
    problems = [line for line in out.stdout.splitlines() if line.startswith("PROBLEM")]
    for name in names:
        assert [p for p in problems if re.match(rf"PROBLEM\s+{name}\s", p)], (name, out.stdout)
    assert any(text in p for p in problems), out.stdout
    assert "environment OK" not in out.stdout
    installed = all(version is not None for _body, version in modules.values())
    if installed:  # pip can fix an install; a shadowing file must go
        assert re.search(
            r"^  pip install .*'(pydicom|opencv|ensemble|albumentations)", out.stdout, re.M
        )
    else:
        assert "rename or remove it" in out.stdout


@pytest.mark.slow  # a subprocess that imports torch: ~4 s (CI's slow step runs it)
def test_doctor_refuses_a_cache_that_is_a_file(tmp_path):
    (tmp_path / "cache").write_text("not a folder")
    out = _run_doctor(tmp_path)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "Traceback" not in out.stderr, out.stderr
    line = re.search(r"^PROBLEM\s+cache\s+(.*)$", out.stdout, re.M)
    assert line, out.stdout
    assert "is a file, not a folder" in line[1] and "CXRKIT_CACHE=" in line[1]


def test_doctor_help_has_a_description(tmp_path):
    out = _run_doctor(tmp_path, None, "--help")
    assert out.returncode == 0, out.stderr
    assert "Can this environment run the notebooks?" in out.stdout
    with pytest.raises(SystemExit) as exit_:
        main(["doctor", "--help"])
    assert exit_.value.code == 0


def test_the_doctor_and_the_command_line_load_no_heavy_package():
    """What the doctor imports before its checks run: the standard library only."""
    code = (
        "import sys, cxrkit.cli, cxrkit.doctor; "
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert out.stdout.strip() == "[]"


def test_a_missing_feature_is_a_problem(monkeypatch):
    """A pydicom that says 3.0 but has no pydicom.pixels (a half-upgraded install)."""
    fake = type(sys)("pydicom")
    fake.__version__ = "3.0.0"
    monkeypatch.setitem(sys.modules, "pydicom", fake)
    monkeypatch.setitem(sys.modules, "pydicom.pixels", None)  # import raises ImportError
    check = doctor.import_check("pydicom", "pydicom", "3.0.2")
    assert not check.ok and check.reinstall
    assert check.detail.startswith("3.0.0 has no pydicom.pixels (new in pydicom 3")
    assert doctor.reinstall_line([check]) == "pip install --force-reinstall 'pydicom>=3.0,<4'"
    assert doctor.pip_line([check]) is None  # "already satisfied" would not help


def test_a_failing_check_is_a_problem_not_a_crash():
    def broken() -> doctor.Check:
        raise ZeroDivisionError("oops")

    check = doctor.guarded("data", broken)
    assert not check.ok and check.detail == "the check failed: ZeroDivisionError: oops"


# --------------------------------------------------------------- where outputs go
def test_outputs_line_names_the_work_folder_without_creating_it(tmp_path, monkeypatch):
    monkeypatch.setenv("CXRKIT_WORK", str(tmp_path / "work"))
    check = doctor.outputs_check()
    assert check.ok and check.detail.startswith(f"{tmp_path / 'work'} (")
    assert not (tmp_path / "work").exists()
    monkeypatch.delenv("CXRKIT_WORK")
    monkeypatch.setattr(paths, "KAGGLE_WORKING", tmp_path)  # as on Kaggle
    assert doctor.outputs_check().detail.startswith(f"{tmp_path / 'cxrkit'} (")
    (tmp_path / "cxrkit").write_text("")
    check = doctor.outputs_check()
    assert not check.ok and "is a file, not a folder" in check.detail


def test_an_unwritable_parent_is_a_problem(tmp_path):
    (tmp_path / "file").write_text("")
    problem = doctor.folder_problem(tmp_path / "file" / "cache")
    assert (
        problem
        == f"{tmp_path / 'file' / 'cache'} cannot be created: {tmp_path / 'file'} is a file, not a folder"
    )
    assert doctor.folder_problem(tmp_path / "new" / "deeper") is None


# ------------------------------------------------------------- torch and CUDA
@pytest.fixture()
def fake_cuda(monkeypatch):
    """Set what torch reports about CUDA: ``fake_cuda(capability, arch_list)``."""
    torch = pytest.importorskip("torch")

    def set_(capability: tuple[int, int] | None, arch_list: list[str], cuda: str | None = "12.4"):
        monkeypatch.setattr(torch.version, "cuda", cuda)
        monkeypatch.setattr(torch.cuda, "is_available", lambda: capability is not None)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=0: capability)
        monkeypatch.setattr(torch.cuda, "get_arch_list", lambda: list(arch_list))
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=0: "Tesla P100-PCIE-16GB")

    return set_


CURRENT = ["sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120"]


@pytest.mark.parametrize(
    ("capability", "arch_list", "usable"),
    [
        ((6, 0), CURRENT, False),  # Kaggle's P100 under a current torch
        ((7, 5), CURRENT, True),  # T4
        ((8, 9), ["sm_80", "sm_86", "sm_90"], True),  # sm_86 code runs on 8.9
        ((8, 0), ["sm_86", "sm_90"], False),  # but not on the older 8.0
        ((10, 0), ["sm_80", "sm_90"], False),  # no sm_10x, no PTX
        ((10, 0), ["sm_80", "sm_90", "compute_90"], True),  # PTX compiles for newer
        ((7, 5), ["compute_80"], False),  # PTX not for older
        ((9, 0), ["sm_90a"], True),
        ((6, 0), [], True),  # the build does not say: as torch, no complaint
    ],
)
def test_cuda_problem_compares_capability_with_the_arch_list(
    fake_cuda, capability, arch_list, usable
):
    fake_cuda(capability, arch_list)
    problem = utils.cuda_problem()
    if usable:
        assert problem is None
    else:
        major, minor = capability
        assert problem.startswith(f"cuda:0 has compute capability sm_{major}{minor}, which torch")
        assert problem.endswith(f"(built for {' '.join(arch_list)})")


def test_cuda_problem_without_a_device(fake_cuda, monkeypatch):
    fake_cuda(None, CURRENT)
    assert utils.cuda_problem() == "no CUDA device: torch.cuda.is_available() is False"
    fake_cuda(None, [], cuda=None)
    assert utils.cuda_problem().endswith("is a CPU-only build (no CUDA)")
    fake_cuda((8, 0), CURRENT)

    def no_such_device(index=0):
        raise AssertionError("Invalid device id")

    monkeypatch.setattr("torch.cuda.get_device_capability", no_such_device)
    assert utils.cuda_problem(3) == "cannot query CUDA device 3: AssertionError: Invalid device id"


def test_doctor_names_a_card_this_torch_cannot_run(fake_cuda):
    fake_cuda((6, 0), CURRENT)
    check = doctor.torch_check()
    assert not check.ok and check.fix == ()
    assert "sm_60" in check.detail and "Tesla P100" in check.detail
    assert "torch build for this card" in check.detail and "CPU" in check.detail
    fake_cuda((7, 5), CURRENT)
    check = doctor.torch_check()
    assert check.ok and "cuda:0 (Tesla P100-PCIE-16GB)" in check.detail


def test_doctor_hints_at_a_cpu_torch_without_a_cuda_device(fake_cuda):
    fake_cuda(None, CURRENT)
    check = doctor.torch_check()
    assert check.ok and doctor.CPU_TORCH in check.detail
    fake_cuda(None, [], cuda=None)
    check = doctor.torch_check()
    assert check.ok and "CPU-only" in check.detail and doctor.CPU_TORCH not in check.detail
