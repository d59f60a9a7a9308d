"""Before/after: the step costs of this checkout against an earlier commit, in one run.

::

    python benchmarks/compare_versions.py fcec228          # the commit before the registry

checks out ``REV`` into a temporary git worktree and runs, in ABBA order (base,
this tree, this tree, base: drift on a shared CPU hits both alike), each tree's
own ``bench_train.py`` (a cxr_small training step and a predict batch, each
against the bare loop in the same process) and ``bench_classifier.py`` (a
classifier step). It prints the median milliseconds of cxrkit's step in each
tree and their ratio (this tree / base: 1.00 is "no change"), with the CPU model
and the thread count. Each tree imports its own ``cxrkit`` (``PYTHONPATH``).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from notebook_spread import cpu_model  # the CPU's name, as every benchmark prints it

ROOT = Path(__file__).resolve().parents[1]
# what each benchmark prints: (label, cxrkit's line, the bare loop's line in the same process)
MEASURES = [
    (
        "detector train step (cxr_small)",
        r"cxrkit train_one_ep\s+([\d.]+) ms",
        r"seed bare loop\s+([\d.]+) ms",
    ),
    (
        "detector predict batch",
        r"cxrkit predict\s+([\d.]+) ms",
        r"bare model\(images\)\s+([\d.]+) ms",
    ),
    ("classifier train step (cls_small)", r"^cxrkit\s+([\d.]+) ms", r"^bare loop\s+([\d.]+) ms"),
]
SCRIPTS = ("bench_train.py", "bench_classifier.py")


def run_benchmarks(tree: Path) -> str:
    """The output of both benchmark scripts of ``tree``, run with that tree's cxrkit."""
    env = {**os.environ, "PYTHONPATH": str(tree), "TQDM_DISABLE": "1"}
    out = []
    for script in SCRIPTS:
        proc = subprocess.run(
            [sys.executable, str(tree / "benchmarks" / script)],
            cwd=tree,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        out.append(proc.stdout)
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rev", help="the earlier commit to compare with, e.g. fcec228")
    args = parser.parse_args()
    times: dict[str, dict[str, list[float]]] = {"base": {}, "this": {}}
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "base"
        subprocess.run(
            ["git", "worktree", "add", "-q", "--detach", str(base), args.rev], cwd=ROOT, check=True
        )
        try:
            for which in ("base", "this", "this", "base"):
                text = run_benchmarks(base if which == "base" else ROOT)
                for label, ours, bare in MEASURES:
                    for key, pattern in ((label, ours), (label + " bare", bare)):
                        found = re.search(pattern, text, re.MULTILINE)
                        if found:
                            times[which].setdefault(key, []).append(float(found.group(1)))
        finally:
            subprocess.run(
                ["git", "worktree", "remove", "--force", str(base)], cwd=ROOT, check=True
            )
    print(f"{cpu_model()}, {torch.get_num_threads()} torch threads; base {args.rev} vs this tree")
    print("median ms of cxrkit's step, and its ratio to the bare loop timed in the same process")
    print(f"{'':36s} {'base ms':>8s} {'this ms':>8s} {'base/bare':>10s} {'this/bare':>10s}")
    for label, _, _ in MEASURES:
        row = [statistics.median(times[w].get(k) or [float("nan")]) for w in ("base", "this")
               for k in (label, label + " bare")]  # fmt: skip
        old, old_bare, new, new_bare = row
        print(f"{label:36s} {old:8.1f} {new:8.1f} {old / old_bare:10.2f} {new / new_bare:10.2f}")


if __name__ == "__main__":
    main()
