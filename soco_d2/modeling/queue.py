"""The negatives queue of MoCo-v2 and DenseCL."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class FeatureQueue(nn.Module):
    """A FIFO of ``size`` L2-normalised ``dim``-d keys, stored as (dim, size).

    Queue and pointer are buffers, so checkpoints hold them and ``--resume``
    restores them.  Under DDP every rank enqueues the same all-gathered keys
    (``enqueue(all_gather_no_grad(k))``), so the queues stay identical without
    broadcasting buffers.  Enqueueing wraps around the end of the queue.
    ``filled`` is the fraction of entries that hold real keys rather than the
    random initial ones (the loss is not comparable before it reaches 1).
    """

    def __init__(self, dim: int, size: int):
        super().__init__()
        if size <= 0:
            raise ValueError(f"queue size must be positive, got {size}")
        self.register_buffer("queue", F.normalize(torch.randn(dim, size), dim=0))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("num_enqueued", torch.zeros((), dtype=torch.long))

    @property
    def size(self) -> int:
        return self.queue.shape[1]

    @property
    def filled(self) -> float:
        return min(int(self.num_enqueued), self.size) / self.size

    def filled_tensor(self) -> torch.Tensor:
        """``filled`` as a 0-d tensor on the queue's device (for logging without a device read)."""
        return self.num_enqueued.clamp(max=self.size).float() / self.size

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        """Write (N, dim) keys at the pointer (oldest first) and advance it."""
        keys = keys.detach().to(self.queue.dtype)
        if keys.shape[0] > self.size:  # only the newest `size` keys can survive
            keys = keys[-self.size :]
        n = keys.shape[0]
        index = (self.ptr + torch.arange(n, device=self.queue.device)) % self.size
        self.queue[:, index] = keys.T
        self.ptr.copy_((self.ptr + n) % self.size)
        self.num_enqueued.add_(n)
