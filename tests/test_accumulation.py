"""SOLVER.ACCUMULATE_STEPS: the batch of one optimizer step in equal slices gives the
step of the whole batch (BYOL, SoCo, DetCon with own-image negatives only; GroupNorm,
since BatchNorm's statistics are per slice), over the same samples, and is refused at
start-up where it would not."""
import itertools
import json
import os

import pytest
import soco_d2  # noqa: F401  (first: spawned processes import this module too)
import torch

from dist_utils import assert_same_step, one_training_step, run_in_gloo_processes
from engine_utils import one_torch_thread, tiny_cfg, write_random_box_cache  # noqa: F401  (autouse fixture)
from config_utils import project_config_path
from soco_d2.config import get_pretrain_cfg
from soco_d2.data import build_ssl_mapper
from soco_d2.data.build import PretrainLoader, load_pretrain_dicts
from soco_d2.engine import PretrainTrainer
from soco_d2.engine.checks import check_pretrain_inputs
from soco_d2.engine.hooks import unwrap_model
from soco_d2.errors import InputError

GN = {"MODEL__RESNETS__NORM": "GN", "MODEL__SSL__HEAD_NORM": "GN"}
TINY = {"SOLVER__MAX_ITER": 2, "SOLVER__WARMUP_ITERS": 1, "SOLVER__CHECKPOINT_PERIOD": 1,
        "INPUT__SSL__VIEW_SIZES": "[64, 64]"}
EPS = torch.finfo(torch.float32).eps


def run(cfg, accumulate: int, output_dir) -> tuple[dict, dict, list[dict]]:
    """Train ``cfg`` for 2 iterations with ``accumulate`` slices per step from the same init:
    (initial weights, weights after the first step, metrics rows)."""
    cfg = cfg.clone()
    cfg.defrost()
    cfg.SOLVER.ACCUMULATE_STEPS, cfg.OUTPUT_DIR = accumulate, str(output_dir)
    cfg.SOLVER.CHECKPOINT_PERIOD = 1
    cfg.freeze()
    check_pretrain_inputs(cfg, load_pretrain_dicts(cfg.DATASETS.TRAIN))
    torch.manual_seed(0)
    trainer = PretrainTrainer(cfg)
    before = {k: v.clone() for k, v in unwrap_model(trainer._trainer.model).state_dict().items()}
    trainer.resume_or_load(resume=False)
    trainer.train()
    first = torch.load(os.path.join(cfg.OUTPUT_DIR, "model_0000000.pth"), weights_only=False)
    rows = [json.loads(line) for line in open(os.path.join(cfg.OUTPUT_DIR, "metrics.json"))]
    assert trainer.iter == cfg.SOLVER.MAX_ITER == 2 and first["iteration"] == 0
    assert [r["iteration"] for r in rows] == [0, 1]
    return before, first["model"], rows


def compare(cfg, tmp_path) -> tuple[float, float]:
    """Whole batch vs 2 slices from the same init: (largest relative difference of the first
    step's update, max |update_sliced - update_whole| / max |update_whole| over every tensor
    (online and momentum target) whose update is resolved (> 1000 float32 steps of its
    weights); largest relative difference of a logged loss, lr or tau in the 2 iterations
    (the second iteration's loss depends on the first step and on the second batch))."""
    before, whole, rows_whole = run(cfg, 1, tmp_path / "whole")
    _, sliced, rows_sliced = run(cfg, 2, tmp_path / "sliced")
    worst_update, resolved = 0.0, 0
    for name, value in whole.items():
        if torch.is_floating_point(value):
            update = (value - before[name]).abs().max().item()
            if update > 1000 * EPS * value.abs().max().item():
                worst_update = max(worst_update, (sliced[name] - value).abs().max().item() / update)
                resolved += 1
    assert resolved > 20, "no step to compare"
    keys = [k for k in rows_whole[0] if k.startswith("loss_") or k in ("total_loss", "lr", "momentum_tau")]
    worst_logged = max(abs(s[k] - w[k]) / max(abs(w[k]), 1e-6) for w, s in zip(rows_whole, rows_sliced) for k in keys)
    return worst_update, worst_logged


def test_byol_two_slices_take_the_step_of_the_whole_batch(tmp_path):
    update, logged = compare(tiny_cfg(str(tmp_path), **GN, **TINY), tmp_path)
    print(f"BYOL, GroupNorm: first step's update {update:.1e}, logged losses/lr/tau {logged:.1e} relative")
    assert update < 1e-3 and logged < 1e-5


def test_with_batchnorm_the_slices_step_differs(tmp_path):
    """The caveat the docs state: BN's batch statistics are those of the slice."""
    update, logged = compare(tiny_cfg(str(tmp_path), **TINY), tmp_path)
    print(f"BYOL, BatchNorm: first step's update {update:.1e}, logged losses/lr/tau {logged:.1e} relative")
    assert update > 0.1


@pytest.fixture(scope="module")
def box_cache(tmp_path_factory):
    return write_random_box_cache(str(tmp_path_factory.mktemp("boxes") / "boxes.pcache"))


def small_cfg(config: str, output_dir, *opts):
    """A paper config on R18 with narrow heads, GroupNorm everywhere, 2 iterations of 4 images."""
    cfg = get_pretrain_cfg()
    cfg.merge_from_file(project_config_path(config))
    cfg.merge_from_list([
        "MODEL.DEVICE", "cpu", "MODEL.RESNETS.DEPTH", 18, "MODEL.RESNETS.RES2_OUT_CHANNELS", 64,
        "MODEL.RESNETS.NORM", "GN", "MODEL.FPN.NORM", "GN", "MODEL.FPN.OUT_CHANNELS", 64,
        "MODEL.ROI_BOX_HEAD.NORM", "GN", "MODEL.ROI_BOX_HEAD.CONV_DIM", 64, "MODEL.ROI_BOX_HEAD.FC_DIM", 128,
        "MODEL.SSL.HEAD_NORM", "GN", "MODEL.SSL.PROJ_HIDDEN_DIM", 64, "MODEL.SSL.PROJ_DIM", 32,
        "MODEL.SSL.PRED_HIDDEN_DIM", 64, "DATASETS.TRAIN", ("demo_images",), "DATALOADER.NUM_WORKERS", 0,
        "SOLVER.IMS_PER_BATCH", 4, "SOLVER.EPOCHS", 0, "SOLVER.MAX_ITER", 2, "SOLVER.WARMUP_EPOCHS", 0.0,
        "SOLVER.WARMUP_ITERS", 0, "SOLVER.CHECKPOINT_PERIOD", 100, "SOLVER.AMP.ENABLED", False,
        "SOLVER.LOG_PERIOD", 1, "SOLVER.LOG_WINDOW", 1, "SEED", 5, "OUTPUT_DIR", str(output_dir), *opts,
    ])
    return cfg


def test_soco_fpn_two_slices_take_the_step_of_the_whole_batch(box_cache, tmp_path):
    """SoCo's loss is per image (mean matched cosine over its boxes), then the mean over images."""
    cfg = small_cfg("soco_r50_fpn.yaml", tmp_path, "INPUT.SSL.VIEW_SIZES", [64, 64, 32],
                    "PROPOSALS.BOX_CACHE", box_cache)
    update, logged = compare(cfg, tmp_path)
    print(f"SoCo_FPN, GroupNorm: first step's update {update:.1e}, logged losses/lr/tau {logged:.1e} relative")
    assert update < 1e-3 and logged < 1e-5


def test_detcon_with_own_image_negatives_two_slices_take_the_step_of_the_whole_batch(tmp_path):
    cfg = small_cfg("detcon_b_r50.yaml", tmp_path, "INPUT.SSL.VIEW_SIZES", [96, 96],
                    "MODEL.DETCON.MASK_SOURCE", "grid", "MODEL.DETCON.CROSS_IMAGE_NEGATIVES", False)
    update, logged = compare(cfg, tmp_path)
    print(f"DetCon-B own-image negatives, GroupNorm: first step's update {update:.1e}, logged losses/lr/tau "
          f"{logged:.1e} relative")
    assert update < 1e-3 and logged < 1e-5


def test_slices_are_the_samples_of_the_whole_batch_on_every_rank(tmp_path):
    cfg = tiny_cfg(str(tmp_path))
    dicts, mapper = load_pretrain_dicts(cfg.DATASETS.TRAIN), build_ssl_mapper(cfg)
    whole = [b["image_ids"] for b in itertools.islice(PretrainLoader(dicts, mapper, 4, seed=3), 3)]
    for world in (1, 2):
        per_rank = [list(itertools.islice(PretrainLoader(dicts, mapper, 4, seed=3, rank=r, world_size=world,
                                                         accumulate_steps=2), 3)) for r in range(world)]
        for step, ids in enumerate(whole):
            slices = [per_rank[r][step] for r in range(world)]
            assert all(len(s) == 2 and all(len(b["image_ids"]) == 2 // world for b in s) for s in slices)
            # slice j over all ranks = positions [j B/2, (j+1) B/2) of the step's batch
            for j in range(2):
                assert sorted(i for s in slices for i in s[j]["image_ids"]) == sorted(ids[2 * j: 2 * j + 2])
    resumed = PretrainLoader(dicts, mapper, 4, seed=3, accumulate_steps=2)
    resumed.start_iter = 2
    assert [i for b in next(iter(resumed)) for i in b["image_ids"]] == whole[2]
    with pytest.raises(ValueError, match="ACCUMULATE_STEPS"):
        PretrainLoader(dicts, mapper, 4, seed=3, rank=0, world_size=2, accumulate_steps=4)


@pytest.mark.parametrize("config,opts,reason", [
    ("mocov2_r50.yaml", [], "queue"),
    ("densecl_r50.yaml", [], "queue"),
    ("detcon_b_r50.yaml", ["MODEL.DETCON.MASK_SOURCE", "grid"], "every other image"),
    ("byol_r50.yaml", ["SOLVER.ACCUMULATE_STEPS", 3], "does not divide SOLVER.IMS_PER_BATCH"),
    ("byol_r50.yaml", ["SOLVER.ACCUMULATE_STEPS", 0], ">= 1"),
], ids=["mocov2", "densecl", "detcon-cross-image", "not-dividing", "zero"])
def test_refused_at_start_up_where_not_exact(config, opts, reason, tmp_path):
    cfg = get_pretrain_cfg()
    cfg.merge_from_file(project_config_path(config))
    cfg.merge_from_list(["DATASETS.TRAIN", ("demo_images",), "SOLVER.ACCUMULATE_STEPS", 2, *opts])
    with pytest.raises(InputError, match=reason) as err:
        check_pretrain_inputs(cfg, load_pretrain_dicts(cfg.DATASETS.TRAIN))
    print(err.value)


def test_two_processes_with_two_slices_take_the_step_of_one_process(tmp_path):
    """DDP: the first slice's backward runs under no_sync, the last all-reduces the sum."""
    (single,) = run_in_gloo_processes(one_training_step, 1, tiny_cfg(str(tmp_path / "one"), **GN))
    ranks = run_in_gloo_processes(one_training_step, 2, tiny_cfg(str(tmp_path / "two"), SOLVER__ACCUMULATE_STEPS=2,
                                                                 **GN))
    assert [r["batch_size"] for r in ranks] == [2, 2] and ranks[0]["norms"] == ["GroupNorm"]
    assert_same_step(single, ranks)


def test_detcon_loss_without_cross_image_negatives_is_the_mean_of_per_image_losses():
    """What makes accumulation exact for it (and not with cross-image negatives; the loss runs in float32)."""
    from soco_d2.modeling.losses import detcon_loss

    g = torch.Generator().manual_seed(0)
    p1, p2, t1, t2 = (torch.randn(6, 4, 8, generator=g, ) for _ in range(4))
    ids1, ids2 = (torch.randint(0, 3, (6, 4), generator=g) for _ in range(2))  # duplicates and absent ids

    def per_image(**kwargs):
        return torch.stack([detcon_loss(p1[i:i + 1], p2[i:i + 1], t1[i:i + 1], t2[i:i + 1], ids1[i:i + 1],
                                        ids2[i:i + 1], **kwargs) for i in range(6)]).mean()

    own_only = detcon_loss(p1, p2, t1, t2, ids1, ids2, cross_image_negatives=False)
    assert own_only.item() == pytest.approx(per_image().item(), rel=1e-6)
    assert own_only.item() == pytest.approx(per_image(cross_image_negatives=False).item(), rel=1e-6)
    assert detcon_loss(p1, p2, t1, t2, ids1, ids2).item() > own_only.item() + 0.1  # more negatives
    with pytest.raises(ValueError, match="nothing to contrast"):
        detcon_loss(p1, p2, t1, t2, ids1, ids2, local_negatives=False, cross_image_negatives=False)
