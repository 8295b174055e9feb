"""Unreadable images never kill a pretraining run: they are replaced by the next
image of the dataset (so --resume stays exact), counted once per file, logged
with their path, and limited by DATALOADER.MAX_BAD_IMAGES; 16-bit images are
scaled as in the proposal precompute, not clipped to white."""
import itertools
import logging
import os
import shutil

import numpy as np
import pytest
import soco_d2  # noqa: F401
import torch
from detectron2.data.detection_utils import read_image
from PIL import Image

from dist_utils import run_in_gloo_processes
from engine_utils import one_torch_thread, tiny_cfg  # noqa: F401  (autouse fixture)
from soco_d2.data import build_ssl_mapper, get_pretrain_dicts
from soco_d2.data.bad_images import BadImageLog, TooManyBadImagesError
from soco_d2.data.build import PretrainLoader
from soco_d2.engine import PretrainTrainer
from soco_d2.engine.metrics import read_metrics
from soco_d2.imageio import read_rgb


def _photo(seed, h=40, w=48):
    rng = np.random.default_rng(seed)
    img = np.clip(rng.normal(120, 40, (h, w, 3)), 0, 255).astype(np.uint8)
    img[h // 4 : h // 2, w // 3 :] = rng.integers(0, 256, 3)
    return img


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """5 photos, a zero-byte JPEG, a truncated JPEG and a 16-bit PNG whose values are all above 255."""
    root = tmp_path_factory.mktemp("bad_folder")
    for i in range(5):
        Image.fromarray(_photo(i)).save(root / f"good{i}.png")
    open(root / "empty.jpg", "wb").close()
    Image.fromarray(_photo(9, 120, 160)).save(root / "whole.jpg", quality=95)
    data = (root / "whole.jpg").read_bytes()
    (root / "trunc.jpg").write_bytes(data[: len(data) // 2])
    os.unlink(root / "whole.jpg")
    deep = (1000 + np.add.outer(np.arange(40) * 700, np.arange(48) * 500)).astype(np.uint16)
    Image.fromarray(deep).save(root / "deep16.png")  # mode I;16
    return str(root)


def _cfg(folder, out, **overrides):
    # 8 images, 4 per batch: iterations 0-1 are epoch 0, 2-3 epoch 1 (each meets every image once)
    opts = dict(DATASETS__TRAIN=f"('folder:{folder}',)", SOLVER__MAX_ITER=4, SOLVER__CHECKPOINT_PERIOD=2,
                DATALOADER__MAX_BAD_IMAGES=2)
    return tiny_cfg(str(out), **{**opts, **overrides})


def _train(cfg, resume=False):
    trainer = PretrainTrainer(cfg)
    trainer.resume_or_load(resume=resume)
    found_at_start = dict(trainer.train_loader.bad_images.found)
    trainer.train()
    return trainer, found_at_start


def test_16bit_images_are_scaled_not_clipped(folder):
    path = os.path.join(folder, "deep16.png")
    assert read_image(path, format="RGB").std() == 0  # detectron2's reader: all white
    rgb = read_rgb(path)
    assert rgb.dtype == np.uint8 and rgb.std() > 20 and rgb.min() == 4 and rgb.max() == 202  # 1000 -> 3.9, 51800 -> 201.6
    mapper = build_ssl_mapper(_cfg(folder, "unused"))
    (deep,) = [d for d in get_pretrain_dicts(f"folder:{folder}") if d["image_id"] == "deep16"]
    torch.manual_seed(0)
    np.random.seed(0)
    views = mapper(deep)["views"]
    assert all(float(v.float().std()) > 5 for v in views)  # never a constant view


def test_pretraining_skips_bad_images_counts_them_and_resumes_exactly(folder, tmp_path, caplog):
    out_a, out_b = tmp_path / "a", tmp_path / "b"
    with caplog.at_level(logging.WARNING, logger="soco_d2.data"):
        trainer, _ = _train(_cfg(folder, out_a))
    bad = {os.path.join(folder, "empty.jpg"), os.path.join(folder, "trunc.jpg")}
    found = trainer.train_loader.bad_images.found
    assert set(found) == bad and len(trainer.train_loader.bad_images) == 2  # the 16-bit PNG is not bad
    assert found[os.path.join(folder, "empty.jpg")].startswith("corrupt: cannot identify image file")
    assert found[os.path.join(folder, "trunc.jpg")].startswith("truncated: ")
    for path in bad:
        assert f"unreadable image {path}" in caplog.text
    assert "[2 distinct so far, DATALOADER.MAX_BAD_IMAGES limit 2]" in caplog.text
    rows_a = read_metrics(str(out_a / "metrics.json"))
    assert [r["iteration"] for r in rows_a] == [0, 1, 2, 3] and all(np.isfinite(r["total_loss"]) for r in rows_a)
    assert os.path.isfile(out_a / "model_final.pth")
    ckpt = torch.load(out_a / "model_0000001.pth", map_location="cpu", weights_only=False)
    assert set(ckpt["trainer"]["bad_images"]["found"]) == bad  # epoch 0 (iterations 0-1) met both

    # resume after iteration 1, with dataloader workers: the count continues, and epoch 1 (which meets
    # both bad files again) gives the same samples, so the same losses and weights
    os.makedirs(out_b)
    shutil.copy(out_a / "model_0000001.pth", out_b)
    (out_b / "last_checkpoint").write_text("model_0000001.pth")
    resumed, found_at_start = _train(_cfg(folder, out_b, DATALOADER__NUM_WORKERS=2), resume=True)
    assert set(found_at_start) == bad and set(resumed.train_loader.bad_images.found) == bad
    rows_b = read_metrics(str(out_b / "metrics.json"))
    assert [r["iteration"] for r in rows_b] == [2, 3]
    for ra, rb in zip(rows_a[2:], rows_b):
        assert rb["total_loss"] == pytest.approx(ra["total_loss"], rel=1e-5)
    final_a, final_b = (torch.load(o / "model_final.pth", map_location="cpu", weights_only=False)["model"]
                        for o in (out_a, out_b))
    for key in final_a:
        torch.testing.assert_close(final_b[key], final_a[key], rtol=1e-5, atol=1e-6, msg=key)
    shutil.rmtree(tmp_path)  # checkpoints are ~100 MB each


def test_more_bad_images_than_the_limit_stop_the_run_with_the_list(folder, tmp_path):
    with pytest.raises(TooManyBadImagesError) as e:
        _train(_cfg(folder, tmp_path, DATALOADER__MAX_BAD_IMAGES=1, SOLVER__CHECKPOINT_PERIOD=100))
    message = str(e.value)
    assert "2 distinct images could not be read, more than DATALOADER.MAX_BAD_IMAGES = 1" in message
    assert os.path.join(folder, "empty.jpg") in message and os.path.join(folder, "trunc.jpg") in message
    assert not os.path.exists(tmp_path / "model_final.pth")


def test_bad_image_log_counts_files_not_occurrences():
    log = BadImageLog(limit=2)
    log.update({"/a.jpg": "corrupt: x"})
    log.update({"/a.jpg": "corrupt: x", "/b.jpg": "missing: y"})
    log.update({"/b.jpg": "missing: y"})
    assert len(log) == 2
    restored = BadImageLog(limit=2)
    restored.load_state_dict(log.state_dict())
    assert restored.found == log.found
    with pytest.raises(TooManyBadImagesError, match="3 distinct images"):
        restored.update({"/c.jpg": "truncated: z"})
    unlimited = BadImageLog(limit=-1)
    unlimited.update({f"/{i}.jpg": "corrupt" for i in range(50)})
    assert len(unlimited) == 50


def _epoch_0_bad_images(folder, limit, rank=None, world_size=None):
    """This process's share of epoch 0 (seed 3): its bad-image log, or the error that stopped it."""
    dicts = get_pretrain_dicts(f"folder:{folder}")
    loader = PretrainLoader(dicts, build_ssl_mapper(_cfg(folder, "unused")), 4, seed=3, rank=rank,
                            world_size=world_size, max_bad_images=limit)
    try:
        batches = list(itertools.islice(iter(loader), 2))
    except TooManyBadImagesError as e:
        return {"found": sorted(loader.bad_images.found), "error": str(e)}
    return {"found": sorted(loader.bad_images.found), "images": sum(len(b["image_ids"]) for b in batches)}


def _without_and_with_a_limit(folder):
    return _epoch_0_bad_images(folder, -1), _epoch_0_bad_images(folder, 1)


def test_processes_share_one_count(folder):
    """Seed 3 puts the zero-byte file in rank 0's half of epoch 0 and the truncated one in rank 1's;
    the processes exchange what they found, so each holds both and both stop together."""
    empty, trunc = os.path.join(folder, "empty.jpg"), os.path.join(folder, "trunc.jpg")
    alone = [_epoch_0_bad_images(folder, -1, rank=r, world_size=2)["found"] for r in range(2)]  # no process group
    assert alone == [[empty], [trunc]]
    for shared, stopped in run_in_gloo_processes(_without_and_with_a_limit, 2, folder):
        assert shared == {"found": [empty, trunc], "images": 4}
        assert stopped["found"] == [empty, trunc] and "more than DATALOADER.MAX_BAD_IMAGES = 1" in stopped["error"]
