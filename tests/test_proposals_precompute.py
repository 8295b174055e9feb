"""The precompute tool: bad images, shards + merge, resume after SIGKILL, no
process left after a SIGKILL, CLI errors."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from soco_d2.proposals import ProposalCache
from tool_utils import load_tool

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(REPO, "tools", "precompute_proposals.py")


@pytest.fixture(scope="module")
def tool():
    return load_tool("precompute_proposals")


def photo(seed, h=48, w=64):
    rng = np.random.default_rng(seed)
    img = np.clip(rng.normal(120, 30, (h, w, 3)), 0, 255).astype(np.uint8)
    for _ in range(3):
        y, x = int(rng.integers(0, h - 12)), int(rng.integers(0, w - 12))
        img[y : y + int(rng.integers(8, h - y)), x : x + int(rng.integers(8, w - x))] = rng.integers(0, 256, 3)
    return img


def make_folder(root, n, seed=0):
    os.makedirs(os.path.join(root, "sub"), exist_ok=True)
    for i in range(n):
        sub = "sub/" if i % 3 == 0 else ""
        Image.fromarray(photo(seed + i)).save(os.path.join(root, f"{sub}im{i:03d}.png"))
    return root


def run_tool(tool, argv):
    return tool.cli(argv)


def test_bad_images_are_counted_and_skipped(tmp_path, tool, caplog):
    d = str(tmp_path / "imgs")
    make_folder(d, 3)
    rgb = photo(9)
    Image.fromarray(rgb[:, :, 0]).save(f"{d}/gray.png")
    Image.fromarray(rgb).convert("CMYK").save(f"{d}/cmyk.jpg")
    Image.fromarray(rgb[:4, :6]).save(f"{d}/tiny.png")
    Image.fromarray(photo(10, 200, 300)).save(f"{d}/huge.png")
    big = np.clip(np.random.default_rng(0).normal(128, 60, (200, 200, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(big).save(f"{d}/whole.jpg", quality=95)
    data = open(f"{d}/whole.jpg", "rb").read()
    open(f"{d}/trunc.jpg", "wb").write(data[: len(data) // 3])
    os.unlink(f"{d}/whole.jpg")
    open(f"{d}/corrupt.jpg", "wb").write(b"not a jpeg" * 50)
    open(f"{d}/empty.png", "wb").write(b"")
    out = str(tmp_path / "c.pcache")
    summary = str(tmp_path / "s.json")
    rc = run_tool(tool, ["--image-dir", d, "--method", "selective_search", "--output", out, "--workers", "2",
                         "--max-pixels", "50000", "--no-progress", "--summary-json", summary, "--chunk-size", "4"])
    assert rc == 0
    s = json.load(open(summary))
    assert s["images"] == 10 and s["stored"] == 6 and s["skipped"] == 4
    assert s["skipped_by_reason"] == {"corrupt": 2, "huge": 1, "truncated": 1}
    assert s["tiny_images"] == 1 and s["decoded_modes_now"] == {"CMYK": 1, "L": 1, "RGB": 4}
    assert "skipped corrupt: corrupt: cannot identify image file <file>" in caplog.text
    assert "skipped huge: huge: 300x200 = 60000 pixels > --max-pixels 50000" in caplog.text
    with ProposalCache(out) as c:
        assert sorted(c.keys()) == ["cmyk", "gray", "im001", "im002", "sub/im000", "tiny"]
        assert sorted(c.skipped) == ["corrupt", "empty", "huge", "trunc"]
        assert c.image_size("tiny") == (4, 6) and c["tiny"].tolist() == [[0, 0, 6, 4]]  # whole-image fallback
        assert c.stage("tiny") == "whole_image"


def test_shards_and_merge_equal_a_single_run(tmp_path, tool):
    d = make_folder(str(tmp_path / "imgs"), 11)
    common = ["--image-dir", d, "--method", "felzenszwalb", "--no-progress", "--workers", "0", "--preset", "fast"]
    single = str(tmp_path / "single.pcache")
    assert run_tool(tool, common + ["--output", single]) == 0
    sharded = str(tmp_path / "sharded.pcache")
    assert run_tool(tool, common + ["--output", sharded, "--num-shards", "3", "--shard-id", "2"]) == 0
    with pytest.raises(SystemExit):  # shards 0 and 1 are missing
        run_tool(tool, ["--merge", "--output", sharded])
    for i in (0, 1):
        assert run_tool(tool, common + ["--output", sharded, "--num-shards", "3", "--shard-id", str(i)]) == 0
    assert os.path.exists(str(tmp_path / "sharded.shard-00001-of-00003.pcache"))
    assert run_tool(tool, ["--merge", "--output", sharded]) == 0
    assert open(sharded, "rb").read() == open(single, "rb").read()
    with ProposalCache(single) as c:
        assert len(c) == 11 and c["sub/im000"].dtype == np.uint16


def test_resume_after_sigkill_is_byte_identical(tmp_path, tool):
    d = make_folder(str(tmp_path / "imgs"), 24)
    args = ["--image-dir", d, "--method", "selective_search", "--preset", "paper", "--chunk-size", "2",
            "--workers", "1", "--no-progress"]
    killed = str(tmp_path / "killed.pcache")
    parts = killed + ".parts"
    proc = subprocess.Popen([sys.executable, TOOL] + args + ["--output", killed], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            if os.path.isdir(parts) and len([f for f in os.listdir(parts) if f.endswith(".pcache")]) >= 2:
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the run finished before it could be killed"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert not os.path.exists(killed) and os.path.isdir(parts)
    done = len([f for f in os.listdir(parts) if f.endswith(".pcache")])
    assert 2 <= done < 12
    open(os.path.join(parts, "chunk-000011.pcache.x.tmp"), "wb").write(b"half-written")  # a write cut short
    summary = str(tmp_path / "s.json")
    assert run_tool(tool, args + ["--output", killed, "--summary-json", summary]) == 0  # same arguments: resumes
    s = json.load(open(summary))
    assert s["reused_from_previous_run"] == 2 * done and s["computed_now"] == 24 - 2 * done
    assert not os.path.exists(parts)
    clean = str(tmp_path / "clean.pcache")
    assert run_tool(tool, args + ["--output", clean]) == 0
    assert open(killed, "rb").read() == open(clean, "rb").read()
    # a finished output with the same settings is left alone; other settings are refused
    assert run_tool(tool, args + ["--output", clean, "--summary-json", summary]) == 0
    assert json.load(open(summary))["computed_now"] == 0
    assert run_tool(tool, args + ["--output", clean, "--max-side", "32"]) == 1
    assert run_tool(tool, args + ["--output", clean, "--max-side", "32", "--overwrite", "--workers", "0"]) == 0
    with ProposalCache(clean) as c:
        assert c.generator["max_side"] == 32 and len(c) == 24


def _descendants(pid):
    """pids of every living process below ``pid`` (from /proc)."""
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = open(f"/proc/{entry}/stat").read()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2 :].split()
            if fields[0] != "Z":
                children.setdefault(int(fields[1]), []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _alive(pid):
    try:
        stat = open(f"/proc/{pid}/stat").read()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"  # a zombie has exited (its new parent reaps it)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_no_process_outlives_a_sigkill_of_the_main_process(tmp_path):
    d = make_folder(str(tmp_path / "imgs"), 24)
    out = str(tmp_path / "c.pcache")
    proc = subprocess.Popen([sys.executable, TOOL, "--image-dir", d, "--method", "selective_search", "--preset", "paper",
                             "--chunk-size", "2", "--workers", "2", "--no-progress", "--output", out], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 180
        run = []
        while time.time() < deadline and proc.poll() is None:
            run = _descendants(proc.pid)  # resource tracker, forkserver, 2 workers
            if len(run) >= 4 and os.path.isdir(out + ".parts") and any(
                    f.endswith(".pcache") for f in os.listdir(out + ".parts")):
                break  # workers are computing
            time.sleep(0.05)
        assert proc.poll() is None and len(run) >= 4, "the run ended before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)  # the main process only, as the OOM killer or `kill -9 PID` would
        proc.wait()
        killed_at = time.time()
        while time.time() < killed_at + 10 and any(_alive(p) for p in run):
            time.sleep(0.1)
        left = [p for p in run if _alive(p)]
        print(f"\n{len(run)} processes of the run; all gone {time.time() - killed_at:.2f} s after the kill")
    finally:
        for p in _descendants(proc.pid) if proc.poll() is None else []:
            os.kill(p, signal.SIGKILL)
        if proc.poll() is None:
            proc.kill()
    assert not left, f"processes {left} outlived the killed run by 10 s"


def test_small_argument_fixes(tmp_path, tool, caplog, capsys):
    d = make_folder(str(tmp_path / "imgs"), 2)
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    out = str(tmp_path / "c.pcache")
    common = ["--image-dir", d, "--method", "felzenszwalb", "--workers", "0", "--no-progress", "--max-side", "32"]
    assert tool.build_parser().parse_args(["--max-pixels", "5e6"]).max_pixels == 5_000_000
    assert tool.build_parser().parse_args(["--max-pixels", "250_000_000"]).max_pixels == 250_000_000
    assert run_tool(tool, common + ["--max-pixels", "5e6", "--output", out]) == 0
    with ProposalCache(out) as c:
        assert c.generator["max_pixels"] == 5_000_000
    # --output under a file: one clear error, no traceback
    assert run_tool(tool, common + ["--output", str(blocker / "c.pcache")]) == 1
    assert f"cannot write {blocker}/c.pcache: {blocker} is a file, not a folder" in caplog.text
    # --import-json with no key matching the dataset: non-zero, nothing written
    official = tmp_path / "official.json"
    official.write_text(json.dumps({"n0000_1": [[0, 0, 5, 5]], "n0000_2": [[1, 1, 3, 3]]}))
    imported = str(tmp_path / "imported.pcache")
    with pytest.raises(SystemExit) as e:
        run_tool(tool, ["--image-dir", d, "--import-json", str(official), "--output", imported])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "none of the 2 keys of" in err and "Nothing was written" in err
    assert not os.path.exists(imported) and not [f for f in os.listdir(tmp_path) if f.startswith("imported")]


@pytest.mark.parametrize("argv, message", [
    ([], "--output PATH is required"),
    (["--output", "x.pcache", "--method", "selective_search"], "exactly one of --dataset"),
    (["--output", "x.pcache", "--dataset", "demo_images", "--image-dir", "d", "--method", "felzenszwalb"], "exactly one"),
    (["--output", "x.pcache", "--dataset", "no_such_set", "--method", "felzenszwalb"], "not registered"),
    (["--output", "x.pcache", "--image-dir", "/no/such/dir", "--method", "felzenszwalb"], "not a folder"),
    (["--output", "x.pcache", "--dataset", "demo_images"], "--method"),
    (["--output", "x.pcache", "--dataset", "demo_images", "--method", "felzenszwalb", "--preset", "turbo"], "unknown felzenszwalb preset"),
    (["--output", "x.pcache", "--dataset", "demo_images", "--method", "selective_search", "--filter", "ratioX"], "cannot parse filter"),
    (["--output", "x.pcache", "--dataset", "demo_images", "--method", "selective_search", "--fallbacks", "oops"], "unknown filter stage"),
    (["--output", "x.pcache", "--dataset", "demo_images", "--method", "selective_search", "--backend", "skimage_fh"], "does not compute"),
    (["--output", "x.pcache", "--dataset", "demo_images", "--method", "selective_search", "--mask-max-side", "64"], "only applies"),
    (["--output", "x.pcache", "--dataset", "demo_images", "--method", "felzenszwalb", "--num-shards", "4", "--shard-id", "4"], "--shard-id must be in [0, 3]"),
    (["--output", "x.pcache", "--dataset", "demo_images", "--method", "felzenszwalb", "--workers", "-1"], "--workers"),
    (["--output", "x.pcache", "--dataset", "demo_images", "--method", "felzenszwalb", "--max-side", "-5"], "max_side"),
    (["--output", "x.pcache", "--dataset", "demo_images", "--method", "selective_search", "--mode", "slow"], "invalid choice"),
    (["--output", "x.pcache", "--dataset", "demo_images", "--method", "felzenszwalb", "--max-pixels", "5.5"], "whole number"),
    (["--output", "x.pcache", "--dataset", "demo_images", "--method", "felzenszwalb", "--max-pixels", "lots"], "not a number"),
])
def test_bad_arguments_give_clear_errors(tool, capsys, argv, message):
    with pytest.raises(SystemExit) as e:
        tool.cli(argv)
    assert e.value.code == 2
    assert message in capsys.readouterr().err


def test_demo_images_keys_sizes_and_drawing(tmp_path, tool):
    out = str(tmp_path / "demo.pcache")
    assert tool.cli(["--dataset", "demo_images", "--method", "felzenszwalb", "--max-side", "48", "--limit", "2",
                      "--workers", "0", "--output", out, "--no-progress"]) == 0
    with ProposalCache(out) as c:
        assert c.keys() == ["astronaut", "chelsea"]
        assert c.image_size("astronaut") == (512, 512) and c["astronaut"].shape == (48, 48)
        assert c.header["source"] == {"dataset": "demo_images", "dataset_images": 2}
        assert c.generator["params"] == {"scale": 1000.0, "sigma": 0.8, "min_size": 1000}
        assert {"numpy", "opencv", "pillow", "scikit-image", "soco_d2"} <= set(c.versions)
    # draw them: the visualizer is a thin CLI too
    vis = load_tool("visualize_proposals")
    assert vis.cli(["--cache", out, "--dataset", "demo_images", "--images", "chelsea", "--output-dir", str(tmp_path)]) == 0
    drawn = Image.open(tmp_path / "chelsea.png")
    assert drawn.size == (451, 300)
