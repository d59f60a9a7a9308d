"""Data discovery: argument, CXRKIT_DATA, Kaggle, then the sample."""

from __future__ import annotations

from pathlib import Path

import pytest

from cxrkit import paths
from cxrkit.paths import display_path


def _fake_competition_folder(root):
    (root / "train").mkdir(parents=True)
    (root / "train.csv").write_text("image_id,class_name,class_id,rad_id,x_min,y_min,x_max,y_max\n")
    return root


def test_explicit_argument_wins(tmp_path, monkeypatch):
    explicit = _fake_competition_folder(tmp_path / "explicit")
    monkeypatch.setenv("CXRKIT_DATA", str(_fake_competition_folder(tmp_path / "env")))
    assert paths.find_data(explicit) == explicit


def test_environment_variable_before_kaggle_and_sample(tmp_path, monkeypatch):
    env = _fake_competition_folder(tmp_path / "env")
    monkeypatch.setenv("CXRKIT_DATA", str(env))
    monkeypatch.setattr(paths, "KAGGLE_DIR", _fake_competition_folder(tmp_path / "kaggle"))
    assert paths.find_data() == env


def test_kaggle_before_sample(tmp_path, monkeypatch):
    monkeypatch.delenv("CXRKIT_DATA", raising=False)
    kaggle = _fake_competition_folder(tmp_path / "kaggle")
    monkeypatch.setattr(paths, "KAGGLE_DIR", kaggle)
    assert paths.find_data() == kaggle


def test_sample_is_generated_once_then_reused(tmp_path, monkeypatch):
    monkeypatch.delenv("CXRKIT_DATA", raising=False)
    monkeypatch.setattr(paths, "KAGGLE_DIR", tmp_path / "no-kaggle")
    monkeypatch.setenv("CXRKIT_CACHE", str(tmp_path / "cache"))
    calls = []

    def fake_generate(out, seed):
        calls.append(seed)
        _fake_competition_folder(out)

    monkeypatch.setattr("cxrkit.sample.generate_sample", fake_generate)
    first = paths.find_data()
    second = paths.find_data()
    assert first == second == tmp_path / "cache" / f"sample-v{paths.SAMPLE_VERSION}-seed0"
    assert calls == [0]
    assert not [p for p in first.parent.iterdir() if p.name.startswith(".")], "temp folder left"


def test_interrupted_generation_leaves_no_half_sample(tmp_path, monkeypatch):
    monkeypatch.setenv("CXRKIT_CACHE", str(tmp_path / "cache"))

    def failing_generate(out, seed):
        (out / "train").mkdir()
        raise KeyboardInterrupt

    monkeypatch.setattr("cxrkit.sample.generate_sample", failing_generate)
    with pytest.raises(KeyboardInterrupt):
        paths.sample_dir()
    assert list((tmp_path / "cache").iterdir()) == []


@pytest.mark.parametrize("make", ["missing", "empty", "no_csv"])
def test_bad_folder_gets_a_clear_error(tmp_path, make):
    folder = tmp_path / "data"
    if make in ("empty", "no_csv"):
        folder.mkdir()
    if make == "no_csv":
        (folder / "train").mkdir()
    with pytest.raises(paths.DataNotFoundError, match=str(folder)):
        paths.find_data(folder)


def test_work_dir_prefers_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("CXRKIT_WORK", str(tmp_path / "work"))
    assert paths.work_dir("runs") == tmp_path / "work" / "runs"
    assert (tmp_path / "work" / "runs").is_dir()


def test_sample_folder_name_and_marker_version_agree(sample_data, tmp_path, monkeypatch):
    """The cache folder is named after the version the generator writes in its marker."""
    from cxrkit.sample import MARKER_NAME, SAMPLE_VERSION

    assert paths.SAMPLE_VERSION == SAMPLE_VERSION == 1
    assert paths.DEFAULT_SAMPLE_SEED == 0
    assert f"version={SAMPLE_VERSION}\n" in (sample_data / MARKER_NAME).read_text()
    monkeypatch.setenv("CXRKIT_CACHE", str(tmp_path))
    with pytest.raises(paths.DataNotFoundError, match="sample-v1-seed0"):
        paths.sample_dir(generate=False)


def test_paths_stays_light_and_the_generator_never_imports_it():
    """No import cycle: only paths imports sample, and only its constants until needed."""
    import subprocess
    import sys

    code = (
        "import sys, cxrkit.paths; heavy = {'cv2', 'pandas', 'pydicom'} & set(sys.modules); "
        "import cxrkit.sample.generate; print(sorted(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    code = "import sys, cxrkit.sample.generate; print('cxrkit.paths' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_first_use_says_what_where_and_how_big_before_the_bar(tmp_path, monkeypatch, capsys):
    """The sample's progress bar (stderr) alone looks like an error: a line comes first."""
    monkeypatch.setenv("CXRKIT_CACHE", str(tmp_path / "cache"))
    printed_before_generating = []

    def fake_generate(out, seed):
        printed_before_generating.append(capsys.readouterr().out)
        _fake_competition_folder(out)

    monkeypatch.setattr("cxrkit.sample.generate_sample", fake_generate)
    path = paths.sample_dir()
    (message,) = printed_before_generating
    assert message.startswith(paths.SAMPLE_MESSAGE_START)
    assert paths.display_path(path) in message and f"{paths.SAMPLE_SIZE_MB} MB" in message
    assert message.count("\n") == 1  # one line: notebooks/sanitize.cfg drops it
    paths.sample_dir()
    assert capsys.readouterr().out == "", "said again although the sample exists"


def test_display_path_names_the_cache_not_the_machines_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("CXRKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("CXRKIT_WORK", raising=False)
    run = tmp_path / "cache" / "work" / "runs" / "r1"
    assert display_path(run) == "$CXRKIT_CACHE/work/runs/r1"
    assert display_path(tmp_path / "cache") == "$CXRKIT_CACHE"
    monkeypatch.setenv("CXRKIT_WORK", str(tmp_path / "out"))
    assert display_path(tmp_path / "out" / "r2") == "$CXRKIT_WORK/r2"
    assert display_path(tmp_path / "elsewhere") == str(tmp_path / "elsewhere")
    monkeypatch.delenv("CXRKIT_CACHE")
    assert display_path(Path.home() / ".cache" / "cxrkit" / "x") == "~/.cache/cxrkit/x"
