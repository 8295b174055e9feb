"""Weighted k-nearest-neighbour classifier on L2-normalised features.

The standard monitor of self-supervised features (Wu et al. 2018, "Unsupervised
Feature Learning via Non-Parametric Instance Discrimination"; used by DINO,
solo-learn, lightly): cosine similarity between a query and every memory
feature, the k most similar memory items vote for their class with weight
exp(similarity / T), the votes are summed per class and the classes are ranked
by their vote.

Exact rules (the reference test in tests/test_probes_knn.py checks them):

* k larger than the memory: every memory item votes (k = memory size).
* Ties in similarity at the k-th place: the memory items with the lower index
  are chosen, so the result never depends on the device's top-k order.
* Ties in the vote: the lower class index ranks first.
* A class that got no vote is never predicted: the ranking lists only voted
  classes and is padded with -1 (so top-5 on a set where fewer than 5
  classes voted counts only the voted ones).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

# Similarity rows computed at once: about 2**28 floats (1 GiB) per chunk.
_CHUNK_ELEMENTS = 1 << 28


def select_neighbours(similarity: torch.Tensor, k: int) -> torch.Tensor:
    """Indices (Q, k) of the k largest entries of each row, ties taken by the lower column.

    ``torch.topk`` decides every row whose k-th value is not shared beyond the k
    places; the rare rows where it is are re-sorted stably (equal values keep
    their column order).  The order within a row's k indices is not meaningful.
    """
    values, index = similarity.topk(k, dim=1)
    ambiguous = ((similarity >= values[:, -1:]).sum(dim=1) > k).nonzero()[:, 0]
    if len(ambiguous):
        index[ambiguous] = similarity[ambiguous].sort(dim=1, descending=True, stable=True).indices[:, :k]
    return index


def knn_rank(
    memory: torch.Tensor,
    memory_labels: torch.Tensor,
    queries: torch.Tensor,
    num_classes: int,
    k: int = 20,
    temperature: float = 0.07,
    topk: int = 5,
) -> torch.Tensor:
    """Classes ranked by weighted vote, (Q, topk) long; -1 pads classes without a vote.

    ``memory`` (N, D) and ``queries`` (Q, D) are L2-normalised here.
    """
    if k < 1 or temperature <= 0:
        raise ValueError(f"k must be >= 1 and temperature > 0, got k={k}, temperature={temperature}")
    if len(memory) == 0:
        raise ValueError("the kNN memory is empty")
    if len(memory) != len(memory_labels):
        raise ValueError(f"{len(memory)} memory features but {len(memory_labels)} labels")
    if memory_labels.numel() and (memory_labels.min() < 0 or memory_labels.max() >= num_classes):
        raise ValueError(f"memory labels must lie in [0, {num_classes})")
    memory = F.normalize(memory.float(), dim=1)
    memory_labels = memory_labels.to(memory.device, torch.long)
    k = min(k, len(memory))
    width = min(topk, num_classes)
    chunk = max(1, _CHUNK_ELEMENTS // len(memory))
    ranked = []
    for start in range(0, len(queries), chunk):
        q = F.normalize(queries[start : start + chunk].to(memory.device, torch.float32), dim=1)
        similarity = q @ memory.T
        index = select_neighbours(similarity, k)
        neighbour_similarity = similarity.gather(1, index)
        # exp(s / T) scaled per row by exp(-max s / T): same ranking, no overflow at small T
        weights = ((neighbour_similarity - neighbour_similarity.amax(1, keepdim=True)) / temperature).exp()
        neighbour_labels = memory_labels[index]
        votes = torch.zeros(len(q), num_classes, device=memory.device, dtype=weights.dtype)
        votes.scatter_add_(1, neighbour_labels, weights)
        voted = torch.zeros_like(votes, dtype=torch.bool).scatter_(1, neighbour_labels, True)
        votes[~voted] = -1.0  # below any vote (weights are >= 0)
        order = votes.sort(dim=1, descending=True, stable=True)
        classes = order.indices[:, :width]
        classes[order.values[:, :width] < 0] = -1
        ranked.append(classes)
    if not ranked:
        return torch.empty(0, width, dtype=torch.long, device=memory.device)
    return torch.cat(ranked)
