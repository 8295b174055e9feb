"""No training forward waits for the device: host-synchronising tensor calls in one
forward of every method's demo config (shrunk), counted with a TorchFunctionMode.

Index work (SoCo's box levels and per-level order, DetCon's mask grids and sampled
ids, which samples each colour op touches) is done by the mappers and collates on
the CPU; metrics are read from the device once per SOLVER.LOG_PERIOD (one
transfer).  So a forward makes 0 such calls, and 1 on an iteration whose metrics
are written.  (detectron2's SimpleTrainer reads the losses once per iteration
anyway; that is outside the forward.)
"""
import collections
import glob
import os

import numpy as np
import pytest
import soco_d2  # noqa: F401  (compat shims before detectron2)
import torch
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from engine_utils import one_torch_thread  # noqa: F401  (autouse fixture)
from host_syncs import HostSyncCounter
from soco_d2.config import get_pretrain_cfg
from config_utils import project_config_path
from soco_d2.data import build_ssl_mapper, get_pretrain_dicts
from soco_d2.data.build import preserved_global_rngs, seed_global_rngs
from soco_d2.data.mappers import SoCoMapper

DEMO_CONFIGS = sorted(glob.glob(project_config_path("demo/*.yaml")))
MAX_SYNCS = 2  # the bound per forward


def tiny_cfg(path):
    cfg = get_pretrain_cfg()
    cfg.merge_from_file(path)
    sizes = [max(32, 32 * round(s / 4 / 32)) for s in cfg.INPUT.SSL.VIEW_SIZES]
    cfg.merge_from_list([
        "INPUT.SSL.VIEW_SIZES", sizes, "INPUT.SSL.PHOTOMETRIC_ON", "model", "SOLVER.LOG_PERIOD", 20,
        "MODEL.SSL.PROJ_HIDDEN_DIM", 64, "MODEL.SSL.PROJ_DIM", 32, "MODEL.SSL.QUEUE_SIZE", 16,
        "MODEL.DETCON.MASK_SOURCE", "grid", "MODEL.DETCON.LEVEL_THRESHOLDS", [4, 8, 16],
    ])
    if cfg.MODEL.SSL.PRED_HIDDEN_DIM:
        cfg.MODEL.SSL.PRED_HIDDEN_DIM = 64
    if cfg.MODEL.SOCO.REGION_HEAD != "C4" or cfg.MODEL.META_ARCHITECTURE != "SoCo":  # C4's res5 head needs R50
        cfg.merge_from_list(["MODEL.RESNETS.DEPTH", 18, "MODEL.RESNETS.RES2_OUT_CHANNELS", 64,
                             "MODEL.FPN.OUT_CHANNELS", 32, "MODEL.ROI_BOX_HEAD.CONV_DIM", 32,
                             "MODEL.ROI_BOX_HEAD.FC_DIM", 64])
    return cfg


def collated_batch(cfg, num_images=2):
    dicts = get_pretrain_dicts("demo_images")[:num_images]
    if cfg.INPUT.SSL.MAPPER == "SoCoMapper":
        boxes = {d["image_id"]: np.array([[0, 0, 30, 40], [20, 10, 200, 150], [50, 60, 120, 90]], np.float32)
                 for d in dicts}
        mapper = SoCoMapper(cfg, box_source=boxes)
    else:
        mapper = build_ssl_mapper(cfg)
    samples = []
    with preserved_global_rngs():
        for i, d in enumerate(dicts):
            seed_global_rngs(i)
            samples.append(mapper(d))
    return mapper.collate(samples)


@pytest.mark.parametrize("path", DEMO_CONFIGS, ids=lambda p: os.path.basename(p)[:-5])
def test_a_training_forward_reads_nothing_back_from_the_device(path):
    cfg = tiny_cfg(path)
    batch = collated_batch(cfg)
    torch.manual_seed(0)
    model = build_model(cfg)
    model.train()
    counts = {}
    for iteration in (0, 19):  # metrics are written after iterations 19, 39, ...
        with EventStorage(iteration) as storage, HostSyncCounter() as syncs:
            losses = model(batch)
        assert all(torch.isfinite(v) for v in losses.values())
        counts[iteration] = collections.Counter(syncs.calls)
    print(f"{os.path.basename(path)}: {dict(counts[0])} / logging iteration {dict(counts[19])}")
    assert sum(counts[0].values()) == 0, counts[0]
    assert sum(counts[19].values()) <= 1 <= MAX_SYNCS, counts[19]
    # the metrics are still logged, once per period
    assert any(name.split("/")[0] in ("byol", "moco", "densecl", "soco", "detcon") for name in storage.histories())


def test_the_counter_sees_each_kind_of_host_sync():
    x = torch.arange(6)
    with HostSyncCounter() as syncs:
        x.sum().item()
        x.tolist()
        bool(x.any())
        int(x[0])
        x[x > 2]
        torch.nonzero(x)
        torch.where(x > 1)
        x.repeat_interleave(x)
        torch.bincount(x)
        x.repeat_interleave(2)  # int repeats: no sync
        x.repeat_interleave(x, output_size=15)  # output size given: no sync
        torch.where(x > 1, x, 0)  # three arguments: no sync
    assert syncs.calls == ["item", "tolist", "__bool__", "__int__", "__getitem__[bool]", "nonzero",
                           "where(condition)", "repeat_interleave", "bincount"]
