"""DetCon's masks on a feature grid: majority-vote downsampling, mask sampling,
mask pooling, and the FPN level of a mask (docs/methods/detcon.md: From id map to the 7x7 grid, Mask sampling, Mask pooling).

The mapper gives every view a segment-id map at the view's pixel resolution.
On a feature map of stride s, grid cell (i, j) covers the pixels
[i*s, (i+1)*s) x [j*s, (j+1)*s) and is owned by the id covering most of them
(ties: the lowest id), a hard partition of the grid as in the released code.
"""
from __future__ import annotations

import torch

from .poolers import size_levels


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
    owner = torch.where(counts.sum(dim=2) > 0, owner, torch.full_like(owner, -1))
    return owner.view(batch, h, w)


def present_ids(cell_ids: torch.Tensor, num_ids: int) -> torch.Tensor:
    """(B, h, w) cell owners -> (B, num_ids) bool: the id owns at least one cell ("exists")."""
    flat = cell_ids.flatten(1)
    present = torch.zeros(flat.shape[0], num_ids + 1, dtype=torch.bool, device=flat.device)
    present.scatter_(1, flat + 1, True)  # column 0 collects the empty cells (-1)
    return present[:, 1:]


def sample_mask_ids(present: torch.Tensor, num_masks: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """(B, n) bool -> (B, num_masks) long: ids drawn uniformly with replacement among the
    present ones of each image (the official categorical over log(exists + 1e-11))."""
    if not bool(present.any(dim=1).all()):
        raise ValueError("every image needs at least one mask present on the feature grid")
    return torch.multinomial(present.float(), num_masks, replacement=True, generator=generator)


def mask_pool(features: torch.Tensor, cell_ids: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Mask pooling (docs/methods/detcon.md, Mask pooling): features (B, C, h, w), cell owners (B, h, w), sampled ids
    (B, K) -> (B, K, C), h_k = sum_j M_kj f_j / max(sum_j M_kj, 1) with M_kj = 1 when
    cell j belongs to mask k: the mean feature over the mask's cells, i.e. the
    area-weighted mean of its region on the grid (all cells have the same area).
    A mask owning no cell pools to zeros."""
    if features.shape[0] != cell_ids.shape[0] or tuple(features.shape[2:]) != tuple(cell_ids.shape[1:]):
        raise ValueError(f"features {tuple(features.shape)} and cell ids {tuple(cell_ids.shape)} differ in grid")
    membership = (cell_ids.flatten(1)[:, None, :] == ids[:, :, None]).to(features.dtype)  # (B, K, h*w)
    summed = torch.bmm(membership, features.flatten(2).transpose(1, 2))
    return summed / membership.sum(dim=2, keepdim=True).clamp(min=1.0)


def mask_levels(id_maps: torch.Tensor, num_ids: int, thresholds) -> torch.Tensor:
    """(B, H, W) id maps -> (B, num_ids) level index of every id from its area in the
    view's pixels: the first i with sqrt(area) <= thresholds[i], else len(thresholds)
    (SoCo's scale-aware rule, the same function its boxes use)."""
    batch = id_maps.shape[0]
    key = torch.arange(batch, device=id_maps.device)[:, None, None] * num_ids + id_maps.long()
    area = torch.bincount(key.flatten(), minlength=batch * num_ids).view(batch, num_ids)
    return size_levels(area.double().sqrt(), thresholds)
