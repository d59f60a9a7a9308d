"""How much does cxrkit's training loop cost over the seed's bare loop? And what does AMP buy?

Two modes, each one self-contained command that prints its ratio:

CPU overhead (default)::

    python benchmarks/bench_train.py                 # cxr_small, 256 px, batch 4
    python benchmarks/bench_train.py --model fasterrcnn_mobilenet_v3_large_fpn

times the seed notebook's loop (below) against :func:`cxrkit.engine.train_one_epoch`
on the *same* model, batches and seeds (the model state is restored before each
timed run, the two alternate so that drift hits both), and one inference batch
(``model(images)`` under ``no_grad``) against :func:`cxrkit.engine.predict` (which
also maps boxes to original pixels and builds the table). It prints the median
time per step and the overhead in percent (target: at most 5 %)::

    for images, targets, image_ids in train_loader:
        loss_dict = model(images, targets)
        losses = sum(loss_dict.values())
        optimizer.zero_grad()
        losses.backward()
        optimizer.step()
        loss_hist.send(losses.item())

GPU mixed precision::

    python benchmarks/bench_train.py --device cuda --amp

trains ``fasterrcnn_resnet50_fpn`` (``weights=None``: no download) at 800 px with
batch 8 through ``train_one_epoch``, once in float32 and once with
``torch.autocast`` + ``GradScaler``, and prints images/s of both and the AMP
speed-up (target >= 1.8x). PyTorch defaults apply to "float32" (convolutions may
use TF32 on Ampere and newer, matmuls do not). Takes about a minute on an H100.

Data are synthetic (random images with a few boxes each), made in memory, so the
benchmark measures the loops and the model, not disk or DICOM decoding.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import pandas as pd
import torch

from cxrkit.engine import Averager, predict, train_one_epoch
from cxrkit.models import build_model


def make_batches(n_batches: int, batch_size: int, size: int, seed: int = 0) -> list[tuple]:
    """Collated batches ``(images, targets, image_ids)`` like cxrkit's DataLoader yields."""
    g = torch.Generator().manual_seed(seed)
    batches = []
    for b in range(n_batches):
        images, targets, ids = [], [], []
        for i in range(batch_size):
            images.append(torch.rand(3, size, size, generator=g))
            n = int(torch.randint(0, 4, (1,), generator=g))  # 0-3 boxes, some images normal
            xy = torch.rand(n, 2, generator=g) * size * 0.7
            wh = (0.05 + torch.rand(n, 2, generator=g) * 0.25) * size
            boxes = torch.cat([xy, (xy + wh).clamp(max=size)], dim=1)
            labels = torch.randint(1, 15, (n,), generator=g)
            targets.append({"boxes": boxes, "labels": labels})
            ids.append(f"b{b}i{i}")
        batches.append((tuple(images), tuple(targets), tuple(ids)))
    return batches


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bare_loop(model, optimizer, loader, device) -> None:
    """The seed notebook's loop, verbatim apart from moving tensors to the device."""
    loss_hist = Averager()
    model.train()
    for images, targets, _image_ids in loader:
        images = [img.to(device) for img in images]
        targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
        loss_dict = model(images, targets)
        losses = sum(loss_dict.values())
        optimizer.zero_grad()
        losses.backward()
        optimizer.step()
        loss_hist.send(losses.item())


def timed(fn, device: torch.device) -> float:
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


def cpu_overhead(args: argparse.Namespace) -> None:
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = build_model(args.model, weights=None, min_size=args.size, max_size=args.size).to(device)
    start_state = copy.deepcopy(model.state_dict())
    batches = make_batches(args.steps, args.batch_size, args.size)

    def fresh_optimizer():
        params = [p for p in model.parameters() if p.requires_grad]
        return torch.optim.SGD(params, lr=0.005, momentum=0.9, weight_decay=0.0005)

    def run(which: str) -> float:
        model.load_state_dict(start_state)
        optimizer = fresh_optimizer()
        torch.manual_seed(1)  # same RPN/ROI sampling in both loops
        if which == "bare":
            return timed(lambda: bare_loop(model, optimizer, batches, device), device)
        return timed(lambda: train_one_epoch(model, optimizer, batches, device, 1), device)

    run("bare")  # warm-up (allocator, lazy inits)
    times: dict[str, list[float]] = {"bare": [], "cxrkit": []}
    for r in range(args.repeats):
        for which in ("bare", "cxrkit") if r % 2 == 0 else ("cxrkit", "bare"):
            times[which].append(run(which) / args.steps)
    bare, ours = statistics.median(times["bare"]), statistics.median(times["cxrkit"])
    print(
        f"train step ({args.model}, {args.size} px, batch {args.batch_size}, {device}, "
        f"{torch.get_num_threads()} threads, median of {args.repeats} x {args.steps} steps)"
    )
    print(f"  seed bare loop       {bare * 1000:8.1f} ms/step")
    print(f"  cxrkit train_one_ep  {ours * 1000:8.1f} ms/step")
    print(f"  overhead             {100 * (ours / bare - 1):+8.1f} %  (target <= +5 %)")

    # inference: one batch, bare model call vs cxrkit.engine.predict
    images = list(batches[0][0])
    ids = list(batches[0][2])
    dataset = [(img, i, tuple(img.shape[-2:])) for img, i in zip(images, ids, strict=True)]
    meta = pd.DataFrame({"image_id": ids, "dim0": args.size * 4, "dim1": args.size * 4})
    model.load_state_dict(start_state)
    model.eval()

    def bare_infer():
        with torch.no_grad():
            model([img.to(device) for img in images])

    def ours_infer():
        predict(model, dataset, device, meta, batch_size=len(images))

    bare_infer()
    inf: dict[str, list[float]] = {"bare": [], "cxrkit": []}
    for r in range(args.repeats * 2):
        order = (("bare", bare_infer), ("cxrkit", ours_infer))
        for which, fn in order if r % 2 == 0 else order[::-1]:
            inf[which].append(timed(fn, device))
    bare_i, ours_i = statistics.median(inf["bare"]), statistics.median(inf["cxrkit"])
    print(f"inference batch of {len(images)} (median of {args.repeats * 2})")
    print(f"  bare model(images)   {bare_i * 1000:8.1f} ms/batch")
    print(f"  cxrkit predict       {ours_i * 1000:8.1f} ms/batch")
    print(f"  overhead             {100 * (ours_i / bare_i - 1):+8.1f} %  (target <= +5 %)")


def gpu_amp(args: argparse.Namespace) -> None:
    if not torch.cuda.is_available():
        raise SystemExit("--amp needs a CUDA GPU (torch.cuda.is_available() is False)")
    device = torch.device("cuda")
    torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    model = build_model(args.model, weights=None, min_size=args.size, max_size=args.size).to(device)
    start_state = copy.deepcopy(model.state_dict())
    batches = make_batches(args.steps, args.batch_size, args.size)
    results = {}
    for mode in ("fp32", "amp", "fp32", "amp"):  # second round is the measured one
        model.load_state_dict(start_state)
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.SGD(params, lr=0.005, momentum=0.9, weight_decay=0.0005)
        scaler = torch.amp.GradScaler("cuda") if mode == "amp" else None
        train_one_epoch(model, optimizer, batches[:3], device, 0, scaler=scaler)  # warm-up
        torch.manual_seed(1)
        seconds = timed(
            lambda scaler=scaler, optimizer=optimizer: train_one_epoch(
                model, optimizer, batches, device, 1, scaler=scaler
            ),
            device,
        )
        results[mode] = args.steps * args.batch_size / seconds
    name = torch.cuda.get_device_name(device)
    print(f"{args.model}, {args.size} px, batch {args.batch_size}, {args.steps} steps on {name}")
    print(f"  float32  {results['fp32']:7.1f} images/s")
    print(f"  AMP      {results['amp']:7.1f} images/s")
    print(f"  AMP speed-up {results['amp'] / results['fp32']:.2f}x  (target >= 1.8x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--amp", action="store_true", help="GPU: compare float32 with AMP")
    parser.add_argument("--model", default=None)
    parser.add_argument("--size", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None, help="steps per timed run")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.amp:
        args.model = args.model or "fasterrcnn_resnet50_fpn"
        args.size = args.size or 800
        args.batch_size = args.batch_size or 8
        args.steps = args.steps or 20
        gpu_amp(args)
    else:
        args.model = args.model or "cxr_small"
        args.size = args.size or 256
        args.batch_size = args.batch_size or 4
        args.steps = args.steps or 6
        cpu_overhead(args)


if __name__ == "__main__":
    main()
