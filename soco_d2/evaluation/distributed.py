"""Feature extraction spread over the ranks of detectron2's ``comm``.

Each rank maps and embeds one contiguous shard of the records (detectron2's
``InferenceSampler``); the rows are then gathered to every rank in rank
order, which is record order, so the result is the same for any number of
processes.  Row counts travel with ``comm.all_gather``; the rows themselves
with ``torch.distributed.all_gather`` on the backend's device (no pickling of
large feature matrices).
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.distributed as dist
from detectron2.data.build import trivial_batch_collator
from detectron2.data.common import DatasetFromList, MapDataset
from detectron2.data.samplers import InferenceSampler
from detectron2.utils import comm
from tqdm import tqdm


def gather_rows(tensor: torch.Tensor) -> torch.Tensor:
    """Every rank's rows concatenated in rank order, on every rank (same device as the input)."""
    if comm.get_world_size() == 1:
        return tensor
    counts = comm.all_gather(len(tensor))
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    padded = tensor.new_zeros((max(counts),) + tuple(tensor.shape[1:]), device=device)
    padded[: len(tensor)] = tensor.to(device)
    parts = [torch.empty_like(padded) for _ in counts]
    dist.all_gather(parts, padded)
    return torch.cat([part[:n] for part, n in zip(parts, counts)]).to(tensor.device)


def extract(
    records: list[dict],
    mapper: Callable[[dict], dict],
    embed: Callable[[list[dict]], dict[str, torch.Tensor]],
    *,
    batch_size: int,
    num_workers: int = 0,
    progress: bool = True,
    desc: str = "features",
) -> dict[str, torch.Tensor]:
    """``embed`` over ``mapper(record)`` for every record, gathered: each key's rows in record order.

    ``embed(batch)`` gets a list of mapped records and returns tensors with one
    row per output (per image, or per box); it must return the same keys, with
    the right trailing shapes, for an empty batch too (a rank can own no record).
    """
    if not records:
        raise ValueError(f"{desc}: no records to extract")
    loader = torch.utils.data.DataLoader(
        MapDataset(DatasetFromList(records, copy=False), mapper),
        batch_size=batch_size,
        sampler=InferenceSampler(len(records)),
        num_workers=num_workers,
        collate_fn=trivial_batch_collator,
    )
    shard = len(loader.sampler)
    parts: dict[str, list[torch.Tensor]] = {}
    with tqdm(total=shard, desc=desc, unit="img", disable=not (progress and comm.is_main_process()),
              dynamic_ncols=True, leave=False) as bar:
        for batch in loader:
            for key, value in embed(batch).items():
                parts.setdefault(key, []).append(value)
            bar.update(len(batch))
    if not parts:  # this rank owns no record: same keys and shapes from an empty batch
        parts = {key: [value] for key, value in embed([]).items()}
    return {key: gather_rows(torch.cat(values)) for key, values in parts.items()}
