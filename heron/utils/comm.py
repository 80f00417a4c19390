"""Helpers for multi-process (distributed) training, usable unchanged in a single process.

Every function works whether or not ``torch.distributed`` is initialized: without a process
group the world has one process of rank 0, ``all_gather(x)`` is ``[x]`` and ``synchronize()``
does nothing. Object collectives (``all_gather``, ``gather``) run over a gloo group so that
pickled objects never occupy GPU memory.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

__all__ = [
    "all_gather",
    "create_local_process_group",
    "gather",
    "get_local_process_group",
    "get_local_rank",
    "get_local_size",
    "get_rank",
    "get_world_size",
    "is_main_process",
    "reduce_dict",
    "shared_random_seed",
    "synchronize",
]

# The process group of the processes on this machine; set by create_local_process_group,
# which ``launch`` calls in every worker.
_LOCAL_PROCESS_GROUP: Any = None

_MISSING_LOCAL_PG_ERROR = (
    "The local process group has not been created: call "
    "heron.utils.comm.create_local_process_group(num_workers_per_machine) in every process "
    "(heron.engine.launch does this)."
)


def _is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_world_size() -> int:
    """Return the number of processes (1 when not distributed)."""
    return dist.get_world_size() if _is_distributed() else 1


def get_rank() -> int:
    """Return this process's global rank (0 when not distributed)."""
    return dist.get_rank() if _is_distributed() else 0


@functools.lru_cache
def create_local_process_group(num_workers_per_machine: int) -> None:
    """Create the per-machine process groups and remember this machine's.

    Must be called by every process with the same argument (``new_group`` is collective).
    Ranks ``[i * n, (i + 1) * n)`` form machine ``i``'s group, ``n = num_workers_per_machine``.
    Repeated calls with the same argument do nothing.

    Raises:
        RuntimeError: if ``torch.distributed`` is not initialized.
        ValueError: if the world size is not a multiple of ``num_workers_per_machine``.
    """
    global _LOCAL_PROCESS_GROUP
    if not _is_distributed():
        raise RuntimeError(
            "create_local_process_group needs torch.distributed to be initialized "
            "(call torch.distributed.init_process_group first)"
        )
    world_size = get_world_size()
    if num_workers_per_machine < 1 or world_size % num_workers_per_machine != 0:
        raise ValueError(
            f"num_workers_per_machine must divide the world size {world_size}, "
            f"got {num_workers_per_machine}"
        )
    if _LOCAL_PROCESS_GROUP is not None:
        raise RuntimeError("a local process group was already created with another size")
    num_machines = world_size // num_workers_per_machine
    machine_rank = get_rank() // num_workers_per_machine
    for i in range(num_machines):
        ranks_on_i = list(range(i * num_workers_per_machine, (i + 1) * num_workers_per_machine))
        group = dist.new_group(ranks_on_i)  # collective: every rank creates every group
        if i == machine_rank:
            _LOCAL_PROCESS_GROUP = group


def get_local_process_group() -> Any:
    """Return this machine's process group.

    Raises:
        RuntimeError: if ``create_local_process_group`` has not been called.
    """
    if _LOCAL_PROCESS_GROUP is None:
        raise RuntimeError(_MISSING_LOCAL_PG_ERROR)
    return _LOCAL_PROCESS_GROUP


def get_local_rank() -> int:
    """Return this process's rank among the processes on its machine.

    0 when not distributed. When distributed without a local group, the ``LOCAL_RANK``
    environment variable (set by torchrun) or 0.
    """
    if not _is_distributed():
        return 0
    if _LOCAL_PROCESS_GROUP is None:
        return int(os.environ.get("LOCAL_RANK", 0))
    return dist.get_rank(group=_LOCAL_PROCESS_GROUP)


def get_local_size() -> int:
    """Return the number of processes on this machine.

    1 when not distributed. When distributed without a local group, the
    ``LOCAL_WORLD_SIZE`` environment variable (set by torchrun) or 1.
    """
    if not _is_distributed():
        return 1
    if _LOCAL_PROCESS_GROUP is None:
        return int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    return dist.get_world_size(group=_LOCAL_PROCESS_GROUP)


def is_main_process() -> bool:
    """Return whether this is the process of global rank 0."""
    return get_rank() == 0


def synchronize() -> None:
    """Block until every process reaches this call (a barrier); a no-op in one process."""
    if not _is_distributed() or dist.get_world_size() == 1:
        return
    if dist.get_backend() == dist.Backend.NCCL:
        # NCCL needs to know this process's device, otherwise it guesses and warns
        dist.barrier(device_ids=[torch.cuda.current_device()])
    else:
        dist.barrier()


@functools.lru_cache
def _get_global_gloo_group() -> Any:
    """Return a gloo group over all ranks: the world group, or a new one under NCCL."""
    if dist.get_backend() == dist.Backend.NCCL:
        return dist.new_group(backend="gloo")
    return dist.group.WORLD


def all_gather(data: Any, group: Any = None) -> list[Any]:
    """Gather a picklable object from every process in the group, on every process.

    Args:
        data: any picklable object.
        group: a process group; default, a gloo group over all processes.

    Returns:
        The objects of all ranks of ``group``, in rank order (``[data]`` in one process).
    """
    if get_world_size() == 1:
        return [data]
    if group is None:
        group = _get_global_gloo_group()
    world_size = dist.get_world_size(group=group)
    if world_size == 1:
        return [data]
    output: list[Any] = [None] * world_size
    dist.all_gather_object(output, data, group=group)
    return output


def gather(data: Any, dst: int = 0, group: Any = None) -> list[Any]:
    """Gather a picklable object from every process in the group onto rank ``dst``.

    Args:
        data: any picklable object.
        dst: the destination's global rank.
        group: a process group; default, a gloo group over all processes.

    Returns:
        On ``dst``, the objects of all ranks in rank order; elsewhere ``[]``. In one
        process, ``[data]``.
    """
    if get_world_size() == 1:
        return [data]
    if group is None:
        group = _get_global_gloo_group()
    world_size = dist.get_world_size(group=group)
    if world_size == 1:
        return [data]
    if dist.get_rank() == dst:
        output: list[Any] = [None] * world_size
        dist.gather_object(data, output, dst=dst, group=group)
        return output
    dist.gather_object(data, None, dst=dst, group=group)
    return []


def shared_random_seed() -> int:
    """Return a random int in [0, 2**31), the same on every process.

    Each process draws from NumPy's global generator and all use rank 0's draw. All
    processes must call it (it is a collective).
    """
    ints = int(np.random.randint(2**31))
    return all_gather(ints)[0]


def reduce_dict(
    input_dict: dict[str, torch.Tensor], average: bool = True
) -> dict[str, torch.Tensor]:
    """Sum (or average) a dict of scalar tensors over all processes, onto rank 0.

    Keys are sorted so every process reduces the same tensors in the same order. Only rank 0
    receives the result; the values on other ranks are unspecified afterwards, as with
    ``torch.distributed.reduce``.

    Args:
        input_dict: name -> scalar tensor (on this backend's device), same keys on every rank.
        average: divide rank 0's sum by the world size.

    Returns:
        A dict with the same keys: the reduced values on rank 0. In one process,
        ``input_dict`` itself.
    """
    world_size = get_world_size()
    if world_size < 2 or not input_dict:
        return input_dict
    with torch.no_grad():
        names = sorted(input_dict)
        values = torch.stack([input_dict[k] for k in names], dim=0)
        dist.reduce(values, dst=0)
        if dist.get_rank() == 0 and average:
            values /= world_size  # only rank 0 holds the sum
        return dict(zip(names, values))
