"""How a run's processes start: one launcher for GPUs, CPUs and cluster launchers.

* Under ``torchrun`` / ``torch.distributed.launch`` (``RANK``, ``WORLD_SIZE``,
  ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``), SLURM's ``srun`` (``SLURM_PROCID``,
  ``SLURM_STEP_NUM_TASKS``, ...) or any ``env://`` launcher (Kubernetes
  PyTorchJob), every process the launcher started *joins* that world:
  ``init_process_group(init_method="env://")``, NCCL on CUDA, gloo on CPU.
  ``--num-gpus`` is then ignored.
* Otherwise, with CUDA, detectron2's own ``launch`` (NCCL) spawns
  ``--num-gpus`` processes per machine.
* Otherwise (no CUDA), this module spawns that many gloo CPU processes itself:
  detectron2 0.6's ``launch`` hard-codes NCCL and asserts CUDA.

Every path sets detectron2's ``comm`` local process group (0.6 has no
``create_local_process_group``), so ``comm.get_local_rank()`` works everywhere.
:func:`launch_tool` is what the trainers' command lines run.
"""
from __future__ import annotations

import functools
import logging
import os
import re
import socket
import sys
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from detectron2.engine import launch as d2_launch
from detectron2.utils import comm

from ..cli import EXIT_INPUT_ERROR, check_resume_overwrite, run_cli
from ..errors import InputError

logger = logging.getLogger(__name__)
DEFAULT_TIMEOUT = timedelta(minutes=30)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def first_slurm_host(nodelist: str) -> str:
    """The first host of a SLURM node list (``node[03-05,9],gpu1`` -> ``node03``)."""
    match = re.match(r"([^,\[]+)(\[([^\]]+)\])?", nodelist.strip())
    if not match:
        return nodelist
    prefix, _, ranges = match.groups()
    return prefix + ranges.split(",")[0].split("-")[0] if ranges else prefix


def env_world() -> dict | None:
    """``{rank, world_size, local_rank, init_method}`` set by an env:// launcher, or None.

    torchrun's variables win (``init_method`` ``env://``); in a SLURM job step
    started by ``srun`` with several tasks, rank / world size / local rank come
    from ``SLURM_PROCID`` / ``SLURM_STEP_NUM_TASKS`` / ``SLURM_LOCALID`` and the
    rendezvous from ``MASTER_ADDR`` (default: the first host of the step) and
    ``MASTER_PORT`` (default: a port derived from the job id).  A plain
    ``sbatch`` script (no ``srun`` step) is not a launcher: there ``--num-gpus``
    spawns as usual.  Reads the environment only.
    """
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return {"rank": int(env["RANK"]), "world_size": int(env["WORLD_SIZE"]),
                "local_rank": int(env.get("LOCAL_RANK", 0)), "init_method": "env://"}
    if int(env.get("SLURM_STEP_NUM_TASKS", "1")) > 1 and "SLURM_PROCID" in env:  # a job step of srun
        host = env.get("MASTER_ADDR") or first_slurm_host(env.get("SLURM_STEP_NODELIST", "127.0.0.1"))
        port = env.get("MASTER_PORT") or str(20000 + int(env.get("SLURM_JOB_ID", "0")) % 20000)
        return {"rank": int(env["SLURM_PROCID"]), "world_size": int(env["SLURM_STEP_NUM_TASKS"]),
                "local_rank": int(env.get("SLURM_LOCALID", 0)), "init_method": f"tcp://{host}:{port}"}
    return None


def _set_local_group() -> None:
    """detectron2's ``comm`` local (per-machine) process group: the ranks on this host."""
    hosts = [None] * dist.get_world_size()
    dist.all_gather_object(hosts, socket.gethostname())
    for host in dict.fromkeys(hosts):  # every rank creates every group, in the same order
        group = dist.new_group([r for r, h in enumerate(hosts) if h == host])
        if host == hosts[dist.get_rank()]:
            comm._LOCAL_PROCESS_GROUP = group


def _run_in_group(main_func, args, backend: str, threads: int | None = None, **init_kwargs):
    """``main_func(*args)`` in the process group (joined here unless the caller already has one)."""
    created = not dist.is_initialized()
    if created:
        dist.init_process_group(backend, **init_kwargs)
    if comm._LOCAL_PROCESS_GROUP is None:
        _set_local_group()
    if threads:
        torch.set_num_threads(threads)
    comm.synchronize()
    try:
        return main_func(*args)
    finally:
        if created:
            dist.destroy_process_group()
            comm._LOCAL_PROCESS_GROUP = None


def _report_input_errors(main_func, *args):
    """A spawned process: an ``InputError`` becomes its message and exit status 2 (no traceback)."""
    try:
        return main_func(*args)
    except InputError as err:
        if args and getattr(args[0], "debug", False):
            raise
        print(f"error: {err}", file=sys.stderr, flush=True)
        sys.exit(EXIT_INPUT_ERROR)


def _cpu_worker(local_rank, main_func, world_size, procs_per_machine, machine_rank, dist_url, args, timeout):
    import soco_d2  # noqa: F401  (shims and registrations in the spawned process)

    rank = machine_rank * procs_per_machine + local_rank
    threads = max(1, (os.cpu_count() or 1) // procs_per_machine)
    _run_in_group(main_func, args, "gloo", threads, init_method=dist_url, world_size=world_size, rank=rank,
                  timeout=timeout)


def launch(main_func, num_processes_per_machine: int, num_machines: int = 1, machine_rank: int = 0,
           dist_url: str | None = None, args=(), timeout: timedelta = DEFAULT_TIMEOUT, use_cuda: bool | None = None):
    """Run ``main_func(*args)`` in every process of the run (see the module docstring).

    ``use_cuda`` defaults to ``torch.cuda.is_available()``; pass False for CPU gloo
    processes on a GPU machine (``MODEL.DEVICE cpu``).
    """
    use_cuda = torch.cuda.is_available() if use_cuda is None else use_cuda
    world = env_world()
    if dist.is_initialized():  # the caller's process group
        return _run_in_group(main_func, args, "nccl" if use_cuda else "gloo")
    if world is not None:
        if use_cuda:
            torch.cuda.set_device(world["local_rank"])
        return _run_in_group(main_func, args, "nccl" if use_cuda else "gloo", init_method=world["init_method"],
                             rank=world["rank"], world_size=world["world_size"], timeout=timeout)
    world_size = num_processes_per_machine * num_machines
    if world_size == 1:
        return main_func(*args)
    main_func = functools.partial(_report_input_errors, main_func)
    try:
        if use_cuda:
            return d2_launch(main_func, num_processes_per_machine, num_machines, machine_rank, dist_url or "auto",
                             args, timeout)
        if dist_url in (None, "auto"):
            if num_machines != 1:
                raise InputError("--dist-url auto only works on one machine; pass tcp://HOST:PORT of machine 0")
            dist_url = f"tcp://127.0.0.1:{_free_port()}"
        mp.start_processes(_cpu_worker, nprocs=num_processes_per_machine, daemon=False, start_method="spawn",
                           args=(main_func, world_size, num_processes_per_machine, machine_rank, dist_url, args, timeout))
    except mp.ProcessExitedException as err:
        if err.exit_code == EXIT_INPUT_ERROR:  # the process printed why
            raise SystemExit(EXIT_INPUT_ERROR) from None
        raise


def is_launching_main(args) -> bool:
    """Whether this process is (or starts) global rank 0: the one that prepares OUTPUT_DIR."""
    world = env_world()
    return world["rank"] == 0 if world is not None else getattr(args, "machine_rank", 0) == 0


def spawns_processes(args) -> bool:
    """Whether :func:`launch` will start new processes (the launching process then runs no rank)."""
    return env_world() is None and not dist.is_initialized() and args.num_gpus * args.num_machines > 1


def launch_tool(main_func, args, prepare) -> int:
    """A trainer's command line after parsing: check the inputs, then run ``main_func`` everywhere.

    ``prepare(args)`` merges the config and checks every input in this process
    (one clear message on bad input, before any model is built or any process
    starts) and returns the run's setup, whose ``cfg`` decides the device;
    its ``prepare_output_dir()`` makes OUTPUT_DIR ready on global rank 0.
    ``main_func(args, prepared)`` gets that setup when it runs in this process
    and None in spawned processes (which prepare again, without the checks).
    Returns the exit status.
    """
    def start(args):
        check_resume_overwrite(args)
        prepared = prepare(args)
        if is_launching_main(args):
            prepared.prepare_output_dir()
        spawns = spawns_processes(args)
        launch(main_func, args.num_gpus, args.num_machines, args.machine_rank, args.dist_url,
               args=(args, None if spawns else prepared), use_cuda=prepared.cuda)

    return run_cli(start, args)
