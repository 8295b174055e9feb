"""The configs shipped with soco_d2, found the same way in a clone and in an install,
in the style of ``detectron2.model_zoo``:

    from soco_d2 import model_zoo
    path = model_zoo.get_config_file("soco_r50_fpn.yaml")      # or "demo/soco_r50_fpn.yaml"
    cfg = model_zoo.get_config("transfer/coco_mask_rcnn_R_50_FPN_1x.yaml")

The repository's top-level ``configs/`` folder is the one source; ``setup.py``
links it here as ``soco_d2/model_zoo/configs`` (a copy where links are not
possible) and ships it as package data, as detectron2 does with its configs.
In a clone where that link was never made, the repository's folder is used.
"""
from __future__ import annotations

import glob
import os

_HERE = os.path.dirname(os.path.abspath(__file__))
_CANDIDATES = (os.path.join(_HERE, "configs"), os.path.join(os.path.dirname(os.path.dirname(_HERE)), "configs"))


def configs_root() -> str:
    """The folder holding the shipped configs."""
    for root in _CANDIDATES:
        if os.path.isdir(root):
            return root
    raise FileNotFoundError(f"soco_d2's configs are missing (looked in {', '.join(_CANDIDATES)}); reinstall soco_d2")


def list_configs() -> list[str]:
    """Names of every shipped config, e.g. ``soco_r50_fpn.yaml``, ``demo/byol_r50.yaml``."""
    root = configs_root()
    return sorted(os.path.relpath(p, root) for p in glob.glob(os.path.join(root, "**", "*.yaml"), recursive=True))


def get_config_file(name: str) -> str:
    """Absolute path of the shipped config ``name`` (relative to ``configs/``)."""
    path = os.path.join(configs_root(), name)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{name!r} is not a config shipped with soco_d2 (in {configs_root()}); "
            f"e.g. {', '.join(list_configs()[:4])}, ... (soco_d2.model_zoo.list_configs())"
        )
    return path


def get_config(name: str):
    """The merged config (soco_d2's defaults + the shipped yaml ``name``), unfrozen."""
    from ..config import get_pretrain_cfg

    cfg = get_pretrain_cfg()
    cfg.merge_from_file(get_config_file(name))
    return cfg


__all__ = ["configs_root", "get_config", "get_config_file", "list_configs"]
