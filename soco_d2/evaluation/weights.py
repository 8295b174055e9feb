"""Weights for a probe: every kind ``tools/convert_to_d2.py`` reads, through the
converter itself (``soco_d2.checkpoint.convert``: the same name mapping, safe
reader and completeness checks), loaded into a ``ProbeModel`` with detectron2's
matching heuristics, as a converted ``.pkl`` loads into any detectron2 config
(docs/tools/convert_to_d2.md).
"""
from __future__ import annotations

import logging
import re

from ..checkpoint.checkpointer import SafeCheckpointer
from ..checkpoint.convert import convert_checkpoint
from ..checkpoint.errors import WeightsFileError
from ..checkpoint.names import group_of
from .backbone import ProbeModel

logger = logging.getLogger(__name__)


def _needs_fpn(features) -> bool:
    """Whether any probed feature is an FPN output (not a res* map of the bottom-up ResNet)."""
    return any(not re.fullmatch(r"res[2-5]", name) for name in features)


def load_probe_weights(model: ProbeModel, weights: str, *, unsafe_load: bool = False, fmt: str = "auto",
                       features=None, depth: int | None = None) -> dict:
    """Load ``weights`` into ``model``; "" keeps the random init.  Returns what was loaded
    (``{"format", "tensors", "groups"}``; empty for random init).

    Any input of ``tools/convert_to_d2.py`` (``fmt``: its ``--format``): our pretraining
    checkpoints (the online backbone; a C4 region head's res5 becomes the backbone's
    res5), converted ``.pkl`` files, torchvision ResNets and the official SoCo /
    DenseCL / MoCo / DetCon (Haiku) checkpoints; no code in the file runs unless
    ``unsafe_load``.  Heads of pretraining (projector, predictor, box head), target
    networks and queues are left out.

    Fails (``WeightsFileError``, a one-line ``InputError``) when a tensor the probed
    ``features`` depend on stays unfilled: the ResNet always, the FPN when an FPN
    level is probed (``features`` None: every tensor of ``model``).  A probe of
    half-random features would be a silently wrong number.  With ``depth``
    (MODEL.RESNETS.DEPTH), weights of another ResNet depth fail too (a ResNet-101 would
    otherwise fill a ResNet-50 and leave its extra blocks unused, silently).
    """
    if not weights:
        logger.info("probes: no weights, random init (detectron2's)")
        return {}
    result = convert_checkpoint(weights, fmt=fmt, include="all", depth=depth, unsafe=unsafe_load)
    state = {name: value for name, value in result.model.items() if group_of(name) in ("backbone", "fpn")}
    # detectron2's per-key matching table repeats what the summary below says
    matching_log = logging.getLogger("detectron2.checkpoint.c2_model_loading")
    level = matching_log.level
    matching_log.setLevel(logging.WARNING)
    try:
        incompatible = SafeCheckpointer(model, unsafe_load=unsafe_load)._load_model(
            {"model": state, "__author__": f"soco_d2 ({result.format})", "matching_heuristics": True})
    finally:
        matching_log.setLevel(level)
    skipped = set(incompatible.missing_keys) | {name for name, *_ in getattr(incompatible, "incorrect_shapes", [])}
    required = [k for k in model.state_dict() if k.startswith("backbone.") and not k.endswith("num_batches_tracked")]
    if features is not None and not _needs_fpn(features):
        required = [k for k in required if not k.startswith("backbone.fpn_")]
    missing = [k for k in required if k in skipped]
    if missing:
        fpn = [k for k in missing if k.startswith("backbone.fpn_")]
        hint = (" (it has no FPN: probe res* features, e.g. TEST.PROBE.REGION_FEATURES [\"res5\"], or give weights "
                "with an FPN)" if fpn and len(fpn) == len(missing) else
                " (is MODEL.RESNETS.DEPTH / the config the architecture of these weights?)")
        raise WeightsFileError(
            f"{weights} ({result.format}) left {len(missing)} backbone tensors unfilled, e.g. {missing[0]}{hint}"
        )
    groups = result.group_counts()
    groups.pop("box_head", None)
    logger.info("probes: loaded %s (format %s, ResNet-%s): %s", weights, result.format, result.depth,
                ", ".join(f"{g} {n} tensors" for g, n in groups.items()))
    return {"format": result.format, "tensors": len(state), "groups": groups}
