"""The pretraining losses as plain functions: tensors in, scalar tensor out.

Inputs are raw (unnormalised) embeddings; each function L2-normalises inside.
Outside DDP they have single-process semantics, so they can be checked
against the official implementations on small tensors.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def byol_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BYOL's regression loss 2 - 2 cos(pred, target), mean over rows. (N, D), (N, D)."""
    return (2.0 - 2.0 * F.cosine_similarity(pred, target.detach(), dim=-1)).mean()


def soco_loss(pred: torch.Tensor, target: torch.Tensor, pred_ids: torch.Tensor, target_ids: torch.Tensor) -> torch.Tensor:
    """SoCo's loss for one direction of one view pair.

    pred (B, M, D): online predictions of the boxes of view a; target (B, M', D):
    target projections of the boxes of view b; ids (B, M) / (B, M'): box ids,
    equal ids mark the same proposal (duplicates match many-to-many; negative
    ids never match anything).  Returns
    -2 * mean_b [ sum_ij C_bij <q_bi, z_bj> / (sum_ij C_bij + 1e-6) ],
    i.e. -2 x the mean cosine over matched pairs, averaged per image, then over
    the batch (BYOL's 2 - 2cos without the constant; negative values are normal).
    """
    q = F.normalize(pred, dim=-1)
    z = F.normalize(target.detach(), dim=-1)
    corr = ((pred_ids[:, :, None] == target_ids[:, None, :]) & (pred_ids[:, :, None] >= 0)).to(q.dtype)
    cosine = torch.einsum("bid,bjd->bij", q, z)
    per_image = (corr * cosine).sum(dim=(1, 2)) / (corr.sum(dim=(1, 2)) + 1e-6)
    return -2.0 * per_image.mean()


# --------------------------------------------------------------------------- DetCon


def _detcon_direction(
    pred: torch.Tensor,
    target_cross: torch.Tensor,
    target_same: torch.Tensor,
    ids_query: torch.Tensor,
    ids_cross: torch.Tensor,
    temperature: float,
    local_negatives: bool,
    offset: int,
) -> torch.Tensor:
    """One direction of DetCon's loss (docs/methods/detcon.md, The loss, steps 1-6); inputs normalised.

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


def detcon_loss_terms(
    pred1: torch.Tensor,
    pred2: torch.Tensor,
    target1: torch.Tensor,
    target2: torch.Tensor,
    ids1: torch.Tensor,
    ids2: torch.Tensor,
    temperature: float = 0.1,
    local_negatives: bool = True,
    *,
    target_offset: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The two directions (L(1->2), L(2->1)) of ``detcon_loss``; their sum is the loss."""
    if pred1.shape != pred2.shape or ids1.shape != ids2.shape or ids1.shape != pred1.shape[:2]:
        raise ValueError(f"predictions {tuple(pred1.shape)} / {tuple(pred2.shape)} and ids "
                         f"{tuple(ids1.shape)} / {tuple(ids2.shape)} must be (B, M, D) and (B, M)")
    if target1.shape != target2.shape or target1.shape[1:] != pred1.shape[1:]:
        raise ValueError(f"targets {tuple(target1.shape)} / {tuple(target2.shape)} must be (N, M, D) "
                         f"with the predictions' M and D {tuple(pred1.shape[1:])}")
    if not 0 <= target_offset <= target1.shape[0] - pred1.shape[0]:
        raise ValueError(f"target_offset {target_offset} does not place {pred1.shape[0]} local images "
                         f"inside {target1.shape[0]} target images")
    p1, p2 = F.normalize(pred1, dim=-1), F.normalize(pred2, dim=-1)
    t1, t2 = F.normalize(target1, dim=-1), F.normalize(target2, dim=-1)
    args = (temperature, local_negatives, target_offset)
    return (
        _detcon_direction(p1, t2, t1, ids1, ids2, *args),
        _detcon_direction(p2, t1, t2, ids2, ids1, *args),
    )


def detcon_loss(
    pred1: torch.Tensor,
    pred2: torch.Tensor,
    target1: torch.Tensor,
    target2: torch.Tensor,
    ids1: torch.Tensor,
    ids2: torch.Tensor,
    temperature: float = 0.1,
    local_negatives: bool = True,
    *,
    target_offset: int = 0,
) -> torch.Tensor:
    """DetCon's contrastive loss (the official ``byol_nce_detcon``; docs/methods/detcon.md, The loss).

    pred1/pred2 (B, M, D): queries of view 1/2 (DetCon-B: online predictions;
    DetCon-S: projections); target1/target2 (N, M, D): keys of view 1/2 (DetCon-B:
    target projections; DetCon-S: the same projections); ids1/ids2 (B, M): the
    sampled mask id of every slot.  For each query (b, k) of view 1 the logits are
    its similarities / temperature to every target of view 2 and of view 1, the
    latter without the query's own id in its own image (-1e9).  Positives: the
    view-2 slots of the same image with the same id (soft labels 1/|P| over
    duplicates).  Query weight 1[|P| > 0] / r (r = slots of view 1 with that id),
    mean over the B * M queries; both directions summed.  Negatives: the other
    masks of the same image (both views; none with ``local_negatives=False``) and
    every mask of every other image.

    Targets are not detached: DetCon-B's come from the no-grad target network,
    DetCon-S wants gradients through both roles.

    Distributed use: pass the targets all-gathered over processes, (N, M, D) with
    N = world_size * B in rank order, and ``target_offset = rank * B`` (the row of
    this process's first image); ids stay local, since positives and removed
    entries only ever involve the query's own image.  The meta-architecture does
    the gathering (``soco_d2.modeling.gather``).  With N = B and offset 0 (the
    defaults) this is the single-process loss.
    """
    loss_12, loss_21 = detcon_loss_terms(
        pred1, pred2, target1, target2, ids1, ids2, temperature, local_negatives, target_offset=target_offset
    )
    return loss_12 + loss_21


# --------------------------------------------------------------------------- MoCo-v2 / DenseCL


def _infonce_from_logits(positive: torch.Tensor, negative: torch.Tensor, temperature: float) -> torch.Tensor:
    """Cross-entropy with the positive logit in column 0 (MoCo's ContrastiveHead), mean over rows."""
    logits = torch.cat([positive, negative], dim=1).float() / temperature
    labels = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
    return F.cross_entropy(logits, labels)


def infonce_loss(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float = 0.2) -> torch.Tensor:
    """MoCo-v2's InfoNCE, also DenseCL's global loss: q (N, D) queries, k (N, D) keys
    (positives, detached), queue (D, K) negatives (unit columns, as ``FeatureQueue``
    stores them; used as given).  -log softmax of q.k / T against q.queue / T, mean
    over the N rows."""
    q = F.normalize(q, dim=1)
    k = F.normalize(k.detach(), dim=1)
    positive = (q * k).sum(dim=1, keepdim=True)
    negative = q @ queue.detach()
    return _infonce_from_logits(positive, negative, temperature)



@torch.no_grad()
def densecl_correspondence(q_feat: torch.Tensor, k_feat: torch.Tensor) -> torch.Tensor:
    """DenseCL's matching: backbone maps (N, C, S, S) of the query and key views ->
    (N, S*S) long, for each query position the key position of highest cosine
    similarity (one-directional argmax, no gradient)."""
    q = F.normalize(q_feat.flatten(2), dim=1)
    k = F.normalize(k_feat.flatten(2), dim=1)
    return torch.einsum("ncq,nck->nqk", q, k).argmax(dim=2)


def densecl_dense_loss(
    q_dense: torch.Tensor,
    k_dense: torch.Tensor,
    q_feat: torch.Tensor,
    k_feat: torch.Tensor,
    queue: torch.Tensor,
    temperature: float = 0.2,
) -> torch.Tensor:
    """DenseCL's dense InfoNCE (unweighted): q_dense / k_dense (N, D, S*S) dense-head
    outputs (or (N, D, S, S)), q_feat / k_feat (N, C, S, S) backbone maps for the
    correspondence, queue (D, K) pooled dense keys of earlier batches (unit columns).
    Every query position's positive is the key vector at its best-matching
    position; negatives are the whole queue; mean over the N * S * S positions."""
    q = F.normalize(q_dense.flatten(2), dim=1)
    k = F.normalize(k_dense.detach().flatten(2), dim=1)
    if q.shape[2] != q_feat.shape[2] * q_feat.shape[3] or k.shape != q.shape:
        raise ValueError(f"dense maps {tuple(q.shape)} / {tuple(k.shape)} do not match the backbone grid "
                         f"{tuple(q_feat.shape[2:])}")
    index = densecl_correspondence(q_feat, k_feat)  # (N, S*S)
    matched = torch.gather(k, 2, index[:, None, :].expand(-1, k.shape[1], -1))
    positive = (q * matched).sum(dim=1).reshape(-1, 1)
    negative = q.transpose(1, 2).reshape(-1, q.shape[1]) @ queue.detach()
    return _infonce_from_logits(positive, negative, temperature)
