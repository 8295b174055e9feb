"""DetCon's mask pooling (docs/methods/detcon.md, Mask pooling) on the grids the mapper
prepared (``soco_d2.data.masks``: majority-vote owners per level, sampled ids, their levels).

Pooling runs in float32 with autocast off and the cell weights normalised
before the ``bmm``: an fp16 sum over thousands of cells (P2 of a 224 view has
3,136) can overflow.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from soco_d2.data.masks import NO_OWNER

__all__ = ["mask_pool", "pad_owners", "pool_masks"]


def mask_pool(features: torch.Tensor, cell_ids: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Mask pooling (docs/methods/detcon.md, Mask pooling): features (B, C, h, w), cell owners
    (B, h, w), sampled ids (B, K) -> (B, K, C) float32, h_k = sum_j M_kj f_j / max(sum_j M_kj, 1) with M_kj = 1 when
    cell j belongs to mask k: the mean feature over the mask's cells, i.e. the
    area-weighted mean of its region on the grid (all cells have the same area).
    A mask owning no cell pools to zeros."""
    if features.shape[0] != cell_ids.shape[0] or tuple(features.shape[2:]) != tuple(cell_ids.shape[1:]):
        raise ValueError(f"features {tuple(features.shape)} and cell ids {tuple(cell_ids.shape)} differ in grid")
    with torch.autocast(features.device.type, enabled=False):
        membership = (cell_ids.flatten(1).long()[:, None, :] == ids.long()[:, :, None]).float()  # (B, K, h*w)
        weights = membership / membership.sum(dim=2, keepdim=True).clamp(min=1.0)
        return torch.bmm(weights, features.float().flatten(2).transpose(1, 2))


def pad_owners(owners: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(B, h, w) owners of the view's pixels -> the feature grid (B, H, W), H >= h, W >= w:
    cells over the backbone's padding (bottom / right) belong to no mask."""
    pad_h, pad_w = int(grid[0]) - owners.shape[1], int(grid[1]) - owners.shape[2]
    if pad_h < 0 or pad_w < 0:
        raise ValueError(f"mask grid {tuple(owners.shape[1:])} is larger than the feature grid {tuple(grid)}")
    if pad_h or pad_w:
        owners = F.pad(owners, (0, pad_w, 0, pad_h), value=NO_OWNER)
    return owners


def pool_masks(features: list[torch.Tensor], owners: list[torch.Tensor], ids: torch.Tensor,
               levels: torch.Tensor) -> torch.Tensor:
    """(B, K, C): each sampled mask pooled from the level assigned to it; ``features`` and
    ``owners`` one per level, ``ids`` / ``levels`` (B, K)."""
    pooled = [mask_pool(f, pad_owners(o, f.shape[-2:]), ids) for f, o in zip(features, owners)]
    if len(pooled) == 1:
        return pooled[0]
    stacked = torch.stack(pooled)  # (L, B, K, C); every level stays in the graph (DDP)
    return stacked.gather(0, levels[None, :, :, None].expand(1, -1, -1, stacked.shape[-1])).squeeze(0)
