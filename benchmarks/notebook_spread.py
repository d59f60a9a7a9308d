"""How much do the notebooks' training-derived numbers move between machines?

Notebooks 04-06 train one small model and quote its numbers. Their digits change
with the CPU's instruction set, the thread count and the training seed, so nbval
does not compare them; each such cell calls ``cxrkit.check_range`` with a band
instead. This script measures the spread those bands come from: it executes the
notebooks once per configuration, each from its own empty work folder (so each
trains its own model), with ``CXRKIT_CHECK_LOG`` set so that every
``check_range`` records its value instead of raising, and prints one row per
check with the values, their range and the band written in the notebook.

    python benchmarks/notebook_spread.py                       # the five default runs (about 30 min on 2 cores)
    python benchmarks/notebook_spread.py --configs t1-s42 t2-s0 --root /tmp/spread

A configuration is ``t<threads>-s<seed>``, with ``-avx2`` to limit PyTorch's CPU
kernels to AVX2 (``ATEN_CPU_CAPABILITY``, ``ONEDNN_MAX_CPU_ISA``), which stands
in for an older CPU on a newer one. The sample and the preprocessed PNGs are
shared between runs (they do not depend on training); the runs are kept under
``--root``, so a second call reuses finished trainings and only re-executes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import tempfile
import time
from pathlib import Path

import nbformat
import pandas as pd
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
DEFAULT_CONFIGS = ["t1-s42", "t2-s42", "t4-s42", "t2-s0", "t2-s1-avx2"]
CONFIG = re.compile(r"t(?P<threads>\d+)-s(?P<seed>\d+)(?P<avx2>-avx2)?$")
SEED_LINE = re.compile(r"^SEED = \d+", re.MULTILINE)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def config_env(name: str, root: Path) -> dict[str, str]:
    match = CONFIG.match(name)
    if not match:
        raise SystemExit(f"bad configuration {name!r}: expected t<threads>-s<seed>[-avx2]")
    env = {
        "CXRKIT_CACHE": str(root / "cache"),
        "CXRKIT_WORK": str(root / f"work-{name}"),
        "CXRKIT_CHECK_LOG": str(root / f"checks-{name}.jsonl"),
        "OMP_NUM_THREADS": match["threads"],
        "TQDM_DISABLE": "1",
        "PYTHONHASHSEED": "0",
    }
    if match["avx2"]:
        env |= {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
    return env


def execute(path: Path, seed: int, env: dict[str, str], out: Path) -> float:
    """Execute one notebook with its SEED replaced, in a kernel that sees ``env``."""
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code" and SEED_LINE.search(cell.source):
            cell.source = SEED_LINE.sub(f"SEED = {seed}", cell.source)
    saved = dict(os.environ)
    os.environ.update(env)  # the kernel is started from this process and inherits it
    try:
        start = time.perf_counter()
        client = NotebookClient(
            nb,
            timeout=1800,
            kernel_name="python3",
            # run in a folder of its own: the figures it saves must not replace the committed ones
            resources={"metadata": {"path": str(out.parent)}},
        )
        client.execute()
        seconds = time.perf_counter() - start
    finally:
        os.environ.clear()
        os.environ.update(saved)
    nbformat.write(nb, out)
    return seconds


def bands_in_notebooks(names: list[str]) -> dict[str, tuple[float, float]]:
    """The band each ``check_range("what", value, low, high)`` line states."""
    pattern = re.compile(
        r'check_range\(\s*"([^"]+)",.*?,\s*(-?[\d.]+),\s*(-?[\d.]+),?\s*\)', re.DOTALL
    )
    bands = {}
    for name in names:
        path = next(NOTEBOOKS.glob(f"{name}*.ipynb"))
        source = "\n".join(c.source for c in nbformat.read(path, as_version=4).cells)
        for what, low, high in pattern.findall(source):
            bands[what] = (float(low), float(high))
    return bands


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--configs", nargs="+", default=DEFAULT_CONFIGS, help="t<threads>-s<seed>[-avx2]"
    )
    parser.add_argument("--notebooks", nargs="+", default=["04", "05", "06"], help="name prefixes")
    parser.add_argument(
        "--root", type=Path, help="folder for runs and logs (default: a new temporary one)"
    )
    parser.add_argument(
        "--report-only", action="store_true", help="summarise the logs under --root, run nothing"
    )
    args = parser.parse_args()
    root = (args.root or Path(tempfile.mkdtemp(prefix="cxrkit-spread-"))).resolve()
    root.mkdir(parents=True, exist_ok=True)
    (root / "figures").mkdir(exist_ok=True)  # find_figures_dir() stops at the first figures/
    print(f"CPU: {cpu_model()}, {os.cpu_count()} logical cores; runs in {root}", flush=True)

    for name in [] if args.report_only else args.configs:
        env = config_env(name, root)
        Path(env["CXRKIT_CHECK_LOG"]).unlink(missing_ok=True)
        seed = int(CONFIG.match(name)["seed"])
        for prefix in args.notebooks:
            path = next(NOTEBOOKS.glob(f"{prefix}*.ipynb"))
            seconds = execute(path, seed, env, root / f"{name}-{path.name}")
            print(f"{name:12s} {path.name:26s} {seconds:6.0f} s", flush=True)

    rows = []
    for name in args.configs:
        for line in Path(config_env(name, root)["CXRKIT_CHECK_LOG"]).read_text().splitlines():
            record = json.loads(line)
            rows.append({"config": name, "what": record["what"], "value": record["value"]})
    table = pd.DataFrame(rows).drop_duplicates(["config", "what"], keep="last")
    values = table.pivot(index="what", columns="config", values="value")[args.configs]
    bands = bands_in_notebooks(args.notebooks)
    values["min"], values["max"] = values.min(axis=1), values.max(axis=1)
    values["band"] = [
        f"{bands[w][0]:g}..{bands[w][1]:g}" if w in bands else "?" for w in values.index
    ]
    values["inside"] = [
        w in bands and bands[w][0] <= lo and hi <= bands[w][1]
        for w, lo, hi in zip(values.index, values["min"], values["max"], strict=True)
    ]
    with pd.option_context(
        "display.width", 250, "display.max_columns", 20, "display.max_colwidth", 48
    ):
        print(values.round(3).to_string())
    outside = values.index[~values["inside"]].tolist()
    print("every value inside its band" if not outside else f"OUTSIDE their band: {outside}")


if __name__ == "__main__":
    main()
