"""Every process of a resumed run starts from the same checkpoint.

Each process resolves ``--resume`` on its own: it reads ``OUTPUT_DIR/last_checkpoint``
from its machine's file system.  Only rank 0 writes checkpoints, so on machines
that do not share ``OUTPUT_DIR`` the other processes find no checkpoint (or an old
copy) and would start at another iteration with other weights; DDP synchronised
the weights when it wrapped the model, before the checkpoint was loaded, so
nothing would notice.  :func:`check_same_start` compares, right after loading,
each process's start iteration, checkpoint file name and a digest of its model's
weights (all_gather), and stops every process with one message when they differ.
"""
from __future__ import annotations

import hashlib
import os
import socket

import torch
from detectron2.utils import comm

from ..errors import InputError
from .hooks import unwrap_model


def weights_digest(model: torch.nn.Module) -> str:
    """A short digest of the bytes of every floating-point tensor of ``model``'s state (one
    copy to the host).  Bytes, not sums: a reduction's order depends on the GPU model, so
    equal weights on different hardware could give different sums."""
    tensors = [t for t in unwrap_model(model).state_dict().values() if torch.is_floating_point(t)]
    if not tensors:
        return "-"
    data = torch.cat([t.detach().contiguous().reshape(-1).view(torch.uint8) for t in tensors])
    return hashlib.sha1(data.cpu().numpy().tobytes()).hexdigest()[:12]


def start_identity(trainer) -> dict:
    """Where this process starts: iteration, the checkpoint it loaded, weights digest, host."""
    checkpointer = trainer.checkpointer
    loaded = checkpointer.get_checkpoint_file() if checkpointer.has_checkpoint() else ""
    source = os.path.basename(loaded) if loaded else f"MODEL.WEIGHTS {trainer.cfg.MODEL.WEIGHTS or '(random init)'}"
    return {"iteration": int(trainer.start_iter), "source": source, "weights": weights_digest(checkpointer.model),
            "host": socket.gethostname()}


def _describe(ranks: list[int], identity: dict, hosts: list[str]) -> str:
    where = f"rank {ranks[0]}" if len(ranks) == 1 else f"ranks {', '.join(map(str, ranks))}"
    return (f"{where} (host {', '.join(sorted(set(hosts)))}): iteration {identity['iteration']} from "
            f"{identity['source']}, weights {identity['weights']}")


def check_same_start(trainer) -> None:
    """Raise :class:`InputError` on every process when the processes did not all resume the
    same way (a collective call: every process calls it once, after loading)."""
    if comm.get_world_size() == 1:
        return
    identities = comm.all_gather(start_identity(trainer))
    groups: dict[tuple, list[int]] = {}
    for rank, identity in enumerate(identities):
        groups.setdefault((identity["iteration"], identity["source"], identity["weights"]), []).append(rank)
    if len(groups) == 1:
        return
    lines = "; ".join(_describe(ranks, identities[ranks[0]], [identities[r]["host"] for r in ranks])
                      for ranks in groups.values())
    raise InputError(
        f"--resume: the processes did not start from the same checkpoint ({lines}). Each process reads "
        "OUTPUT_DIR/last_checkpoint on its own machine and only rank 0 writes checkpoints: put OUTPUT_DIR on a "
        "file system every machine shares, or copy rank 0's last_checkpoint and the file it names to every "
        "machine, then resume again."
    )
