"""Write the tiny checkpoints that tests/test_checkpoint_compat.py loads.

They were written by cxrkit at commit fcec228 (checkpoint format version 2), the
last commit before the model registry, with::

    git worktree add /tmp/fcec228 fcec228
    cd /tmp/fcec228 && python tests/data/legacy/make_legacy_checkpoints.py OUT_DIR

(this file copied there), so that a later cxrkit is tested against files an older
one really wrote. The detector is ``cxr_small`` with slim heads (a few MB instead
of 13) and the classifier ``cls_small``; both keep the config dict that
``train`` / ``train-classifier`` saved then, without optimizer state.
"""

import sys
from dataclasses import asdict
from pathlib import Path

import torch

from cxrkit.checkpoints import save_checkpoint
from cxrkit.classifier import ClassifierConfig, build_classifier
from cxrkit.models import build_model
from cxrkit.train import TrainConfig


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    cfg = TrainConfig(size=64, epochs=1).resolved()
    model = build_model(
        "cxr_small", min_size=64, max_size=64, fpn_channels=16, representation_size=32
    )
    config = {**asdict(cfg), "data_dir": "p", "annotations_csv": "s/train.csv", "world_size": 1}
    save_checkpoint(
        out / "detector_v2.pt",
        model,
        None,
        None,
        1,
        best_map=0.0,
        best_epoch=1,
        history_rows=1,
        config=config,
    )
    ccfg = ClassifierConfig(size=32, epochs=1)
    classifier = build_classifier("cls_small")
    settings = {**asdict(ccfg), "schedule": "cosine", "T_max": 1, "kind": "classifier"}
    save_checkpoint(
        out / "classifier_v2.pt",
        classifier,
        None,
        None,
        1,
        config=settings,
        best_auc=0.5,
        best_epoch=1,
        pos_weight=1.0,
    )


if __name__ == "__main__":
    main(Path(sys.argv[1]))
