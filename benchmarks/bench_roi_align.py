"""What does cxrkit's RoIAlign (matrix products) buy over torchvision's on a CPU?

One command, two measurements, each against torchvision in the same process::

    python benchmarks/bench_roi_align.py

1. The op alone: 1024 boxes (4 images x 256 sampled ROIs, as ``cxr_small`` trains),
   64 channels, 7x7 bins, 2x2 samples, forward + backward, on square maps of side
   4-64 (the finest ``cxr_small`` level is the input side / 8).
2. A ``cxr_small`` training step (batch 4, synthetic images) at 128, 256 and 384 px
   with ``cxrkit.roi_align.CpuMultiScaleRoIAlign`` and with torchvision's
   ``MultiScaleRoIAlign`` swapped in: the same weights, batches and sampling seeds;
   the two alternate so that drift hits both.

It prints medians, the speed-up, the CPU model and the thread count.
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import time
from pathlib import Path

import torch
from bench_train import bare_loop, make_batches
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops import roi_align as torchvision_roi_align

from cxrkit.models import build_model
from cxrkit.roi_align import CpuMultiScaleRoIAlign, separable_roi_align


def cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def median_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def op_benchmark(repeats: int) -> None:
    print("op: forward + backward, 1024 boxes, 64 channels, 7x7 bins, sampling ratio 2")
    gen = torch.Generator().manual_seed(0)
    for side in (4, 16, 32, 48, 64):
        features = torch.randn(4, 64, side, side, generator=gen, requires_grad=True)
        corner = torch.rand(1024, 2, generator=gen) * side * 8 * 0.8
        extent = torch.rand(1024, 2, generator=gen) * side * 8 * 0.3 + 2
        image = torch.randint(0, 4, (1024, 1), generator=gen).float()
        rois = torch.cat([image, corner, corner + extent], 1)
        upstream = torch.randn(1024, 64, 7, 7, generator=gen)

        def run(op, features=features, rois=rois, upstream=upstream):
            def step():
                features.grad = None
                op(features, rois).backward(upstream)

            return step

        theirs = median_time(
            run(lambda f, r: torchvision_roi_align(f, r, (7, 7), 1 / 8, 2)), repeats
        )
        ours = median_time(run(lambda f, r: separable_roi_align(f, r, 7, 1 / 8, 2)), repeats)
        print(
            f"  map {side:2d}x{side:<2d}  torchvision {theirs * 1e3:7.1f} ms   "
            f"cxrkit {ours * 1e3:7.1f} ms   speed-up {theirs / ours:5.2f}x"
        )


def step_benchmark(size: int, steps: int, repeats: int) -> None:
    torch.manual_seed(0)
    model = build_model("cxr_small", weights=None, min_size=size, max_size=size)
    start_state = copy.deepcopy(model.state_dict())
    batches = make_batches(steps, 4, size)
    poolers = {
        "torchvision": MultiScaleRoIAlign(["0", "1", "2"], 7, 2),
        "cxrkit": CpuMultiScaleRoIAlign(["0", "1", "2"], 7, 2),
    }

    def run(which: str) -> float:
        model.load_state_dict(start_state)
        model.roi_heads.box_roi_pool = poolers[which]
        optimizer = torch.optim.SGD(model.parameters(), lr=0.005, momentum=0.9)
        torch.manual_seed(1)  # the same sampled proposals for both
        start = time.perf_counter()
        bare_loop(model, optimizer, batches, torch.device("cpu"))
        return (time.perf_counter() - start) / steps

    run("torchvision")  # warm-up
    times: dict[str, list[float]] = {"torchvision": [], "cxrkit": []}
    for r in range(repeats):
        for which in ("torchvision", "cxrkit") if r % 2 == 0 else ("cxrkit", "torchvision"):
            times[which].append(run(which))
    theirs, ours = statistics.median(times["torchvision"]), statistics.median(times["cxrkit"])
    print(
        f"  {size} px: torchvision pooler {theirs * 1e3:7.1f} ms/step   "
        f"cxrkit {ours * 1e3:7.1f} ms/step   speed-up {theirs / ours:5.2f}x"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per setting")
    parser.add_argument("--steps", type=int, default=5, help="training steps per run")
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256, 384])
    args = parser.parse_args()
    print(f"{cpu_model()}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    op_benchmark(args.repeats)
    print(f"cxr_small training step, batch 4, median of {args.repeats} x {args.steps} steps")
    for size in args.sizes:
        step_benchmark(size, args.steps, args.repeats)


if __name__ == "__main__":
    main()
