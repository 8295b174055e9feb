"""Helpers shared by the MoCo-v2 and DenseCL model tests: a tiny R18 config of a
demo queue method and a batch of real two-view samples of the demo photos."""
import soco_d2  # noqa: F401  (compat shims before detectron2)
import torch
from detectron2.data import DatasetCatalog

from soco_d2 import get_pretrain_cfg
from config_utils import project_config_path
from soco_d2.data.mappers import build_ssl_mapper

TINY = [
    "MODEL.RESNETS.DEPTH", 18, "MODEL.RESNETS.RES2_OUT_CHANNELS", 64,
    "MODEL.SSL.PROJ_HIDDEN_DIM", 64, "MODEL.SSL.PROJ_DIM", 16, "MODEL.SSL.QUEUE_SIZE", 8,
    "INPUT.SSL.VIEW_SIZES", [64, 64], "DATALOADER.NUM_WORKERS", 0,
]


def tiny_cfg(name: str, *opts):
    """configs/demo/<name>.yaml shrunk to an R18 with a queue of 8, then ``opts``."""
    cfg = get_pretrain_cfg()
    cfg.merge_from_file(project_config_path(f"demo/{name}.yaml"))
    cfg.merge_from_list(TINY + list(opts))
    return cfg


def two_view_samples(name: str, num_images: int = 3):
    mapper = build_ssl_mapper(tiny_cfg(name))
    torch.manual_seed(0)
    return [mapper(d) for d in DatasetCatalog.get("demo_images")[:num_images]]
