"""Two CPU processes (gloo, torchrun): a NaN on one rank stops both; shards; rank 0 writes.

One test per claim; the command line under torchrun (its lock, its one-line refusals)
is tested in tests/test_faults_cli.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import pytest
import torch.distributed as dist

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed unavailable")

NAN_ON_RANK_1 = """
import sys
from pathlib import Path
import torch
from torch import nn
from cxrkit.distributed import cleanup_distributed, setup_distributed
from cxrkit.engine import train_one_epoch
from cxrkit.errors import NonFiniteLossError

info = setup_distributed()


class Toy(nn.Module):  # rank 1's loss is NaN at its second iteration
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(3.0))
        self.calls = 0

    def forward(self, images, targets=None):
        self.calls += 1
        bad = info.rank == 1 and self.calls == 2
        return {"loss_a": (self.w - 1) ** 2 * (float("nan") if bad else 1.0)}


model = nn.parallel.DistributedDataParallel(Toy())
optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
img = torch.zeros(3, 8, 8)
batches = [((img,), ({"boxes": torch.zeros((0, 4))},), (f"r{info.rank}-id{i}",)) for i in range(4)]
try:
    train_one_epoch(model, optimizer, batches, torch.device("cpu"), epoch=1)
except NonFiniteLossError as exc:
    # a file per rank: the two ranks' printed lines can interleave in torchrun's output
    (Path(sys.argv[1]) / f"stopped-rank{info.rank}.txt").write_text(str(exc))
    print(f"rank {info.rank} stopped: {exc}", flush=True)
    sys.exit(3)
print(f"rank {info.rank} finished without an error", flush=True)
cleanup_distributed(info)
"""

SHARDS_AND_WRITES = """
import sys
from pathlib import Path
from cxrkit.distributed import setup_distributed
from cxrkit.data import split
from cxrkit.train import (
    TrainConfig, read_folder, read_training_table, make_loaders, train_from_folder,
)

pre, csv, out = map(Path, sys.argv[1:4])
info = setup_distributed()
cfg = TrainConfig(epochs=1, batch_size=2, size=64).resolved()
image_dir, meta = read_folder(pre)
table = read_training_table(csv, meta)
train_loader, _ = make_loaders(
    table, meta, image_dir, split(table, valid_fraction=cfg.valid_fraction, seed=cfg.seed), cfg, info
)
ids = [train_loader.dataset.image_ids[i] for i in train_loader.sampler]
(out / f"seen-rank{info.rank}.txt").write_text("\\n".join(ids))
# each rank gets its own out_dir: a folder for rank 1 would mean rank 1 wrote files
train_from_folder(pre, csv, out / f"run-rank{info.rank}", cfg)
"""


def _torchrun(script: str, tmp_path, *args: str, timeout: int = 240):
    path = tmp_path / "script.py"
    path.write_text(textwrap.dedent(script))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        str(path), *args,
    ]  # fmt: skip
    start = time.monotonic()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    return proc, time.monotonic() - start


@pytest.mark.slow
def test_a_nan_on_one_rank_stops_every_rank_with_the_same_error(tmp_path):
    """Before: rank 1 raised alone and rank 0 waited in backward's all-reduce."""
    proc, seconds = _torchrun(NAN_ON_RANK_1, tmp_path, str(tmp_path), timeout=180)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-3000:]
    stopped = sorted(p.name for p in tmp_path.glob("stopped-rank*.txt"))
    assert stopped == ["stopped-rank0.txt", "stopped-rank1.txt"], out[-3000:]
    messages = {(tmp_path / name).read_text() for name in stopped}
    assert len(messages) == 1, messages  # the same error on both ranks
    msg = messages.pop()
    assert "loss is nan on rank 1 at epoch 1, iteration 1" in msg and "r1-id1" in msg
    assert "finished without an error" not in out
    assert seconds < 150  # no hang (the gloo timeout is 30 minutes)


@pytest.mark.slow
def test_ranks_train_disjoint_shards_and_rank_0_alone_writes(sample_data, preprocessed, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    proc, _ = _torchrun(SHARDS_AND_WRITES, tmp_path, str(preprocessed),
                        str(sample_data / "train.csv"), str(out), timeout=400)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    seen = [set((out / f"seen-rank{r}.txt").read_text().split()) for r in (0, 1)]
    assert seen[0] and seen[1]
    assert not seen[0] & seen[1], f"ranks saw the same images: {seen[0] & seen[1]}"
    assert abs(len(seen[0]) - len(seen[1])) <= 1
    assert {"last.pt", "best.pt", "history.csv", "split.csv"} <= {
        p.name for p in (out / "run-rank0").iterdir()
    }
    assert not (out / "run-rank1").exists(), "rank 1 wrote files"
    run = out / "run-rank0"
    assert not list(run.glob(".*tmp*")), "a temporary file was left behind"
    assert len((run / "history.csv").read_text().strip().splitlines()) == 2  # header + 1 epoch
    assert proc.stdout.count("epoch 1/1") == 1, proc.stdout  # only rank 0 prints
