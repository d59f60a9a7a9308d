"""The model registry holds every fact about a model; nothing else asks a model's name.

Also the structure issue 22 asked for: ``torch.load`` only in the checkpoint module,
checkpoints written by the previous release still load, each model's pretrained
layout as torchvision builds it.
"""

from __future__ import annotations

import argparse
import ast
from pathlib import Path

import pytest
import torch

import cxrkit
from cxrkit.config import TrainConfig, resolve_with_reasons
from cxrkit.errors import ConfigError
from cxrkit.models import build_model, model_from_checkpoint, to_pretrained_layout
from cxrkit.registry import ModelSpec, get_spec, model_names, register_model

PACKAGE = Path(cxrkit.__file__).parent
LEGACY = Path(__file__).parent / "data" / "legacy"
# Modules allowed a branch on a model name: none (ask the spec).
PENDING_NAME_BRANCHES: set[str] = set()


def _sources() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def name_branches(source: str) -> list[str]:
    """Comparisons with a registered model's name (``x == "cxr_small"``, ``x.startswith("resnet")``)."""
    names = set(model_names(None))
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare):
            constants = [n for n in (node.left, *node.comparators) if isinstance(n, ast.Constant)]
            if any(c.value in names for c in constants):
                found.append(f"line {node.lineno}: {ast.unparse(node)}")
        is_call = isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
        if is_call and node.func.attr in ("startswith", "endswith") and node.args:
            arg = node.args[0]
            prefixes = arg.value if isinstance(arg, ast.Constant) else None
            if isinstance(prefixes, str) and any(n.startswith(prefixes) for n in names):
                found.append(f"line {node.lineno}: {ast.unparse(node)}")
    return found


def test_the_scan_finds_a_planted_name_branch():
    assert name_branches('if cfg.model_name == "cxr_small":\n    pass\n')
    assert name_branches('ok = name.startswith("fasterrcnn")\n')
    assert not name_branches('spec = get_spec("cxr_small")\n')


def test_no_branch_on_a_model_name_outside_the_registry():
    offenders = {
        path.name: found
        for path in _sources()
        if path.name not in ("registry.py", *PENDING_NAME_BRANCHES)
        and (found := name_branches(path.read_text()))
    }
    assert not offenders, f"ask the model's spec (cxrkit.registry) instead: {offenders}"


def calls_torch_load(source: str) -> bool:
    """Whether the code (not a docstring) calls ``torch.load``."""
    return any(
        isinstance(node, ast.Call) and ast.unparse(node.func) == "torch.load"
        for node in ast.walk(ast.parse(source))
    )


def test_torch_load_only_in_the_checkpoint_module():
    assert calls_torch_load("import torch\nstate = torch.load(path, weights_only=True)\n")
    users = sorted(
        str(p.relative_to(PACKAGE)) for p in _sources() if calls_torch_load(p.read_text())
    )
    assert users == ["checkpoints.py"]


def test_every_model_has_a_complete_spec():
    for name in model_names(None):
        spec = get_spec(name)
        assert spec.task in ("detector", "classifier") and spec.family and spec.summary
        assert spec.size > 0 and spec.lr > 0 and spec.schedule in ("cosine", "step")
        assert callable(spec.builder_function())
        if spec.frozen_bn_eps is not None:
            assert spec.pretrained, name  # frozen BatchNorm is the pretrained layout


def test_unknown_and_wrong_task_names_are_config_errors():
    with pytest.raises(ConfigError, match="unknown model 'yolo'.*cxr_small"):
        get_spec("yolo")
    with pytest.raises(ConfigError, match="'cls_small' is a classifier, not a detector"):
        get_spec("cls_small", "detector")
    with pytest.raises(ConfigError, match="registered already"):
        register_model(get_spec("cxr_small"))


def test_a_new_model_is_one_spec_and_its_builder(monkeypatch):
    """Registering a spec makes it buildable and gives TrainConfig its recipe."""
    import cxrkit.registry as registry

    spec = ModelSpec(
        "tiny_test_detector", "detector", "faster_rcnn", "cxrkit.models:build_cxr_small",
        "a test model", size=96, lr=0.03, schedule="cosine", warmup_iters=7,
    )  # fmt: skip
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    register_model(spec)
    model = build_model("tiny_test_detector")
    assert model.transform.min_size == (96,) and model.cxrkit_config["family"] == "faster_rcnn"
    cfg, reasons = resolve_with_reasons(TrainConfig(model_name="tiny_test_detector"))
    assert (cfg.size, cfg.lr, cfg.warmup_iters) == (96, 0.03, 7)
    assert "tiny_test_detector's recipe" in reasons[0]


@pytest.mark.parametrize("name", model_names("detector"))
def test_the_model_is_built_for_exactly_the_size_asked(name):
    """No jump: 500 and 512 px both train at the side given (torchvision alone would use 800)."""
    for size in (500, 512):
        model = build_model(name, size=size)
        assert model.transform.min_size == (size,) and model.transform.max_size == size
    assert build_model(name).transform.min_size == (get_spec(name).size,)


def test_explicit_settings_win_over_the_recipe_and_zero_is_kept():
    cfg, _ = resolve_with_reasons(TrainConfig(lr=0.1, warmup_iters=0, size=320))
    assert (cfg.lr, cfg.warmup_iters, cfg.size, cfg.schedule) == (0.1, 0, 320, "cosine")


def test_a_pretrained_model_from_scratch_gets_warmup_and_clipping():
    cfg, reasons = resolve_with_reasons(TrainConfig(model_name="fasterrcnn_resnet50_fpn"))
    assert (cfg.warmup_iters, cfg.max_grad_norm) == (50, 10.0)
    assert any("trains from scratch" in r for r in reasons)
    coco, _ = resolve_with_reasons(TrainConfig(model_name="fasterrcnn_resnet50_fpn", weights="x"))
    assert (coco.warmup_iters, coco.max_grad_norm) == (0, None)  # the seed's recipe


def test_coco_layout_frozen_batchnorm_eps_is_torchvisions(monkeypatch):
    """torchvision sets FrozenBatchNorm2d's eps to 0.0 for the COCO weights of the seed's model."""
    import torchvision.models._api as api
    from torchvision.models.detection import fasterrcnn_resnet50_fpn
    from torchvision.ops.misc import FrozenBatchNorm2d

    name = "fasterrcnn_resnet50_fpn"
    ours = to_pretrained_layout(build_model(name, num_classes=91), name)
    state = ours.state_dict()
    monkeypatch.setattr(api.WeightsEnum, "get_state_dict", lambda self, *a, **k: state)
    reference = fasterrcnn_resnet50_fpn(weights="DEFAULT")  # COCO_V1, "downloaded" above

    def eps(model):
        return sorted({m.eps for m in model.modules() if isinstance(m, FrozenBatchNorm2d)})

    assert eps(ours) == eps(reference) == [0.0]
    assert list(ours.state_dict()) == list(reference.state_dict())


def test_checkpoints_of_the_previous_release_still_load():
    """tests/data/legacy/detector_v2.pt was written by cxrkit at fcec228 (format 2)."""
    model = model_from_checkpoint(LEGACY / "detector_v2.pt").eval()
    assert model.transform.min_size == (64,) and model.cxrkit_config["name"] == "cxr_small"
    with torch.inference_mode():
        out = model([torch.rand(3, 64, 64)])
    assert set(out[0]) == {"boxes", "labels", "scores"}
    ckpt = cxrkit.load_checkpoint(LEGACY / "detector_v2.pt")
    assert ckpt["config"]["size"] == 64 and ckpt["version"] == 2


def private_argparse_uses(source: str) -> list[str]:
    """``argparse._X`` names, private attributes of parsers (``parser._actions``) and
    overrides of argparse's private methods (``def _get_help_string``)."""
    private_methods = {n for n in dir(argparse.HelpFormatter) if n.startswith("_")}
    private_methods |= {n for n in dir(argparse.ArgumentParser()) if n.startswith("_")}
    private_methods = {n for n in private_methods if not n.startswith("__")}  # dunders are public
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_"):
            if ast.unparse(node.value) == "argparse" or node.attr in private_methods:
                found.append(f"line {node.lineno}: {ast.unparse(node)}")
        if isinstance(node, ast.FunctionDef) and node.name in private_methods:
            found.append(f"line {node.lineno}: def {node.name}")
    return found


def test_no_private_argparse_names():
    assert private_argparse_uses("import argparse\nx = argparse._SubParsersAction\n")
    assert private_argparse_uses("def _get_help_string(self, action):\n    pass\n")
    assert private_argparse_uses("names = parser._actions\n")
    offenders = {
        p.name: found for p in _sources() if (found := private_argparse_uses(p.read_text()))
    }
    assert not offenders, offenders


def test_the_classifier_settings_come_from_its_spec_too():
    from cxrkit.config import ClassifierConfig, resolve_classifier

    cfg = resolve_classifier(ClassifierConfig())
    spec = get_spec("cls_small", "classifier")
    assert (cfg.size, cfg.batch_size, cfg.lr, cfg.weight_decay) == (
        spec.size, spec.batch_size, spec.lr, spec.weight_decay,
    )  # fmt: skip
    assert cfg.epochs is None  # planned from the time budget when the run starts
    assert resolve_classifier(ClassifierConfig(lr=0.01, warmup_iters=0)).lr == 0.01
    with pytest.raises(ConfigError, match="'cxr_small' is a detector, not a classifier"):
        resolve_classifier(ClassifierConfig(model_name="cxr_small"))
    with pytest.raises(ConfigError, match="not used with folds"):
        resolve_classifier(ClassifierConfig(folds=2, fold=0, valid_fraction=0.3))


def test_a_resume_builds_the_layout_the_run_was_saved_in(tmp_path):
    """A run started from COCO weights (frozen BatchNorm) resumes in that layout even when
    the weights file is gone now: last.pt replaces the initial weights anyway."""
    from cxrkit.checkpoints import load_into_model, save_checkpoint
    from cxrkit.config import TrainConfig, resolve
    from cxrkit.train import _build_for_training

    name = "fasterrcnn_mobilenet_v3_large_fpn"
    coco_run = to_pretrained_layout(build_model(name, size=128), name)
    last = save_checkpoint(tmp_path / "last.pt", coco_run, epoch=1)
    cfg = resolve(TrainConfig(model_name=name, size=128, weights=None))  # the file is gone
    rebuilt = _build_for_training(cfg, torch.device("cpu"), resume_from=last)
    load_into_model(rebuilt, cxrkit.load_checkpoint(last), last)  # no missing keys
    assert any(type(m).__name__ == "FrozenBatchNorm2d" for m in rebuilt.modules())
