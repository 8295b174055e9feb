"""Find the online ResNet encoder in a Haiku parameter tree (DetCon, BYOL).

DetCon's released ``.npy`` files are ``np.save`` of a Haiku tree.  Haiku names
modules by path, e.g. (the DetCon encoder is ``networks.ResNet50``, so its
module is ``res_net50``)::

    res_net50/~/initial_conv                          {w: (7, 7, 3, 64) HWIO}
    res_net50/~/initial_batchnorm                     {scale, offset: (1, 1, 1, 64)}
    res_net50/~/initial_batchnorm/~/mean_ema          {average, hidden, counter}   (state)
    res_net50/~/block_group_0/~/block_0/~/conv_0      {w}
    res_net50/~/block_group_0/~/block_0/~/batchnorm_0 {scale, offset}
    res_net50/~/block_group_0/~/block_0/~/shortcut_conv / shortcut_batchnorm
    projector/~/linear, predictor/~/..., classifier    (dropped)

Parameters and BN state may sit in one tree or in two (``params`` / ``state``,
``online_params`` / ``online_state``, ...), and the target network's copy may
be there too.  The tree is flattened to ``/``-joined paths; the encoder root is
the prefix in front of ``<module>/~/initial_conv/w``, preferring ``online``.
BN statistics come from the EMAs' debiased ``average`` (``hidden`` if absent).

What the conversion cannot change: Haiku convolutions and max-pool use
TensorFlow "SAME" padding, which on even-sized inputs (detectron2 always pads
to a multiple of 32) pads the stride-2 layers asymmetrically -- 7x7 stem 2/3,
3x3 stride-2 convs and the 3x3 max-pool 0/1 -- where detectron2 / torchvision
pad 3/3 and 1/1 (stride-1 layers and 1x1 stride-2 shortcuts agree).  The
converted weights thus see each stride-2 window shifted by one input pixel;
fine-tuning adapts, frozen features lose accuracy (README, "DetCon's
padding").  DetCon's ResNet-200 has no detectron2 counterpart and is refused.
"""
from __future__ import annotations

import logging
import re
from collections.abc import Mapping

import numpy as np

from . import names
from .errors import ConversionError

logger = logging.getLogger(__name__)

_ROOT = re.compile(r"^(?P<prefix>(?:[^/]+/)*?)(?P<net>[^/~]+)/~/(?P<path>(?:initial_conv|initial_batchnorm|block_group_\d+)(?:/.*)?)$")


def flatten_tree(tree, prefix: str = "") -> dict:
    """Nested mappings -> ``{"a/b/c": leaf}``."""
    flat = {}
    if isinstance(tree, Mapping):
        for key, value in tree.items():
            flat.update(flatten_tree(value, f"{prefix}{key}/"))
    elif isinstance(tree, (list, tuple)) and tree and all(isinstance(t, Mapping) for t in tree):
        for i, value in enumerate(tree):
            flat.update(flatten_tree(value, f"{prefix}{i}/"))
    else:
        flat[prefix[:-1]] = tree
    return flat


def looks_like_haiku(flat: dict) -> bool:
    return any(_ROOT.match(k) and k.endswith("initial_conv/w") for k in flat)


def _pick(candidates: list[str], what: str) -> str:
    if len(candidates) == 1:
        return candidates[0]
    online = [c for c in candidates if "online" in c]
    if len(online) == 1:
        return online[0]
    not_target = [c for c in candidates if "target" not in c]
    if len(not_target) == 1:
        return not_target[0]
    raise ConversionError(f"several {what} in the Haiku tree ({', '.join(candidates)}); cannot tell which is the online encoder")


def _drop_reason(key: str) -> str | None:
    lowered = key.lower()
    if "target" in lowered:
        return "target (momentum) network"
    if "opt_state" in lowered or "optimizer" in lowered:
        return "optimizer state"
    for head in ("projector", "predictor", "classifier"):
        if re.search(rf"(^|/){head}(/|$)", key):
            return f"{head} head"
    return None


def haiku_entries(tree):
    """``(entries, values)`` of the online encoder in torchvision names.

    ``entries`` is a list of ``(src, tv_name | None, reason | None)``;
    ``values`` maps torchvision names to float32 arrays in PyTorch layout.
    """
    flat = flatten_tree(tree)
    roots = {}
    for key in flat:
        m = _ROOT.match(key)
        if m:
            roots.setdefault((m.group("prefix"), m.group("net")), []).append(key)
    param_roots = [p + n for (p, n), keys in roots.items() if any(k.endswith("initial_conv/w") for k in keys)]
    if not param_roots:
        raise ConversionError("no Haiku ResNet (<module>/~/initial_conv/w) in the tree")
    encoder = _pick(sorted(param_roots), "ResNet encoders")
    net = encoder.rsplit("/", 1)[-1]
    stat_roots = [p + n for (p, n), keys in roots.items() if n == net and any("mean_ema" in k for k in keys)]
    if not stat_roots:
        raise ConversionError(
            f"the Haiku tree has the parameters of {encoder!r} but no BatchNorm statistics "
            "(…/~/mean_ema, …/~/var_ema): save the Haiku *state* with the parameters"
        )
    if encoder in stat_roots:
        stats = encoder
    else:
        swapped = [r for r in stat_roots if r == encoder.replace("params", "state")]
        stats = swapped[0] if swapped else _pick(sorted(stat_roots), "BatchNorm state trees")
    used_roots = {encoder + "/~/", stats + "/~/"}

    entries, values, hidden = [], {}, {}
    for key, leaf in flat.items():
        root = next((r for r in used_roots if key.startswith(r)), None)
        if root is None:
            entries.append((key, None, _drop_reason(key)))
            continue
        path = key[len(root):]
        tv_name, kind, reason = names.haiku_to_torchvision(path)
        if tv_name is None:
            if path.endswith("_ema/hidden"):
                hidden[path] = (key, leaf)
            entries.append((key, None, reason))
            continue
        values[tv_name] = _to_torch_layout(np.asarray(leaf), kind, key)
        entries.append((key, tv_name, None))
    _fill_missing_averages(entries, values, hidden)
    logger.info("Haiku encoder %r (BN statistics from %r)", encoder, stats)
    return entries, values


def _fill_missing_averages(entries, values, hidden) -> None:
    """Use an EMA's ``hidden`` value where its debiased ``average`` is absent (equal after many steps)."""
    for path, (key, leaf) in hidden.items():
        tv_name, kind, _ = names.haiku_to_torchvision(path[: -len("hidden")] + "average")
        if tv_name and tv_name not in values:
            logger.warning("%s: no `average`, using the EMA's `hidden` value", key)
            values[tv_name] = _to_torch_layout(np.asarray(leaf), kind, key)
            for i, entry in enumerate(entries):
                if entry[0] == key:
                    entries[i] = (key, tv_name, None)


def _to_torch_layout(array: np.ndarray, kind: str, key: str) -> np.ndarray:
    if not np.issubdtype(array.dtype, np.floating):
        raise ConversionError(f"{key}: expected a float array, got {array.dtype}")
    array = array.astype(np.float32)
    if kind == "conv":
        if array.ndim != 4:
            raise ConversionError(f"{key}: a Haiku conv kernel is 4-D HWIO, got shape {array.shape}")
        return np.ascontiguousarray(array.transpose(3, 2, 0, 1))  # HWIO -> OIHW
    return np.ascontiguousarray(array.reshape(-1))
