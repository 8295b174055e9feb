"""Cross-process gathers for losses whose negatives span every process."""
from __future__ import annotations

import torch
import torch.distributed as dist
from detectron2.utils import comm


@torch.no_grad()
def all_gather_no_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` of every rank along dim 0 (rank order); no gradient.
    For keys/targets behind a stop-gradient (queues, BYOL-style targets)."""
    if comm.get_world_size() == 1:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(comm.get_world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts, dim=0)


class _AllGatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sums every rank's gradient of the gathered tensor
    and returns this rank's slice.  (``torch.distributed.nn.all_gather`` sends the
    raw memory of non-contiguous gradients through gloo's all-to-all, which
    scrambles them, e.g. gradients coming out of an einsum.)"""

    @staticmethod
    def forward(ctx, tensor):
        parts = [torch.empty_like(tensor) for _ in range(comm.get_world_size())]
        dist.all_gather(parts, tensor.contiguous())
        ctx.rows = (comm.get_rank() * tensor.shape[0], tensor.shape[0])
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        start, length = ctx.rows
        return grad[start : start + length]


def all_gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Like ``all_gather_no_grad`` but gradients flow back to every rank's input
    (SimCLR-style losses where negatives are not behind a stop-gradient): rank r's
    input receives the sum over ranks of d loss_rank / d input_r, so DDP's gradient
    mean equals the gradient of the mean loss.  Same batch size on every rank.

    Gathers and sums in float32 and returns float32 (the input's gradient comes back
    in its own dtype): under fp16 autocast the backward ``all_reduce`` would add
    loss-scaled fp16 gradients of every rank, whose partial sums overflow or round
    away over many ranks."""
    tensor = tensor.float()
    if comm.get_world_size() == 1:
        return tensor
    return _AllGatherWithGrad.apply(tensor)


@torch.no_grad()
def batch_shuffle(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Shuffle-BN (MoCo): this rank's slice of the globally permuted batch, and the
    inverse permutation for ``batch_unshuffle``.

    With plain per-process BN, a key encoder that saw only its own images could
    tell positives from their shared batch statistics; forwarding a random slice
    of the global batch hides that.  The permutation is drawn on rank 0 and
    broadcast, so every rank uses the same one.  Needs the same batch size on
    every rank.  Single process: the batch unchanged and ``None``.
    """
    world = comm.get_world_size()
    if world == 1:
        return images, None
    gathered = all_gather_no_grad(images)
    perm = torch.randperm(gathered.shape[0], device=images.device)
    dist.broadcast(perm, src=0)
    local = perm.view(world, -1)[comm.get_rank()]
    return gathered[local], torch.argsort(perm)


@torch.no_grad()
def batch_unshuffle(outputs: torch.Tensor, unshuffle: torch.Tensor | None) -> torch.Tensor:
    """Undo ``batch_shuffle`` on (B, ...) outputs: row i is again this rank's image i."""
    if unshuffle is None:
        return outputs
    gathered = all_gather_no_grad(outputs)
    return gathered[unshuffle.view(comm.get_world_size(), -1)[comm.get_rank()]]


@torch.no_grad()
def broadcast_queues(model: torch.nn.Module) -> int:
    """Give every rank rank 0's negatives queues (every ``FeatureQueue`` buffer in
    ``model``); returns how many queues were broadcast.  Call once, right after
    DDP wrapping: on torch < 2.13, DDP with ``broadcast_buffers=False`` syncs
    parameters at construction but not buffers, so randomly initialised queues
    would differ per rank (per-rank seeds) until every entry has been overwritten
    (newer torch's ``forward_sync_buffers=False`` syncs them once; this is then a
    cheap repeat).  From then on every rank enqueues the same all-gathered keys.
    A collective call."""
    from .queue import FeatureQueue

    queues = [m for m in model.modules() if isinstance(m, FeatureQueue)]
    if comm.get_world_size() == 1:
        return len(queues)
    for queue in queues:
        for buffer in queue.buffers():
            dist.broadcast(buffer, src=0)
    return len(queues)
