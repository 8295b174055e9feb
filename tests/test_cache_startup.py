"""A proposal or mask cache that does not fit its use fails at start-up, before a
model is built and before anything is written to OUTPUT_DIR, with one message;
a worker opening the wrong kind fails clearly too; an image the precompute
skipped counts as a bad image at train time."""
import os
import subprocess
import sys

import numpy as np
import pytest
import soco_d2  # noqa: F401
from PIL import Image

from soco_d2.config import get_pretrain_cfg
from soco_d2.data import get_pretrain_dicts
from soco_d2.data.mappers import LazyCache
from soco_d2.engine.checks import check_pretrain_inputs
from soco_d2.imageio import ImageSkip
from soco_d2.proposals.cache import CacheError

from config_utils import project_config_path
from tool_utils import load_tool, tool_path

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SOCO = project_config_path("demo/soco_r50_fpn.yaml")
DETCON = project_config_path("demo/detcon_b_r50_fpn.yaml")


@pytest.fixture(scope="module")
def caches(tmp_path_factory):
    """Real caches from the precompute tool: boxes and masks of demo_images, and
    boxes of another dataset (a folder of three photos)."""
    out = tmp_path_factory.mktemp("startup_caches")
    tool = load_tool("precompute_proposals")
    common = ["--workers", "0", "--no-progress", "--max-side", "48"]
    paths = {name: str(out / f"{name}.pcache") for name in ("boxes", "masks", "other")}
    assert tool.cli(["--dataset", "demo_images", "--method", "selective_search", "--output", paths["boxes"]] + common) == 0
    assert tool.cli(["--dataset", "demo_images", "--method", "felzenszwalb", "--output", paths["masks"]] + common) == 0
    folder = out / "other_images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(folder / f"photo{i}.png")
    assert tool.cli(["--image-dir", str(folder), "--method", "selective_search", "--output", paths["other"]] + common) == 0
    return paths


def _pretrain(config, output_dir, *opts, capsys):
    """The pretraining tool in this process: (exit status, stderr)."""
    try:
        status = load_tool("pretrain_net").cli(["--config-file", config, "OUTPUT_DIR", str(output_dir), *opts])
    except SystemExit as e:
        status = e.code
    return status, capsys.readouterr().err


@pytest.mark.parametrize("config, key, use, message", [
    (SOCO, "PROPOSALS.BOX_CACHE", "masks", "holds Felzenszwalb label maps, for DetCon's PROPOSALS.MASK_CACHE, but "
                                           "selective-search boxes, for SoCo's PROPOSALS.BOX_CACHE are needed"),
    (DETCON, "PROPOSALS.MASK_CACHE", "boxes", "holds selective-search boxes, for SoCo's PROPOSALS.BOX_CACHE, but "
                                              "Felzenszwalb label maps, for DetCon's PROPOSALS.MASK_CACHE are needed"),
    (SOCO, "PROPOSALS.BOX_CACHE", "other", "does not match the dataset: 9 of the 9 images of demo_images are not in it"),
], ids=["masks-as-BOX_CACHE", "boxes-as-MASK_CACHE", "another-dataset"])
def test_a_cache_that_does_not_fit_fails_before_anything_is_written(caches, tmp_path, capsys, config, key, use,
                                                                     message):
    out = tmp_path / "run"
    status, err = _pretrain(config, out, key, caches[use], capsys=capsys)
    assert status == 2 and err.startswith(f"error: {key} {caches[use]!r} ") and message in err, err
    assert "python tools/precompute_proposals.py --dataset demo_images --method" in err
    assert err.count("\n") == 1 and not out.exists()


def test_fitting_caches_pass_the_startup_check(caches, tmp_path):
    dicts = get_pretrain_dicts("demo_images")
    for config, key, use in ((SOCO, "PROPOSALS.BOX_CACHE", "boxes"), (DETCON, "PROPOSALS.MASK_CACHE", "masks")):
        cfg = get_pretrain_cfg()
        cfg.merge_from_file(config)
        cfg.merge_from_list([key, caches[use], "OUTPUT_DIR", str(tmp_path)])
        check_pretrain_inputs(cfg, dicts)  # no error
    cfg.merge_from_list(["MODEL.DETCON.MASK_SOURCE", "grid", "PROPOSALS.MASK_CACHE", "/no/such/file"])
    check_pretrain_inputs(cfg, dicts)  # grid masks read no cache


def test_the_cli_exits_non_zero_with_the_message(caches, tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, tool_path("pretrain_net"), "--config-file", DETCON,
                           "PROPOSALS.MASK_CACHE", caches["boxes"], "OUTPUT_DIR", str(out)],
                          capture_output=True, text=True, cwd=REPO, timeout=600)
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: PROPOSALS.MASK_CACHE") and "swapped" in last and "Traceback" not in proc.stderr
    assert not out.exists()


def test_workers_refuse_the_wrong_kind_and_skip_what_the_precompute_skipped(caches, tmp_path):
    wrong = LazyCache(caches["boxes"], "mask", key="PROPOSALS.MASK_CACHE", kind="masks")
    with pytest.raises(CacheError, match="PROPOSALS.MASK_CACHE .* holds selective-search boxes"):
        wrong.lookup("astronaut")
    from soco_d2.proposals import CacheWriter

    path = str(tmp_path / "skipped.pcache")
    with CacheWriter(path, "boxes", {"method": "selective_search", "generator": {}, "versions": {},
                                     "source": {"dataset": "demo_images"}}) as w:
        w.add_boxes("astronaut", 512, 512, [[0, 0, 10, 10]])
        w.add_skipped("chelsea", "huge: 451x300 = 135300 pixels > --max-pixels 1000")
    boxes = LazyCache(path, "proposal box", key="PROPOSALS.BOX_CACHE", kind="boxes")
    assert boxes.lookup("astronaut").tolist() == [[0, 0, 10, 10]]
    with pytest.raises(ImageSkip, match="skipped: the proposal box cache lists it as skipped \\(huge: "):
        boxes.lookup("chelsea")
    assert LazyCache(path, "proposal box", missing="whole_image", kind="boxes").lookup("chelsea") is None
    ids = [d["image_id"] for d in get_pretrain_dicts("demo_images")]
    boxes.check([i for i in ids if i in ("astronaut", "chelsea")])  # a skipped image is covered
