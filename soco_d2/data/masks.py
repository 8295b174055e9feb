"""DetCon's masks on a feature grid, computed in the mapper (on the CPU) so the
model receives them ready: majority-vote downsampling, which ids can be sampled,
the FPN level of each mask, and the sampled ids (docs/methods/detcon.md: From id map to the 7x7 grid, Mask sampling).

On a feature map of stride s, grid cell (i, j) covers the view pixels
[i*s, (i+1)*s) x [j*s, (j+1)*s) and is owned by the id covering most of them
(ties: the lowest id), a hard partition of the grid as in the released code.
The grid of a view of side S has ceil(S / s) cells per side; a backbone that
pads the view (FPN: to a multiple of 32) has more cells, which belong to no mask
(the model pads the owners with -1).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch

from .boxes import feature_stride

__all__ = ["majority_vote", "present_ids", "mask_levels", "MaskGrids", "ViewMasks", "NO_OWNER"]

NO_OWNER = -1  # a cell no mask owns (no pixel of the view, or padding)


@functools.lru_cache(maxsize=64)
def _cells(height: int, width: int, stride: int, h: int, w: int) -> np.ndarray:
    """(H, W) int64: the grid cell of every pixel (read-only: shared between calls)."""
    rows = np.minimum(np.arange(height) // stride, h - 1)
    cols = np.minimum(np.arange(width) // stride, w - 1)
    cells = rows[:, None] * w + cols[None, :]
    cells.setflags(write=False)
    return cells


def majority_vote(id_map: np.ndarray, grid: tuple[int, int], stride: int, num_ids: int | None = None) -> np.ndarray:
    """(H, W) int segment ids (>= 0) -> (h, w) int64 majority id of each cell.

    Pixels past the last full cell (when H > h * stride) join the last row/column;
    a cell with no pixel at all (a grid larger than the map) gets -1, which no
    mask owns.  For H = h * stride this is the official one-hot, average-pool
    (window = stride = s, VALID), argmax (ties: the lowest id).
    """
    id_map = np.asarray(id_map)
    if id_map.ndim != 2:
        raise ValueError(f"an id map must be (H, W), got {id_map.shape}")
    if id_map.size and int(id_map.min()) < 0:
        raise ValueError("segment ids must be >= 0")
    height, width = id_map.shape
    h, w = int(grid[0]), int(grid[1])
    num_ids = int(id_map.max()) + 1 if num_ids is None else int(num_ids)
    key = _cells(height, width, stride, h, w) * num_ids + id_map
    counts = np.bincount(key.ravel(), minlength=h * w * num_ids).reshape(h * w, num_ids)
    owner = counts.argmax(axis=1)  # first maximum = lowest id on ties
    owner[counts.sum(axis=1) == 0] = NO_OWNER
    return owner.reshape(h, w)


def present_ids(owners: np.ndarray, num_ids: int) -> np.ndarray:
    """(h, w) cell owners -> (num_ids,) bool: the id owns at least one cell ("exists")."""
    present = np.zeros(num_ids, dtype=bool)
    present[owners[owners >= 0]] = True
    return present


def mask_levels(id_map: np.ndarray, num_ids: int, thresholds) -> np.ndarray:
    """(H, W) id map -> (num_ids,) level index of every id from its area in the view's
    pixels: the first i with sqrt(area) <= thresholds[i], else len(thresholds)
    (SoCo's scale-aware rule, the one its boxes use: ``soco_d2.data.boxes.size_levels``)."""
    area = np.bincount(np.asarray(id_map).ravel(), minlength=num_ids)[:num_ids]
    return np.searchsorted(np.asarray(thresholds, dtype=np.float64), np.sqrt(area), side="left").astype(np.int64)


@dataclass
class ViewMasks:
    """One view's masks as the model pools them: ``owners`` (one (h, w) int16 map per
    pooled level), the ``ids`` sampled for the K slots and each slot's ``levels``
    (both (K,) int64), and how many ids could be sampled (``num_present``)."""

    owners: list[torch.Tensor]
    ids: torch.Tensor
    levels: torch.Tensor
    num_present: int


class MaskGrids:
    """The feature grids DetCon pools masks from (``MODEL.DETCON.IN_FEATURES``) and
    the mask sampling; ``layout`` turns one view's id map into its ``ViewMasks``.

    With several levels (FPN), each mask is pooled from one level, chosen by its
    area in the view's pixels (``thresholds``, SoCo's rule); an id is "present"
    (can be sampled) when it owns a cell of its level's grid, and a thin segment
    that owns none there is pooled from the finest level where it owns one.
    """

    def __init__(self, in_features, thresholds=(), num_masks: int = 16):
        self.in_features = list(in_features)
        self.strides = [feature_stride(f) for f in self.in_features]
        if len(self.in_features) > 1 and len(thresholds) != len(self.in_features) - 1:
            raise ValueError(f"{len(self.in_features)} pooled levels need {len(self.in_features) - 1} "
                             f"MODEL.DETCON.LEVEL_THRESHOLDS, got {list(thresholds)}")
        self.thresholds = tuple(float(t) for t in thresholds) if len(self.in_features) > 1 else ()
        self.num_masks = int(num_masks)

    def grid(self, height: int, width: int, level: int) -> tuple[int, int]:
        stride = self.strides[level]
        return -(-height // stride), -(-width // stride)

    def assign(self, id_map: np.ndarray, num_ids: int) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
        """id map (H, W), ids in 0..num_ids-1 -> (owners: one (h, w) int64 map per level,
        levels: (num_ids,) the level each id is pooled from, present: (num_ids,) bool,
        the id owns a cell of that level's grid)."""
        height, width = id_map.shape
        owners = [majority_vote(id_map, self.grid(height, width, lvl), s, num_ids) for lvl, s in enumerate(self.strides)]
        present = np.stack([present_ids(o, num_ids) for o in owners])  # (L, n)
        if len(owners) == 1:
            return owners, np.zeros(num_ids, dtype=np.int64), present[0]
        levels = mask_levels(id_map, num_ids, self.thresholds)
        at_level = present[levels, np.arange(num_ids)]
        levels = np.where(at_level, levels, present.argmax(axis=0))
        return owners, levels, present.any(axis=0)

    def layout(self, id_map: np.ndarray, num_ids: int) -> ViewMasks:
        """One view's ``ViewMasks``: ``num_masks`` ids drawn (``np.random``) uniformly with
        replacement among the present ones (the official categorical over
        log(exists + 1e-11))."""
        if num_ids > np.iinfo(np.int16).max:
            raise ValueError(f"{num_ids} segments in one view do not fit the int16 owner maps")
        owners, levels, present = self.assign(id_map, num_ids)
        candidates = np.flatnonzero(present)
        if len(candidates) == 0:
            raise ValueError("no mask owns a cell of the feature grid")
        sampled = np.random.choice(candidates, size=self.num_masks, replace=True).astype(np.int64)
        return ViewMasks([torch.from_numpy(o.astype(np.int16)) for o in owners], torch.from_numpy(sampled),
                         torch.from_numpy(levels[sampled].astype(np.int64)), int(len(candidates)))
