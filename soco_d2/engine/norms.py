"""Which BatchNorm variant can run on this machine: one rule for pretraining
and transfer, applied to every ``*NORM`` key of a config.

``SyncBN`` (``nn.SyncBatchNorm``) needs CUDA once there are several processes;
detectron2's ``naiveSyncBN`` all-reduces the same statistics through
torch.distributed and runs on gloo.  In one process SyncBN computes plain BN
statistics, so it becomes ``BN``.  Several GPUs keep SyncBN.
"""
from __future__ import annotations

import logging

from detectron2.config import CfgNode

logger = logging.getLogger(__name__)


def norm_keys(cfg: CfgNode, prefix: str = "") -> list[str]:
    """Dotted names of every key ending in ``NORM`` (RESNETS.NORM, FPN.NORM,
    ROI_BOX_HEAD.NORM, ROI_MASK_HEAD.NORM, SSL.HEAD_NORM, ...)."""
    keys = []
    for key, value in cfg.items():
        if isinstance(value, CfgNode):
            keys += norm_keys(value, f"{prefix}{key}.")
        elif key.endswith("NORM") and isinstance(value, str):
            keys.append(prefix + key)
    return keys


def get_key(cfg: CfgNode, dotted: str):
    node = cfg
    for part in dotted.split("."):
        node = node[part]
    return node


def set_key(cfg: CfgNode, dotted: str, value) -> None:
    *parents, leaf = dotted.split(".")
    node = cfg
    for part in parents:
        node = node[part]
    node[leaf] = value


def syncbn_changes(cfg: CfgNode, world_size: int, cuda: bool) -> list[tuple[str, str, str, str]]:
    """``(key, configured, used, why)`` for every SyncBN key this machine cannot (or need not) run."""
    changes = []
    for key in norm_keys(cfg):
        if get_key(cfg, key) != "SyncBN":
            continue
        if world_size == 1:
            changes.append((key, "SyncBN", "BN", "one process: SyncBN computes plain BN statistics"))
        elif not cuda:
            changes.append((key, "SyncBN", "naiveSyncBN", f"{world_size} CPU processes: nn.SyncBatchNorm needs CUDA"))
    return changes


def apply_norm_changes(cfg: CfgNode, changes, log: bool = True) -> CfgNode:
    """A copy of ``cfg`` with the changes applied (frozen if ``cfg`` was); ``cfg`` itself when none."""
    if not changes:
        return cfg
    frozen = cfg.is_frozen()
    cfg = cfg.clone()
    cfg.defrost()
    for key, _, after, _ in changes:
        set_key(cfg, key, after)
    if log:
        log_norm_changes(changes)
    if frozen:
        cfg.freeze()
    return cfg


def log_norm_changes(changes) -> None:
    for key, before, after, why in changes:
        logger.info("BatchNorm policy: %s %s -> %s (%s)", key, before, after, why)
