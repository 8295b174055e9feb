"""soco_d2 is a package a user installs and uses anywhere: ``python -m build`` makes an
sdist and a wheel that pass ``twine check``; the wheel, pip-installed into a fresh
venv outside the repository (torch and detectron2 already there, as the README
says), ships the configs and the console entry points, and runs
``soco-d2-precompute`` and ``soco-d2-pretrain`` on the demo config by its
packaged path, from a folder that is not the repository."""
import glob
import os
import shutil
import subprocess
import sys
import sysconfig

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(cmd, cwd, env=None, timeout=900):
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def dependency_dirs() -> list[str]:
    """Where this interpreter finds torch, detectron2 and the other dependencies (not soco_d2)."""
    import detectron2
    import torch

    dirs = {sysconfig.get_paths()["purelib"], os.path.dirname(os.path.dirname(torch.__file__)),
            os.path.dirname(os.path.dirname(detectron2.__file__))}
    return sorted(d for d in dirs if os.path.abspath(d) != REPO)


@pytest.fixture(scope="module")
def dist(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), REPO], cwd=str(out))
    yield sorted(glob.glob(str(out / "*")))
    shutil.rmtree(out, ignore_errors=True)


def test_build_makes_an_sdist_and_a_wheel_that_pass_twine_check(dist):
    assert [os.path.basename(p) for p in dist] == ["soco_d2-0.1.0-py3-none-any.whl", "soco_d2-0.1.0.tar.gz"]
    proc = run([sys.executable, "-m", "twine", "check", "--strict", *dist], cwd=os.path.dirname(dist[0]))
    assert proc.stdout.count("PASSED") == 2


def test_the_installed_wheel_runs_anywhere(dist, tmp_path):
    venv, work = tmp_path / "venv", tmp_path / "work"
    work.mkdir()
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=str(tmp_path))
    python = str(venv / "bin" / "python")
    site = run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=str(work)).stdout.strip()
    with open(os.path.join(site, "preinstalled_dependencies.pth"), "w") as f:
        f.write("\n".join(dependency_dirs()) + "\n")
    run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", "--quiet", dist[0]],
        cwd=str(work))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env['PATH']}"
    env["OMP_NUM_THREADS"] = "1"
    where = run([python, "-c", "import soco_d2, soco_d2.model_zoo as z; print(soco_d2.__file__); "
                 "print(z.get_config_file('demo/soco_r50_fpn.yaml'))"], cwd=str(work), env=env).stdout.split()
    assert all(p.startswith(str(venv)) for p in where), where  # the installed copy, not the repository
    for tool in ("pretrain", "transfer", "precompute", "convert", "visualize", "probe", "plot-metrics"):
        assert "--no-progress" in run([f"soco-d2-{tool}", "--help"], cwd=str(work), env=env).stdout
    run(["soco-d2-precompute", "--dataset", "demo_images", "--method", "selective_search", "--workers", "0",
         "--output", "proposals/demo_images_ss.pcache", "--no-progress"], cwd=str(work), env=env)
    proc = run(["soco-d2-pretrain", "--no-progress", "--config-file", where[1], "SOLVER.MAX_ITER", "2",
                "SOLVER.CHECKPOINT_PERIOD", "100", "DATALOADER.NUM_WORKERS", "0", "OUTPUT_DIR", "out",
                "TEST.PROBE.MAX_MEMORY_IMAGES", "3", "TEST.PROBE.MAX_QUERY_IMAGES", "2"],  # the demo's probe hook, small
               cwd=str(work), env=env)
    assert "loss curve (total_loss, 2 logged iterations 0..1" in proc.stdout
    run(["soco-d2-plot-metrics", "out"], cwd=str(work), env=env)
    assert os.path.isfile(work / "out" / "loss_curve.png")
    assert os.path.isfile(work / "out" / "model_final.pth")
    shutil.rmtree(work / "out")  # a SoCo R50-FPN checkpoint: do not keep it until the session ends
