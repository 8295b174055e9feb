"""tools/pretrain_net.py end to end: SIGKILL mid-run then --resume reproduces the
uninterrupted run; a 2-process CPU run (gloo, SyncBN -> naiveSyncBN)."""
import os
import signal
import subprocess
import sys
import time

import pytest
import soco_d2  # noqa: F401

from engine_utils import BASE_CONFIG, tiny_opts
from soco_d2.engine.metrics import read_metrics

pytestmark = pytest.mark.slow
TOOL = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools", "pretrain_net.py")
MAX_ITER = 12
LOSS_KEYS = ("total_loss", "loss_byol_12", "loss_byol_21", "lr", "momentum_tau")
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # tiny models: one thread is faster on 2 shared cores


def command(output_dir, *flags, **overrides):
    overrides = {"INPUT__SSL__VIEW_SIZES": "[64, 64]", "SOLVER__MAX_ITER": MAX_ITER, **overrides}
    opts = tiny_opts(str(output_dir), **overrides)
    return [sys.executable, TOOL, "--config-file", BASE_CONFIG, *flags, *opts]


def run(cmd, timeout=600):
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=ENV)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def last_checkpoint(output_dir):
    try:
        with open(os.path.join(output_dir, "last_checkpoint")) as f:
            return f.read().strip()
    except FileNotFoundError:
        return ""


def test_sigkill_then_resume_matches_the_uninterrupted_run(tmp_path):
    full, killed = tmp_path / "full", tmp_path / "killed"
    summary = run(command(full)).stdout
    assert "loss curve (total_loss" in summary

    proc = subprocess.Popen(command(killed), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    deadline = time.time() + 300
    while last_checkpoint(killed) != "model_0000003.pth" and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    resume_from = last_checkpoint(killed)
    assert resume_from.startswith("model_0000") and not (killed / "model_final.pth").exists(), resume_from
    resume_iter = int(resume_from[len("model_"):-len(".pth")]) + 1

    resumed = run(command(killed, "--resume"))
    assert f"Starting training from iteration {resume_iter}" in resumed.stdout + resumed.stderr
    rows_full = {r["iteration"]: r for r in read_metrics(str(full / "metrics.json"))}
    rows_killed = {r["iteration"]: r for r in read_metrics(str(killed / "metrics.json"))}
    assert sorted(rows_full) == sorted(rows_killed) == list(range(MAX_ITER))
    for it in range(resume_iter, MAX_ITER):
        for key in LOSS_KEYS:
            assert rows_killed[it][key] == pytest.approx(rows_full[it][key], rel=1e-5, abs=1e-7), (it, key)
    import torch

    finals = [torch.load(d / "model_final.pth", map_location="cpu", weights_only=False) for d in (full, killed)]
    assert finals[0]["iteration"] == finals[1]["iteration"] == MAX_ITER - 1
    for key, value in finals[0]["model"].items():
        torch.testing.assert_close(finals[1]["model"][key], value, rtol=1e-4, atol=1e-6, msg=key)


def test_two_cpu_processes_with_syncbn(tmp_path):
    out = tmp_path / "ddp"
    proc = run(command(out, "--num-gpus", "2", MODEL__RESNETS__NORM="SyncBN", MODEL__SSL__HEAD_NORM="SyncBN",
                       SOLVER__MAX_ITER=4))
    with open(out / "log.txt") as f:
        log = f.read()
    for key in ("MODEL.RESNETS.NORM", "MODEL.SSL.HEAD_NORM"):
        assert f"BatchNorm policy: {key} SyncBN -> naiveSyncBN" in log
    rows = read_metrics(str(out / "metrics.json"))
    assert [r["iteration"] for r in rows] == [0, 1, 2, 3]
    assert all({"total_loss", "loss_byol_12", "lr", "momentum_tau"} <= set(r) for r in rows)
    assert (out / "model_final.pth").exists() and "loss curve" in proc.stdout
