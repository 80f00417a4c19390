"""Start multi-process (distributed) training: one process per GPU, or per CPU worker.

``launch`` has Detectron2's signature. Where there is no CUDA device Heron runs the processes
on the CPU with the gloo backend, which is how its distributed code is tested. Under
``torchrun`` (which starts the processes itself and sets RANK, WORLD_SIZE, LOCAL_RANK,
LOCAL_WORLD_SIZE, MASTER_ADDR and MASTER_PORT), ``launch`` joins the process group from those
variables and runs ``main_func`` in the current process.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from heron.utils import comm

__all__ = ["DEFAULT_TIMEOUT", "launch"]

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT = timedelta(minutes=30)


def _find_free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(
    main_func: Callable[..., Any],
    num_gpus_per_machine: int,
    num_machines: int = 1,
    machine_rank: int = 0,
    dist_url: str | None = None,
    args: Sequence[Any] = (),
    timeout: timedelta = DEFAULT_TIMEOUT,
) -> None:
    """Run ``main_func(*args)`` in ``num_gpus_per_machine`` processes on each machine.

    With one process in total, ``main_func`` runs in this process without
    ``torch.distributed``. Otherwise the processes are spawned, join a process group (NCCL
    when CUDA is available, else gloo) and each sets its CUDA device to its local rank.

    Args:
        main_func: a picklable function (module level) run in every process.
        num_gpus_per_machine: processes per machine (GPUs, or CPU workers without CUDA).
        num_machines: number of machines.
        machine_rank: this machine's index in [0, num_machines).
        dist_url: the rendezvous URL, e.g. "tcp://127.0.0.1:50152"; "auto" (or None on one
            machine) picks a free local port.
        args: arguments of ``main_func``.
        timeout: timeout of collective operations.
    """
    if _started_by_torchrun():
        _run_under_torchrun(main_func, tuple(args), timeout)
        return
    if num_gpus_per_machine < 1 or num_machines < 1:
        raise ValueError(
            f"num_gpus_per_machine and num_machines must be >= 1, got "
            f"{num_gpus_per_machine} and {num_machines}"
        )
    if not 0 <= machine_rank < num_machines:
        raise ValueError(f"machine_rank must be in [0, {num_machines}), got {machine_rank}")
    world_size = num_machines * num_gpus_per_machine
    if world_size == 1:
        main_func(*args)
        return
    if dist_url is None or dist_url == "auto":
        if num_machines != 1:
            raise ValueError('dist_url="auto" only works on one machine; give a tcp:// URL')
        dist_url = f"tcp://127.0.0.1:{_find_free_port()}"
    if num_machines > 1 and dist_url.startswith("file://"):
        logger.warning("file:// rendezvous across machines needs a shared file system")
    mp.start_processes(
        _distributed_worker,
        nprocs=num_gpus_per_machine,
        args=(
            main_func,
            world_size,
            num_gpus_per_machine,
            machine_rank,
            dist_url,
            tuple(args),
            timeout,
        ),
        daemon=False,
        start_method="spawn",
    )


def _started_by_torchrun() -> bool:
    return (
        all(k in os.environ for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR"))
        and not dist.is_initialized()
    )


def _run_under_torchrun(
    main_func: Callable[..., Any], args: tuple[Any, ...], timeout: timedelta
) -> None:
    local_rank = int(os.environ["LOCAL_RANK"])
    local_size = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ["WORLD_SIZE"]))
    use_cuda = torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(local_rank)
    dist.init_process_group(
        backend="nccl" if use_cuda else "gloo", init_method="env://", timeout=timeout
    )
    try:
        comm.create_local_process_group(local_size)
        comm.synchronize()
        main_func(*args)
    finally:
        dist.destroy_process_group()


def _distributed_worker(
    local_rank: int,
    main_func: Callable[..., Any],
    world_size: int,
    num_gpus_per_machine: int,
    machine_rank: int,
    dist_url: str,
    args: tuple[Any, ...],
    timeout: timedelta,
) -> None:
    use_cuda = torch.cuda.is_available()
    if use_cuda and num_gpus_per_machine > torch.cuda.device_count():
        raise RuntimeError(
            f"{num_gpus_per_machine} processes per machine asked for, but only "
            f"{torch.cuda.device_count()} CUDA devices are visible"
        )
    global_rank = machine_rank * num_gpus_per_machine + local_rank
    backend = "nccl" if use_cuda else "gloo"
    if use_cuda:
        torch.cuda.set_device(local_rank)
    try:
        dist.init_process_group(
            backend=backend,
            init_method=dist_url,
            world_size=world_size,
            rank=global_rank,
            timeout=timeout,
        )
    except Exception:
        logger.error("Process group URL: %s", dist_url)
        raise
    try:
        comm.create_local_process_group(num_gpus_per_machine)
        comm.synchronize()
        main_func(*args)
    finally:
        dist.destroy_process_group()
