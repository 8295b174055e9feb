"""Parameter-name mappings between the layouts the converter reads and
detectron2's model-zoo names.

detectron2 model-zoo names (what a converted ``.pkl`` holds; the matching
heuristics then add ``backbone.bottom_up.`` / ``backbone.`` / ``roi_heads.``):

* ResNet: ``stem.conv1.weight``, ``stem.conv1.norm.*``,
  ``res{2..5}.{i}.conv{1,2,3}[.norm].*``, ``res{2..5}.0.shortcut[.norm].*``;
* FPN: ``fpn_lateral{2..5}[.norm].*``, ``fpn_output{2..5}[.norm].*``;
* box head (FastRCNNConvFCHead): ``box_head.conv{k}[.norm].*``, ``box_head.fc{k}.*``.

Each ``*_to_d2`` function maps one source name (without the source's prefix)
to ``(d2_name, None)``, to ``(None, reason)`` for a key that is dropped on
purpose, or to ``(None, None)`` for a key it does not know.
"""
from __future__ import annotations

import re

_BN_PARAM = r"(weight|bias|running_mean|running_var)"
NUM_BATCHES_TRACKED = "BN num_batches_tracked (unused by detectron2)"

# --------------------------------------------------------------- detectron2
_D2_RESNET = re.compile(rf"^(stem\.conv1|res[2-5]\.\d+\.(conv[1-3]|shortcut))(\.norm\.{_BN_PARAM}|\.weight|\.bias)$")
_D2_FPN = re.compile(rf"^fpn_(lateral|output)[2-6](\.norm\.{_BN_PARAM}|\.weight|\.bias)$")
_D2_BOX_HEAD = re.compile(rf"^box_head\.(conv\d+(\.norm\.{_BN_PARAM}|\.weight|\.bias)|fc\d+\.(weight|bias))$")


def group_of(d2_name: str) -> str | None:
    """``"backbone"``, ``"fpn"`` or ``"box_head"`` for a valid model-zoo name, else None."""
    if _D2_RESNET.match(d2_name):
        return "backbone"
    if _D2_FPN.match(d2_name):
        return "fpn"
    if _D2_BOX_HEAD.match(d2_name):
        return "box_head"
    return None


def d2_to_d2(name: str):
    """Names already in detectron2's layout (our checkpoints, detectron2 models)."""
    if name.endswith(".num_batches_tracked"):
        return None, NUM_BATCHES_TRACKED
    return (name, None) if group_of(name) else (None, None)


# --------------------------------------------------------------- torchvision
_TV_STEM_CONV = re.compile(r"^conv1\.weight$")
_TV_STEM_BN = re.compile(rf"^bn1\.{_BN_PARAM}$")
_TV_CONV = re.compile(r"^layer([1-4])\.(\d+)\.conv([1-3])\.weight$")
_TV_BN = re.compile(rf"^layer([1-4])\.(\d+)\.bn([1-3])\.{_BN_PARAM}$")
_TV_DOWN_CONV = re.compile(r"^layer([1-4])\.(\d+)\.downsample\.0\.weight$")
_TV_DOWN_BN = re.compile(rf"^layer([1-4])\.(\d+)\.downsample\.1\.{_BN_PARAM}$")


def torchvision_to_d2(name: str):
    """torchvision ResNet names (also MoCo's encoder_q, SoCo's encoder, DenseCL's backbone)."""
    if name.endswith("num_batches_tracked"):
        return None, NUM_BATCHES_TRACKED
    if name.startswith("fc."):
        return None, "classifier / MLP head of the encoder (fc)"
    if _TV_STEM_CONV.match(name):
        return "stem.conv1.weight", None
    m = _TV_STEM_BN.match(name)
    if m:
        return f"stem.conv1.norm.{m.group(1)}", None
    m = _TV_CONV.match(name)
    if m:
        return f"res{int(m.group(1)) + 1}.{m.group(2)}.conv{m.group(3)}.weight", None
    m = _TV_BN.match(name)
    if m:
        return f"res{int(m.group(1)) + 1}.{m.group(2)}.conv{m.group(3)}.norm.{m.group(4)}", None
    m = _TV_DOWN_CONV.match(name)
    if m:
        return f"res{int(m.group(1)) + 1}.{m.group(2)}.shortcut.weight", None
    m = _TV_DOWN_BN.match(name)
    if m:
        return f"res{int(m.group(1)) + 1}.{m.group(2)}.shortcut.norm.{m.group(3)}", None
    return None, None


_D2_STEM = re.compile(rf"^stem\.conv1(\.norm)?\.(weight|{_BN_PARAM[1:-1]})$")
_D2_BLOCK = re.compile(rf"^res([2-5])\.(\d+)\.(conv[1-3]|shortcut)(\.norm)?\.(weight|{_BN_PARAM[1:-1]})$")


def d2_to_torchvision(name: str) -> str | None:
    """The torchvision ResNet name of a detectron2 ResNet name (None for FPN / heads)."""
    m = _D2_STEM.match(name)
    if m:
        return ("bn1." if m.group(1) else "conv1.") + m.group(2)
    m = _D2_BLOCK.match(name)
    if not m:
        return None
    stage, block, layer, norm, param = m.groups()
    prefix = f"layer{int(stage) - 1}.{block}."
    if layer == "shortcut":
        return prefix + ("downsample.1." if norm else "downsample.0.") + param
    k = layer[-1]
    return prefix + (f"bn{k}." if norm else f"conv{k}.") + param


# --------------------------------------------------------------- official SoCo (mmcv FPN + its own box head)
_MMCV_FPN = re.compile(rf"^(lateral_convs|fpn_convs)\.(\d+)\.(conv\.(weight|bias)|(bn|gn|norm)\.{_BN_PARAM})$")


def mmcv_fpn_to_d2(name: str, start_level: int = 2, num_levels: int = 4):
    """mmcv ``FPN`` (``neck.lateral_convs.i.{conv,bn}``) -> ``fpn_lateral{i+2}`` / ``fpn_output{i+2}``."""
    if name.endswith("num_batches_tracked"):
        return None, NUM_BATCHES_TRACKED
    m = _MMCV_FPN.match(name)
    if not m or int(m.group(2)) >= num_levels:
        return None, None
    kind = "lateral" if m.group(1) == "lateral_convs" else "output"
    level = start_level + int(m.group(2))
    if m.group(4):
        return f"fpn_{kind}{level}.{m.group(4)}", None
    return f"fpn_{kind}{level}.norm.{m.group(6)}", None


_SOCO_HEAD_CONV = re.compile(r"^conv([1-9])\.(weight|bias)$")
_SOCO_HEAD_BN = re.compile(rf"^bn([1-9])\.{_BN_PARAM}$")
_SOCO_HEAD_FC = re.compile(r"^fc([1-9])\.(weight|bias)$")


def soco_head_to_d2(name: str):
    """SoCo's ``FastRCNNConvFCHead`` (``head.conv{k}``, ``head.bn{k}``, ``head.fc1``) -> ``box_head.*``."""
    if name.endswith("num_batches_tracked"):
        return None, NUM_BATCHES_TRACKED
    m = _SOCO_HEAD_CONV.match(name)
    if m:
        return f"box_head.conv{m.group(1)}.{m.group(2)}", None
    m = _SOCO_HEAD_BN.match(name)
    if m:
        return f"box_head.conv{m.group(1)}.norm.{m.group(2)}", None
    m = _SOCO_HEAD_FC.match(name)
    if m:
        return f"box_head.fc{m.group(1)}.{m.group(2)}", None
    return None, None


# --------------------------------------------------------------- Haiku (DetCon / BYOL ResNet)
# Paths inside the encoder module, e.g. "block_group_0/~/block_0/~/conv_0/w"
# (haiku's ResNet.BlockV1: conv_0/batchnorm_0 = 1x1, conv_1/batchnorm_1 = 3x3 with
# the stride, conv_2/batchnorm_2 = 1x1, shortcut_conv/shortcut_batchnorm on block 0).
_HK_STEM_CONV = re.compile(r"^initial_conv/w$")
_HK_STEM_BN = re.compile(r"^initial_batchnorm/(scale|offset)$")
_HK_STEM_STAT = re.compile(r"^initial_batchnorm/~/(mean|var)_ema/(average|hidden|counter)$")
_HK_BLOCK = r"^block_group_(\d+)/~/block_(\d+)/~/"
_HK_CONV = re.compile(_HK_BLOCK + r"(conv_([0-2])|shortcut_conv)/w$")
_HK_BN = re.compile(_HK_BLOCK + r"(batchnorm_([0-2])|shortcut_batchnorm)/(scale|offset)$")
_HK_STAT = re.compile(_HK_BLOCK + r"(batchnorm_([0-2])|shortcut_batchnorm)/~/(mean|var)_ema/(average|hidden|counter)$")
_HK_BN_PARAM = {"scale": "weight", "offset": "bias"}
HAIKU_EMA_UNUSED = "Haiku EMA bookkeeping (counter / zero-biased hidden value; `average` is used)"


def _hk_layer(group: str, block: str, layer: str, index: str | None, bn: bool) -> str:
    prefix = f"layer{int(group) + 1}.{block}."
    if index is None:  # shortcut
        return prefix + ("downsample.1" if bn else "downsample.0")
    return prefix + (f"bn{int(index) + 1}" if bn else f"conv{int(index) + 1}")


def haiku_to_torchvision(path: str):
    """One leaf of a Haiku ResNet (path inside the encoder) -> ``(torchvision_name, kind, reason)``.

    ``kind`` says how to convert the array: ``"conv"`` (HWIO -> OIHW), ``"vector"``
    (flatten the (1, 1, 1, C) BN arrays) or None for a dropped/unknown leaf.
    """
    if _HK_STEM_CONV.match(path):
        return "conv1.weight", "conv", None
    m = _HK_STEM_BN.match(path)
    if m:
        return f"bn1.{_HK_BN_PARAM[m.group(1)]}", "vector", None
    m = _HK_STEM_STAT.match(path)
    if m:
        if m.group(2) != "average":
            return None, None, HAIKU_EMA_UNUSED
        return f"bn1.running_{m.group(1)}", "vector", None
    m = _HK_CONV.match(path)
    if m:
        return _hk_layer(m.group(1), m.group(2), m.group(3), m.group(4), False) + ".weight", "conv", None
    m = _HK_BN.match(path)
    if m:
        return _hk_layer(m.group(1), m.group(2), m.group(3), m.group(4), True) + "." + _HK_BN_PARAM[m.group(5)], "vector", None
    m = _HK_STAT.match(path)
    if m:
        if m.group(6) != "average":
            return None, None, HAIKU_EMA_UNUSED
        return _hk_layer(m.group(1), m.group(2), m.group(3), m.group(4), True) + f".running_{m.group(5)}", "vector", None
    if path.startswith("logits/"):
        return None, None, "classifier of the encoder (logits)"
    return None, None, None
