"""DetCon's masks on a feature grid, computed in the mapper (on the CPU) so the
model receives them ready: majority-vote downsampling, which ids can be sampled,
the FPN level of each mask, and the sampled ids (spec detcon.md §5-§6).

On a feature map of stride s, grid cell (i, j) covers the view pixels
[i*s, (i+1)*s) x [j*s, (j+1)*s) and is owned by the id covering most of them
(ties: the lowest id), a hard partition of the grid as in the released code.
The grid of a view of side S has ceil(S / s) cells per side; a backbone that
pads the view (FPN: to a multiple of 32) has more cells, which belong to no mask
(the model pads the owners with -1).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .boxes import feature_stride, size_levels

__all__ = ["majority_vote_ids", "present_ids", "mask_levels", "MaskGrids", "ViewMasks", "NO_OWNER"]

NO_OWNER = -1  # a cell no mask owns (no pixel of the view, or padding)


def majority_vote_ids(id_maps: torch.Tensor, grid: tuple[int, int], stride: int) -> torch.Tensor:
    """(B, H, W) int segment ids (>= 0) -> (B, h, w) long majority id of each cell.

    Pixels past the last full cell (when H > h * stride) join the last row/column;
    a cell with no pixel at all (a grid larger than the map) gets -1, which no
    mask owns.  For H = h * stride this is the official one-hot, average-pool
    (window = stride = s, VALID), argmax.
    """
    if id_maps.dim() != 3:
        raise ValueError(f"id maps must be (B, H, W), got {tuple(id_maps.shape)}")
    ids = id_maps.long()
    if ids.numel() and int(ids.min()) < 0:
        raise ValueError("segment ids must be >= 0")
    batch, height, width = ids.shape
    h, w = int(grid[0]), int(grid[1])
    device = ids.device
    rows = (torch.arange(height, device=device) // stride).clamp(max=h - 1)
    cols = (torch.arange(width, device=device) // stride).clamp(max=w - 1)
    cell = rows[:, None] * w + cols[None, :]  # (H, W)
    num_ids = int(ids.max()) + 1 if ids.numel() else 1
    image = torch.arange(batch, device=device)[:, None, None]
    key = (image * (h * w) + cell[None]) * num_ids + ids
    counts = torch.bincount(key.flatten(), minlength=batch * h * w * num_ids).view(batch, h * w, num_ids)
    owner = counts.argmax(dim=2)  # first maximum = lowest id on ties
    owner = torch.where(counts.sum(dim=2) > 0, owner, torch.full_like(owner, NO_OWNER))
    return owner.view(batch, h, w)


def present_ids(cell_ids: torch.Tensor, num_ids: int) -> torch.Tensor:
    """(B, h, w) cell owners -> (B, num_ids) bool: the id owns at least one cell ("exists")."""
    flat = cell_ids.flatten(1).long()
    present = torch.zeros(flat.shape[0], num_ids + 1, dtype=torch.bool, device=flat.device)
    present.scatter_(1, flat + 1, True)  # column 0 collects the empty cells (-1)
    return present[:, 1:]


def mask_levels(id_maps: torch.Tensor, num_ids: int, thresholds) -> torch.Tensor:
    """(B, H, W) id maps -> (B, num_ids) level index of every id from its area in the
    view's pixels: the first i with sqrt(area) <= thresholds[i], else len(thresholds)
    (SoCo's scale-aware rule, the same function its boxes use)."""
    batch = id_maps.shape[0]
    key = torch.arange(batch, device=id_maps.device)[:, None, None] * num_ids + id_maps.long()
    area = torch.bincount(key.flatten(), minlength=batch * num_ids).view(batch, num_ids)
    return size_levels(area.double().sqrt(), thresholds)


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

    def assign(self, id_map: np.ndarray, num_ids: int) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
        """id map (H, W), ids in 0..num_ids-1 -> (owners: one (h, w) long map per level,
        levels: (num_ids,) the level each id is pooled from, present: (num_ids,) bool,
        the id owns a cell of that level's grid)."""
        ids = torch.from_numpy(np.ascontiguousarray(id_map, dtype=np.int64))[None]
        height, width = id_map.shape
        owners = [majority_vote_ids(ids, self.grid(height, width, lvl), s)[0] for lvl, s in enumerate(self.strides)]
        present = torch.stack([present_ids(o[None], num_ids)[0] for o in owners])  # (L, n)
        if len(owners) == 1:
            return owners, torch.zeros(num_ids, dtype=torch.int64), present[0]
        levels = mask_levels(ids, num_ids, self.thresholds)[0]
        at_level = present.gather(0, levels[None])[0]
        levels = torch.where(at_level, levels, present.long().argmax(dim=0))
        return owners, levels, present.any(dim=0)

    def layout(self, id_map: np.ndarray, num_ids: int) -> ViewMasks:
        """One view's ``ViewMasks``: ``num_masks`` ids drawn (``np.random``) uniformly with
        replacement among the present ones (the official categorical over
        log(exists + 1e-11))."""
        if num_ids > np.iinfo(np.int16).max:
            raise ValueError(f"{num_ids} segments in one view do not fit the int16 owner maps")
        owners, levels, present = self.assign(id_map, num_ids)
        candidates = np.flatnonzero(present.numpy())
        if len(candidates) == 0:
            raise ValueError("no mask owns a cell of the feature grid")
        sampled = torch.from_numpy(np.random.choice(candidates, size=self.num_masks, replace=True).astype(np.int64))
        return ViewMasks([o.to(torch.int16) for o in owners], sampled, levels[sampled], int(len(candidates)))
