"""Every tool checks its inputs before any model is built: each bad input ends the
run with one clear message and exit status 2, and nothing in OUTPUT_DIR is lost
or half-written (an earlier run's files stay byte-identical; a missing OUTPUT_DIR
is not created).  A finished run's OUTPUT_DIR is only written with --resume or
--overwrite."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from engine_utils import BASE_CONFIG, one_torch_thread, tiny_opts  # noqa: F401  (autouse fixture)
from soco_d2.data import get_pretrain_dicts
from soco_d2.engine.metrics import read_metrics
from soco_d2.proposals import CacheWriter
from tool_utils import load_tool, tool_path

HEADER = {"method": "test", "generator": {}, "versions": {}, "source": "tests"}


def snapshot(folder) -> dict | None:
    """Every file under ``folder`` with its bytes (None: the folder does not exist)."""
    if not os.path.exists(folder):
        return None
    out = {}
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, folder)] = f.read()
    return out


def earlier_run(folder):
    """An OUTPUT_DIR holding what a finished run leaves (files with recognisable bytes)."""
    os.makedirs(folder, exist_ok=True)
    files = {"model_final.pth": b"final weights", "last_checkpoint": b"model_final.pth",
             "metrics.json": b'{"iteration": 0, "total_loss": 1.0}\n', "log.txt": b"old log\n",
             "config.yaml": b"OLD: 1\n"}
    for name, data in files.items():
        with open(os.path.join(folder, name), "wb") as f:
            f.write(data)
    return snapshot(folder)


def pretrain(argv, capsys):
    """tools/pretrain_net.py in this process; returns (exit status, stderr)."""
    try:
        status = load_tool("pretrain_net").cli(argv)
    except SystemExit as exit_:
        status = exit_.code
    return status, capsys.readouterr().err


def pretrain_argv(output_dir, *flags, **overrides):
    overrides = {"SOLVER__CHECKPOINT_PERIOD": 100, **overrides}  # only model_final.pth: small disk use
    return ["--config-file", BASE_CONFIG, *flags, *tiny_opts(str(output_dir), **overrides)]


def write_box_cache(path, ids):
    with CacheWriter(str(path), "boxes", HEADER) as writer:
        for d in get_pretrain_dicts("demo_images"):
            if d["image_id"] in ids:
                writer.add_boxes(d["image_id"], d["height"], d["width"], np.array([[0, 0, 16, 16]], np.float32))
        writer.commit()
    return str(path)


SOCO_DATA = {"INPUT__SSL__MAPPER": "SoCoMapper", "INPUT__SSL__VIEW_SIZES": "[32, 32, 32]",
             "INPUT__SSL__VIEW_TYPES": "['whole', 'crop', 'crop']"}


@pytest.fixture
def out(tmp_path):
    """OUTPUT_DIR with an earlier run in it, and its snapshot."""
    folder = tmp_path / "out"
    return folder, earlier_run(folder)


@pytest.mark.parametrize("case", ["unknown key", "bad value", "odd overrides", "late flag", "no such config", "dataset",
                                  "folder dataset", "weights", "device"])
def test_bad_input_is_one_message_and_leaves_output_dir_alone(case, out, tmp_path, capsys):
    folder, before = out
    argv = {
        "unknown key": pretrain_argv(folder, "--overwrite", SOLVER__MAX_ITRE=3),
        "bad value": pretrain_argv(folder, "--overwrite", SOLVER__MAX_ITER="many"),
        "odd overrides": pretrain_argv(folder, "--overwrite") + ["SOLVER.MAX_ITER"],
        "late flag": pretrain_argv(folder, "--overwrite") + ["--resume"],
        "no such config": ["--config-file", "no/such.yaml", "--overwrite", "OUTPUT_DIR", str(folder)],
        "dataset": pretrain_argv(folder, "--overwrite", DATASETS__TRAIN="('imagenet_train',)"),
        "folder dataset": pretrain_argv(folder, "--overwrite", DATASETS__TRAIN=f"('folder:{tmp_path}/none',)"),
        "weights": pretrain_argv(folder, "--overwrite", MODEL__WEIGHTS=str(tmp_path / "missing.pkl")),
        "device": pretrain_argv(folder, "--overwrite", MODEL__DEVICE="cuda"),
    }[case]
    if case == "device" and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    expected = {
        "unknown key": "unknown config key SOLVER.MAX_ITRE; did you mean SOLVER.MAX_ITER",
        "bad value": "command line: ",
        "odd overrides": "'SOLVER.MAX_ITER' has no value",
        "late flag": "--resume comes after the KEY VALUE overrides",
        "no such config": "--config-file 'no/such.yaml': no such file",
        "dataset": os.path.join("imagenet", "train"),
        "folder dataset": f"{tmp_path}/none",
        "weights": f"MODEL.WEIGHTS {str(tmp_path / 'missing.pkl')!r} does not exist",
        "device": "no CUDA device is available",
    }[case]
    status, err = pretrain(argv, capsys)
    assert status == 2 and err.startswith("error: ") and expected in err, err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert snapshot(folder) == before  # --overwrite deletes only after every check passed


def test_a_missing_cache_names_the_precompute_command(tmp_path, capsys):
    folder = tmp_path / "out"
    cache = tmp_path / "proposals" / "demo_ss.pcache"
    status, err = pretrain(pretrain_argv(folder, PROPOSALS__BOX_CACHE=str(cache), **SOCO_DATA), capsys)
    assert status == 2 and f"PROPOSALS.BOX_CACHE {str(cache)!r} does not exist" in err
    assert ("python tools/precompute_proposals.py --dataset demo_images --method selective_search "
            f"--output {cache}") in err
    assert snapshot(folder) is None  # not even created


def test_a_cache_of_other_images_is_refused(tmp_path, capsys):
    folder = tmp_path / "out"
    cache = write_box_cache(tmp_path / "partial.pcache", {"astronaut", "chelsea"})
    status, err = pretrain(pretrain_argv(folder, PROPOSALS__BOX_CACHE=cache, **SOCO_DATA), capsys)
    assert status == 2 and "7 of the 9 images of demo_images are not in it" in err and "--method selective_search" in err
    assert snapshot(folder) is None
    not_a_cache = tmp_path / "garbage.pcache"
    not_a_cache.write_bytes(b"not a cache at all" * 10)
    status, err = pretrain(pretrain_argv(folder, PROPOSALS__BOX_CACHE=str(not_a_cache), **SOCO_DATA), capsys)
    assert status == 2 and "cannot be read" in err and snapshot(folder) is None


@pytest.mark.skipif(not os.access("/sys", os.F_OK), reason="needs a read-only /sys")
def test_an_unwritable_output_dir_is_refused(tmp_path, capsys):
    status, err = pretrain(pretrain_argv("/sys/soco_d2_out"), capsys)
    assert status == 2 and "OUTPUT_DIR /sys/soco_d2_out cannot be written" in err
    a_file = tmp_path / "file"
    a_file.write_bytes(b"x")
    status, err = pretrain(pretrain_argv(a_file / "sub"), capsys)
    assert status == 2 and "is a file, not a folder" in err and a_file.read_bytes() == b"x"


def test_resume_and_overwrite_together_are_refused(out, capsys):
    folder, before = out
    status, err = pretrain(pretrain_argv(folder, "--resume", "--overwrite"), capsys)
    assert status == 2 and "give one of them" in err and snapshot(folder) == before


def test_transfer_checks_datasets_and_weights(tmp_path, capsys):
    tool = load_tool("transfer_net")
    config = "transfer/demo_mask_rcnn_R_50_FPN.yaml"  # a shipped config's name works as --config-file
    folder = tmp_path / "out"
    for extra, expected in ((["DATASETS.TEST", "('coco_2017_val',)"], "dataset 'coco_2017_val' not found"),
                            (["DATASETS.TRAIN", "('no_such_set',)"], "dataset 'no_such_set' is not registered"),
                            (["MODEL.WEIGHTS", str(tmp_path)], "is a folder")):
        with pytest.raises(SystemExit) as exit_:
            tool.cli(["--config-file", config, "OUTPUT_DIR", str(folder), *extra])
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and expected in err, err
        assert snapshot(folder) is None


def test_no_traceback_unless_debug(tmp_path):
    argv = [sys.executable, tool_path("pretrain_net"), *pretrain_argv(tmp_path / "out", SOLVER__MAX_ITRE=3)]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith("error: command line: unknown config key")
    assert "Traceback" not in proc.stderr
    proc = subprocess.run(argv[:2] + ["--debug"] + argv[2:], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1 and "Traceback" in proc.stderr and "InputError" in proc.stderr


# ------------------------------------------------------------------ outputs


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished 2-iteration run (checkpoints small: ResNet-18, 32 px views)."""
    folder = tmp_path_factory.mktemp("finished") / "out"
    assert load_tool("pretrain_net").cli(pretrain_argv(folder, SOLVER__MAX_ITER=2)) == 0
    return folder


def test_a_second_run_into_a_finished_output_dir_changes_nothing(finished, capsys):
    before = snapshot(finished)
    assert {"model_final.pth", "metrics.json", "last_checkpoint", "log.txt", "config.yaml"} <= set(before)
    status, err = pretrain(pretrain_argv(finished, SOLVER__MAX_ITER=3, SEED=8), capsys)
    assert status == 2 and "holds an earlier run" in err and "--resume" in err and "--overwrite" in err
    assert snapshot(finished) == before


def test_overwrite_starts_a_clean_run_and_the_summary_is_of_it(finished, tmp_path, capsys):
    folder = tmp_path / "copy"
    folder.mkdir()
    for name, data in snapshot(finished).items():
        (folder / name).write_bytes(data)
    old_rows = read_metrics(str(folder / "metrics.json"))
    assert load_tool("pretrain_net").cli(pretrain_argv(folder, "--overwrite", SOLVER__MAX_ITER=3, SEED=8)) == 0
    out = capsys.readouterr().out
    rows = read_metrics(str(folder / "metrics.json"))
    assert [r["iteration"] for r in rows] == [0, 1, 2]  # only the new run's rows
    assert rows[0]["total_loss"] != old_rows[0]["total_loss"]
    with open(folder / "metrics.json") as f:
        assert len([line for line in f if "total_loss" in line]) == 3
    assert "loss curve (total_loss, 3 logged iterations 0..2" in out
    with open(folder / "log.txt") as f:
        log = f.read()
    assert "\x1b[" not in log  # no terminal colour codes in the log file
    assert "losses (median of 3)" in log  # the console line says its losses are medians
    assert torch.load(folder / "model_final.pth", weights_only=True)["iteration"] == 2


def test_resume_of_a_finished_run_adds_no_rows(finished, tmp_path, capsys):
    folder = tmp_path / "copy"
    folder.mkdir()
    for name, data in snapshot(finished).items():
        (folder / name).write_bytes(data)
    before = (folder / "metrics.json").read_bytes()
    assert load_tool("pretrain_net").cli(pretrain_argv(folder, "--resume", SOLVER__MAX_ITER=2)) == 0
    assert (folder / "metrics.json").read_bytes() == before
    assert "loss curve (total_loss, 2 logged iterations 0..1" in capsys.readouterr().out


def test_no_progress_keeps_progress_lines_off_the_console(tmp_path, capsys):
    folder = tmp_path / "quiet"
    assert load_tool("pretrain_net").cli(pretrain_argv(folder, "--no-progress", SOLVER__MAX_ITER=2)) == 0
    console = capsys.readouterr().out
    assert "losses (median of" not in console and "loss curve" in console
    with open(folder / "log.txt") as f:
        assert "losses (median of 2)" in f.read()
    assert json.loads(open(folder / "metrics.json").readline())["iteration"] == 0


def test_transfer_into_a_finished_output_dir_changes_nothing(out, capsys):
    folder, before = out
    (folder / "results.json").write_text('{"weights": "", "results": {}}')
    before = snapshot(folder)
    for extra in ([], ["--eval-only"]):
        with pytest.raises(SystemExit) as exit_:
            load_tool("transfer_net").cli(["--config-file", "transfer/demo_mask_rcnn_R_50_FPN.yaml", *extra,
                                           "OUTPUT_DIR", str(folder)])
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and "--resume" in err and "--overwrite" in err, err
        assert snapshot(folder) == before
