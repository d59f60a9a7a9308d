"""Training profiles: the choice for the device, and that the settings reach ``fit``."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import cxrkit.train
import cxrkit.utils
from cxrkit import profiles
from cxrkit.cli import main
from cxrkit.train import TrainConfig, train_from_folder

GIB = 2**30
# The notebooks' model before profiles existed: the cpu profile must keep it exactly.
NOTEBOOK_CONSTANTS = {"model_name": "cxr_small", "size": 256, "epochs": 10, "batch_size": 4}


@pytest.fixture()
def no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.fixture()
def offline(monkeypatch, tmp_path):
    """No internet, no CXRKIT_WEIGHTS and no COCO file in torch's cache or Kaggle."""
    monkeypatch.setattr(profiles, "_online", lambda *a, **k: False)
    monkeypatch.delenv(profiles.WEIGHTS_ENV, raising=False)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(profiles, "KAGGLE_INPUT", tmp_path / "no-kaggle")


def fake_gpu(
    monkeypatch, gib: float, name: str = "Tesla T4", capability: tuple[int, int] = (7, 5)
) -> None:
    """A CUDA device as torch reports it, for a torch built for sm_75 and newer."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.version, "cuda", "12.8")
    props = SimpleNamespace(name=name, total_memory=int(gib * GIB))
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index=0: props)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=0: capability)
    monkeypatch.setattr(torch.cuda, "get_arch_list", lambda: ["sm_75", "sm_80", "sm_90"])


def test_a_card_without_kernels_in_this_torch_gets_the_cpu_profile(monkeypatch, capsys):
    """Kaggle's P100 (sm_60) under a torch built for sm_75+: is_available() is True,
    but the first kernel would fail; the profile says so and trains on the CPU."""
    fake_gpu(monkeypatch, 16, "Tesla P100-PCIE-16GB", capability=(6, 0))
    profile = profiles.choose_profile()
    assert profile.name == "cpu"
    assert "sm_60" in capsys.readouterr().out
    assert str(cxrkit.utils.try_gpu()) == "cpu"


def test_cpu_profile_without_gpu_is_the_notebook_model(no_gpu, capsys):
    profile = profiles.choose_profile()
    assert profile.name == "cpu"
    assert {k: profile.settings()[k] for k in NOTEBOOK_CONSTANTS} == NOTEBOOK_CONSTANTS
    assert profile.weights is None and profile.amp is False
    out = capsys.readouterr().out
    first = out.splitlines()[0]
    assert first.startswith("profile cpu: ") and ("no CUDA" in first or "CPU-only" in first)
    assert "cxr_small, 256 px" in out


def test_cpu_profile_counts_the_data_and_warns_for_a_large_set(no_gpu, tmp_path, capsys):
    (tmp_path / "train").mkdir()
    for i in range(3):
        (tmp_path / "train" / f"{i}.dicom").touch()
    assert "3 training images" in profiles.choose_profile(data_dir=tmp_path).reason
    for i in range(profiles.LARGE_FOR_CPU):
        (tmp_path / "train" / f"x{i}.png").touch()
    assert any("takes hours" in n for n in profiles.choose_profile(data_dir=tmp_path).notes)


def test_gpu_profile_with_a_mocked_cuda_device(monkeypatch, offline, capsys):
    fake_gpu(monkeypatch, 15.8)
    profile = profiles.choose_profile()
    assert profile.name == "gpu" and "Tesla T4" in profile.reason
    assert (profile.model_name, profile.size, profile.amp) == ("fasterrcnn_resnet50_fpn", 512, True)
    assert profile.batch_size == profiles.batch_size_for_memory(15.8) == 8
    # offline and no file: it trains from scratch, and says so loudly
    assert profile.weights is None
    assert "TRAINS FROM SCRATCH" in capsys.readouterr().out


def test_gpu_profile_weights_file_then_download(monkeypatch, offline, tmp_path):
    fake_gpu(monkeypatch, 80)
    weights = tmp_path / "coco.pth"
    weights.touch()
    monkeypatch.setenv(profiles.WEIGHTS_ENV, str(weights))
    assert profiles.choose_profile("gpu", verbose=False).weights == str(weights)
    monkeypatch.delenv(profiles.WEIGHTS_ENV)
    kaggle = tmp_path / "kaggle"
    attached = kaggle / "coco-weights" / profiles.coco_weights_filename(profiles.GPU_MODEL)
    attached.parent.mkdir(parents=True)
    attached.touch()
    monkeypatch.setattr(profiles, "KAGGLE_INPUT", kaggle)
    assert profiles.choose_profile("gpu", verbose=False).weights == str(attached)
    attached.unlink()
    monkeypatch.setattr(profiles, "_online", lambda *a, **k: True)
    assert profiles.choose_profile("gpu", verbose=False).weights == "DEFAULT"


def test_gpu_profile_by_name_without_a_gpu(no_gpu, offline):
    profile = profiles.choose_profile("gpu", verbose=False)
    assert profile.name == "gpu" and profile.batch_size == profiles.NO_GPU_BATCH
    assert profile.reason == "asked for by name"


@pytest.mark.parametrize(("gib", "batch"), [(141, 16), (40, 16), (24, 8), (16, 8), (8, 4), (4, 2)])
def test_batch_size_follows_gpu_memory(gib, batch):
    assert profiles.batch_size_for_memory(gib) == batch


def test_unknown_profile_is_refused():
    with pytest.raises(ValueError, match="unknown profile 'tpu'"):
        profiles.choose_profile("tpu")


def test_gpu_profile_reaches_fit_unchanged(monkeypatch, offline, preprocessed, sample_data):
    """Model, size, batch, schedule and AMP of a gpu profile arrive in fit as chosen."""
    with monkeypatch.context() as m:
        fake_gpu(m, 15.8)
        profile = profiles.choose_profile(verbose=False)
    profile = replace(profile, weights="coco.pth")  # as if found; the build is faked below
    built, fitted = {}, {}

    def fake_build(name, weights=None, **kw):
        from helpers import small_model

        built.update(name=name, weights=weights, **kw)
        return small_model()  # never a resnet50 in a test

    def fake_fit(model, train_loader, valid_loader, out_dir, device, opt, sched, config, **kw):
        fitted.update(batch=train_loader.batch_size, scheduler=sched, config=config, **kw)
        return "fit result"

    monkeypatch.setattr(cxrkit.train, "build_model", fake_build)
    monkeypatch.setattr(cxrkit.train, "fit_run", fake_fit)  # the config, passed whole
    result = train_from_folder(
        preprocessed, sample_data / "train.csv", preprocessed.parent / "run",
        TrainConfig.from_profile(profile),
    )  # fmt: skip
    assert result == "fit result"
    assert built["name"] == profile.model_name and built["weights"] == "coco.pth"
    config = fitted["config"]
    assert config["epochs"] == profile.epochs and fitted["batch"] == profile.batch_size
    assert config["amp"] is True
    assert isinstance(fitted["scheduler"], torch.optim.lr_scheduler.StepLR)  # the seed's
    for field, value in profile.settings().items():
        assert config[field] == value, field


def test_cli_train_profile_and_explicit_flags_override(monkeypatch, no_gpu, offline, tmp_path):
    calls = []

    def fake_train(
        data_dir,
        annotations_csv,
        out_dir,
        config=None,
        *,
        resume,
        overwrite,
        max_minutes=None,
        **settings,
    ):
        calls.append(replace(config or TrainConfig(), **settings).resolved())
        return "done"

    monkeypatch.setattr(cxrkit.train, "train_from_folder", fake_train)
    base = ["train", str(tmp_path), str(tmp_path / "train.csv"), "--out", str(tmp_path / "r")]
    assert main([*base, "--profile", "gpu", "--epochs", "2", "--seed", "7"]) == 0
    assert main([*base, "--profile", "cpu", "--batch-size", "4", "--model", "cxr_small"]) == 0
    assert main(base) == 0
    gpu, cpu, plain = calls
    assert (gpu.model_name, gpu.size, gpu.epochs, gpu.amp) == (
        "fasterrcnn_resnet50_fpn",
        512,
        2,
        True,
    )
    assert gpu.batch_size == profiles.NO_GPU_BATCH and gpu.seed == 7
    # without --epochs the run plans them from its time budget, as without a profile
    assert (cpu.model_name, cpu.size, cpu.epochs, cpu.batch_size) == ("cxr_small", 256, None, 4)
    assert plain == TrainConfig().resolved()  # no profile: the flags' defaults, as before


def test_gpu_profile_sets_loader_workers_and_warns_without_cuda(
    monkeypatch, no_gpu, offline, capsys
):
    monkeypatch.setattr(profiles.os, "cpu_count", lambda: 4)
    profile = profiles.choose_profile("gpu")
    assert profile.num_workers == 3 and profile.settings()["num_workers"] == 3
    out = capsys.readouterr().out
    assert "NO USABLE CUDA DEVICE" in out and "--profile cpu" in out
    assert profiles.choose_profile("cpu", verbose=False).num_workers == 0  # the notebooks' loader


def test_coco_weights_are_found_where_kaggle_mounts_models(monkeypatch, tmp_path):
    """Kaggle Models: /kaggle/input/<model>/<framework>/<variation>/<version>/<file>."""
    name = profiles.coco_weights_filename(profiles.GPU_MODEL)
    deep = tmp_path / "fasterrcnn" / "pytorch" / "coco" / "1" / name
    deep.parent.mkdir(parents=True)
    deep.write_bytes(b"")
    too_deep = tmp_path / "a" / "b" / "c" / "d" / "e" / "f" / name
    too_deep.parent.mkdir(parents=True)
    too_deep.write_bytes(b"")
    monkeypatch.setattr(profiles, "KAGGLE_INPUT", tmp_path)
    assert profiles._kaggle_files(name) == [deep]


def test_another_model_than_the_profiles_gets_its_own_weights(monkeypatch, capsys):
    """--profile gpu --model fcos_resnet50_fpn must not load the Faster R-CNN's COCO file."""
    import cxrkit.profiles
    from cxrkit.profiles import Profile

    profile = Profile("gpu", "test", "fasterrcnn_resnet50_fpn", 512, 10, 8, "frcnn_coco.pth", True)
    monkeypatch.setattr(
        cxrkit.profiles, "_local_weights_candidates", lambda filename: [Path("/nowhere") / filename]
    )
    monkeypatch.setattr(cxrkit.profiles, "_online", lambda *a, **k: True)
    monkeypatch.delenv("CXRKIT_WEIGHTS", raising=False)
    fcos = TrainConfig.from_profile(profile, model_name="fcos_resnet50_fpn")
    assert fcos.model_name == "fcos_resnet50_fpn" and fcos.weights == "DEFAULT"
    assert "instead of the profile's fasterrcnn_resnet50_fpn" in capsys.readouterr().out
    small = TrainConfig.from_profile(profile, model_name="fcos_small")
    assert small.weights is None  # no published weights: from scratch
    same = TrainConfig.from_profile(profile, batch_size=2)
    assert same.weights == "frcnn_coco.pth"  # the profile's own model keeps its file
    explicit = TrainConfig.from_profile(profile, model_name="fcos_small", weights="mine.pt")
    assert explicit.weights == "mine.pt"  # a typed --weights wins


def test_the_environment_names_the_profile_and_a_wrong_name_is_refused(
    monkeypatch, no_gpu, offline
):
    """CXRKIT_PROFILE=gpu picks the gpu profile where auto would pick cpu (what the
    notebook test runs under); an explicit name still wins; a typo names the variable."""
    monkeypatch.setenv(profiles.PROFILE_ENV, "gpu")
    profile = profiles.choose_profile(verbose=False)
    assert (profile.name, profile.reason) == ("gpu", "CXRKIT_PROFILE=gpu")
    assert profiles.choose_profile("cpu", verbose=False).name == "cpu"
    monkeypatch.setenv(profiles.PROFILE_ENV, "GPU ")
    with pytest.raises(ValueError, match="CXRKIT_PROFILE='GPU' is not a profile"):
        profiles.choose_profile(verbose=False)


def test_smoke_scale_shrinks_the_profile_and_says_so(monkeypatch, no_gpu, offline, capsys):
    monkeypatch.setenv(profiles.SMOKE_ENV, "1")
    profile = profiles.choose_profile("gpu")
    assert (profile.model_name, profile.classifier_name) == (
        profiles.GPU_MODEL,
        profiles.GPU_CLASSIFIER[0],
    )  # the same models, smaller:
    assert (profile.size, profile.epochs, profile.batch_size) == (64, 1, 2)
    assert (profile.classifier_size, profile.classifier_epochs) == (64, 1)
    assert "SMOKE SCALE (CXRKIT_SMOKE=1)" in capsys.readouterr().out
    monkeypatch.setenv(profiles.SMOKE_ENV, "0")
    assert not profiles.choose_profile("gpu", verbose=False).smoke


def test_bands_are_the_measured_ones_only_for_the_cpu_profile(no_gpu, offline):
    cpu = profiles.choose_profile("cpu", verbose=False)
    gpu = profiles.choose_profile("gpu", verbose=False)
    assert cpu.band((0.1, 0.4), gpu=(0, 1)) == (0.1, 0.4)
    assert gpu.band((0.1, 0.4), gpu=(0, 1)) == (0, 1)
    assert profiles.smoke_scale(cpu).band((0.1, 0.4)) == (-float("inf"), float("inf"))
    cxrkit.utils.check_range("a gain", -0.3, *gpu.band((0.1, 0.4)))  # no band: does not raise
    with pytest.raises(AssertionError, match="outside"):
        cxrkit.utils.check_range("a gain", float("nan"), *gpu.band((0.1, 0.4)))


def test_the_classifier_imagenet_weights_are_found_like_the_detectors(
    monkeypatch, offline, tmp_path, capsys
):
    """Notebook 07's efficientnet_b0: torchvision's ImageNet file attached on Kaggle is
    used offline; without it the profile says the classifier trains from scratch."""
    fake_gpu(monkeypatch, 15.8)
    profile = profiles.choose_profile("gpu")
    assert profile.classifier_name == "efficientnet_b0" and profile.classifier_weights is None
    assert "no ImageNet weights: offline and no efficientnet_b0_" in capsys.readouterr().out
    kaggle = tmp_path / "kaggle"
    name = profiles.coco_weights_filename("efficientnet_b0")
    attached = kaggle / "efficientnet" / "pytorch" / "b0" / "1" / name
    attached.parent.mkdir(parents=True)
    attached.touch()
    monkeypatch.setattr(profiles, "KAGGLE_INPUT", kaggle)
    profile = profiles.choose_profile("gpu", verbose=False)
    assert profile.classifier_weights == str(attached)
    assert f"classifier: ImageNet weights from the local file {attached}" in profile.notes
    assert profiles.choose_profile("cpu", verbose=False).classifier_weights is None
