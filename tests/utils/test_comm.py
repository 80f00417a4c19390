from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from heron.utils import comm

WORLD_SIZE = 2

# ---------------------------------------------------------------- single process


def test_single_process_world_has_one_rank_zero_process():
    assert not dist.is_initialized()
    assert comm.get_world_size() == 1
    assert comm.get_rank() == 0
    assert comm.get_local_rank() == 0
    assert comm.get_local_size() == 1
    assert comm.is_main_process()


def test_single_process_local_rank_ignores_environment(monkeypatch):
    # without a process group the process is alone, whatever a launcher's variables say
    monkeypatch.setenv("LOCAL_RANK", "3")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert comm.get_local_rank() == 0
    assert comm.get_local_size() == 1


def test_single_process_collectives_return_own_data():
    comm.synchronize()  # no-op, must not raise
    data = {"a": [1, 2]}
    assert comm.all_gather(data) == [data]
    assert comm.all_gather(data)[0] is data
    assert comm.gather(data) == [data]
    assert comm.all_gather(None) == [None]


def test_single_process_reduce_dict_returns_input_unchanged():
    losses = {"loss": torch.tensor(2.0)}
    assert comm.reduce_dict(losses) is losses
    assert comm.reduce_dict({}) == {}


def test_single_process_shared_random_seed_is_numpy_draw():
    np.random.seed(123)
    expected = np.random.RandomState(123).randint(2**31)  # same generator state
    seed = comm.shared_random_seed()
    assert seed == expected
    assert isinstance(seed, int) and 0 <= seed < 2**31


def test_create_local_process_group_without_distributed_raises():
    with pytest.raises(RuntimeError, match=r"needs torch.distributed to be initialized"):
        comm.create_local_process_group(1)


def test_get_local_process_group_before_creation_raises():
    with pytest.raises(RuntimeError, match="create_local_process_group"):
        comm.get_local_process_group()


# ---------------------------------------------------------------- two gloo processes


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        result: dict = {
            "world_size": comm.get_world_size(),
            "rank": comm.get_rank(),
            "is_main": comm.is_main_process(),
        }
        # before the local group exists: fall back to the launcher's environment
        os.environ["LOCAL_RANK"] = str(rank)
        os.environ["LOCAL_WORLD_SIZE"] = "2"
        result["env_local"] = [comm.get_local_rank(), comm.get_local_size()]
        del os.environ["LOCAL_RANK"], os.environ["LOCAL_WORLD_SIZE"]
        result["default_local"] = [comm.get_local_rank(), comm.get_local_size()]

        comm.create_local_process_group(2)
        comm.create_local_process_group(2)  # cached: a second call creates nothing
        result["local"] = [comm.get_local_rank(), comm.get_local_size()]
        try:
            comm.create_local_process_group(3)
        except ValueError as e:
            result["bad_local_error"] = str(e)

        result["all_gather"] = comm.all_gather({"rank": rank, "items": list(range(rank + 1))})
        result["all_gather_world"] = comm.all_gather(rank * 7, group=dist.group.WORLD)
        result["gather"] = comm.gather(f"r{rank}", dst=0)
        result["gather_to_1"] = comm.gather(rank + 100, dst=1)

        losses = {"loss_b": torch.tensor(rank + 1.0), "loss_a": torch.tensor(2.0 * rank)}
        avg = comm.reduce_dict(dict(losses), average=True)
        total = comm.reduce_dict(dict(losses), average=False)
        result["reduce_keys"] = list(avg)
        result["reduce_avg"] = {k: v.item() for k, v in avg.items()}
        result["reduce_sum"] = {k: v.item() for k, v in total.items()}

        np.random.seed(1000 + rank)  # different generators on purpose
        result["own_draw"] = int(np.random.RandomState(1000 + rank).randint(2**31))
        result["seed"] = comm.shared_random_seed()

        # barrier: rank 1 writes a marker late; rank 0 must see it after synchronize()
        marker = os.path.join(out_dir, "marker")
        if rank == 1:
            time.sleep(0.3)
            with open(marker, "w") as f:
                f.write("done")
        comm.synchronize()
        result["marker_seen_after_barrier"] = os.path.exists(marker)

        with open(os.path.join(out_dir, f"result_{rank}.json"), "w") as f:
            json.dump(result, f)
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_process_results(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("comm")
    mp.spawn(
        _worker,
        args=(str(tmp / "init"), str(tmp)),
        nprocs=WORLD_SIZE,
        join=True,
        start_method="spawn",
    )
    results = []
    for r in range(WORLD_SIZE):
        with open(tmp / f"result_{r}.json") as f:
            results.append(json.load(f))
    return results


def test_two_processes_ranks_and_world_size(two_process_results):
    r0, r1 = two_process_results
    assert (r0["world_size"], r0["rank"], r0["is_main"]) == (2, 0, True)
    assert (r1["world_size"], r1["rank"], r1["is_main"]) == (2, 1, False)


def test_two_processes_local_rank_falls_back_to_environment_then_default(two_process_results):
    for rank, res in enumerate(two_process_results):
        assert res["env_local"] == [rank, 2]
        assert res["default_local"] == [0, 1]


def test_two_processes_local_process_group_on_one_machine(two_process_results):
    for rank, res in enumerate(two_process_results):
        assert res["local"] == [rank, 2]
        assert "must divide the world size 2, got 3" in res["bad_local_error"]


def test_two_processes_all_gather_dicts_on_every_rank(two_process_results):
    expected = [{"rank": 0, "items": [0]}, {"rank": 1, "items": [0, 1]}]
    for res in two_process_results:
        assert res["all_gather"] == expected
        assert res["all_gather_world"] == [0, 7]


def test_two_processes_gather_only_on_destination(two_process_results):
    r0, r1 = two_process_results
    assert r0["gather"] == ["r0", "r1"]
    assert r1["gather"] == []
    assert r0["gather_to_1"] == []
    assert r1["gather_to_1"] == [100, 101]


def test_two_processes_reduce_dict_averages_onto_rank_zero(two_process_results):
    r0 = two_process_results[0]
    assert r0["reduce_keys"] == ["loss_a", "loss_b"]  # sorted
    # loss_a: (0 + 2) / 2 = 1; loss_b: (1 + 2) / 2 = 1.5
    assert r0["reduce_avg"] == {"loss_a": 1.0, "loss_b": 1.5}
    assert r0["reduce_sum"] == {"loss_a": 2.0, "loss_b": 3.0}


def test_two_processes_shared_random_seed_is_rank_zeros_draw(two_process_results):
    r0, r1 = two_process_results
    assert r0["own_draw"] != r1["own_draw"]  # the ranks drew different numbers
    assert r0["seed"] == r1["seed"] == r0["own_draw"]


def test_two_processes_synchronize_is_a_barrier(two_process_results):
    assert all(res["marker_seen_after_barrier"] for res in two_process_results)
