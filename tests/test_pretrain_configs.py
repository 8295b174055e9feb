"""The paper configs carry the papers' hyperparameters (numbers from
docs/methods/*.md), and every pretraining config builds its model."""
import glob
import os

import pytest
from detectron2.modeling import build_model

from soco_d2 import get_pretrain_cfg
from config_utils import project_config_path


def load(name):
    cfg = get_pretrain_cfg()
    cfg.merge_from_file(project_config_path(name))
    return cfg


SOCO_COMMON = {
    "MODEL.META_ARCHITECTURE": "SoCo",
    "MODEL.RESNETS.DEPTH": 50,
    "MODEL.RESNETS.STRIDE_IN_1X1": False,
    "MODEL.RESNETS.NORM": "SyncBN",
    "MODEL.BACKBONE.FREEZE_AT": 0,
    "MODEL.PIXEL_MEAN": [123.675, 116.280, 103.530],
    "MODEL.PIXEL_STD": [58.395, 57.120, 57.375],
    "INPUT.FORMAT": "RGB",
    "MODEL.SSL.PROJ_HIDDEN_DIM": 4096,
    "MODEL.SSL.PROJ_DIM": 256,
    "MODEL.SSL.PRED_HIDDEN_DIM": 4096,
    "MODEL.SSL.HEAD_NORM": "SyncBN",
    "MODEL.SSL.MOMENTUM": 0.99,
    "MODEL.SSL.MOMENTUM_SCHEDULE": "cosine",
    "MODEL.SSL.ZERO_INIT_RESIDUAL": True,
    "MODEL.SOCO.POOLER_SAMPLING_RATIO": 0,
    "MODEL.SOCO.POOLER_TYPE": "ROIAlignV2",
    "INPUT.SSL.MAPPER": "SoCoMapper",
    "INPUT.SSL.COLOR_JITTER": (0.4, 0.4, 0.2, 0.1),
    "INPUT.SSL.JITTER_PROB": 0.8,
    "INPUT.SSL.GRAYSCALE_PROB": 0.2,
    "INPUT.SSL.BLUR_SIGMA": (0.1, 2.0),
    "INPUT.SSL.FLIP_PROB": 0.5,
    "INPUT.SSL.CROP_ATTEMPTS": 10,
    "INPUT.SSL.CUTOUT_PROB": 0.5,
    "INPUT.SSL.CUTOUT_RATIO": (0.1, 0.3),
    "PROPOSALS.NUM_PER_VIEW": 4,
    "PROPOSALS.MAX_TRIES": 5,
    "SOLVER.OPTIMIZER": "LARS",
    "SOLVER.IMS_PER_BATCH": 2048,
    "SOLVER.BASE_LR": 1.0,
    "SOLVER.REFERENCE_BATCH_SIZE": 256,
    "SOLVER.MOMENTUM": 0.9,
    "SOLVER.WEIGHT_DECAY": 1e-5,
    "SOLVER.LARS_ETA": 0.001,
    "SOLVER.LARS_EXCLUDE_1D": True,
    "SOLVER.WARMUP_EPOCHS": 10,
    "SOLVER.WARMUP_FACTOR": 0.01,
    "SOLVER.LR_SCHEDULER_NAME": "WarmupCosineToEnd",
    "SOLVER.COSINE_END_LR": 1e-6,
}
SOCO_FPN = {
    "MODEL.BACKBONE.NAME": "build_resnet_fpn_backbone",
    "MODEL.FPN.NORM": "SyncBN",
    "MODEL.FPN.OUT_CHANNELS": 256,
    "MODEL.SOCO.REGION_HEAD": "FPN",
    "MODEL.SOCO.IN_FEATURES": ["p2", "p3", "p4", "p5"],
    "MODEL.SOCO.POOLER_RESOLUTION": 7,
    "MODEL.SOCO.LEVEL_ASSIGNMENT": "soco",
    "MODEL.SOCO.LEVEL_THRESHOLDS": [48, 96, 192],
    "MODEL.ROI_BOX_HEAD.NAME": "FastRCNNConvFCHead",
    "MODEL.ROI_BOX_HEAD.NUM_CONV": 4,
    "MODEL.ROI_BOX_HEAD.CONV_DIM": 256,
    "MODEL.ROI_BOX_HEAD.NUM_FC": 1,
    "MODEL.ROI_BOX_HEAD.FC_DIM": 1024,
    "MODEL.ROI_BOX_HEAD.NORM": "SyncBN",
    "INPUT.SSL.CROP_SCALE": (0.5, 1.0),
    "PROPOSALS.JITTER_PROB": 0.5,
    "PROPOSALS.JITTER_RATIO": 0.1,
}
PAPER = {
    "soco_r50_fpn.yaml": {
        **SOCO_COMMON,
        **SOCO_FPN,
        "INPUT.SSL.VIEW_SIZES": [224, 224, 112],
        "INPUT.SSL.VIEW_TYPES": ["whole", "crop", "crop"],
        "INPUT.SSL.BLUR_PROBS": [1.0, 0.1, 0.1],
        "INPUT.SSL.SOLARIZE_PROBS": [0.0, 0.2, 0.2],
        "INPUT.SSL.CUTOUT_VIEWS": [1, 2],
        "SOLVER.EPOCHS": 100,
    },
    "soco_r50_fpn_400ep.yaml": {**SOCO_COMMON, **SOCO_FPN, "INPUT.SSL.CUTOUT_VIEWS": [], "SOLVER.EPOCHS": 400},
    "soco_star_r50_fpn.yaml": {
        **SOCO_COMMON,
        **SOCO_FPN,
        "INPUT.SSL.VIEW_SIZES": [224, 224, 192, 112],
        "INPUT.SSL.VIEW_TYPES": ["whole", "crop", "crop", "downsample:1"],
        "INPUT.SSL.BLUR_PROBS": [1.0, 0.1, 0.1, 0.1],
        "INPUT.SSL.SOLARIZE_PROBS": [0.0, 0.2, 0.2, 0.2],
        "INPUT.SSL.CUTOUT_VIEWS": [],
        "SOLVER.EPOCHS": 400,
    },
    "soco_r50_c4.yaml": {
        **SOCO_COMMON,
        "MODEL.BACKBONE.NAME": "build_resnet_backbone",
        "MODEL.RESNETS.OUT_FEATURES": ["res4"],
        "MODEL.SOCO.REGION_HEAD": "C4",
        "MODEL.SOCO.IN_FEATURES": ["res4"],
        "MODEL.SOCO.POOLER_RESOLUTION": 14,
        "INPUT.SSL.VIEW_SIZES": [224, 224],
        "INPUT.SSL.VIEW_TYPES": ["whole", "crop"],
        "INPUT.SSL.CROP_SCALE": (0.6, 1.0),
        "INPUT.SSL.BLUR_PROBS": [1.0, 0.1],
        "INPUT.SSL.SOLARIZE_PROBS": [0.0, 0.2],
        "INPUT.SSL.CUTOUT_VIEWS": [1],
        "PROPOSALS.JITTER_PROB": 0.0,
        "SOLVER.EPOCHS": 100,
    },
    "byol_r50.yaml": {
        "MODEL.META_ARCHITECTURE": "BYOL",
        "MODEL.RESNETS.DEPTH": 50,
        "MODEL.RESNETS.STRIDE_IN_1X1": False,
        "MODEL.SSL.FEATURE": "res5",
        "MODEL.SSL.PROJ_HIDDEN_DIM": 4096,
        "MODEL.SSL.PROJ_DIM": 256,
        "MODEL.SSL.PRED_HIDDEN_DIM": 4096,
        "MODEL.SSL.MOMENTUM": 0.996,
        "MODEL.SSL.MOMENTUM_SCHEDULE": "cosine",
        "INPUT.SSL.MAPPER": "ImageLevelMapper",
        "INPUT.SSL.VIEW_SIZES": [224, 224],
        "INPUT.SSL.CROP_SCALE": (0.08, 1.0),
        "INPUT.SSL.INTERPOLATION": "bicubic",
        "INPUT.SSL.BLUR_PROBS": [1.0, 0.1],
        "INPUT.SSL.SOLARIZE_PROBS": [0.0, 0.2],
        "SOLVER.OPTIMIZER": "LARS",
        "SOLVER.IMS_PER_BATCH": 4096,
        "SOLVER.BASE_LR": 0.2,
        "SOLVER.REFERENCE_BATCH_SIZE": 256,
        "SOLVER.WEIGHT_DECAY": 1.5e-6,
        "SOLVER.LARS_EXCLUDE_1D": True,
        "SOLVER.WARMUP_EPOCHS": 10,
        "SOLVER.WARMUP_FACTOR": 0.0,
        "SOLVER.COSINE_END_LR": 0.0,
        "SOLVER.EPOCHS": 1000,
    },
}


def get(cfg, dotted):
    node = cfg
    for part in dotted.split("."):
        node = node[part]
    return node


def same(a, b):
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) or isinstance(b, float):
        return a == pytest.approx(b, rel=1e-6)
    return a == b


@pytest.mark.parametrize("name", sorted(PAPER))
def test_paper_config_carries_the_paper_numbers(name):
    cfg = load(name)
    wrong = {key: (get(cfg, key), want) for key, want in PAPER[name].items() if not same(get(cfg, key), want)}
    assert not wrong, wrong
    assert cfg.MODEL.WEIGHTS == "" and cfg.SEED >= 0


def test_every_method_config_has_a_demo_twin():
    paper = {os.path.basename(p) for p in glob.glob(project_config_path("*.yaml"))}
    paper = {p for p in paper if not p.startswith("Base-") and "_400ep" not in p}
    demo = {os.path.basename(p) for p in glob.glob(project_config_path("demo/*.yaml"))}
    assert paper and paper <= demo, sorted(paper - demo)


@pytest.mark.parametrize("name", sorted(PAPER), ids=str)
def test_paper_config_builds_on_cpu(name):
    cfg = load(name)
    cfg.MODEL.DEVICE = "cpu"
    model = build_model(cfg)
    # the online encoder is a stock detectron2 backbone: its names are the model zoo's
    keys = model.state_dict().keys()
    assert any(k.startswith("backbone.") for k in keys)


@pytest.mark.parametrize("name", sorted(os.path.basename(p) for p in glob.glob(project_config_path("*.yaml"))
                                        if not os.path.basename(p).startswith("Base-RCNN")))
def test_pretraining_configs_benchmark_cudnn_on_their_fixed_view_sizes(name):
    cfg = load(name)
    if name.startswith("Base-"):
        assert cfg.CUDNN_BENCHMARK
        return
    # square views of fixed sides: every step sees the same input shapes
    assert cfg.CUDNN_BENCHMARK and all(isinstance(s, int) and s > 0 for s in cfg.INPUT.SSL.VIEW_SIZES), name
    assert not cfg.SOLVER.DDP_FIND_UNUSED_PARAMETERS, name  # tests/test_ddp_unused_parameters.py


@pytest.mark.parametrize("name", sorted(os.path.basename(p) for p in glob.glob(project_config_path("*.yaml"))))
def test_paper_configs_leave_the_probe_hook_off(name):
    assert not load(name).TEST.PROBE.ENABLED  # their users set the probe datasets first


@pytest.mark.parametrize("name", sorted(os.path.basename(p) for p in glob.glob(project_config_path("demo/*.yaml"))))
def test_demo_configs_probe_the_demo_instances_with_the_models_own_features(name):
    """The settings check of pretrain_net.py, then the hook's check on the method's own
    model (built on the meta device: names and shapes only)."""
    import torch

    from soco_d2.evaluation import check_probe_settings, extractor_from_cfg
    from soco_d2.evaluation.probe import configured_levels

    cfg = load(f"demo/{name}")
    probe = cfg.TEST.PROBE
    assert probe.ENABLED and 0 < probe.PERIOD < cfg.SOLVER.MAX_ITER
    assert (probe.REGION_MEMORY, probe.REGION_QUERIES) == ("demo_instances_train", "demo_instances_val")
    check_probe_settings(cfg)
    cfg.MODEL.DEVICE = "meta"
    with torch.device("meta"):
        model = build_model(cfg)
    assert configured_levels(cfg, extractor_from_cfg(cfg, model)) == [
        ("region", "demo_instances_train", "demo_instances_val")]
