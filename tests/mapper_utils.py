"""Helpers shared by the mapper tests."""
import random

import numpy as np
import pytest
import soco_d2  # noqa: F401  (compat shims before detectron2)
import torch

from soco_d2.data import get_pretrain_dicts


def geometry_only(cfg):
    """No colour ops, nearest resampling: view pixels are copies of image pixels."""
    s = cfg.INPUT.SSL
    s.INTERPOLATION, s.JITTER_PROB, s.GRAYSCALE_PROB, s.BLUR_PROBS, s.SOLARIZE_PROBS = "nearest", 0.0, 0.0, [0.0], [0.0]
    return cfg


def seed_all(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@pytest.fixture(scope="module")
def demo_dicts():
    return get_pretrain_dicts("demo_images")
