"""The backbone a probe runs on: built from a config, weights loaded by name.

``build_probe_model(cfg)`` is detectron2's ``build_backbone`` held as
``.backbone``, so the names of a pretraining checkpoint (``backbone.*``) and of
a converted model-zoo ``.pkl`` load onto it unchanged.  A ResNet's
``OUT_FEATURES`` are extended to the res* features the probes ask for (a C4
config stops at res4; the image-level probe wants res5).  The init of a
random backbone is detectron2's (as transfer's random-init baseline), not the
pretraining init (zero-gamma would leave every residual branch at zero).
"""
from __future__ import annotations

import logging
import re

import torch.nn as nn
from detectron2.modeling import build_backbone

from ..checkpoint.errors import WeightsFileError
from ..checkpoint.loading import load_with_report

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


def build_probe_model(cfg) -> ProbeModel:
    """``ProbeModel`` with ``build_backbone(cfg)`` (on MODEL.DEVICE), res* outputs extended
    to the probed ones."""
    cfg = cfg.clone()
    wanted = [n for n in probe_feature_names(cfg) if re.fullmatch(r"res[2-5]", n)]
    missing = [n for n in wanted if n not in cfg.MODEL.RESNETS.OUT_FEATURES]
    if missing:
        cfg.defrost()
        cfg.MODEL.RESNETS.OUT_FEATURES = list(cfg.MODEL.RESNETS.OUT_FEATURES) + missing
        logger.info("probes: MODEL.RESNETS.OUT_FEATURES extended by %s", missing)
    return ProbeModel(build_backbone(cfg)).to(cfg.MODEL.DEVICE)


def load_probe_weights(model: ProbeModel, weights: str, *, unsafe_load: bool = False) -> None:
    """Load ``weights`` (a checkpoint or model-zoo .pkl with ``backbone.*`` names) into
    ``model``; "" keeps the random init.  Fails when a backbone tensor is not filled:
    a probe of half-random features would be a silently wrong number.

    Read through the safe loader (``SafeCheckpointer``: no code in the file runs
    unless ``unsafe_load``)."""
    if not weights:
        logger.info("probes: no weights, random init (detectron2's)")
        return
    incompatible = load_with_report(model, weights, unsafe_load=unsafe_load)
    missing = [k for k in incompatible.missing_keys if k.startswith("backbone.")]
    if missing:
        raise WeightsFileError(
            f"{weights} left {len(missing)} backbone tensors unfilled (e.g. {missing[:3]}); convert it with "
            "tools/convert_to_d2.py, or probe only the features it holds (C4 checkpoints keep res5 in the "
            "region head, not in the backbone)"
        )
    logger.info("probes: loaded %s", weights)
