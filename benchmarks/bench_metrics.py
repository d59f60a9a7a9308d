"""Time cxrkit.metrics.vinbigdata_map on a test-set-sized problem.

3,000 images x 20 predictions (the size of the VinBigData test set), scored by
``vinbigdata_map`` and, in the same process on the same tables, by ZFTurbo's
``map-boxes`` (``pip install map-boxes``; skipped if absent). Prints both times,
their ratio and the two mAPs, which must agree: each image's rows are written in
descending score, the order in which map-boxes' conventions coincide with VOC.

    python benchmarks/bench_metrics.py [--images 3000] [--per-image 20] [--no-reference]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import time

import numpy as np
import pandas as pd

from cxrkit.labels import CLASS_NAMES, NO_FINDING_ID
from cxrkit.metrics import vinbigdata_map

BOX = ["x_min", "y_min", "x_max", "y_max"]


def make_case(n_images: int, per_image: int, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Fused-style truth (~70 % normal images) and predictions in original pixels."""
    rng = np.random.default_rng(seed)
    ids = np.array([f"{k:032x}" for k in range(n_images)])
    abnormal = rng.random(n_images) < 0.3
    n_find = np.where(abnormal, rng.integers(1, 6, n_images), 0)
    t_img = np.repeat(ids, n_find)
    xy = rng.uniform(0, 2000, (len(t_img), 2))
    wh = rng.uniform(50, 800, (len(t_img), 2))
    truth = pd.DataFrame({"image_id": t_img, "class_id": rng.integers(0, 14, len(t_img))})
    truth[BOX] = np.hstack([xy, xy + wh])
    normal = pd.DataFrame({"image_id": ids[~abnormal], "class_id": NO_FINDING_ID})
    truth = pd.concat([truth, normal], ignore_index=True)
    truth["class_name"] = [CLASS_NAMES[c] for c in truth["class_id"]]
    truth["rad_id"] = "wbf"

    n_pred = n_images * per_image
    p_img = np.repeat(ids, per_image)
    # half the predictions jitter a truth box of a random image, half are random
    src = rng.integers(0, len(t_img), n_pred)
    base = truth[BOX].to_numpy()[src]
    boxes = base + rng.normal(0, 40, (n_pred, 4))
    rand_xy = rng.uniform(0, 2000, (n_pred, 2))
    rand = np.hstack([rand_xy, rand_xy + rng.uniform(50, 800, (n_pred, 2))])
    use_rand = rng.random(n_pred) < 0.5
    boxes[use_rand] = rand[use_rand]
    cls = np.where(use_rand, rng.integers(0, 14, n_pred), truth["class_id"].to_numpy()[src])
    preds = pd.DataFrame({"image_id": p_img, "class_id": cls, "score": rng.random(n_pred)})
    preds["score"] = preds["score"].astype(np.float32).astype(np.float64)
    preds[BOX] = boxes
    # make the jittered ones land on their own image, as a detector's would
    preds.loc[~use_rand, "image_id"] = t_img[src[~use_rand]]
    # ... and one No finding prediction per image
    nf = pd.DataFrame({"image_id": ids, "class_id": NO_FINDING_ID, "score": rng.random(n_images)})
    nf[BOX] = [0.0, 0.0, 1.0, 1.0]
    preds = pd.concat([preds, nf], ignore_index=True)
    order = {i: k for k, i in enumerate(pd.unique(truth["image_id"]))}
    preds = preds.assign(_i=preds["image_id"].map(order), _s=-preds["score"])
    preds = preds.sort_values(["_i", "_s"], kind="stable").drop(columns=["_i", "_s"])
    return preds.reset_index(drop=True), truth


def reference(preds: pd.DataFrame, truth: pd.DataFrame, iou_thr: float = 0.4) -> float:
    with contextlib.redirect_stdout(io.StringIO()):  # it prints a Cython warning
        from map_boxes import mean_average_precision_for_boxes
    ann = truth.assign(class_id=truth["class_id"].astype(str))
    nf = ann["class_id"] == str(NO_FINDING_ID)
    ann.loc[nf, BOX] = [0.0, 0.0, 1.0, 1.0]
    ann = ann[["image_id", "class_id", "x_min", "x_max", "y_min", "y_max"]].to_numpy()
    det = preds.assign(class_id=preds["class_id"].astype(str))
    det = det[["image_id", "class_id", "score", "x_min", "x_max", "y_min", "y_max"]].to_numpy()
    m, _ = mean_average_precision_for_boxes(ann, det, iou_threshold=iou_thr, verbose=False)
    return float(m)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=3000)
    ap.add_argument("--per-image", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--no-reference", action="store_true")
    args = ap.parse_args()

    preds, truth = make_case(args.images, args.per_image)
    print(f"{args.images} images, {len(preds)} predictions, {len(truth)} truth rows")
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        res = vinbigdata_map(preds, truth)
        times.append(time.perf_counter() - t0)
    ours = min(times)
    print(f"cxrkit.metrics : {ours:.3f} s (best of {args.repeats})  mAP={res.map:.6f}")
    if args.no_reference:
        return
    try:
        t0 = time.perf_counter()
        ref_map = reference(preds, truth)
        ref = time.perf_counter() - t0
    except ImportError:
        print("map-boxes not installed: pip install map-boxes")
        return
    print(f"map-boxes      : {ref:.3f} s  mAP={ref_map:.6f}")
    print(f"speed-up {ref / ours:.0f}x, |difference| = {abs(ref_map - res.map):.2e}")


if __name__ == "__main__":
    main()
