"""Convert a pretraining checkpoint to detectron2's model-zoo format (or to torchvision).

    result = convert_checkpoint("output/pretrain/model_final.pth", include=("backbone", "fpn", "box_head"))
    print(result.summary())
    save_d2(result, "model_final_d2.pkl")

The model-zoo pickle is ``{"model": {name: np.ndarray}, "__author__": ...,
"matching_heuristics": True}``: detectron2 0.6 applies its name-matching
heuristics only to ``.pkl`` files with these keys (docs/detectron2.md, Loading weights), so
``stem.*`` lands in ``backbone.bottom_up.stem.*`` of an FPN model and
``res5.*`` in ``roi_heads.res5.*`` of a C4 model.

Every supported source is a ResNet with the stride on the 3x3 conv
(torchvision style), so fine-tune with ``MODEL.RESNETS.STRIDE_IN_1X1 False``,
``INPUT.FORMAT "RGB"`` and the ImageNet mean/std x 255 (the
``configs/transfer`` configs do).  DetCon's Haiku encoder additionally used
TensorFlow "SAME" padding, see ``README.md`` ("Converting and transferring").
"""
from __future__ import annotations

import logging
import os
import pickle
from collections import Counter, OrderedDict
from dataclasses import dataclass, field

import numpy as np

from . import formats, names, verify
from .errors import ConversionError, WeightsFileError
from .safe_load import is_object_npy, read_weights

logger = logging.getLogger(__name__)

GROUPS = ("backbone", "fpn", "box_head")
FINE_TUNE_HINT = (
    "MODEL.RESNETS.STRIDE_IN_1X1 False, INPUT.FORMAT RGB, "
    "MODEL.PIXEL_MEAN [123.675, 116.28, 103.53], MODEL.PIXEL_STD [58.395, 57.12, 57.375]"
)


@dataclass
class ConversionResult:
    """Converted tensors (model-zoo names) and what happened to every source key."""

    source: str
    format: str
    include: tuple
    model: "OrderedDict[str, np.ndarray]"
    converted: list = field(default_factory=list)  # (source key, d2 name)
    dropped: list = field(default_factory=list)  # (source key, reason)
    unmatched: list = field(default_factory=list)  # source keys
    depth: int | None = None

    def group_counts(self) -> dict:
        counts = Counter(names.group_of(n) for n in self.model)
        return {g: counts[g] for g in GROUPS if counts[g]}

    def summary(self, examples: int = 1) -> str:
        lines = [f"input: {self.source} (format {self.format}, ResNet-{self.depth})"]
        groups = ", ".join(f"{g} {n}" for g, n in self.group_counts().items())
        lines.append(f"converted {len(self.model)} tensors: {groups}")
        by_reason = OrderedDict()
        for key, reason in self.dropped:
            by_reason.setdefault(reason, []).append(key)
        lines.append(f"dropped {len(self.dropped)} keys:")
        for reason, keys in sorted(by_reason.items(), key=lambda kv: -len(kv[1])):
            lines.append(f"  {len(keys):6d}  {reason}  (e.g. {', '.join(keys[:examples])})")
        lines.append(f"unmatched {len(self.unmatched)} keys" + (":" if self.unmatched else ""))
        for key in self.unmatched[:20]:
            lines.append(f"          {key}")
        if len(self.unmatched) > 20:
            lines.append(f"          ... and {len(self.unmatched) - 20} more")
        if self.format != "d2":
            lines.append(f"fine-tune with {FINE_TUNE_HINT}")
        return "\n".join(lines)

    def report(self) -> dict:
        """JSON-serialisable record of the conversion (``--report``)."""
        return {
            "source": self.source,
            "format": self.format,
            "depth": self.depth,
            "include": list(self.include),
            "groups": self.group_counts(),
            "converted": [list(p) for p in self.converted],
            "dropped": [list(p) for p in self.dropped],
            "unmatched": list(self.unmatched),
        }


def parse_include(include) -> tuple:
    """``"backbone,fpn"``, ``"all"`` or a sequence -> a tuple of group names.

    ``"all"`` keeps every part the checkpoint has (see :func:`convert_checkpoint`).
    """
    if isinstance(include, str):
        include = [p.strip() for p in include.split(",") if p.strip()]
    include = tuple(dict.fromkeys(include or ("backbone",)))
    if include == ("all",):
        return include
    unknown = [g for g in include if g not in GROUPS]
    if unknown:
        raise ConversionError(f"unknown --include part(s) {unknown}; choose from {', '.join(GROUPS)} or all")
    if "backbone" not in include:
        raise ConversionError("--include must contain backbone")
    return include


def convert_checkpoint(
    path: str,
    *,
    fmt: str = "auto",
    include=("backbone",),
    strict: bool = False,
    depth: int | None = None,
    unsafe: bool = False,
) -> ConversionResult:
    """Read ``path``, map its online encoder (and optionally FPN / box head) to model-zoo names, check it."""
    include = parse_include(include)
    if fmt == "auto" and is_object_npy(path):
        logger.warning(
            "%s is an .npy holding a pickled object (numpy would need allow_pickle=True); reading it as a "
            "DetCon Haiku tree with a restricted unpickler that only rebuilds dicts and numpy arrays. "
            "Pass --format detcon_haiku to say you expect this.", path,
        )
    try:
        obj = read_weights(path, unsafe_load=unsafe)
    except ConversionError:
        raise
    except WeightsFileError as err:
        raise ConversionError(str(err)) from None
    if fmt == "auto":
        fmt = formats.detect_format(obj)
        logger.info("%s: detected format %s", path, fmt)
    entries, values = formats.read(obj, fmt)
    if include == ("all",):  # every part this checkpoint has
        found = {names.group_of(dst) for _, dst, _ in entries if dst is not None}
        include = tuple(g for g in GROUPS if g in found or g == "backbone")

    result = ConversionResult(source=path, format=fmt, include=include, model=OrderedDict())
    chosen = {}
    for src, dst, reason in entries:
        if dst is None:
            (result.dropped.append((src, reason)) if reason else result.unmatched.append(src))
            continue
        group = names.group_of(dst)
        if group not in include:
            result.dropped.append((src, f"{group} (not included; --include {group} keeps it)"))
            continue
        if dst in chosen:  # e.g. backbone.res5 and box_head.res5: the region head wins
            previous = chosen[dst]
            if src.startswith(("box_head.", "roi_heads.")):
                result.dropped.append((previous, f"superseded by {src}"))
                result.converted.remove((previous, dst))
            else:
                result.dropped.append((src, f"superseded by {previous}"))
                continue
        chosen[dst] = src
        result.converted.append((src, dst))

    model = {dst: values[src] for src, dst in result.converted}
    result.depth, extra = verify.check_backbone(model, depth)
    for name in extra:
        src = next(s for s, d in result.converted if d == name)
        result.unmatched.append(src)
        result.converted = [p for p in result.converted if p[1] != name]
        del model[name]
    for group, check in (("fpn", verify.check_fpn), ("box_head", verify.check_box_head)):
        if group in include:
            if not any(names.group_of(n) == group for n in model):
                raise ConversionError(f"--include {group}, but the checkpoint ({fmt}) has no {group} weights")
            check(model)
    result.model = OrderedDict(sorted(model.items(), key=lambda kv: _order(kv[0])))
    result.converted.sort(key=lambda p: _order(p[1]))
    if strict and result.unmatched:
        raise ConversionError(
            f"--strict: {len(result.unmatched)} keys of {path} matched no rule: {', '.join(result.unmatched[:10])}"
        )
    return result


def _order(name: str):
    return (GROUPS.index(names.group_of(name) or "backbone"), name)


def save_d2(result: ConversionResult, path: str) -> str:
    """Write the detectron2 model-zoo pickle (must end in ``.pkl`` for detectron2 to use its heuristics)."""
    if not path.endswith(".pkl"):
        raise ConversionError(f"{path}: detectron2 applies its name matching only to .pkl files; name it *.pkl")
    from .. import __version__

    data = {
        "model": {k: np.ascontiguousarray(v) for k, v in result.model.items()},
        "__author__": f"soco_d2 {__version__} ({result.format})",
        "matching_heuristics": True,
        "__soco_d2__": {
            "source": os.path.abspath(result.source),
            "format": result.format,
            "depth": result.depth,
            "include": list(result.include),
            "stride_in_1x1": False,
        },
    }
    _ensure_dir(path)
    with open(path, "wb") as f:
        pickle.dump(data, f, protocol=pickle.HIGHEST_PROTOCOL)
    return path


def to_torchvision(result: ConversionResult) -> "OrderedDict":
    """A torchvision ``resnet{depth}`` state dict (without ``fc``) of the converted backbone."""
    import torch

    state = OrderedDict()
    for name, value in result.model.items():
        tv_name = names.d2_to_torchvision(name)
        if tv_name is None:
            continue
        state[tv_name] = torch.from_numpy(np.array(value, dtype=np.float32))
        if tv_name.endswith("running_var"):
            state[tv_name[: -len("running_var")] + "num_batches_tracked"] = torch.tensor(0, dtype=torch.long)
    return state


def save_torchvision(result: ConversionResult, path: str) -> str:
    """``torch.save`` of :func:`to_torchvision`; load with ``resnet50().load_state_dict(sd, strict=False)`` (no fc)."""
    import torch

    skipped = [g for g in result.group_counts() if g != "backbone"]
    if skipped:
        logger.warning("torchvision has no %s: only the backbone is exported", " / ".join(skipped))
    _ensure_dir(path)
    torch.save(to_torchvision(result), path)
    return path


def _ensure_dir(path: str) -> None:
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
