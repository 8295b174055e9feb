"""Checks that a converted state dict is complete before anyone fine-tunes on it.

detectron2 will not tell: a FrozenBN model silently fills missing BN running
statistics with 0 / 1 (docs/detectron2.md, what a load reports, case E), and the matching
heuristics skip mismatched shapes with a warning.  So the converter compares
the backbone with the exact tensor list of detectron2's own ResNet of the
same depth (built on the ``meta`` device: names and shapes, no memory).
"""
from __future__ import annotations

import functools
import re

from .errors import ConversionError

# blocks per stage -> depth (detectron2's build_resnet_backbone supports these)
_DEPTHS = {
    ("basic", (2, 2, 2, 2)): 18,
    ("basic", (3, 4, 6, 3)): 34,
    ("bottleneck", (3, 4, 6, 3)): 50,
    ("bottleneck", (3, 4, 23, 3)): 101,
    ("bottleneck", (3, 8, 36, 3)): 152,
}
_BLOCK = re.compile(r"^res([2-5])\.(\d+)\.")
_STATS = ("running_mean", "running_var")


def infer_depth(names) -> int:
    """ResNet depth from the block counts of ``res2..res5``."""
    blocks = {s: set() for s in range(2, 6)}
    for name in names:
        m = _BLOCK.match(name)
        if m:
            blocks[int(m.group(1))].add(int(m.group(2)))
    missing = [f"res{s}" for s, ids in blocks.items() if not ids]
    if missing:
        raise ConversionError(
            f"the backbone has no {', '.join(missing)} weights: not a complete ResNet (a SoCo C4 checkpoint "
            "keeps res5 in box_head.res5; a truncated or partial export lacks whole stages)"
        )
    counts = tuple(max(ids) + 1 for _, ids in sorted(blocks.items()))
    kind = "bottleneck" if any(n.startswith("res2.0.conv3.") for n in names) else "basic"
    depth = _DEPTHS.get((kind, counts))
    if depth is None:
        raise ConversionError(f"backbone stages have {counts} {kind} blocks: not a ResNet-18/34/50/101/152")
    return depth


@functools.lru_cache(maxsize=None)
def resnet_template(depth: int) -> dict:
    """``{name: shape}`` of detectron2's ResNet-``depth`` (BN, torchvision strides), without num_batches_tracked."""
    import torch
    from detectron2.config import get_cfg
    from detectron2.layers import ShapeSpec
    from detectron2.modeling.backbone.resnet import build_resnet_backbone

    cfg = get_cfg()
    cfg.MODEL.RESNETS.DEPTH = depth
    cfg.MODEL.RESNETS.NORM = "BN"
    cfg.MODEL.RESNETS.STRIDE_IN_1X1 = False
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64 if depth < 50 else 256
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    with torch.device("meta"):
        model = build_resnet_backbone(cfg, ShapeSpec(channels=3))
    return {k: tuple(v.shape) for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}


def check_backbone(model: dict, depth: int | None = None) -> tuple[int, list[str]]:
    """Raise unless ``model``'s backbone tensors are exactly a detectron2 ResNet's.

    Returns the depth and the backbone names that are not part of that ResNet.
    """
    names = [n for n in model if n.startswith(("stem.", "res"))]
    if not names:
        raise ConversionError("no backbone (ResNet) weights found in the checkpoint")
    found = infer_depth(names)
    if depth is not None and depth != found:
        raise ConversionError(f"the checkpoint holds a ResNet-{found}, not the ResNet-{depth} asked for (--depth)")
    template = resnet_template(found)
    have = set(names)
    missing = [n for n in template if n not in have]
    stats = [n for n in missing if n.endswith(_STATS)]
    if stats:
        raise ConversionError(
            f"BatchNorm running statistics missing for {len(stats)} tensors (e.g. {', '.join(stats[:3])}). "
            "detectron2's FrozenBN would silently use mean 0 / var 1 for them; export the BN buffers too"
        )
    if missing:
        raise ConversionError(
            f"incomplete ResNet-{found} backbone: {len(missing)} of {len(template)} tensors missing "
            f"(e.g. {', '.join(missing[:4])}); is the file truncated or a different architecture?"
        )
    wrong = [(n, tuple(model[n].shape), template[n]) for n in names if n in template and tuple(model[n].shape) != template[n]]
    if wrong:
        n, got, want = wrong[0]
        raise ConversionError(
            f"wrong architecture for a ResNet-{found}: {len(wrong)} tensors have other shapes "
            f"(e.g. {n}: {got}, expected {want}); only standard-width ResNets convert"
        )
    return found, [n for n in names if n not in template]


def _check_norms(model: dict, prefix: str, what: str) -> None:
    norms = sorted({n.rsplit(".", 1)[0] for n in model if n.startswith(prefix) and ".norm." in n})
    with_stats = [p for p in norms if all(f"{p}.{s}" in model for s in _STATS)]
    if with_stats and len(with_stats) != len(norms):
        lacking = [p for p in norms if p not in with_stats]
        raise ConversionError(
            f"{what}: BatchNorm running statistics missing for {', '.join(lacking[:3])} "
            f"({len(lacking)} of {len(norms)} norm layers)"
        )


def check_fpn(model: dict) -> None:
    """All four lateral and output convs of an FPN, with consistent norms."""
    missing = [f"fpn_{kind}{lvl}.weight" for kind in ("lateral", "output") for lvl in range(2, 6)
               if f"fpn_{kind}{lvl}.weight" not in model]
    if missing:
        raise ConversionError(f"incomplete FPN: missing {', '.join(missing)}")
    _check_norms(model, "fpn_", "FPN")


def check_box_head(model: dict) -> None:
    """Conv layers numbered 1..K without gaps, at least one fc, consistent norms."""
    convs = sorted(int(m.group(1)) for n in model if (m := re.match(r"^box_head\.conv(\d+)\.weight$", n)))
    fcs = sorted(int(m.group(1)) for n in model if (m := re.match(r"^box_head\.fc(\d+)\.weight$", n)))
    if convs != list(range(1, len(convs) + 1)) or fcs != list(range(1, len(fcs) + 1)) or not (convs or fcs):
        raise ConversionError(f"incomplete box head: conv layers {convs}, fc layers {fcs}")
    _check_norms(model, "box_head.", "box head")
