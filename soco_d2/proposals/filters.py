"""SoCo's proposal filter and its fallback chain, as one configurable policy.

The official pipeline (docs/methods/soco.md, Proposals) keeps a selective-search rect
``(x, y, w, h)`` of an ``H x W`` image iff

* ``w >= 32 and h >= 32`` (min side),
* ``1/3 <= w / h <= 3`` (aspect),
* ``0.3 <= sqrt(w*h) / sqrt(W*H) <= 0.8`` (size ratio),

and an image left with nothing gets, in order, the rects passing the
aspect-only filter (min side + aspect), then the min-side-only filter; the
training code finally uses the whole image when even that is empty.  Each of
these is a *stage* here; the policy is the main stage plus an ordered list of
fallback stages, so the chain can be changed without code.

Widths follow the official convention by default (``w = x2 - x1 - 1``, one
less than the pixel extent, because the official rects are ``max - min``), so
the same boxes pass or fail exactly as in the official filter.
"""
from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass

import numpy as np

from .boxes import whole_image_box

# Stage names usable in ``fallbacks`` (the main stage is always "main").
STAGES = ("main", "ratio", "size", "none", "all", "whole_image")
# Stage code stored per image for "no stage produced a box".
EMPTY_STAGE = 255


@dataclass(frozen=True)
class FilterPolicy:
    min_side: int = 32  # both sides >= this (0 = off)
    max_aspect: float = 3.0  # 1/r <= w/h <= r (0 = off)
    min_size_ratio: float = 0.3  # sqrt(w*h)/sqrt(W*H) >= this (0 = off)
    max_size_ratio: float = 0.8  # sqrt(w*h)/sqrt(W*H) <= this (0 = off)
    # Stages tried in order when the main stage keeps nothing.
    fallbacks: tuple = ("ratio", "none", "whole_image")
    # "official": w = x2 - x1 - 1 (the official rect width); "extent": w = x2 - x1.
    size_convention: str = "official"
    max_boxes: int = 0  # keep at most this many (first in backend order; 0 = all)
    dedup: bool = False  # drop exact duplicate boxes (keeping the first)
    # Main stage rules; "all" turns filtering off (raw proposals are stored).
    main: str = "main"

    def __post_init__(self):
        object.__setattr__(self, "fallbacks", tuple(self.fallbacks))
        bad = [s for s in self.fallbacks + (self.main,) if s not in STAGES]
        if bad:
            raise ValueError(f"unknown filter stage(s) {bad}; choose from {', '.join(STAGES)}")
        if self.size_convention not in ("official", "extent"):
            raise ValueError(f"size_convention must be 'official' or 'extent', not {self.size_convention!r}")
        for name in ("min_side", "max_aspect", "min_size_ratio", "max_size_ratio", "max_boxes"):
            if getattr(self, name) < 0:
                raise ValueError(f"filter {name} must be >= 0, got {getattr(self, name)}")
        if self.max_aspect and self.max_aspect < 1:
            raise ValueError(f"max_aspect must be >= 1 (or 0 = off), got {self.max_aspect}")
        if self.max_size_ratio and self.min_size_ratio > self.max_size_ratio:
            raise ValueError(f"min_size_ratio {self.min_size_ratio} > max_size_ratio {self.max_size_ratio}")

    # ------------------------------------------------------------------ rules
    def _wh(self, boxes: np.ndarray):
        w = (boxes[:, 2] - boxes[:, 0]).astype(np.float64)
        h = (boxes[:, 3] - boxes[:, 1]).astype(np.float64)
        if self.size_convention == "official":
            w, h = w - 1, h - 1
        return w, h

    def rule_masks(self, boxes, height: int, width: int) -> dict:
        """Boolean keep-mask of every single rule (for tests and diagnostics)."""
        boxes = np.asarray(boxes, dtype=np.int64).reshape(-1, 4)
        w, h = self._wh(boxes)
        true = np.ones(len(boxes), dtype=bool)
        masks = {"min_side": (w >= self.min_side) & (h >= self.min_side) if self.min_side else true.copy()}
        if self.max_aspect:
            with np.errstate(divide="ignore", invalid="ignore"):
                r = w / h
                masks["aspect"] = (h > 0) & (w > 0) & (r >= 1.0 / self.max_aspect) & (r <= self.max_aspect)
        else:
            masks["aspect"] = true.copy()
        ratio = np.sqrt(np.clip(w, 0, None) * np.clip(h, 0, None)) / math.sqrt(max(height * width, 1))
        masks["min_size_ratio"] = ratio >= self.min_size_ratio if self.min_size_ratio else true.copy()
        masks["max_size_ratio"] = ratio <= self.max_size_ratio if self.max_size_ratio else true.copy()
        return masks

    def stage_mask(self, stage: str, boxes, height: int, width: int) -> np.ndarray:
        m = self.rule_masks(boxes, height, width)
        if stage == "main":
            return m["min_side"] & m["aspect"] & m["min_size_ratio"] & m["max_size_ratio"]
        if stage == "ratio":
            return m["min_side"] & m["aspect"]
        if stage == "size":
            return m["min_side"] & m["min_size_ratio"] & m["max_size_ratio"]
        if stage == "none":
            return m["min_side"]
        if stage == "all":
            return np.ones(len(m["min_side"]), dtype=bool)
        raise ValueError(f"{stage!r} is not a rule stage")

    # ------------------------------------------------------------------ apply
    @property
    def stages(self) -> tuple:
        """Stage names by stage code (0 = main, 1.. = fallbacks)."""
        return (self.main,) + self.fallbacks

    def apply(self, boxes, height: int, width: int):
        """Filter integer XYXY ``boxes`` of an ``height x width`` image.

        Returns ``(kept int64 (K, 4), stage_code)``; ``stage_code`` indexes
        :attr:`stages`, or is ``EMPTY_STAGE`` when every stage kept nothing.
        """
        boxes = np.asarray(boxes, dtype=np.int64).reshape(-1, 4)
        if self.dedup and len(boxes):
            _, first = np.unique(boxes, axis=0, return_index=True)
            boxes = boxes[np.sort(first)]
        for code, stage in enumerate(self.stages):
            if stage == "whole_image":
                kept = whole_image_box(height, width)
            else:
                kept = boxes[self.stage_mask(stage, boxes, height, width)]
            if len(kept):
                if self.max_boxes:
                    kept = kept[: self.max_boxes]
                return kept, code
        return boxes[:0], EMPTY_STAGE

    def to_dict(self) -> dict:
        d = asdict(self)
        d["fallbacks"] = list(self.fallbacks)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "FilterPolicy":
        return cls(**{k: (tuple(v) if k == "fallbacks" else v) for k, v in d.items()})


_OFFICIAL = re.compile(r"^(?:(none)|(?:ratio(\d+))?(?:size(\d\d)(\d\d)?)?)(post)?$")


def parse_official_strategy(name: str, whole_image: bool = True) -> FilterPolicy:
    """A policy from an official SoCo ``--filter_strategy`` name.

    ``ratio3size0308`` -> min side 32, aspect <= 3, size ratio in [0.3, 0.8];
    ``ratioR`` / ``sizeXX`` / ``none`` are the partial filters; a ``post``
    suffix adds the official fallbacks (aspect-only, then min-side-only).
    ``whole_image`` appends the training code's last resort to the chain.
    ``raw`` keeps every proposal unfiltered.
    """
    if name == "raw":
        return FilterPolicy(main="all", fallbacks=("whole_image",) if whole_image else ())
    m = _OFFICIAL.match(name)
    if not m or not name or name == "post":
        raise ValueError(
            f"cannot parse filter strategy {name!r}; expected an official SoCo name such as "
            "'ratio3size0308post', 'ratio3', 'size03', 'none', or 'raw'"
        )
    none, ratio, smin, smax, post = m.groups()
    fallbacks = ("ratio", "none") if post else ()
    if whole_image:
        fallbacks += ("whole_image",)
    return FilterPolicy(
        min_side=32,
        max_aspect=0.0 if none or ratio is None else float(ratio),
        min_size_ratio=0.0 if smin is None else int(smin) / 10,
        max_size_ratio=0.0 if smax is None else int(smax) / 10,
        fallbacks=fallbacks,
    )
