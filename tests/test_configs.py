"""Config files: our restated bases equal detectron2's stock ones; every config builds."""
import glob
import os

import pytest
from detectron2.config import get_cfg

from soco_d2 import get_pretrain_cfg
from config_utils import model_zoo_config_path, project_config_path


@pytest.mark.parametrize("name", ["Base-RCNN-FPN.yaml", "Base-RCNN-C4.yaml"])
def test_restated_base_equals_stock(name):
    ours, stock = get_cfg(), get_cfg()
    ours.merge_from_file(project_config_path(name))
    stock.merge_from_file(model_zoo_config_path(name))
    assert ours.dump() == stock.dump()


def transfer_configs():
    return sorted(glob.glob(project_config_path("transfer/*.yaml")))


@pytest.mark.parametrize("path", transfer_configs(), ids=os.path.basename)
def test_transfer_config_builds(path):
    from detectron2.modeling import build_model

    cfg = get_pretrain_cfg()
    cfg.merge_from_file(path)
    cfg.MODEL.DEVICE = "cpu"
    assert cfg.MODEL.WEIGHTS == "" or not cfg.MODEL.WEIGHTS.startswith(("http", "detectron2://"))
    build_model(cfg)
