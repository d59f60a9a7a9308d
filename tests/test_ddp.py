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
    run = tmp_path / "run"
    env = {
        **os.environ,
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
    assert len(pd.read_csv(run / "history.csv")) == 1
    assert proc.stdout.count("epoch 1/1") == 1, proc.stdout  # only rank 0 prints

    # shards and rank-0-only writes: tests/test_distributed.py
