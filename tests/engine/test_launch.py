"""Tests of heron/engine/launch.py with real processes: two gloo workers train a model under
DistributedDataParallel with SimpleTrainer."""

from __future__ import annotations

import itertools
import json
import os

import pytest
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from heron.engine.launch import launch
from heron.engine.train_loop import SimpleTrainer
from heron.utils import comm


class _Quadratic(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor(1.0))

    def forward(self, batch):
        x, y = batch
        return {"loss_sq": ((self.w * x - y) ** 2).mean()}


def _train_worker(out_dir: str) -> None:
    rank = comm.get_rank()
    # rank 0 sees x=1, rank 1 sees x=3 (y=0): per-rank gradients 2*w*x^2 = 2 and 18 at w=1.
    batch = (torch.tensor([1.0 + 2.0 * rank]), torch.tensor([0.0]))
    model = DistributedDataParallel(_Quadratic())
    trainer = SimpleTrainer(
        model, itertools.cycle([batch]), torch.optim.SGD(model.parameters(), lr=0.01)
    )
    trainer.train(0, 1)
    result = {
        "rank": rank,
        "world_size": comm.get_world_size(),
        "local_rank": comm.get_local_rank(),
        "w": model.module.w.item(),
        "total_loss": (
            trainer.storage.history("total_loss").latest() if comm.is_main_process() else None
        ),
    }
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(result, f)


def test_two_gloo_processes_average_gradients_and_losses(tmp_path, monkeypatch):
    # CPU workers (gloo) even on a machine with fewer than two GPUs
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    launch(_train_worker, num_gpus_per_machine=2, dist_url="auto", args=(str(tmp_path),))
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [(r["rank"], r["world_size"], r["local_rank"]) for r in results] == [
        (0, 2, 0),
        (1, 2, 1),
    ]
    # DDP averages the gradients: (2 + 18) / 2 = 10, so w = 1 - 0.01 * 10 = 0.9 on both ranks.
    assert results[0]["w"] == pytest.approx(0.9) and results[1]["w"] == pytest.approx(0.9)
    # the logged loss is the mean of the ranks' losses: (1 + 9) / 2 = 5, on the main process.
    assert results[0]["total_loss"] == pytest.approx(5.0)
    assert results[1]["total_loss"] is None


def test_single_process_runs_in_place_without_a_process_group():
    calls = []
    launch(calls.append, num_gpus_per_machine=1, args=("ran",))
    assert calls == ["ran"]
    assert not torch.distributed.is_initialized()


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="num_gpus_per_machine"):
        launch(print, num_gpus_per_machine=0)
    with pytest.raises(ValueError, match="machine_rank"):
        launch(print, num_gpus_per_machine=1, num_machines=2, machine_rank=2)
    with pytest.raises(ValueError, match="auto"):
        launch(print, num_gpus_per_machine=2, num_machines=2, dist_url="auto")


_TORCHRUN_SCRIPT = r"""
import json, os, sys
import torch
from heron.engine.launch import launch
from heron.utils import comm

def main(out_dir):
    rank = comm.get_rank()
    total = torch.tensor([float(rank + 1)])
    torch.distributed.all_reduce(total)
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump({"rank": rank, "world": comm.get_world_size(),
                   "local_size": comm.get_local_size(), "sum": total.item()}, f)

if __name__ == "__main__":
    # num_gpus_per_machine is ignored under torchrun, which started the processes
    launch(main, num_gpus_per_machine=1, args=(sys.argv[1],))
"""


def test_launch_joins_the_process_group_under_torchrun(tmp_path):
    import subprocess
    import sys

    script = tmp_path / "script.py"
    script.write_text(_TORCHRUN_SCRIPT)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        str(script),
        str(tmp_path),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run(cmd, capture_output=True, timeout=240, env=env)
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    # all_reduce over both processes: 1 + 2 = 3
    assert [(r["rank"], r["world"], r["local_size"], r["sum"]) for r in results] == [
        (0, 2, 2, 3.0),
        (1, 2, 2, 3.0),
    ]
