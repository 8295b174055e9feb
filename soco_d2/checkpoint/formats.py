"""Readers of the checkpoint layouts the converter understands, and format detection.

Every reader turns the loaded object into ``(entries, values)``:
``entries`` lists ``(source_key, d2_name | None, drop_reason | None)`` for
every key of the source (a key with neither is *unmatched*), ``values`` maps
the source keys of converted entries to numpy arrays in PyTorch layout.

Formats (``--format``):

* ``soco_d2``: our own pretraining checkpoints (DetectionCheckpointer
  ``{"model": ...}``; online encoder under ``backbone.``, SoCo's box head
  under ``box_head.``, C4 region head ``box_head.res5``) and detectron2
  detector checkpoints (``backbone.``, ``roi_heads.``);
* ``d2``: detectron2 model-zoo names already (``stem.*``, ``res2..5.*``);
* ``soco``: official SoCo (``module.encoder.`` torchvision ResNet,
  ``module.neck.`` mmcv FPN, ``module.head.`` 4conv1fc box head);
* ``densecl``: DenseCL's extracted backbone (``{"state_dict", "author"}``,
  torchvision names) or its full OpenSelfSup training checkpoint
  (``backbone.`` / ``encoder_q.0.``);
* ``moco``: MoCo v1/v2 (``module.encoder_q.``);
* ``detcon_haiku``: DetCon's released Haiku tree (``.npy``), see ``haiku.py``;
* ``torchvision``: a torchvision ResNet state dict.
"""
from __future__ import annotations

import re
from collections.abc import Mapping

import numpy as np

from . import names
from .errors import ConversionError
from .haiku import flatten_tree, haiku_entries, looks_like_haiku

FORMATS = ("soco_d2", "d2", "soco", "densecl", "moco", "detcon_haiku", "torchvision")

# Keys every format drops on purpose (regex on the full key -> reason).
_COMMON_DROPS = (
    (r"(^|\.)num_batches_tracked$", names.NUM_BATCHES_TRACKED),
    (r"(^|\.)target\.|^target_", "target (momentum) network"),
    (r"queue", "negative-sample queue"),
    (r"^(encoder_k|neck_k|head_k|projector_k|key_encoder)\.", "momentum (key) network"),
    (r"^(projector|predictor|dense_projector|dense_predictor|classifier)\.", "projection / prediction MLP of pretraining"),
    (r"^pixel_(mean|std)$", "input normalisation (set by the fine-tune config)"),
    (r"^(roi_heads|proposal_generator)\.", "detector heads (not pretrained)"),
)
_TRAINING_STATE = "training state / metadata (not weights)"


def _to_numpy(value):
    if hasattr(value, "detach"):  # torch tensor
        value = value.detach().cpu()
        if value.is_floating_point():
            value = value.float()
        return value.numpy()
    return np.asarray(value)


def _strip_module(state: Mapping) -> dict:
    keys = list(state)
    if keys and all(k.startswith("module.") for k in keys):
        return {k[len("module."):]: v for k, v in state.items()}
    return dict(state)


def split_container(obj):
    """``(state_dict, other_top_level_keys)`` of a loaded checkpoint."""
    if not isinstance(obj, Mapping):
        raise ConversionError(f"expected a dict-like checkpoint, got {type(obj).__name__}")
    for key in ("model", "state_dict", "model_state", "online_state_dict"):
        if isinstance(obj.get(key), Mapping):
            return _strip_module(obj[key]), [k for k in obj if k != key]
    return _strip_module(obj), []


def _apply_rules(state: Mapping, rules, extra_drops=()):
    entries, values = [], {}
    drops = [(re.compile(p), r) for p, r in (*extra_drops, *_COMMON_DROPS)]
    for key in sorted(state):
        for prefix, mapper in rules:
            if key.startswith(prefix):
                dst, reason = mapper(key[len(prefix):])
                if dst is None and reason is None:  # known prefix, unknown key: a drop rule may still know it
                    reason = next((r for p, r in drops if p.search(key)), None)
                break
        else:
            dst, reason = None, next((r for p, r in drops if p.search(key)), None)
        value = state[key]
        if dst is not None:
            if not hasattr(value, "shape"):
                dst, reason = None, None
            else:
                values[key] = _to_numpy(value)
        entries.append((key, dst, reason))
    return entries, values


def _prefixed(prefix: str, mapper):
    return lambda rest: mapper(prefix + rest)


# ------------------------------------------------------------------ readers
def read_soco_d2(state):
    fpn = any(k.startswith("backbone.bottom_up.") for k in state)
    bottom = "backbone.bottom_up." if fpn else "backbone."
    rules = [(bottom, names.d2_to_d2)]
    if fpn:
        rules.append(("backbone.", names.d2_to_d2))  # fpn_lateral*/fpn_output*
    rules += [
        ("box_head.res5.", _prefixed("res5.", names.d2_to_d2)),  # SoCo C4 region head = detectron2's res5
        ("roi_heads.res5.", _prefixed("res5.", names.d2_to_d2)),
        ("box_head.", _prefixed("box_head.", names.d2_to_d2)),
        ("roi_heads.box_head.", _prefixed("box_head.", names.d2_to_d2)),
    ]
    return _apply_rules(state, rules)


def read_d2(state):
    return _apply_rules(state, [("", names.d2_to_d2)])


def read_soco(state):
    rules = [
        ("encoder.", names.torchvision_to_d2),
        ("neck.", names.mmcv_fpn_to_d2),
        ("head.", names.soco_head_to_d2),
    ]
    return _apply_rules(state, rules)


def read_moco(state):
    return _apply_rules(state, [("encoder_q.", names.torchvision_to_d2)])


def read_densecl(state):
    if any(k.startswith("backbone.conv1.") for k in state):
        rules = [("backbone.", names.torchvision_to_d2)]
        drops = [(r"^encoder_q\.0\.", "duplicate of backbone. (DenseCL registers the query backbone twice)"),
                 (r"^encoder_q\.1\.", "projection necks of pretraining")]
    elif any(k.startswith("encoder_q.0.") for k in state):
        rules = [("encoder_q.0.", names.torchvision_to_d2)]
        drops = [(r"^encoder_q\.1\.", "projection necks of pretraining")]
    else:
        rules, drops = [("", names.torchvision_to_d2)], []
    return _apply_rules(state, rules, drops)


def read_torchvision(state):
    return _apply_rules(state, [("", names.torchvision_to_d2)])


def read_detcon_haiku(tree):
    hk_entries, tv_values = haiku_entries(tree)
    entries, values = [], {}
    for src, tv_name, reason in hk_entries:
        dst = None
        if tv_name is not None:
            dst, reason = names.torchvision_to_d2(tv_name)
            if dst is not None:
                values[src] = tv_values[tv_name]
        entries.append((src, dst, reason))
    return entries, values


_READERS = {
    "soco_d2": read_soco_d2,
    "d2": read_d2,
    "soco": read_soco,
    "densecl": read_densecl,
    "moco": read_moco,
    "torchvision": read_torchvision,
}


def _has(keys, *prefixes) -> bool:
    return any(k.startswith(prefixes) for k in keys)


def detect_format(obj) -> str:
    """The format name of a loaded checkpoint (raises when no layout fits)."""
    if isinstance(obj, Mapping) and "blobs" in obj:
        raise ConversionError("a Caffe2/Detectron1 blob file: detectron2 reads it as it is, no conversion needed")
    if isinstance(obj, Mapping) and looks_like_haiku(flatten_tree(obj)):
        return "detcon_haiku"
    state, _ = split_container(obj)
    keys = list(state)
    if _has(keys, "backbone.bottom_up.stem.", "backbone.stem.", "box_head.res5."):
        return "soco_d2"
    if _has(keys, "encoder.conv1.", "encoder.layer1."):
        return "soco"
    if _has(keys, "encoder_q.conv1.", "encoder_q.layer1."):
        return "moco"
    if _has(keys, "backbone.conv1.", "encoder_q.0.conv1."):
        return "densecl"
    if _has(keys, "stem.conv1."):
        return "d2"
    if _has(keys, "conv1.weight") and _has(keys, "layer1."):
        author = str(obj.get("author", "")) if isinstance(obj, Mapping) else ""
        return "densecl" if "densecl" in author.lower() else "torchvision"
    sample = ", ".join(keys[:6]) or "(no keys)"
    raise ConversionError(f"unrecognised checkpoint layout (first keys: {sample}); pass --format ({', '.join(FORMATS)})")


def read(obj, fmt: str):
    """``(entries, values)`` of ``obj`` read as ``fmt``."""
    if fmt not in FORMATS:
        raise ConversionError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")
    if fmt == "detcon_haiku":
        if not isinstance(obj, Mapping):
            raise ConversionError("a DetCon Haiku file holds a dict (np.save of the parameter tree)")
        return read_detcon_haiku(obj)
    state, other = split_container(obj)
    entries, values = _READERS[fmt](state)
    if not values:
        try:
            guess = detect_format(obj)
        except ConversionError:
            guess = "none"
        raise ConversionError(f"no weights of the {fmt!r} layout found (the file looks like {guess!r})")
    entries = [(key, None, _TRAINING_STATE) for key in other] + entries
    return entries, values
