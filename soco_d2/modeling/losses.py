"""The pretraining losses as plain functions: tensors in, scalar tensor out.

Inputs are raw (unnormalised) embeddings; each function L2-normalises inside.
Outside DDP they have single-process semantics, so they can be checked
against the official implementations on small tensors.
"""
from __future__ import annotations

import functools

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

# The (B * M, 2 * N * M) other-image logits are processed in chunks of query rows
# holding about this many float32 elements, so forward and backward never hold more
# than one chunk, whatever the global batch.  GPUs: 256 MiB, large kernels (at the
# paper's 512 images per GPU, 16 chunks per direction); CPU: 16 MiB.
LOGIT_CHUNK_ELEMENTS = {"cuda": 1 << 26, "cpu": 1 << 22}
_REMOVED = -1e9  # the official "infinity proxy": a removed logit drops out of the softmax


def _matmul_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """The dtype a matmul of ``tensors`` runs in here: autocast's when it is on, else their common dtype."""
    device_type = tensors[0].device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return functools.reduce(torch.promote_types, (t.dtype for t in tensors))


class _OtherImagesLogSumExp(torch.autograd.Function):
    """Row-wise log-sum-exp of ``queries @ [keys_a; keys_b]^T / temperature`` without
    the columns of each query's own image, in float32, computed chunk by chunk.

    queries (R, D); keys_a / keys_b (N * M, D), image n at rows n * M ... (n + 1) * M - 1;
    own_image (R,) long.  Returns (R,) float32 (-inf for a row with no column left).
    The backward recomputes each chunk instead of keeping the logits, so memory
    stays at one chunk (``LOGIT_CHUNK_ELEMENTS``) in both passes.  The matmuls run
    in the dtype autocast gives them (or the inputs'), the exp-sums in float32.
    """

    @staticmethod
    def _chunks(queries, keys_a, own_image, num_masks: int):
        """Slices of query rows, each with the row -> own-image-column index of its masking."""
        budget = LOGIT_CHUNK_ELEMENTS.get(queries.device.type, LOGIT_CHUNK_ELEMENTS["cpu"])
        step = max(1, budget // max(2 * keys_a.shape[0], 1))
        for start in range(0, queries.shape[0], step):
            rows = slice(start, min(start + step, queries.shape[0]))
            yield rows, (torch.arange(rows.stop - rows.start, device=queries.device), own_image[rows])

    @staticmethod
    def _logits(q, keys_a, keys_b, own, num_masks: int, temperature: float) -> torch.Tensor:
        """(2, r, N * M) float32 logits of query rows q against keys_a / keys_b, own image at -inf."""
        logits = q.new_empty((2, q.shape[0], keys_a.shape[0]))
        torch.mm(q, keys_a.T, out=logits[0])
        torch.mm(q, keys_b.T, out=logits[1])
        logits = logits.float().div_(temperature)
        logits.view(2, q.shape[0], -1, num_masks)[:, own[0], own[1], :] = float("-inf")
        return logits

    @staticmethod
    def forward(ctx, queries, keys_a, keys_b, own_image, num_masks: int, temperature: float):
        dtype = _matmul_dtype(queries, keys_a, keys_b)
        q_all, keys_a_, keys_b_ = queries.to(dtype), keys_a.to(dtype), keys_b.to(dtype)
        lse = queries.new_empty(queries.shape[0], dtype=torch.float32)
        with torch.autocast(queries.device.type, enabled=False):
            for rows, own in _OtherImagesLogSumExp._chunks(queries, keys_a, own_image, num_masks):
                logits = _OtherImagesLogSumExp._logits(q_all[rows], keys_a_, keys_b_, own, num_masks, temperature)
                top = logits.amax(dim=(0, 2), keepdim=True)
                top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
                lse[rows] = logits.sub_(top).exp_().sum(dim=(0, 2)).log_().add_(top.view(-1))
        ctx.save_for_backward(queries, keys_a, keys_b, own_image, lse)
        ctx.args = (num_masks, temperature, dtype)
        return lse

    @staticmethod
    def backward(ctx, grad_lse):
        queries, keys_a, keys_b, own_image, lse = ctx.saved_tensors
        num_masks, temperature, dtype = ctx.args
        need_q, need_a, need_b = ctx.needs_input_grad[:3]
        q_all, keys_a_, keys_b_ = queries.to(dtype), keys_a.to(dtype), keys_b.to(dtype)
        grad_q = torch.zeros_like(queries, dtype=torch.float32) if need_q else None
        grad_a = torch.zeros_like(keys_a, dtype=torch.float32) if need_a else None
        grad_b = torch.zeros_like(keys_b, dtype=torch.float32) if need_b else None
        lse = torch.where(torch.isfinite(lse), lse, torch.zeros_like(lse))  # no column: softmax 0, not NaN
        scale = grad_lse.float() / temperature  # d logit / d (q . k) = 1 / temperature
        with torch.autocast(queries.device.type, enabled=False):
            for rows, own in _OtherImagesLogSumExp._chunks(queries, keys_a, own_image, num_masks):
                q = q_all[rows]
                logits = _OtherImagesLogSumExp._logits(q, keys_a_, keys_b_, own, num_masks, temperature)
                # d lse / d logit = softmax (0 on the own image's -inf columns)
                w_a, w_b = logits.sub_(lse[None, rows, None]).exp_().mul_(scale[None, rows, None]).to(dtype)
                if need_q:
                    grad_q[rows] = (w_a @ keys_a_ + w_b @ keys_b_).float()
                if need_a:
                    grad_a += (w_a.T @ q).float()
                if need_b:
                    grad_b += (w_b.T @ q).float()
        cast = lambda grad, like: None if grad is None else grad.to(like.dtype)  # noqa: E731
        return cast(grad_q, queries), cast(grad_a, keys_a), cast(grad_b, keys_b), None, None, None


def _detcon_direction(
    pred: torch.Tensor,
    target_cross: torch.Tensor,
    target_same: torch.Tensor,
    ids_query: torch.Tensor,
    ids_cross: torch.Tensor,
    temperature: float,
    local_negatives: bool,
    offset: int,
    cross_image: bool = True,
) -> torch.Tensor:
    """One direction of DetCon's loss (docs/methods/detcon.md, The loss, steps 1-6); inputs normalised.

    pred (B, M, D): queries of view a; target_cross / target_same (N, M, D): targets
    of view b / view a for N >= B images, local image i at row offset + i; ids_query /
    ids_cross (B, M): mask ids of the local images in view a / view b.

    The official form builds the (B, M, 2 N M) logits with labels and takes a
    log-softmax.  Its per-query loss is log Z - mean of the positive logits, and
    both parts split by image: positives and removed entries only ever lie in the
    query's own image, so they come from the small (B, M, M) own-image blocks,
    while the other images enter only through log Z, as a log-sum-exp that
    ``_OtherImagesLogSumExp`` computes in chunks.  Same value and gradients.
    Without ``cross_image`` negatives log Z is the own-image part alone.
    """
    batch, num_masks = ids_query.shape
    own_rows = slice(offset, offset + batch)
    # float32: the exp-sums and -1e9 need float32 range under autocast
    own_cross = torch.einsum("bmd,bkd->bmk", pred, target_cross[own_rows]).float() / temperature  # (B, M, M)
    own_same = torch.einsum("bmd,bkd->bmk", pred, target_same[own_rows]).float() / temperature
    match_cross = ids_query[:, :, None] == ids_cross[:, None, :]  # (B, M, M): the positives
    match_same = ids_query[:, :, None] == ids_query[:, None, :]  # the query's own id in its own view
    num_pos = match_cross.sum(dim=2)
    positive_mean = (own_cross * match_cross).sum(dim=2) / num_pos.clamp(min=1)
    if local_negatives:  # the own image's logits without the query's own id in its own view
        own_kept = torch.cat([own_cross, own_same.masked_fill(match_same, _REMOVED)], dim=2)
    else:  # only the positives are left of the own image
        own_kept = own_cross.masked_fill(~match_cross, _REMOVED)
    log_z_own = torch.logsumexp(own_kept, dim=2)  # (B, M)
    weights = (num_pos > 0).float() / match_same.sum(dim=2).float()  # 1[|P| > 0] / duplicates
    if not cross_image:
        return (weights * (log_z_own - positive_mean)).mean()
    own_image = offset + torch.arange(batch * num_masks, device=pred.device) // num_masks  # per query row
    log_z_others = _OtherImagesLogSumExp.apply(
        pred.reshape(batch * num_masks, -1), target_cross.flatten(0, 1), target_same.flatten(0, 1),
        own_image, num_masks, float(temperature),
    ).view(batch, num_masks)
    per_query = torch.logaddexp(log_z_others, log_z_own) - positive_mean  # -sum_P (1/|P|) log softmax
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
    cross_image_negatives: bool = True,
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
    if not cross_image_negatives and not local_negatives:
        raise ValueError("without cross-image and local negatives a query has nothing to contrast with")
    args = (temperature, local_negatives, target_offset, cross_image_negatives)
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
    cross_image_negatives: bool = True,
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

    ``cross_image_negatives=False`` leaves the other images out (only the own
    image's masks are negatives; not the paper): the loss is then a mean of
    per-image terms and the targets need only hold the local images.
    """
    loss_12, loss_21 = detcon_loss_terms(
        pred1, pred2, target1, target2, ids1, ids2, temperature, local_negatives, target_offset=target_offset,
        cross_image_negatives=cross_image_negatives,
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
