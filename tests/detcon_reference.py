"""The vectorised DetCon loss soco_d2 used before its memory-lean form: the
official ``byol_nce_detcon`` layout (full (B, M, N, M) cross- and same-view
logits, -1e9 for removed entries, labels, log-softmax over 2 N M columns).
Kept only as the reference the library's ``detcon_loss_terms`` must equal, and
to measure the memory the lean form saves (tests/test_detcon_memory.py)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def reference_detcon_loss_terms(pred1, pred2, target1, target2, ids1, ids2, temperature=0.1,
                                local_negatives=True, target_offset=0):
    """(L(1->2), L(2->1)), the arguments of ``soco_d2.modeling.losses.detcon_loss_terms``."""
    p1, p2 = F.normalize(pred1, dim=-1), F.normalize(pred2, dim=-1)
    t1, t2 = F.normalize(target1, dim=-1), F.normalize(target2, dim=-1)
    args = (temperature, local_negatives, target_offset)
    return (_reference_direction(p1, t2, t1, ids1, ids2, *args),
            _reference_direction(p2, t1, t2, ids2, ids1, *args))


def _reference_direction(
    pred: torch.Tensor,
    target_cross: torch.Tensor,
    target_same: torch.Tensor,
    ids_query: torch.Tensor,
    ids_cross: torch.Tensor,
    temperature: float,
    local_negatives: bool,
    offset: int,
) -> torch.Tensor:
    """One direction, inputs normalised (the official layout, step by step).

    pred (B, M, D): queries of view a; target_cross / target_same (N, M, D): targets
    of view b / view a for N >= B images, local image i at row offset + i; ids_query /
    ids_cross (B, M): mask ids of the local images in view a / view b.
    """
    big = 1e9  # the official "infinity proxy": logits - 1e9 drop out of the softmax
    batch, num_masks = ids_query.shape
    num_images = target_cross.shape[0]
    # float32 logits: -1e9 overflows fp16 (autocast) and would turn 0 * log p into NaN
    logits_cross = torch.einsum("bmd,nkd->bmnk", pred, target_cross).float() / temperature  # (B, M, N, M)
    logits_same = torch.einsum("bmd,nkd->bmnk", pred, target_same).float() / temperature
    own = torch.zeros(batch, num_images, dtype=torch.bool, device=pred.device)
    own[torch.arange(batch, device=pred.device), offset + torch.arange(batch, device=pred.device)] = True
    own = own[:, None, :, None]  # (B, 1, N, 1): the query's own image
    match_cross = (ids_query[:, :, None] == ids_cross[:, None, :])[:, :, None, :]  # (B, M, 1, M)
    match_same = (ids_query[:, :, None] == ids_query[:, None, :])[:, :, None, :]
    positives = own & match_cross
    logits_same = logits_same - big * (own & match_same).to(logits_same.dtype)
    if not local_negatives:
        logits_cross = logits_cross - big * (own & ~match_cross).to(logits_cross.dtype)
        logits_same = logits_same - big * (own & ~match_same).to(logits_same.dtype)
    logits = torch.cat([logits_cross.flatten(2), logits_same.flatten(2)], dim=2)  # (B, M, 2 N M)
    labels = positives.expand(-1, -1, num_images, -1).flatten(2).to(logits.dtype)
    num_pos = labels.sum(dim=2)
    labels = labels / num_pos.clamp(min=1.0)[:, :, None]
    log_prob = F.log_softmax(logits, dim=2)[:, :, : labels.shape[2]]  # positives are all cross-view
    per_query = -(labels * log_prob).sum(dim=2)  # (B, M)
    duplicates = match_same[:, :, 0, :].sum(dim=2).to(logits.dtype)  # r >= 1
    weights = (num_pos > 0).to(logits.dtype) / duplicates
    return (weights * per_query).mean()
