"""One launcher for GPUs and CPUs.

With CUDA, this is detectron2's own ``launch`` (NCCL).  detectron2 0.6's
``launch`` cannot start several CPU processes (it hard-codes NCCL and asserts
CUDA), so on CPU this module spawns gloo workers itself and sets detectron2's
``comm`` local process group, so every ``detectron2.utils.comm`` helper works
unchanged.  Workers import soco_d2 (and so the compat shims) before running.
"""
from __future__ import annotations

import logging
import os
import socket
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from detectron2.engine import launch as d2_launch
from detectron2.utils import comm

logger = logging.getLogger(__name__)
DEFAULT_TIMEOUT = timedelta(minutes=30)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(
    main_func,
    num_processes_per_machine: int,
    num_machines: int = 1,
    machine_rank: int = 0,
    dist_url: str | None = None,
    args=(),
    timeout: timedelta = DEFAULT_TIMEOUT,
    use_cuda: bool | None = None,
):
    """Run ``main_func(*args)`` in ``num_processes_per_machine * num_machines`` processes.

    ``use_cuda`` defaults to ``torch.cuda.is_available()``; pass False to force
    CPU gloo workers (``MODEL.DEVICE cpu`` on a GPU machine).
    """
    if use_cuda is None:
        use_cuda = torch.cuda.is_available()
    world_size = num_processes_per_machine * num_machines
    if use_cuda:
        return d2_launch(
            main_func, num_processes_per_machine, num_machines, machine_rank, dist_url or "auto", args, timeout
        )
    if world_size == 1:
        return main_func(*args)
    if dist_url in (None, "auto"):
        if num_machines != 1:
            raise ValueError("--dist-url auto only works on one machine; pass tcp://HOST:PORT of machine 0")
        dist_url = f"tcp://127.0.0.1:{_free_port()}"
    mp.start_processes(
        _cpu_worker,
        nprocs=num_processes_per_machine,
        args=(main_func, world_size, num_processes_per_machine, machine_rank, dist_url, args, timeout),
        daemon=False,
        start_method="spawn",
    )


def _cpu_worker(local_rank, main_func, world_size, procs_per_machine, machine_rank, dist_url, args, timeout):
    import soco_d2  # noqa: F401  (shims and registrations in the spawned process)

    global_rank = machine_rank * procs_per_machine + local_rank
    dist.init_process_group("gloo", init_method=dist_url, world_size=world_size, rank=global_rank, timeout=timeout)
    # detectron2 0.6 has no create_local_process_group; get_local_rank() needs it.
    num_machines = world_size // procs_per_machine
    for machine in range(num_machines):
        ranks = list(range(machine * procs_per_machine, (machine + 1) * procs_per_machine))
        group = dist.new_group(ranks)
        if machine == machine_rank:
            comm._LOCAL_PROCESS_GROUP = group
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // procs_per_machine))
    comm.synchronize()
    try:
        main_func(*args)
    finally:
        dist.destroy_process_group()

