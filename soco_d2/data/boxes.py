"""SoCo's proposal bookkeeping between views (docs/methods/soco.md: Boxes, Proposal sampling, Box jitter).

Everything here works in original-image pixels with continuous XYXY boxes
(x2 exclusive: a region covering pixel columns 3..10 is x1 = 3, x2 = 11), the
convention of the proposal cache.  The mapper then pushes each side's boxes
through that view's detectron2 transforms.

Deviation from the official code, on purpose: the official dataset converts
proposals to inclusive integer corners (x2 = x + w - 1), clips them in that
convention and divides inclusive corners by the crop size, which loses a pixel
per box and misplaces boxes by up to one pixel after resizing.  Continuous
coordinates make crop, resize and flip exact; every formula below is the
official one restated for x2_continuous = x2_inclusive + 1.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

__all__ = [
    "Rect",
    "whole_image_box",
    "rect_to_box",
    "sanitize_proposals",
    "intersect_rects",
    "overlaps_rect",
    "clip_to_rect",
    "jitter_boxes",
    "select_random",
    "pad_indices",
    "PairSelection",
    "select_pairs_with_retries",
    "build_pair_boxes",
    "PairBoxes",
    "size_levels",
    "soco_levels",
    "feature_stride",
    "LevelRule",
]

Rect = tuple  # (x0, y0, w, h), a crop window in original-image pixels


def whole_image_box(height: int, width: int) -> np.ndarray:
    return np.array([[0.0, 0.0, float(width), float(height)]], dtype=np.float32)


def rect_to_box(rect: Rect) -> np.ndarray:
    x0, y0, w, h = rect
    return np.array([x0, y0, x0 + w, y0 + h], dtype=np.float64)


def sanitize_proposals(boxes, height: int, width: int) -> np.ndarray:
    """Cache boxes -> (M, 4) float64 clipped to the image, empty ones dropped.
    An image with no proposal left gets a single whole-image box (docs/methods/soco.md, Proposal sampling)."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if len(boxes):
        boxes = clip_to_rect(boxes, (0, 0, width, height))
        boxes = boxes[(boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])]
    if len(boxes) == 0:
        boxes = whole_image_box(height, width).astype(np.float64)
    return boxes


def intersect_rects(a: Rect, b: Rect) -> Rect:
    """Intersection of two crop windows (possibly empty: w or h <= 0)."""
    x0, y0 = max(a[0], b[0]), max(a[1], b[1])
    x1, y1 = min(a[0] + a[2], b[0] + b[2]), min(a[1] + a[3], b[1] + b[3])
    return (x0, y0, x1 - x0, y1 - y0)


def overlaps_rect(boxes: np.ndarray, rect: Rect) -> np.ndarray:
    """Boxes with a positive-area intersection with ``rect`` (the official strict test)."""
    x0, y0, w, h = rect
    if w <= 0 or h <= 0:
        return np.zeros(len(boxes), dtype=bool)
    return (boxes[:, 0] < x0 + w) & (boxes[:, 2] > x0) & (boxes[:, 1] < y0 + h) & (boxes[:, 3] > y0)


def clip_to_rect(boxes: np.ndarray, rect: Rect) -> np.ndarray:
    """Intersect boxes with ``rect``; still in original-image pixels."""
    x0, y0, w, h = rect
    out = np.array(boxes, dtype=np.float64, copy=True).reshape(-1, 4)
    out[:, [0, 2]] = out[:, [0, 2]].clip(x0, x0 + w)
    out[:, [1, 3]] = out[:, [1, 3]].clip(y0, y0 + h)
    return out


def jitter_boxes(boxes: np.ndarray, prob: float, ratio: float) -> np.ndarray:
    """SoCo's V1 box jitter (docs/methods/soco.md, Box jitter).

    Each box is jittered with probability ``prob``: u0..u3 ~ U(-ratio, ratio),
    ``x1' = x1 + u0 w``, ``y1' = y1 + u1 h``, ``w' = w (1 + u2)``,
    ``h' = h (1 + u3)``, ``x2' = x1' + w'``, ``y2' = y1' + h'`` with w, h the
    box's width and height (continuous; the official inclusive-corner formula
    ``x2' = x1' + w' - 1`` is the same box).  Draws: one uniform for the coin,
    then four for the jittered boxes, box by box.
    """
    out = np.array(boxes, dtype=np.float64, copy=True).reshape(-1, 4)
    if prob <= 0 or ratio <= 0:
        return out
    for i in range(len(out)):
        if np.random.uniform() >= prob:
            continue
        u = np.random.uniform(-ratio, ratio, size=4)
        x1, y1, x2, y2 = out[i]
        w, h = x2 - x1, y2 - y1
        nx1, ny1 = x1 + u[0] * w, y1 + u[1] * h
        out[i] = (nx1, ny1, nx1 + w * (1 + u[2]), ny1 + h * (1 + u[3]))
    return out


def select_random(candidates: np.ndarray, k: int) -> np.ndarray:
    """``k`` of the candidate indices at random without replacement (all if fewer), random order."""
    candidates = np.asarray(candidates, dtype=np.int64)
    if len(candidates) <= k:
        return candidates[np.random.permutation(len(candidates))]
    return candidates[np.random.choice(len(candidates), size=k, replace=False)]


def pad_indices(n: int, k: int) -> np.ndarray:
    """Positions 0..n-1 followed by ``k - n`` positions drawn with replacement from them
    (SoCo's duplicate padding; each side of a pair is padded independently)."""
    if n <= 0:
        raise ValueError("cannot pad an empty box list")
    base = np.arange(min(n, k), dtype=np.int64)
    if n >= k:
        return base
    return np.concatenate([base, np.random.randint(0, n, size=k - n).astype(np.int64)])


@dataclass
class PairSelection:
    """Proposal indices selected for one view pair (a, b) (before jitter and padding)."""

    views: tuple[int, int]
    indices: np.ndarray


def select_pairs_with_retries(
    proposals: np.ndarray,
    sample_rects,
    pairs: list[tuple[int, int]],
    k: int,
    max_tries: int,
):
    """SoCo's crop/proposal sampling loop (docs/methods/soco.md, Proposal sampling).

    ``sample_rects()`` draws every view's crop window (a list of rects).  For each
    pair (a, b), candidates are the proposals overlapping the intersection of
    the two windows, and up to ``k`` are taken without replacement.  The windows
    are re-drawn, up to ``max_tries`` times in all, while any pair has fewer than
    ``least_common`` boxes; ``least_common`` starts at max(k // 2, 1) and halves
    (min 1) after each failed try.  The last draw is kept when all tries fail.
    Returns (rects, [PairSelection per pair], tries used).
    """
    least_common = max(k // 2, 1)
    tries = max(int(max_tries), 1)
    for attempt in range(1, tries + 1):
        rects = sample_rects()
        selections = []
        for a, b in pairs:
            cand = np.nonzero(overlaps_rect(proposals, intersect_rects(rects[a], rects[b])))[0]
            selections.append(PairSelection((a, b), select_random(cand, k)))
        if all(len(s.indices) >= least_common for s in selections):
            break
        least_common = max(least_common // 2, 1)
    return rects, selections, attempt


@dataclass
class PairBoxes:
    """One pair's boxes in original-image pixels, clipped to each side's window and padded to K."""

    views: tuple[int, int]
    boxes: tuple[np.ndarray, np.ndarray]  # (K, 4) float64 each
    ids: tuple[np.ndarray, np.ndarray]  # (K,) int64 each
    fallback: bool  # True: no candidate, the pair is the two whole views (id 1)


def build_pair_boxes(
    proposals: np.ndarray,
    ids: np.ndarray,
    selection: PairSelection,
    rect_a: Rect,
    rect_b: Rect,
    k: int,
    jitter_prob: float = 0.0,
    jitter_ratio: float = 0.0,
) -> PairBoxes:
    """Jitter side a's copies, clip each side to its window, pad each side to ``k``.

    A pair without candidates becomes the two whole windows with id 1 (the
    official clipping fallback; the pair degenerates to an image-level pair).
    Padding draws duplicates (with replacement) from the selected boxes, which
    are by construction present in both views; the two sides are padded
    independently, so ids match duplicates many-to-many.  A jittered side-a box
    that no longer overlaps its window (possible only when view a is itself a
    crop) keeps its un-jittered copy.
    """
    sel = selection.indices
    if len(sel) == 0:
        box_a, box_b = rect_to_box(rect_a)[None], rect_to_box(rect_b)[None]
        one = np.ones(1, dtype=np.int64)
        idx_a, idx_b = pad_indices(1, k), pad_indices(1, k)
        return PairBoxes(selection.views, (box_a[idx_a], box_b[idx_b]), (one[idx_a], one[idx_b]), True)
    raw = proposals[sel]
    jit = jitter_boxes(raw, jitter_prob, jitter_ratio)
    lost = ~overlaps_rect(jit, rect_a)
    jit[lost] = raw[lost]
    box_a = clip_to_rect(jit, rect_a)
    box_b = clip_to_rect(raw, rect_b)
    sel_ids = np.asarray(ids, dtype=np.int64)[sel]
    idx_a, idx_b = pad_indices(len(sel), k), pad_indices(len(sel), k)
    return PairBoxes(selection.views, (box_a[idx_a], box_b[idx_b]), (sel_ids[idx_a], sel_ids[idx_b]), False)


# --------------------------------------------------------------------------- FPN levels


def size_levels(sizes: torch.Tensor, thresholds) -> torch.Tensor:
    """Level index of each size (sqrt of an area in the view's pixels): the first i
    with size <= thresholds[i], else len(thresholds) (DetCon-FPN's masks use the
    same rule: ``soco_d2.data.masks.mask_levels``)."""
    edges = torch.as_tensor(list(thresholds), dtype=sizes.dtype, device=sizes.device)
    return torch.bucketize(sizes, edges, right=False)


def soco_levels(boxes: torch.Tensor, thresholds) -> torch.Tensor:
    """Level index (0 = finest input level) of each XYXY box: the first i with
    sqrt(w * h) <= thresholds[i], else len(thresholds) (docs/methods/soco.md, Scale-aware level assignment)."""
    sizes = ((boxes[:, 2] - boxes[:, 0]).clamp(min=0) * (boxes[:, 3] - boxes[:, 1]).clamp(min=0)).sqrt()
    return size_levels(sizes, thresholds)


def feature_stride(name: str) -> int:
    """Stride of a detectron2 ResNet / FPN output by its name: "res4" -> 16, "p2" -> 4."""
    digits = name[3:] if name.startswith("res") else name[1:] if name.startswith("p") else ""
    if not digits.isdigit():
        raise ValueError(f"cannot tell the stride of feature {name!r}: expected detectron2's 'resN' or 'pN'")
    return 2 ** int(digits)


@dataclass(frozen=True)
class LevelRule:
    """Which pooled feature level each box of a view goes to.

    ``kind`` "soco" (the default of SoCo's configs): sqrt(area) in the view's
    pixels against ``thresholds``; "detectron2": ``assign_boxes_to_levels``
    (canonical box 224 at level 4, clamped to ``min_level .. max_level``); "single":
    one pooled level.  Computed on the CPU by the collate, so the model never
    reads box coordinates back from the device.
    """

    kind: str = "single"
    thresholds: tuple[float, ...] = ()
    min_level: int = 0
    max_level: int = 0
    canonical_box_size: int = 224
    canonical_level: int = 4

    @classmethod
    def for_features(cls, in_features, assignment: str = "soco", thresholds=(48, 96, 192)) -> "LevelRule":
        if len(in_features) == 1:
            return cls()
        if assignment not in ("soco", "detectron2"):
            raise ValueError(f"MODEL.SOCO.LEVEL_ASSIGNMENT must be 'soco' or 'detectron2', got {assignment!r}")
        levels = [int(np.log2(feature_stride(f))) for f in in_features]
        if levels != list(range(levels[0], levels[0] + len(levels))):
            raise ValueError(f"pooled features {list(in_features)} must be consecutive levels")
        if assignment == "soco" and len(thresholds) != len(in_features) - 1:
            raise ValueError(f"{len(in_features)} pooled levels need {len(in_features) - 1} thresholds, "
                             f"got {list(thresholds)}")
        edges = tuple(float(t) for t in thresholds) if assignment == "soco" else ()
        return cls(assignment, edges, levels[0], levels[-1])

    @property
    def num_levels(self) -> int:
        return self.max_level - self.min_level + 1

    def __call__(self, boxes: torch.Tensor) -> torch.Tensor:
        """(M, 4) XYXY float boxes -> (M,) int64 level index (0 = the finest pooled level)."""
        boxes = torch.as_tensor(boxes).reshape(-1, 4)
        if self.kind == "single":
            return torch.zeros(len(boxes), dtype=torch.int64, device=boxes.device)
        if self.kind == "soco":
            return soco_levels(boxes, self.thresholds)
        from detectron2.modeling.poolers import assign_boxes_to_levels
        from detectron2.structures import Boxes

        return assign_boxes_to_levels(
            [Boxes(boxes)], self.min_level, self.max_level, self.canonical_box_size, self.canonical_level
        )
