"""Tiny, fast pretraining configs for engine tests: BYOL on a ResNet-18 with 32 px
views of the embedded demo photos (about 0.3 s per iteration on 2 CPU cores)."""
from __future__ import annotations

import pytest
import soco_d2  # noqa: F401  (compat shims before detectron2)
import torch

from config_utils import project_config_path
from soco_d2.config import get_pretrain_cfg

BASE_CONFIG = project_config_path("Base-Pretrain.yaml")


def tiny_opts(output_dir: str, **overrides) -> list[str]:
    """KEY VALUE strings (usable on tools/pretrain_net.py's command line and in
    ``merge_from_list``); ``overrides`` use '__' for '.', e.g. SOLVER__MAX_ITER=4 (None drops the key)."""
    opts = {
        "MODEL.META_ARCHITECTURE": "BYOL",
        "MODEL.DEVICE": "cpu",
        "MODEL.RESNETS.DEPTH": "18",
        "MODEL.RESNETS.RES2_OUT_CHANNELS": "64",
        "MODEL.RESNETS.NORM": "BN",
        "MODEL.SSL.HEAD_NORM": "BN",
        "MODEL.SSL.PROJ_HIDDEN_DIM": "64",
        "MODEL.SSL.PROJ_DIM": "32",
        "MODEL.SSL.PRED_HIDDEN_DIM": "64",
        "INPUT.SSL.VIEW_SIZES": "[32, 32]",
        # uint8 views + colour parameters, applied in the model (the CUDA default): the resume and
        # DDP tests cover it; the CPU default ("mapper") runs in the demo-config tests
        "INPUT.SSL.PHOTOMETRIC_ON": "model",
        "DATASETS.TRAIN": "('demo_images',)",
        "DATALOADER.NUM_WORKERS": "0",
        "SOLVER.IMS_PER_BATCH": "4",
        "SOLVER.OPTIMIZER": "LARS",
        "SOLVER.BASE_LR": "0.4",
        "SOLVER.WEIGHT_DECAY": "1e-5",
        "SOLVER.LR_SCHEDULER_NAME": "WarmupCosineToEnd",
        "SOLVER.MAX_ITER": "6",
        "SOLVER.WARMUP_ITERS": "2",
        "SOLVER.WARMUP_FACTOR": "0.01",
        "SOLVER.COSINE_END_LR": "1e-6",
        "SOLVER.CHECKPOINT_PERIOD": "2",
        "SOLVER.LOG_PERIOD": "1",
        "SOLVER.LOG_WINDOW": "1",
        "SEED": "7",
        "OUTPUT_DIR": str(output_dir),
    }
    for key, value in overrides.items():
        key = key.replace("__", ".")
        if value is None:
            opts.pop(key, None)
        else:
            opts[key] = str(value)
    return [item for pair in opts.items() for item in pair]


def tiny_cfg(output_dir: str, freeze: bool = True, **overrides):
    cfg = get_pretrain_cfg()
    cfg.merge_from_file(BASE_CONFIG)
    cfg.merge_from_list(tiny_opts(output_dir, **overrides))
    if freeze:
        cfg.freeze()
    return cfg


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """These models are tiny: one intra-op thread is faster than two (and far faster
    when other processes share the two cores, where OpenMP threads spin)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def write_random_box_cache(path: str) -> str:
    """A box cache of random boxes (10-60 % of each side, 20 per image) for the demo photos."""
    import numpy as np

    from soco_d2.data import get_pretrain_dicts
    from soco_d2.proposals import CacheWriter

    rng = np.random.default_rng(0)
    header = {"method": "test", "generator": {}, "versions": {}, "source": "tests"}
    with CacheWriter(path, "boxes", header) as boxes:
        for d in get_pretrain_dicts("demo_images"):
            h, w = d["height"], d["width"]
            size = rng.uniform(0.1, 0.6, (20, 2)) * (w, h)
            x0 = rng.uniform(0, 1, (20, 2)) * ((w, h) - size)
            boxes.add_boxes(d["image_id"], h, w, np.round(np.concatenate([x0, x0 + size], axis=1)))
        boxes.commit()
    return path
