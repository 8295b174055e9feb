"""Launch anywhere: an env:// launcher's world (torchrun, srun) is joined instead of
spawning; torchrun with 2 CPU processes trains exactly like --num-gpus 2."""
import os
import socket
import subprocess
import sys

import pytest
import torch

from engine_utils import BASE_CONFIG, tiny_opts
from soco_d2.engine.launch import env_world, first_slurm_host, spawns_processes
from tool_utils import tool_path


@pytest.fixture
def clean_env(monkeypatch):
    for key in list(os.environ):
        if key.startswith("SLURM_") or key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
            monkeypatch.delenv(key)
    return monkeypatch


def test_no_launcher_means_spawning(clean_env):
    class Args:
        num_gpus, num_machines = 2, 1

    assert env_world() is None and spawns_processes(Args())
    Args.num_gpus = 1
    assert not spawns_processes(Args())


def test_torchrun_variables_are_joined(clean_env):
    clean_env.setenv("RANK", "3")
    clean_env.setenv("WORLD_SIZE", "8")
    clean_env.setenv("LOCAL_RANK", "1")
    assert env_world() == {"rank": 3, "world_size": 8, "local_rank": 1, "init_method": "env://"}


def test_an_srun_step_is_joined_and_sets_the_rendezvous(clean_env):
    for key, value in {"SLURM_PROCID": "5", "SLURM_STEP_NUM_TASKS": "16", "SLURM_LOCALID": "1",
                       "SLURM_STEP_NODELIST": "gpu[07-08,11]", "SLURM_JOB_ID": "123456"}.items():
        clean_env.setenv(key, value)
    before = dict(os.environ)
    assert env_world() == {"rank": 5, "world_size": 16, "local_rank": 1,
                           "init_method": f"tcp://gpu07:{20000 + 123456 % 20000}"}
    assert dict(os.environ) == before  # reads the environment only
    clean_env.setenv("MASTER_ADDR", "head")
    clean_env.setenv("MASTER_PORT", "29400")
    assert env_world()["init_method"] == "tcp://head:29400"


def test_an_sbatch_script_without_srun_is_not_a_launcher(clean_env):
    clean_env.setenv("SLURM_PROCID", "0")
    clean_env.setenv("SLURM_NTASKS", "16")  # the batch script itself: --num-gpus spawns as usual
    assert env_world() is None


@pytest.mark.parametrize("nodelist, first", [("node01", "node01"), ("a[3-5],b1", "a3"), ("gpu[10,2]", "gpu10"),
                                             ("x-1,x-2", "x-1")])
def test_first_slurm_host(nodelist, first):
    assert first_slurm_host(nodelist) == first


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_torchrun_gives_the_weights_of_num_gpus_2(tmp_path):
    """Same 3 iterations, 2 gloo processes either way: the same final weights."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    opts = tiny_opts(str(tmp_path / "torchrun"), SOLVER__MAX_ITER=3, SOLVER__CHECKPOINT_PERIOD=100,
                     MODEL__RESNETS__NORM="SyncBN", MODEL__SSL__HEAD_NORM="SyncBN")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
                "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), tool_path("pretrain_net"),
                "--config-file", BASE_CONFIG, *opts]
    spawned = [sys.executable, tool_path("pretrain_net"), "--num-gpus", "2", "--config-file", BASE_CONFIG,
               *tiny_opts(str(tmp_path / "spawned"), SOLVER__MAX_ITER=3, SOLVER__CHECKPOINT_PERIOD=100,
                          MODEL__RESNETS__NORM="SyncBN", MODEL__SSL__HEAD_NORM="SyncBN")]
    for cmd in (torchrun, spawned):
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with open(tmp_path / "torchrun" / "log.txt") as f:
        log = f.read()
    assert "World size: 2" in log and "SyncBN -> naiveSyncBN" in log  # joined as 2 processes, CPU rule
    weights = [torch.load(tmp_path / d / "model_final.pth", weights_only=True) for d in ("torchrun", "spawned")]
    assert weights[0]["iteration"] == weights[1]["iteration"] == 2
    assert weights[0]["model"].keys() == weights[1]["model"].keys()
    for key, value in weights[0]["model"].items():
        assert torch.equal(value, weights[1]["model"][key]), key
