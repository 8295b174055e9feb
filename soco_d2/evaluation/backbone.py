"""The backbone a probe runs on: built from a config, weights loaded by name.

``build_probe_model(cfg)`` is detectron2's ``build_backbone`` held as
``.backbone``.  A ResNet's ``OUT_FEATURES`` are extended to the res* features
the probes ask for (a C4 config stops at res4; the image-level probe wants
res5).  The init of a random backbone is detectron2's (as transfer's
random-init baseline), not the pretraining init (zero-gamma would leave every
residual branch at zero).  Weights: ``soco_d2.evaluation.weights``.
"""
from __future__ import annotations

import logging
import re

import torch.nn as nn
from detectron2.modeling import build_backbone

logger = logging.getLogger(__name__)


class ProbeModel(nn.Module):
    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone


def probe_feature_names(cfg) -> list[str]:
    probe = cfg.TEST.PROBE
    names = [probe.IMAGE_FEATURE] if (probe.IMAGE_MEMORY or probe.IMAGE_QUERIES) else []
    if probe.REGION_MEMORY or probe.REGION_QUERIES:
        names += list(probe.REGION_FEATURES)
    return names


def build_probe_model(cfg, device: str | None = None) -> ProbeModel:
    """``ProbeModel`` with ``build_backbone(cfg)`` (on ``device``, default MODEL.DEVICE),
    res* outputs extended to the probed ones."""
    cfg = cfg.clone()
    wanted = [n for n in probe_feature_names(cfg) if re.fullmatch(r"res[2-5]", n)]
    missing = [n for n in wanted if n not in cfg.MODEL.RESNETS.OUT_FEATURES]
    if missing:
        cfg.defrost()
        cfg.MODEL.RESNETS.OUT_FEATURES = list(cfg.MODEL.RESNETS.OUT_FEATURES) + missing
        logger.info("probes: MODEL.RESNETS.OUT_FEATURES extended by %s", missing)
    return ProbeModel(build_backbone(cfg)).to(device or cfg.MODEL.DEVICE)
