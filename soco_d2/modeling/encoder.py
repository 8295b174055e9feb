"""The encoder every method pretrains: detectron2's own ``build_backbone``.

Building it with detectron2 (ResNet or ResNet-FPN, ``RESNETS.STRIDE_IN_1X1
False``) is what makes the pretrained weights load into a stock Mask R-CNN by
name.  The one change SSL recipes make to detectron2's init is zero-gamma.
"""
from __future__ import annotations

import torch.nn as nn
from detectron2.modeling import build_backbone
from detectron2.modeling.backbone.resnet import BasicBlock, BottleneckBlock


def zero_init_residual_(module: nn.Module) -> int:
    """Set the weight of the last norm of every residual branch to 0 (Goyal et
    al.; SoCo, BYOL and DetCon do it, detectron2 leaves it commented out).
    Returns the number of blocks changed."""
    changed = 0
    for block in module.modules():
        last = {BottleneckBlock: "conv3", BasicBlock: "conv2"}.get(type(block))
        norm = getattr(getattr(block, last, None), "norm", None) if last else None
        if isinstance(getattr(norm, "weight", None), nn.Parameter):
            nn.init.zeros_(norm.weight)
            changed += 1
    return changed


def build_encoder(cfg) -> nn.Module:
    """``build_backbone(cfg)`` plus ``MODEL.SSL.ZERO_INIT_RESIDUAL``."""
    backbone = build_backbone(cfg)
    if cfg.MODEL.SSL.ZERO_INIT_RESIDUAL:
        zero_init_residual_(backbone)
    return backbone


def shared_channels(backbone: nn.Module, features, key: str) -> int:
    """The channel count shared by the backbone outputs ``features`` (pooled
    together, so it must be one); ``key`` names the config key in errors."""
    shapes = backbone.output_shape()
    missing = [f for f in features if f not in shapes]
    if missing:
        raise ValueError(f"{key} {missing} are not backbone outputs {sorted(shapes)}")
    channels = {shapes[f].channels for f in features}
    if len(channels) != 1:
        raise ValueError(f"{key} must share one channel count, got {channels}")
    return channels.pop()
