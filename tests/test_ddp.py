"""DistributedDataParallel on CPU: ``torchrun --nproc_per_node=2 -m cxrkit train`` (gloo)."""

from __future__ import annotations

import os
import subprocess
import sys

import pandas as pd
import pytest
import torch.distributed as dist

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed unavailable")


@pytest.mark.slow
def test_two_cpu_processes_train_disjoint_shards(sample_data, preprocessed, tmp_path):
    debug = tmp_path / "debug"
    run = tmp_path / "run"
    env = {
        **os.environ,
        "CXRKIT_DEBUG_SEEN_IDS_DIR": str(debug),  # test hook in cxrkit.engine
        "OMP_NUM_THREADS": "1",
        "TQDM_DISABLE": "1",
    }
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "-m", "cxrkit", "train", str(preprocessed), str(sample_data / "train.csv"),
        "--out", str(run), "--epochs", "1", "--batch-size", "2",
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    # rank 0 alone wrote the checkpoints and the history, once
    assert {"last.pt", "best.pt", "history.csv"} <= {p.name for p in run.iterdir()}
    assert not list(run.glob(".*tmp*")), "a temporary file was left behind"
    assert (debug / "wrote-rank0.txt").is_file()
    assert not (debug / "wrote-rank1.txt").exists(), "rank 1 wrote files"
    assert len(pd.read_csv(run / "history.csv")) == 1
    assert proc.stdout.count("epoch 1/1") == 1, proc.stdout  # only rank 0 prints

    # each rank trained on its own shard of the images
    seen = [set((debug / f"seen-rank{r}.txt").read_text().split()) for r in (0, 1)]
    assert seen[0] and seen[1]
    assert not seen[0] & seen[1], f"ranks saw the same images: {seen[0] & seen[1]}"
    assert abs(len(seen[0]) - len(seen[1])) <= 1
