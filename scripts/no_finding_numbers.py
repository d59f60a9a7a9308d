"""Issue 9's numbers: bands tuned out-of-fold, then detector alone / + classifier / fold ensemble.

Train K detector folds and K classifier folds first (each run writes ``oof.csv``)::

    for f in 0 1 2; do
      python -m cxrkit train PNG_DIR SAMPLE/train.csv --out runs/det/f$f --epochs 8 --size 128 --folds 3 --fold $f
      python -m cxrkit train-classifier PNG_DIR SAMPLE/train.csv --out runs/cls/f$f --epochs 8 --size 128 --folds 3 --fold $f
    done
    python scripts/no_finding_numbers.py SAMPLE PNG_DIR --detectors runs/det/f* --classifiers runs/cls/f*

It prints the classifier's AUC (out-of-fold and on the test set), the bands
:func:`cxrkit.postprocess.tune_bands` chooses on the out-of-fold predictions, and
on the test set (``SAMPLE/test_labels.csv``) the mAP@0.4 of the first fold's
detector alone, with the classifier (tuned bands, and soft), of the fold ensemble
(WBF) and of the ensemble with the classifier: each with a 90 % paired-bootstrap
interval, its gain over the detector alone and the class-14 (No finding) AP.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from cxrkit.annotations import fuse_boxes, load_annotations, load_meta
from cxrkit.classifier import abnormal_labels, classify, roc_auc
from cxrkit.data import join_out_of_fold
from cxrkit.ensemble import fuse_tables
from cxrkit.labels import NO_FINDING_ID
from cxrkit.metrics import bootstrap_map, vinbigdata_map
from cxrkit.postprocess import apply_classifier, tune_bands
from cxrkit.predict import predict_split
from cxrkit.submission import add_no_finding


def read_oof(runs: list[Path], image_ids: list[str]) -> pd.DataFrame:
    tables = [pd.read_csv(run / "oof.csv", dtype={"image_id": str}) for run in runs]
    return join_out_of_fold(tables, image_ids=image_ids).drop(columns="fold")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sample", type=Path, help="data folder with train.csv, test_labels.csv")
    parser.add_argument("png_dir", type=Path, help="its preprocessed folder")
    parser.add_argument("--detectors", type=Path, nargs="+", required=True, help="fold runs")
    parser.add_argument("--classifiers", type=Path, nargs="+", required=True, help="fold runs")
    parser.add_argument("--n-boot", type=int, default=300, help="bootstrap draws (default 300)")
    args = parser.parse_args()

    meta = load_meta(args.png_dir / "train_meta.csv")
    train_truth = fuse_boxes(load_annotations(args.sample / "train.csv"), meta)
    train_ids = list(meta["image_id"].astype(str))
    oof_det = read_oof(args.detectors, train_ids)
    oof_cls = read_oof(args.classifiers, train_ids)
    print(
        "out-of-fold classifier AUC", round(roc_auc(oof_cls["abnormal"], oof_cls["p_abnormal"]), 4)
    )
    probs_oof = oof_cls[["image_id", "p_abnormal"]]
    choice = tune_bands(oof_det, probs_oof, train_truth, image_ids=train_ids, n_boot=args.n_boot)
    print("bands tuned out-of-fold:", choice)

    test_truth = load_annotations(args.sample / "test_labels.csv")
    preds, ids, test_meta = [], [], None
    for run in args.detectors:
        table, ids, test_meta = predict_split(run / "best.pt", args.png_dir, "test")
        preds.append(table)
    probs = classify([run / "best.pt" for run in args.classifiers], args.png_dir)
    y = abnormal_labels(test_truth).reindex(probs["image_id"])
    print(f"test classifier AUC ({len(args.classifiers)} folds averaged)", end=" ")
    print(round(roc_auc(y, probs["p_abnormal"]), 4))
    ensemble = fuse_tables(preds, test_meta, ids)
    low, high = choice.low, choice.high
    tables = {
        "detector alone (fold 0)": add_no_finding(preds[0], ids),
        "+ classifier (bands)": apply_classifier(preds[0], probs, low, high, image_ids=ids),
        "+ classifier (soft)": apply_classifier(preds[0], probs, mode="soft", image_ids=ids),
        f"fold ensemble ({len(preds)}, WBF)": add_no_finding(ensemble, ids),
        "fold ensemble + classifier": apply_classifier(ensemble, probs, low, high, image_ids=ids),
    }
    boot = bootstrap_map(tables, test_truth, ids, n_boot=args.n_boot, seed=0)
    base = boot["detector alone (fold 0)"]
    rows = []
    for name, table in tables.items():
        result = vinbigdata_map(table, test_truth, image_ids=ids)
        gain = boot[name] - base
        rows.append(
            {
                "setting": name,
                "mAP@0.4": result.map,
                "q05": boot[name].quantile(0.05),
                "q95": boot[name].quantile(0.95),
                "AP No finding": result.ap.get(NO_FINDING_ID, np.nan),
                "gain q05": gain.quantile(0.05),
                "gain q95": gain.quantile(0.95),
            }
        )
    with pd.option_context("display.width", 200):
        print(pd.DataFrame(rows).round(4).to_string(index=False))


if __name__ == "__main__":
    main()
