"""Load pretrained weights into a detectron2 model and say what did and did not load.

``DetectionCheckpointer.load`` only logs incompatible keys; these helpers
return them (the checkpointer's own ``_load_file`` / ``_load_model`` path),
so tools and tests can check "zero missing backbone keys" from detectron2's
own report.  Every load goes through :class:`SafeCheckpointer`.
"""
from __future__ import annotations

import logging
import re

from .checkpointer import SafeCheckpointer
from .errors import WeightsFileError

logger = logging.getLogger(__name__)

# model-key prefixes of the pretrained parts of a detectron2 R-CNN
_GROUP_PATTERNS = {
    "backbone": re.compile(r"^backbone\.(bottom_up\.)?(stem|res[2-5])\.|^roi_heads\.res5\.\d+\."),
    "fpn": re.compile(r"^backbone\.fpn_"),
    "box_head": re.compile(r"^roi_heads\.box_head\."),
}


class UnconvertedWeightsError(WeightsFileError, RuntimeError):
    """``MODEL.WEIGHTS`` filled none of the backbone: a checkpoint that was not converted."""


def model_group(key: str) -> str | None:
    """``backbone`` / ``fpn`` / ``box_head`` for a detectron2 model key, else None."""
    for group, pattern in _GROUP_PATTERNS.items():
        if pattern.match(key):
            return group
    return None


def load_with_report(model, path: str, checkpointer=None, *, unsafe_load: bool = False):
    """Load ``path`` into ``model`` through ``SafeCheckpointer``; return its ``IncompatibleKeys``."""
    checkpointer = checkpointer or SafeCheckpointer(model, unsafe_load=unsafe_load)
    checkpoint = checkpointer._load_file(path)
    incompatible = checkpointer._load_model(checkpoint)
    checkpointer._log_incompatible_keys(incompatible)
    return incompatible


def _state_dict(model) -> dict:
    return model.module.state_dict() if hasattr(model, "module") else model.state_dict()


def missing_by_group(incompatible, model) -> dict:
    """``{group: [missing model keys]}`` for backbone / fpn / box_head (num_batches_tracked ignored).

    Keys whose shape did not match count as missing: detectron2 skipped them.
    """
    missing = set(incompatible.missing_keys)
    missing.update(name for name, *_ in getattr(incompatible, "incorrect_shapes", []))
    out = {group: [] for group in _GROUP_PATTERNS}
    for key in _state_dict(model):
        group = model_group(key)
        if group and key in missing and not key.endswith("num_batches_tracked"):
            out[group].append(key)
    return out


def group_sizes(model) -> dict:
    """Number of tensors (without num_batches_tracked) per pretrained group of ``model``."""
    sizes = {group: 0 for group in _GROUP_PATTERNS}
    for key in _state_dict(model):
        group = model_group(key)
        if group and not key.endswith("num_batches_tracked"):
            sizes[group] += 1
    return sizes


def load_pretrained_weights(model, weights: str, output_dir: str = "", resume: bool = False, *,
                            unsafe_load: bool = False, **checkpointables) -> SafeCheckpointer:
    """Load like ``DefaultTrainer.resume_or_load``: OUTPUT_DIR's last checkpoint with
    ``resume`` (when there is one), else ``weights`` into the model only.

    For pretrained ``weights``, log how many backbone / FPN / box-head tensors
    were filled and fail when none of the backbone was (e.g. a raw .pth that
    was not converted).  Returns the checkpointer.
    """
    checkpointer = SafeCheckpointer(model, output_dir, unsafe_load=unsafe_load, **checkpointables)
    if resume and checkpointer.has_checkpoint():
        checkpointer.resume_or_load(weights, resume=True)
        return checkpointer
    checkpointer.load(weights, checkpointables=[])
    incompatible = checkpointer.last_incompatible
    if incompatible is None:  # no weights: random init
        return checkpointer
    missing = missing_by_group(incompatible, model)
    sizes = group_sizes(model)
    backbone_missing = missing["backbone"]
    if sizes["backbone"] and len(backbone_missing) == sizes["backbone"]:
        raise UnconvertedWeightsError(
            f"MODEL.WEIGHTS {weights} filled none of the {sizes['backbone']} backbone tensors; "
            "convert it with tools/convert_to_d2.py first (detectron2 matches names only for "
            "model-zoo .pkl files)"
        )
    summary = ", ".join(f"{g} {sizes[g] - len(missing[g])}/{sizes[g]}" for g in sizes if sizes[g])
    log = logger.warning if backbone_missing else logger.info
    log("MODEL.WEIGHTS %s filled: %s%s", weights, summary,
        f" (backbone missing, e.g. {backbone_missing[0]})" if backbone_missing else "")
    return checkpointer
