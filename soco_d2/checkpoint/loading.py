"""Load weights into a detectron2 model and say what did not load.

``DetectionCheckpointer.load`` only logs incompatible keys; these helpers
return them (the same ``_load_file`` / ``_load_model`` path ``load`` takes),
so tools and tests can check "zero missing backbone keys" from detectron2's
own report.
"""
from __future__ import annotations

import re

# model-key prefixes of the pretrained parts of a detectron2 R-CNN
_GROUP_PATTERNS = {
    "backbone": re.compile(r"^backbone\.(bottom_up\.)?(stem|res[2-5])\.|^roi_heads\.res5\.\d+\."),
    "fpn": re.compile(r"^backbone\.fpn_"),
    "box_head": re.compile(r"^roi_heads\.box_head\."),
}


def model_group(key: str) -> str | None:
    """``backbone`` / ``fpn`` / ``box_head`` for a detectron2 model key, else None."""
    for group, pattern in _GROUP_PATTERNS.items():
        if pattern.match(key):
            return group
    return None


def load_with_report(model, path: str, checkpointer=None):
    """Load ``path`` into ``model`` through ``DetectionCheckpointer``; return its ``IncompatibleKeys``."""
    from detectron2.checkpoint import DetectionCheckpointer

    checkpointer = checkpointer or DetectionCheckpointer(model)
    checkpoint = checkpointer._load_file(path)
    incompatible = checkpointer._load_model(checkpoint)
    checkpointer._log_incompatible_keys(incompatible)
    return incompatible


def missing_by_group(incompatible, model) -> dict:
    """``{group: [missing model keys]}`` for backbone / fpn / box_head (num_batches_tracked ignored).

    Keys whose shape did not match count as missing: detectron2 skipped them.
    """
    missing = set(incompatible.missing_keys)
    missing.update(name for name, *_ in getattr(incompatible, "incorrect_shapes", []))
    state = model.module.state_dict() if hasattr(model, "module") else model.state_dict()
    out = {group: [] for group in _GROUP_PATTERNS}
    for key in state:
        group = model_group(key)
        if group and key in missing and not key.endswith("num_batches_tracked"):
            out[group].append(key)
    return out


def group_sizes(model) -> dict:
    """Number of tensors (without num_batches_tracked) per pretrained group of ``model``."""
    state = model.module.state_dict() if hasattr(model, "module") else model.state_dict()
    sizes = {group: 0 for group in _GROUP_PATTERNS}
    for key in state:
        group = model_group(key)
        if group and not key.endswith("num_batches_tracked"):
            sizes[group] += 1
    return sizes
