"""Detectors of two families, fused: does the ensemble beat the best single model?

Each small model trains with ``python -m cxrkit train DATA TRAIN.csv --model M``
and no other option (its size, sampling and epochs chosen from the data and the
10-minute CPU budget), all with the same seed, so they validate on the same
images. ``python -m cxrkit tune-fusion`` then chooses the WBF weights, IoU and
skip threshold on those out-of-fold validation images, and every model, the
untuned fusion (predict's defaults) and the tuned fusion (``predict --fusion``)
predict the test split. The test images score each (mAP@0.4 and per-class AP),
with a 90 % paired bootstrap interval (1000 draws of the test images) for the gain
of the tuned fusion over the single model that scored best *out of fold* (the
choice a user could make without the test labels)::

    python benchmarks/bench_families.py --work bench-sample --datasets sample small_thin
    python benchmarks/bench_families.py --work bench-heldout --datasets heldout-1

Datasets are those of ``bench_defaults.py``. A run folder that holds a
``best.pt`` already is reused (``--retrain`` trains again), e.g. the
``cxr_small`` runs of ``bench_defaults.py``, named ``DATASET-default`` there:
``--reuse cxr_small=default`` reads those. Each training takes up to its
10-minute budget; nothing else should run meanwhile.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from bench_defaults import cxrkit, prepare
from notebook_spread import cpu_model

from cxrkit.labels import CLASS_NAMES
from cxrkit.metrics import bootstrap_map, vinbigdata_map
from cxrkit.submission import parse_submission


def train(work: Path, data: Path, dataset: str, model: str, run_name: str, retrain: bool) -> dict:
    """Train ``model`` with no option but ``--model`` (or reuse the run); what it chose."""
    run = work / "runs" / f"{dataset}-{run_name}"
    log = run.with_suffix(".log")
    seconds = None
    if retrain or not (run / "best.pt").is_file():
        run.parent.mkdir(parents=True, exist_ok=True)
        seconds = cxrkit(
            "train", data / "png", data / "train.csv", "--out", run, "--overwrite",
            "--model", model, log=log,
        )  # fmt: skip
    chosen = [line for line in log.read_text().splitlines() if line.startswith(("input", "epochs"))]
    history = pd.read_csv(run / "history.csv")
    return {
        "run": run, "model": model, "train_s": None if seconds is None else round(seconds),
        "epochs": len(history), "chosen": " | ".join(line.split(":")[0] for line in chosen),
    }  # fmt: skip


def score(submission: Path, truth: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """The submission's table and its mAP@0.4 with the per-class AP."""
    table = parse_submission(submission)
    result = vinbigdata_map(table, truth)
    return table, {"mAP@0.4": result.map, **{CLASS_NAMES[c]: ap for c, ap in result.ap.items()}}


def run_dataset(work: Path, dataset: str, models: list[str], reuse: dict, retrain: bool) -> list:
    """Train, tune out of fold, predict and score one dataset; its table rows."""
    data = prepare(work, dataset)
    truth = pd.read_csv(data / "test_labels.csv")
    runs = [train(work, data, dataset, m, reuse.get(m, m), retrain) for m in models]
    fusion = work / "runs" / f"{dataset}-fusion.json"
    tune_log = fusion.with_suffix(".log")
    cxrkit("tune-fusion", *[r["run"] for r in runs], "--out", fusion, log=tune_log)
    settings = json.loads(fusion.read_text())
    oof = dict(zip(models, settings["single_maps"], strict=True))
    best_single = max(oof, key=oof.get)
    tables, rows = {}, []
    outputs = {
        m: (["--nms", "0.3"], [r["run"] / "best.pt"]) for m, r in zip(models, runs, strict=True)
    }
    checkpoints = [r["run"] / "best.pt" for r in runs]
    outputs["fusion, untuned"] = ([], checkpoints)
    outputs["fusion, tuned out of fold"] = (["--fusion", fusion], checkpoints)
    for name, (options, ckpts) in outputs.items():
        submission = work / "runs" / f"{dataset}-{name.replace(' ', '_').replace(',', '')}.csv"
        cxrkit("predict", *ckpts, data / "png", "--out", submission, *options)
        tables[name], result = score(submission, truth)
        single = next((r for r in runs if r["model"] == name), {})
        rows.append({
            "dataset": dataset, "predictor": name, "train_s": single.get("train_s"),
            "epochs": single.get("epochs"), "oof mAP": oof.get(name, settings["oof_map"]
            if "tuned" in name else None), **result,
        })  # fmt: skip
    draws = bootstrap_map(tables, truth, n_boot=1000, seed=0)
    for row in rows:
        gain = draws[row["predictor"]] - draws[best_single]
        row[f"gain vs {best_single}"] = row["mAP@0.4"] - rows[models.index(best_single)]["mAP@0.4"]
        row["gain 90% CI"] = f"[{np.quantile(gain, 0.05):+.3f}, {np.quantile(gain, 0.95):+.3f}]"
        row["gain vs best single"] = row.pop(f"gain vs {best_single}")
    print(f"{dataset}: tuned {json.dumps({k: settings[k] for k in ('weights', 'iou_thr', 'skip_box_thr')})}; "
          f"best single out of fold: {best_single}", flush=True)  # fmt: skip
    for r in runs:
        print(f"  {r['model']}: {r['epochs']} epochs, {r['chosen']}", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("bench-families"), help="scratch folder")
    parser.add_argument("--datasets", nargs="+", default=["sample", "small_thin"])
    parser.add_argument("--models", nargs="+", default=["cxr_small", "fcos_small"])
    parser.add_argument(
        "--reuse", nargs="*", default=[], metavar="MODEL=NAME",
        help="read MODEL's runs from DATASET-NAME (e.g. cxr_small=default, bench_defaults' runs)",
    )  # fmt: skip
    parser.add_argument("--retrain", action="store_true", help="train even if a run exists")
    args = parser.parse_args()
    reuse = dict(item.split("=", 1) for item in args.reuse)
    print(f"CPU: {cpu_model()}, {os.cpu_count()} logical cores, torch {torch.__version__} "
          f"with {torch.get_num_threads()} threads", flush=True)  # fmt: skip
    rows = []
    for dataset in args.datasets:
        rows += run_dataset(args.work, dataset, args.models, reuse, args.retrain)
    table = pd.DataFrame(rows)
    table.to_csv(args.work / "families.csv", index=False)
    with pd.option_context("display.width", 250, "display.max_columns", 40):
        print(table.round(3).to_string(index=False))


if __name__ == "__main__":
    main()
