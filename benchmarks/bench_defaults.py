"""What does ``python -m cxrkit train`` give with no options? Measured on data nobody tuned on.

The defaults of ``train`` are chosen from the data and a time budget (input size
from the small boxes, repeat factor sampling for rare classes, the epochs that fit
10 minutes on a CPU). This benchmark runs the command exactly as a user would,
``sample`` -> ``preprocess`` -> ``train`` -> ``predict``, and scores the test
split with the competition metric, per class, against the defaults cxrkit had
before (``--size 256 --epochs 10 --repeat-threshold off``), with a paired bootstrap
interval of the difference on the same test images. Each run is also scored with
``predict --nms 0.5`` (the model's own NMS only, what ``predict`` did before)::

    python benchmarks/bench_defaults.py --datasets heldout-1 heldout-2 heldout-3
    python benchmarks/bench_defaults.py --datasets sample small_thin --configs default before

Datasets (made by ``python -m cxrkit sample``):

- ``heldout-S``: 160 training and 60 test images, seed S, six findings (Aortic
  enlargement, Cardiomegaly, Lung Opacity, Nodule/Mass, Pleural effusion, Pleural
  thickening) drawn as the ``small_thin`` variant (nodules 3-6 % of the image side,
  pleural bands about 2 % wide). The defaults were tuned on seed 100 only.
- ``sample``: the notebooks' sample (200 training, 50 test images, seed 0).
- ``small_thin``: the same plan with small nodules and thin bands.

Every run prints what it chose (the ``train`` log is kept beside the run). The
table goes to ``WORK/results.csv`` and is printed with the CPU and thread count.
Each default run takes up to its 10-minute budget: three held-out draws take about
35 minutes on 2 cores, and nothing else should run meanwhile (the budget is
measured on this machine's speed, so a loaded machine plans fewer epochs).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from notebook_spread import cpu_model

from cxrkit.labels import CLASS_NAMES
from cxrkit.metrics import bootstrap_map, vinbigdata_map
from cxrkit.submission import parse_submission

HELDOUT_FINDINGS = "0,3,7,8,10,11"
CONFIGS: dict[str, list[str]] = {
    "default": [],  # what a user types: no option at all
    "before": ["--size", "256", "--epochs", "10", "--repeat-threshold", "off"],
}


def dataset_options(name: str) -> list[str]:
    """``python -m cxrkit sample`` options of a dataset name."""
    if name.startswith("heldout-"):
        seed = name.split("-", 1)[1]
        return [
            "--seed", seed, "--n-train", "160", "--n-test", "60",
            "--variant", "small_thin", "--findings", HELDOUT_FINDINGS,
        ]  # fmt: skip
    if name == "sample":
        return ["--seed", "0"]
    if name == "small_thin":
        return ["--seed", "0", "--variant", "small_thin"]
    raise SystemExit(f"unknown dataset {name!r}: heldout-SEED, sample or small_thin")


def cxrkit(*args: str | Path, log: Path | None = None) -> float:
    """Run ``python -m cxrkit ARGS`` (output to ``log``); its seconds. Fails loudly."""
    start = time.perf_counter()
    env = {**os.environ, "TQDM_DISABLE": "1"}
    command = [sys.executable, "-m", "cxrkit", *map(str, args)]
    with open(log or os.devnull, "w") as out:
        done = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    if done.returncode != 0:
        raise SystemExit(f"failed ({done.returncode}): {' '.join(command)}; see {log}")
    return time.perf_counter() - start


def prepare(work: Path, name: str) -> Path:
    """The dataset's folder with its PNGs (made once)."""
    data = work / "data" / name
    if not (data / "train.csv").is_file():
        cxrkit("sample", data, *dataset_options(name))
    if not (data / "png" / "test_meta.csv").is_file():
        cxrkit("preprocess", data, data / "png")
    return data


def run_one(work: Path, name: str, config: str) -> tuple[dict, pd.DataFrame]:
    """Train with ``config``'s options, predict the test split, score it per class."""
    data = prepare(work, name)
    run = work / "runs" / f"{name}-{config}"
    log = run.with_suffix(".log")
    run.parent.mkdir(parents=True, exist_ok=True)
    options = CONFIGS[config]
    seconds = cxrkit(
        "train", data / "png", data / "train.csv", "--out", run, "--overwrite", *options, log=log
    )
    submission = run / "submission.csv"
    cxrkit("predict", run / "best.pt", data / "png", "--out", submission)
    truth = pd.read_csv(data / "test_labels.csv")
    predictions = parse_submission(submission)
    result = vinbigdata_map(predictions, truth)
    # the same run with the model's own NMS only (what predict did before --nms 0.3)
    cxrkit("predict", run / "best.pt", data / "png", "--out", run / "nms05.csv", "--nms", "0.5")
    at_05 = vinbigdata_map(parse_submission(run / "nms05.csv"), truth)
    chosen = [line for line in log.read_text().splitlines() if line.startswith(("input", "epochs"))]
    row = {
        "dataset": name, "config": config, "train_s": round(seconds), "mAP@0.4": result.map,
        "mAP, NMS 0.5": at_05.map, "Pleural thickening, NMS 0.5": at_05.ap.get(11),
        **{CLASS_NAMES[c]: ap for c, ap in sorted(result.ap.items())},
        "chosen": " | ".join(line.split(":")[0] for line in chosen),
    }  # fmt: skip
    print(f"{name} {config}: mAP {result.map:.3f} in {seconds:.0f} s ({row['chosen']})", flush=True)
    return row, predictions


def paired_interval(
    tables: dict[str, pd.DataFrame], truth: pd.DataFrame, a: str, b: str
) -> tuple[float, float]:
    """95 % paired bootstrap interval of mAP(a) - mAP(b) on the same test images."""
    draws = bootstrap_map(tables, truth, n_boot=500, seed=0)
    diff = draws[a] - draws[b]
    return float(np.quantile(diff, 0.025)), float(np.quantile(diff, 0.975))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("bench-defaults"), help="scratch folder")
    parser.add_argument("--datasets", nargs="+", default=["heldout-1", "heldout-2", "heldout-3"])
    parser.add_argument("--configs", nargs="+", default=["default"], choices=sorted(CONFIGS))
    args = parser.parse_args()
    print(f"CPU: {cpu_model()}, {os.cpu_count()} logical cores, torch {torch.__version__} "
          f"with {torch.get_num_threads()} threads", flush=True)  # fmt: skip
    rows, predictions = [], {}
    for name in args.datasets:
        for config in args.configs:
            row, predictions[name, config] = run_one(args.work, name, config)
            rows.append(row)
    table = pd.DataFrame(rows)
    if len(args.configs) == 2:
        a, b = args.configs
        for name in args.datasets:
            truth = pd.read_csv(args.work / "data" / name / "test_labels.csv")
            low, high = paired_interval(
                {a: predictions[name, a], b: predictions[name, b]}, truth, a, b
            )
            table.loc[table["dataset"] == name, f"{a}-{b} 95% CI"] = f"[{low:+.3f}, {high:+.3f}]"
    table.to_csv(args.work / "results.csv", index=False)
    classes = [c for c in CLASS_NAMES if c in table]
    with pd.option_context("display.width", 200, "display.max_columns", 30):
        print(table.drop(columns=["chosen"]).round(3).to_string(index=False))
        if args.configs == ["default"] or "default" in args.configs:
            ours = table[table["config"] == "default"]
            print(f"\ndefault: mean mAP {ours['mAP@0.4'].mean():.3f} over {len(ours)} datasets; "
                  f"lowest class mean AP {ours[classes].mean().min():.3f} "
                  f"({ours[classes].mean().idxmin()}); longest run {ours['train_s'].max()} s")  # fmt: skip


if __name__ == "__main__":
    main()
