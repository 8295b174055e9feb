"""The SoCo configs run DDP with find_unused_parameters False: under 2-process gloo
DDP every SoCo variant (C4, FPN, SoCo*, FPN with POOL_ALL_LEVELS) gives every
trainable parameter a gradient on every rank, although with 64 px views no box can
reach P4 or P5 (sqrt(area) <= 64 < 96): a level without boxes still runs its
RoIAlign backward.  With an unused parameter, DDP's second step would raise
("Expected to have finished reduction in the prior iteration")."""
import pytest
import soco_d2  # noqa: F401  (first: the spawned processes import this module too)
from detectron2.utils import comm

from dist_utils import run_in_gloo_processes
from engine_utils import one_torch_thread, write_random_box_cache  # noqa: F401  (autouse fixture)
from soco_d2.config import get_pretrain_cfg
from config_utils import project_config_path

NARROW = [
    "MODEL.DEVICE", "cpu", "MODEL.RESNETS.DEPTH", 18, "MODEL.RESNETS.RES2_OUT_CHANNELS", 64,
    "MODEL.FPN.OUT_CHANNELS", 32, "MODEL.ROI_BOX_HEAD.CONV_DIM", 32, "MODEL.ROI_BOX_HEAD.FC_DIM", 64,
    "MODEL.SSL.PROJ_HIDDEN_DIM", 64, "MODEL.SSL.PROJ_DIM", 32, "MODEL.SSL.PRED_HIDDEN_DIM", 64,
]
# C4's region head is detectron2's bottleneck res5: R50 depth, narrow widths
C4 = ["MODEL.DEVICE", "cpu", "MODEL.RESNETS.STEM_OUT_CHANNELS", 16, "MODEL.RESNETS.RES2_OUT_CHANNELS", 64,
      "MODEL.RESNETS.WIDTH_PER_GROUP", 16, "MODEL.SSL.PROJ_HIDDEN_DIM", 64, "MODEL.SSL.PROJ_DIM", 32,
      "MODEL.SSL.PRED_HIDDEN_DIM", 64]
VARIANTS = {
    "SoCo_FPN": ("soco_r50_fpn.yaml", NARROW + ["INPUT.SSL.VIEW_SIZES", [64, 64, 32]]),
    "SoCo_FPN POOL_ALL_LEVELS": ("soco_r50_fpn.yaml", NARROW + ["INPUT.SSL.VIEW_SIZES", [64, 64, 32],
                                                                 "MODEL.SOCO.POOL_ALL_LEVELS", True]),
    "SoCo*": ("soco_star_r50_fpn.yaml", NARROW + ["INPUT.SSL.VIEW_SIZES", [64, 64, 64, 32]]),
    "SoCo_C4": ("soco_r50_c4.yaml", C4 + ["INPUT.SSL.VIEW_SIZES", [64, 64]]),
}


@pytest.fixture(scope="module")
def box_cache(tmp_path_factory):
    """Random boxes (10-60 % of each side) for the demo photos."""
    return write_random_box_cache(str(tmp_path_factory.mktemp("boxes") / "boxes.pcache"))


def variant_cfg(name: str, box_cache: str, output_dir: str):
    config, opts = VARIANTS[name]
    cfg = get_pretrain_cfg()
    cfg.merge_from_file(project_config_path(config))
    cfg.merge_from_list(opts + [
        "PROPOSALS.BOX_CACHE", box_cache, "DATASETS.TRAIN", ("demo_images",), "DATALOADER.NUM_WORKERS", 0,
        "SOLVER.IMS_PER_BATCH", 4, "SOLVER.EPOCHS", 0, "SOLVER.MAX_ITER", 4, "SOLVER.WARMUP_ITERS", 1,
        "SOLVER.AMP.ENABLED", False, "OUTPUT_DIR", output_dir,
    ])
    cfg.freeze()
    return cfg


def two_steps_of_every_variant(cfgs: dict) -> dict:
    """Per variant: DDP's find_unused_parameters, and the trainable parameters left
    without a gradient after each of two steps on this rank."""
    import torch
    from detectron2.utils.events import EventStorage

    from soco_d2.engine import PretrainTrainer
    from soco_d2.engine.hooks import unwrap_model

    out = {}
    for name, cfg in cfgs.items():
        torch.manual_seed(0)
        trainer = PretrainTrainer(cfg)
        ddp = trainer._trainer.model
        model = unwrap_model(ddp)
        trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        missing = []
        with EventStorage(0):
            for _ in range(2):  # an unused parameter makes DDP raise in the second forward
                trainer._trainer.run_step()
                missing.append([n for n, p in trainable if p.grad is None])
        out[name] = {"find_unused": ddp.find_unused_parameters, "world": comm.get_world_size(),
                     "trainable": len(trainable), "missing": missing}
    return out


def test_every_soco_variant_uses_every_parameter_under_ddp(box_cache, tmp_path):
    cfgs = {name: variant_cfg(name, box_cache, str(tmp_path / name.replace(" ", "_"))) for name in VARIANTS}
    assert all(not cfg.SOLVER.DDP_FIND_UNUSED_PARAMETERS for cfg in cfgs.values())
    ranks = run_in_gloo_processes(two_steps_of_every_variant, 2, cfgs)
    for rank in ranks:
        for name, result in rank.items():
            assert result["world"] == 2 and result["find_unused"] is False, name
            assert result["trainable"] > 50, name
            assert result["missing"] == [[], []], (name, result["missing"])
