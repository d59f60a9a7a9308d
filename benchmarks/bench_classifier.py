"""How much does cxrkit's classifier training step cost over a bare loop?

::

    python benchmarks/bench_classifier.py                    # cls_small, 256 px, batch 16
    python benchmarks/bench_classifier.py --model resnet18 --size 224

times a bare loop (below) against the epoch of :func:`cxrkit.classifier.train_classifier`
(:func:`cxrkit.engine.train_one_epoch` with the classifier's batch losses: progress
bar, Averager, the AMP switch, the non-finite-loss check) on the *same* model,
batches and seeds: the model and optimizer states are restored before each timed
run and the two alternate in ABBA order, so that drift and whichever runs second
(measured: the second of two back-to-back runs is slower on a shared CPU) hit both. It prints the median time per
step of each and the overhead in percent (target: at most 5 %)::

    for images, labels, _ in loader:
        loss = loss_fn(model(images).squeeze(1), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

Data are synthetic (random images and labels in memory), so the benchmark measures
the loop and the model, not disk or PNG decoding.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time

os.environ.setdefault("TQDM_DISABLE", "1")  # a bar per run would flood the output

import torch
from torch import nn

from cxrkit.classifier import build_classifier, classifier_losses
from cxrkit.engine import train_one_epoch


def make_batches(n_batches: int, batch_size: int, size: int, seed: int = 0) -> list[tuple]:
    """Batches ``(images, labels, image_ids)`` as the classifier's DataLoader yields them."""
    g = torch.Generator().manual_seed(seed)
    return [
        (
            torch.randn(batch_size, 3, size, size, generator=g),
            (torch.rand(batch_size, generator=g) < 0.3).float(),
            [f"img{b}_{i}" for i in range(batch_size)],
        )
        for b in range(n_batches)
    ]


def bare_epoch(model, batches, optimizer, loss_fn) -> None:
    model.train()
    for images, labels, _ in batches:
        loss = loss_fn(model(images).squeeze(1), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="cls_small", help="classifier name (default cls_small)")
    parser.add_argument("--size", type=int, default=256, help="image side (default 256)")
    parser.add_argument("--batch-size", type=int, default=16, help="images per step (default 16)")
    parser.add_argument("--steps", type=int, default=8, help="steps per timed run (default 8)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs of each (default 5)")
    args = parser.parse_args()

    torch.manual_seed(0)
    model = build_classifier(args.model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=torch.tensor(2.0))
    batches = make_batches(args.steps, args.batch_size, args.size)
    start_model = copy.deepcopy(model.state_dict())
    start_opt = copy.deepcopy(optimizer.state_dict())
    device = torch.device("cpu")
    losses = classifier_losses(loss_fn)

    def reset() -> None:
        model.load_state_dict(start_model)
        optimizer.load_state_dict(start_opt)
        torch.manual_seed(0)

    reset()
    bare_epoch(model, batches[:2], optimizer, loss_fn)  # warm-up (allocator, kernels)
    times: dict[str, list[float]] = {"bare": [], "cxrkit": []}
    for repeat in range(args.repeats):
        order = ("bare", "cxrkit") if repeat % 2 == 0 else ("cxrkit", "bare")  # ABBA: no favourite
        for name in order:
            reset()
            t0 = time.perf_counter()
            if name == "bare":
                bare_epoch(model, batches, optimizer, loss_fn)
            else:
                train_one_epoch(model, optimizer, batches, device, 1, batch_losses=losses)
            times[name].append((time.perf_counter() - t0) / args.steps)
    bare = statistics.median(times["bare"])
    ours = statistics.median(times["cxrkit"])
    print(
        f"{args.model}, {args.size} px, batch {args.batch_size}, {args.steps} steps x {args.repeats}"
    )
    print(f"bare loop      {bare * 1000:8.1f} ms/step")
    print(f"cxrkit         {ours * 1000:8.1f} ms/step")
    print(f"overhead       {100 * (ours / bare - 1):+8.1f} % (target <= 5 %)")


if __name__ == "__main__":
    main()
