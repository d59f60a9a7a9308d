"""What the ``gpu`` profile gives on a real GPU: AMP's speed-up, and notebook 04 end to end.

::

    python benchmarks/gpu_check.py                  # both parts (about 5 minutes on an H100)
    python benchmarks/gpu_check.py --skip-notebook  # the step times only

1. **Step time**: ``fasterrcnn_resnet50_fpn`` (``weights=None``, no download) at
   512 px (``min_size=max_size=512``), batch 8, random images with a few boxes
   (``bench_train.make_batches``), trained through :func:`cxrkit.engine.train_one_epoch`
   in float32 and with AMP (``torch.autocast`` + ``GradScaler``): median ms per
   step, images/s, the speed-up and the peak GPU memory of each (the batch-size
   table of :mod:`cxrkit.profiles` assumes about 1 GiB per image under AMP).
2. **Notebook 04 under the gpu profile**, one epoch on the generated sample: a copy
   of the notebook whose profile line becomes
   ``replace(cxrkit.choose_profile("gpu", ...), epochs=1)``, executed in a temporary
   folder (figures and cache stay there, the checkout is not touched). Prints the
   profile the notebook chose, each cell that failed (a ``check_range`` band measured
   for ``cxr_small`` may not hold for one resnet50 epoch: that is a finding, not a
   crash of this script) and the wall time.

Without a CUDA device it says so and exits with status 1 before doing anything.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "04_training.ipynb"
PROFILE_LINE = "PROFILE = cxrkit.choose_profile(data_dir=DATA)"
ONE_EPOCH_LINE = (
    "import dataclasses\n"
    'PROFILE = dataclasses.replace(cxrkit.choose_profile("gpu", data_dir=DATA), epochs=1)'
)


def require_cuda() -> torch.device:
    """The first CUDA device, or exit with a message that says why nothing ran."""
    if not torch.cuda.is_available():
        build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "CPU-only"
        raise SystemExit(
            f"gpu_check: no CUDA device (torch {torch.__version__}, {build} build; "
            "torch.cuda.is_available() is False). Nothing was measured: run it on a machine "
            "with an NVIDIA GPU (e.g. a Kaggle GPU notebook)."
        )
    return torch.device("cuda:0")


def step_times(device: torch.device, batch_size: int, size: int, steps: int) -> dict:
    """Median seconds per training step and peak memory, float32 against AMP."""
    sys.path.insert(0, str(Path(__file__).parent))
    from bench_train import make_batches

    from cxrkit.engine import train_one_epoch
    from cxrkit.models import build_model

    torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    model = build_model("fasterrcnn_resnet50_fpn", weights=None, min_size=size, max_size=size).to(
        device
    )
    start_state = copy.deepcopy(model.state_dict())
    batches = make_batches(steps, batch_size, size)
    results: dict[str, dict] = {}
    for mode in ("fp32", "amp", "fp32", "amp"):  # the second round is the one kept
        model.load_state_dict(start_state)
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.SGD(params, lr=0.005, momentum=0.9, weight_decay=0.0005)
        scaler = torch.amp.GradScaler("cuda") if mode == "amp" else None
        train_one_epoch(model, optimizer, batches[:3], device, 0, scaler=scaler)  # warm-up
        torch.cuda.reset_peak_memory_stats(device)
        per_step = []
        for batch in batches:
            torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            train_one_epoch(model, optimizer, [batch], device, 1, scaler=scaler)
            torch.cuda.synchronize(device)
            per_step.append(time.perf_counter() - t0)
        results[mode] = {
            "step_s": statistics.median(per_step),
            "peak_gib": torch.cuda.max_memory_allocated(device) / 2**30,
        }
    return results


def run_notebook_one_epoch(timeout: int) -> None:
    """Execute a copy of notebook 04 under the gpu profile for one epoch; report failures."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(NOTEBOOK, as_version=4)
    cells = [c for c in nb.cells if c.cell_type == "code" and PROFILE_LINE in c.source]
    if len(cells) != 1:
        raise SystemExit(f"gpu_check: {NOTEBOOK.name} has no line {PROFILE_LINE!r} to change")
    cells[0].source = cells[0].source.replace(PROFILE_LINE, ONE_EPOCH_LINE)
    with tempfile.TemporaryDirectory(prefix="cxrkit-gpu-check-") as tmp:
        os.environ["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])
        )
        os.environ.setdefault("CXRKIT_CACHE", str(Path(tmp) / "cache"))
        os.environ["CXRKIT_WORK"] = str(Path(tmp) / "work")  # a fresh run, never a resume
        client = NotebookClient(
            nb, timeout=timeout, allow_errors=True, resources={"metadata": {"path": tmp}}
        )
        t0 = time.perf_counter()
        client.execute()
        seconds = time.perf_counter() - t0
    failed = []
    for number, cell in enumerate(nb.cells, start=1):
        for output in cell.get("outputs", []):
            if output.get("output_type") == "error":
                failed.append(f"cell {number}: {output['ename']}: {output['evalue'][:200]}")
            elif ONE_EPOCH_LINE in cell.source and output.get("output_type") == "stream":
                print(output["text"].rstrip())  # the profile, as the notebook printed it
    print(f"notebook 04, gpu profile, 1 epoch on the sample: {seconds:.0f} s")
    print(f"  {len(failed)} cell(s) failed" + "".join(f"\n  {line}" for line in failed))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per mode")
    parser.add_argument("--skip-notebook", action="store_true")
    parser.add_argument("--timeout", type=int, default=1200, help="seconds per notebook cell")
    args = parser.parse_args()
    device = require_cuda()
    name = torch.cuda.get_device_name(device)
    total = torch.cuda.get_device_properties(device).total_memory / 2**30
    print(f"device: {name}, {total:.0f} GiB; torch {torch.__version__}")
    res = step_times(device, args.batch_size, args.size, args.steps)
    fp32, amp = res["fp32"], res["amp"]
    print(
        f"fasterrcnn_resnet50_fpn, {args.size} px, batch {args.batch_size}, "
        f"median of {args.steps} steps"
    )
    for mode, r in (("float32", fp32), ("AMP", amp)):
        rate = args.batch_size / r["step_s"]
        print(
            f"  {mode:8s} {r['step_s'] * 1000:7.1f} ms/step  {rate:6.1f} images/s  "
            f"peak {r['peak_gib']:.1f} GiB"
        )
    print(f"  AMP speed-up {fp32['step_s'] / amp['step_s']:.2f}x")
    if not args.skip_notebook:
        run_notebook_one_epoch(args.timeout)


if __name__ == "__main__":
    main()
